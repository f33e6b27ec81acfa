"""HoE (docs/methods/hoe.md): the router layer against the mixing layer, OMD-STCH, the tiny expert set built
from the Rewarded Soups specialists (fidelity, z*, routers), λ = e_i against the expert loaded in PEFT,
the HoE front in evaluation and the bundle's mode ``hoe``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from soupkitchen.checkpoint import sha256_of
from soupkitchen.config import ConfigError, LoraConfig, load_recipe
from soupkitchen.evaluation import evaluate_front
from soupkitchen.hoe import (
    ExpertStack,
    HoEManifest,
    Router,
    build_hoe_model,
    configurations,
    dense_task_vector,
    load_experts,
    lora_task_vector,
    lora_weights,
)
from soupkitchen.hoe.build import build_hoe
from soupkitchen.hoe.layer import hoe_layers, reference_routers, unfreeze_routers
from soupkitchen.manifests import BackboneManifest
from soupkitchen.merging import build_mixed_model, materialize, save_materialized, set_coefficients
from soupkitchen.merging.mixed import load_adapter_state, lora_spec
from soupkitchen.models import attach_lora, load_base_model
from soupkitchen.ppo.scalarization import OMDTchebycheff

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
PROMPTS = ["the sun is warm", "a dog", "i love the quiet sea at night and the moon"]


@pytest.fixture(scope="module")
def stack():
    """Three random LoRA adapters of the tiny model (B non-zero), a tokenised batch, the recipe."""
    recipe = load_recipe("tiny")
    peft, tok = load_base_model(recipe.model)
    names = ["x0", "x1", "x2"]
    for i, name in enumerate(names):
        peft = attach_lora(peft, recipe.lora, adapter_name=name, seed=i)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    adapters = [
        {k: v.clone() for k, v in get_peft_model_state_dict(peft, adapter_name=a).items()} for a in names
    ]
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    return recipe, adapters, names, batch, tok


def _hoe(stack, routers):
    recipe, adapters, names, _, _ = stack
    return build_hoe_model(load_base_model(recipe.model)[0], adapters, recipe.lora, names, routers)


def _mixed(stack):
    recipe, adapters, names, _, _ = stack
    return build_mixed_model(load_base_model(recipe.model)[0], adapters, recipe.lora, names)


@torch.no_grad()
def _logits(model, batch, c):
    set_coefficients(model, c)
    return model(**batch).logits


def test_router_at_init_is_the_mixing_layer_at_its_barycentric_mix(stack):
    """W = 0, b = log(init): a row [c, ω] equals the mixing layer at c + ω·scatter(init) (Eq. 11)."""
    hoe = _hoe(stack, [Router("r", [0, 2], [0.3, 0.7])])
    mixed = _mixed(stack)
    batch = stack[3]
    rows = torch.tensor([[0.2, 0.0, 0.0, 0.5], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    want = torch.tensor([[0.2 + 0.5 * 0.3, 0.0, 0.5 * 0.7], [0.0, 1.0, 0.0], [0.3, 0.0, 0.7]])
    torch.testing.assert_close(_logits(hoe, batch, rows), _logits(mixed, batch, want), atol=2e-5, rtol=1e-5)


def test_trained_router_mixes_per_token_as_eq_11(stack):
    """With random router weights each module's coefficients are c + ω·scatter(softmax(Wx + b)) per token,
    the output is W0 x + Σ_j ω_l,j s_j B_j A_j x, gradients reach the router only, and a batch without
    router rows never computes one (the per-row fast path)."""
    hoe = _hoe(stack, [Router("r", [2, 0], [0.5, 0.5])])
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in hoe_layers(hoe):
            layer.router_weight.copy_(torch.randn(layer.router_weight.shape, generator=gen))
    name, layer = next(iter(hoe_layers(hoe)))
    x = torch.randn(2, 5, layer.in_features, generator=gen)
    set_coefficients(hoe, torch.tensor([[0.0, 0.4, 0.0, 0.6], [1.0, 0.0, 0.0, 0.0]]))
    c = layer.coefficients(x)
    p = torch.softmax(x @ layer.router_weight.T + layer.router_bias, -1)  # [2, 5, 2]
    want = torch.zeros(2, 5, 3)
    want[0, :, 1] = 0.4
    want[0, :, 2] += 0.6 * p[0, :, 0]
    want[0, :, 0] += 0.6 * p[0, :, 1]
    want[1, :, 0] = 1.0
    torch.testing.assert_close(c, want)
    torch.testing.assert_close(c.sum(-1), torch.ones(2, 5))
    with torch.no_grad():
        y = layer(x)
        ref = layer.base_layer(x) + layer.lora_delta(x, want)
    torch.testing.assert_close(y, ref)
    params = unfreeze_routers(hoe)
    assert {id(q) for q in params} == {id(q) for q in hoe.parameters() if q.requires_grad}
    set_coefficients(hoe, torch.tensor([0.0, 0.0, 0.0, 1.0]))
    hoe(**stack[3]).logits.sum().backward()
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in params[:2])
    with reference_routers(hoe):  # π_ref: the initial mix, whatever W is
        torch.testing.assert_close(
            _logits(hoe, stack[3], torch.tensor([0.0, 0.0, 0.0, 1.0])),
            _logits(_mixed(stack), stack[3], torch.tensor([0.5, 0.0, 0.5])),
            atol=2e-5,
            rtol=1e-5,
        )
    calls = []
    layer.router_probs = lambda x: calls.append(1)  # noqa: ARG005
    _logits(hoe, stack[3], torch.tensor([[0.3, 0.7, 0.0, 0.0]] * 3))
    assert not calls


def test_lora_weights_reference_matches_the_layer(stack):
    """The numpy reference of Eq. 11 (routing.lora_weights) equals the layer's coefficients at one token."""
    hoe = _hoe(stack, [Router("r", [0, 1], [0.4, 0.6])])
    _, layer = next(iter(hoe_layers(hoe)))
    x = torch.randn(1, 1, layer.in_features)
    set_coefficients(hoe, torch.tensor([0.0, 0.0, 0.3, 0.7]))
    probs = layer.router_probs(x)[0, 0, 0].detach().numpy()
    ref = lora_weights(np.array([0.3, 0.7]), np.array([2, -1]), {1: [0, 1]}, {1: probs})
    np.testing.assert_allclose(layer.coefficients(x)[0, 0].detach().numpy(), ref, atol=1e-6)


def test_build_hoe_model_refuses_bad_routers(stack):
    with pytest.raises(ValueError, match="do not fit"):
        _hoe(stack, [Router("r", [0, 7], [0.5, 0.5])])
    hoe = _hoe(stack, [Router("r", [0, 1], [0.5, 0.5])])
    name, layer = next(iter(hoe_layers(hoe)))
    partial = {name: (layer.router_weight.detach()[:2], layer.router_bias.detach()[:2])}
    with pytest.raises(ValueError, match="other modules"):  # a router file missing modules is refused
        _hoe(stack, [Router("r", [0, 1], [0.5, 0.5], partial)])
    with pytest.raises(ValueError, match="same number"):
        _hoe(stack, [Router("r", [0, 1], [0.5, 0.5]), Router("s", [0, 1, 2], [0.2, 0.3, 0.5])])


def test_omd_tchebycheff_moves_weight_to_the_lagging_objective():
    """Eq. 18: the objective furthest below z* (weighted by λ) gains weight; w stays on the simplex and
    survives a state round-trip."""
    s = OMDTchebycheff([0.5, 0.5], ideal=[1.0, 1.0], step=0.5)
    w = s.weights(torch.tensor([[0.9, 0.0], [1.1, 0.2]]))
    assert w.shape == (2, 2) and torch.allclose(w.sum(-1), torch.ones(2))
    assert w[0, 1] > 0.5 > w[0, 0]
    expected = np.exp(np.log(0.5) + 0.5 * 0.5 * np.array([0.0, 0.9]))
    np.testing.assert_allclose(w[0].numpy(), expected / expected.sum(), rtol=1e-6)
    t = OMDTchebycheff([0.5, 0.5], ideal=[1.0, 1.0], step=0.5)
    t.load_state_dict(json.loads(json.dumps(s.state_dict())))
    torch.testing.assert_close(t.w, s.w)
    with pytest.raises(ValueError, match="sum to 1"):
        OMDTchebycheff([0.7, 0.7], [0.0, 0.0], 0.1)


def test_dense_task_vector_equals_the_lora_delta(stack):
    """A fully fine-tuned stand-in (the LoRA merged into a copy of W0): θ_tuned − θ_pre per target equals
    s·B A of the LoRA, module by module (the GPU recipes' path)."""
    recipe, adapters, *_ = stack
    base, _ = load_base_model(recipe.model)
    tuned, _ = load_base_model(recipe.model)
    peft = attach_lora(tuned, recipe.lora, seed=0)
    set_peft_model_state_dict(peft, adapters[0])
    tuned = peft.merge_and_unload()
    dense = dense_task_vector(base, tuned, recipe.lora.target_modules)
    lora = lora_task_vector(adapters[0], lora_spec(recipe.lora))
    assert sorted(dense) == sorted(lora)
    for m in lora:
        torch.testing.assert_close(dense[m], lora[m], atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------ the tiny set (conftest tiny_hoe)


def test_tiny_expert_set_manifest(tiny_hoe):
    """2 single + 1 MO LoRA expert and one router (+ its single-pool ablation twin), each with λ, kind,
    rank, sources with sha256, fidelity and z*; the router votes over its 2 nearest LoRA experts."""
    doc = HoEManifest.read(tiny_hoe)
    assert [e.name for e in doc.lora] == ["hoe-warm", "hoe-calm", "hoe-mo0"]
    assert [e.merge for e in doc.lora] == [None, None, "ties"]
    assert all(e.sources and len(e.sources[0].sha256) == 64 for e in doc.lora)
    routers = {e.name: e for e in doc.routers}
    assert routers["hoe-router0"].votes == ["hoe-warm", "hoe-mo0"]  # λ [.75, .25]: equidistant, index order
    assert routers["hoe-router0"].init == pytest.approx([0.5, 0.5])
    assert routers["hoe-router0-single"].votes == ["hoe-warm", "hoe-calm"]
    assert routers["hoe-router0-single"].init == pytest.approx([0.75, 0.25])
    assert len(doc.ideal) == 2 and set(doc.fidelity) == {"hoe-warm", "hoe-calm"}
    for f in doc.fidelity.values():
        d, lo, hi = f["difference"]
        assert lo <= d <= hi
    assert configurations(doc) == {
        "hoe": ["hoe-warm", "hoe-calm", "hoe-mo0", "hoe-router0"],
        "hoe_lora": ["hoe-warm", "hoe-calm", "hoe-mo0"],
        "hoe_router": ["hoe-warm", "hoe-calm", "hoe-router0-single"],
        "hoe_linear": ["hoe-warm", "hoe-calm"],
    }
    for e in doc.routers:
        assert e.training["steps"] == 3 and e.training["history"] == [1, 2, 3]
        state = load_file(str(tiny_hoe / e.file))
        lora = load_file(str(tiny_hoe / "hoe-warm.safetensors"))
        modules = {k.removeprefix("base_model.model.").split(".lora_")[0] for k in lora}
        assert {k.rsplit(".", 1)[0] for k in state} == modules  # one W, b per targeted module
        assert all(v.abs().max() > 0 for k, v in state.items() if k.endswith("weight"))  # trained off W = 0


def test_tiny_set_is_checked_on_load(tiny_hoe, tmp_path):
    copy = tmp_path / "hoe"
    shutil.copytree(tiny_hoe, copy)
    (copy / "hoe-calm.safetensors").write_bytes(b"broken")
    with pytest.raises(ConfigError, match="sha256"):
        load_experts(copy)
    doc = json.loads((copy / "hoe.json").read_text())
    doc["experts"][3]["votes"] = ["hoe-warm", "nope"]
    (copy / "hoe.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="votes"):
        load_experts(copy)
    shutil.copytree(tiny_hoe, tmp_path / "hoe2")
    router = tmp_path / "hoe2" / "hoe-router0.safetensors"
    state = load_file(str(router))
    save_file({k: v for k, v in state.items() if ".0." not in k}, str(router))  # a module's weights lost
    doc = json.loads((tmp_path / "hoe2" / "hoe.json").read_text())
    doc["experts"][3]["sha256"] = sha256_of(router)
    (tmp_path / "hoe2" / "hoe.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="does not fit"):
        load_experts(tmp_path / "hoe2")


@torch.no_grad()
def test_expert_alone_reproduces_the_expert_loaded_in_peft(tiny_hoe):
    """λ = e_i routes to the single-objective expert alone (ω one-hot), and the HoE model's greedy output
    equals PEFT's with that expert's LoRA file (r = α: scaling 1) as a plain adapter."""
    recipe = load_recipe("tiny")
    experts = load_experts(tiny_hoe)
    base, tok = load_base_model(recipe.model)
    names = experts.lora_names
    routers = experts.routers(0, ["hoe-router0"])
    model = build_hoe_model(base, experts.lora, experts.specs, names, routers)
    stack = ExpertStack.of(experts, 0, len(names), ["hoe-router0"])
    served = configurations(experts.manifest)["hoe"]
    c = stack.coefficients([1.0, 0.0], served)
    assert c.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert stack.route([0.8, 0.2], served) == pytest.approx({"hoe-router0": 0.8, "hoe-warm": 0.2})
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    set_coefficients(model, torch.tensor(c, dtype=torch.float32))
    ours = model.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    r = experts.manifest.lora[0].r
    cfg = LoraConfig(r=r, alpha=float(r), target_modules=list(experts.manifest.target_modules), dropout=0.0)
    peft = attach_lora(load_base_model(recipe.model)[0], cfg, seed=0)
    result = set_peft_model_state_dict(peft, experts.lora[0])
    assert not getattr(result, "unexpected_keys", [])
    theirs = peft.eval().generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(ours, theirs)


def test_hoe_fronts_in_the_evaluation(tiny_policies, tiny_hoe, tmp_path):
    """evaluate_front with --rewarded-soups and --hoe: the full HoE front and the ablation fronts on the same
    grid, prompts and decoding, HV ratios against RS with intervals, router columns in points.csv; at
    μ = e_i every configuration is expert i alone, so their points coincide (common random numbers)."""
    _, trained = tiny_policies
    small = {"eval.num_prompts": 6, "eval.samples_per_prompt": 2, "eval.grid_step": 0.25}
    recipe = load_recipe("tiny", small)
    rs = trained["manifests"]["rewarded_soups"]
    result, files = evaluate_front(recipe, {"rewarded_soups": rs, "hoe": tiny_hoe}, tmp_path / "eval")
    labels = {fr.label for fr in result.plan.fronts}
    assert {"hoe", "hoe_lora", "hoe_router", "hoe_linear", "rewarded_soups", "sft"} <= labels
    m = result.metrics["hoe"]
    assert m["hypervolume_lo"] <= m["hypervolume"] <= m["hypervolume_hi"]
    assert "hv_ratio_vs_rewarded_soups_lo" in m
    for label in ("hoe_lora", "hoe_router", "hoe_linear"):
        np.testing.assert_allclose(result.points[label][[0, -1]], result.points["hoe"][[0, -1]])
    header = files["points"].read_text().splitlines()[0]
    assert "c_hoe-router0" in header and "c_hoe-mo0" in header
    hoe = next(fr for fr in result.plan.fronts if fr.label == "hoe")
    assert hoe.coefficients.shape[1] == len(result.plan.columns)
    # the RS specialists are stacked first; HoE's experts follow; μ = [.5, .5] is the MO expert alone
    mid = list(hoe.preferences[:, 0]).index(0.5)
    assert hoe.coefficients[mid, result.plan.columns.index("hoe-mo0")] == pytest.approx(1.0)


def test_dense_parents_extract_the_same_experts_as_their_loras(tiny_policies, tmp_path):
    """--dense (the GPU recipes' path) on local stand-ins: the tiny W0 saved as an HF directory and each RS
    specialist merged into a copy of it (a "full fine-tune"); θ_i − θ_pre gives the LoRA's task vectors, so
    the extracted experts equal the LoRA-built ones, and fidelity is measured against the full models."""
    recipe, trained = tiny_policies
    base, tok = load_base_model(recipe.model)
    save_materialized(base, tok, tmp_path / "w0")
    manifest = BackboneManifest.read(trained["manifests"]["rewarded_soups"])
    tuned = []
    for i, (_, adapter) in enumerate(manifest.adapters()):
        state = load_adapter_state(adapter)
        dense = materialize(load_base_model(recipe.model)[0], [state], [1.0], recipe.lora)
        tuned.append(str(save_materialized(dense, tok, tmp_path / f"tuned{i}")))
    small = {"eval.num_prompts": 4, "eval.samples_per_prompt": 2, "model.source": "hf"}
    hf = load_recipe("tiny", small | {"model.name": str(tmp_path / "w0")})
    out = build_hoe(hf, tmp_path / "dense", "d", str(tmp_path / "runs"), dense=tuned, train=False)
    ref = build_hoe(
        load_recipe("tiny", {"eval.num_prompts": 4, "eval.samples_per_prompt": 2}),
        tmp_path / "lora",
        "l",
        str(tmp_path / "runs"),
        rewarded_soups=trained["manifests"]["rewarded_soups"],
        train=False,
    )
    a, b = load_experts(out), load_experts(ref)
    assert a.lora_names == b.lora_names == ["hoe-warm", "hoe-calm", "hoe-mo0"]
    for x, y in zip(a.lora, b.lora, strict=True):
        for k in y:  # the same factors up to SVD sign/precision: compare the products
            if k.endswith("lora_B.weight"):
                ka = k.replace("lora_B", "lora_A")
                torch.testing.assert_close(x[k] @ x[ka], y[k] @ y[ka], atol=1e-4, rtol=1e-3)
    doc = HoEManifest.read(out)
    assert doc.fidelity["hoe-warm"]["parent"] == "tuned0" and len(doc.ideal) == 2
    with pytest.raises(ConfigError, match="--dense"):
        build_hoe(hf, tmp_path / "x", "x", str(tmp_path / "runs"), dense=tuned[:1], train=False)
