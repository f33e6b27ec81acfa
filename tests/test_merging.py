"""Merging: the per-row mixing layer equals the dense merge W0 + Σ c_i ΔW_i (negative c, extrapolation),
row independence in a mixed batch, greedy/beam generate with KV cache, materialize, A/B baseline, bundles.

References are independent of soupkitchen.merging: PEFT's own ``add_weighted_adapter(..., "cat")`` forward,
PEFT single adapters, and a dense merge built from PEFT's ``get_delta_weight`` into an untied copy of W0.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from torch import nn

from soupkitchen.config import ConfigError, load_recipe, replace
from soupkitchen.manifests import write_manifest
from soupkitchen.merging import (
    MixedLoRALinear,
    ab_averaged_merge,
    adapters_from_manifest,
    build_mixed_model,
    load_bundle,
    materialize,
    save_materialized,
    set_coefficients,
    use_coefficients,
    write_bundle,
)
from soupkitchen.models import attach_lora, load_base_model
from soupkitchen.preferences import merge_coefficients
from soupkitchen.reward_space import RewardSpace

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ATOL = 1e-5
NAMES = ["a0", "a1", "a2"]
PROMPTS = ["the sun is warm", "a dog", "i love the quiet sea at night and the moon"]
# Per-row c: Rewarded Soups μ, Bone Soup (1 + α)B⁻¹μ with a negative entry, an arbitrary extrapolation.
C_BS = merge_coefficients([0.1, 0.3, 0.6], beta=0.6, alpha=0.5).tolist()
C_ROWS = [[0.7, 0.3, 0.0], C_BS, [1.6, -0.9, 0.45]]


@pytest.fixture(scope="module")
def soup():
    """3 adapters (the third with r=4, α=2: other rank and scaling), lora_B made non-zero; a mixed model."""
    recipe = load_recipe("tiny")
    cfgs = [recipe.lora, recipe.lora, replace(recipe.lora, r=4, alpha=2.0)]
    base, tok = load_base_model(recipe.model)
    peft, _ = load_base_model(recipe.model)
    for i, (name, cfg) in enumerate(zip(NAMES, cfgs, strict=True)):
        peft = attach_lora(peft, cfg, adapter_name=name, seed=i)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:  # PEFT initialises B to zero: every adapter would be a no-op
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    peft.eval()
    adapters = [
        {k: v.clone() for k, v in get_peft_model_state_dict(peft, adapter_name=a).items()} for a in NAMES
    ]
    mixed = build_mixed_model(load_base_model(recipe.model)[0], adapters, cfgs, NAMES)
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][2].sum()  # left padding is exercised
    return SimpleNamespace(
        recipe=recipe, cfgs=cfgs, base=base, tok=tok, peft=peft, adapters=adapters, mixed=mixed, batch=batch
    )


@torch.no_grad()
def logits(model, batch, c=None):
    if c is not None:
        set_coefficients(model, c)
    return model(**batch).logits


@torch.no_grad()
def peft_cat_logits(s, c):
    """PEFT's exact concatenated-rank merge Σ c_i s_i B_i A_i, run unmerged (lm_head tie untouched)."""
    s.peft.add_weighted_adapter(NAMES, [float(x) for x in c], "ref", combination_type="cat")
    s.peft.set_adapter("ref")
    out = s.peft(**s.batch).logits
    s.peft.set_adapter(NAMES[0])
    s.peft.delete_adapter("ref")
    return out


@torch.no_grad()
def dense_reference(s, c) -> nn.Module:
    """W0 + Σ c_i ΔW_i with ΔW_i from PEFT's get_delta_weight, in a copy of W0 whose lm_head is untied."""
    model = copy.deepcopy(s.base)
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    for name, layer in s.peft.base_model.model.named_modules():
        if isinstance(layer, LoraLayer):
            w = model.get_submodule(name).weight
            w += sum(ci * layer.get_delta_weight(a) for ci, a in zip(c, NAMES, strict=True))
    return model


@pytest.mark.parametrize("c", [C_ROWS[0], C_BS, C_ROWS[2]], ids=["rs", "bone_soup_negative", "extrapolated"])
def test_mixed_equals_exact_merge(soup, c):
    assert min(C_BS) < 0 and abs(sum(C_BS) - 1.5) < 1e-9  # B⁻¹μ has a negative entry; Σc = 1 + α
    got = logits(soup.mixed, soup.batch, c)
    torch.testing.assert_close(got, peft_cat_logits(soup, c), atol=ATOL, rtol=0)
    torch.testing.assert_close(got, logits(dense_reference(soup, c), soup.batch), atol=ATOL, rtol=0)
    assert (got - logits(soup.base, soup.batch)).abs().max() > 0.1  # the adapters do move the model


def test_one_hot_is_the_adapter_and_zero_is_the_base(soup):
    for i, name in enumerate(NAMES):
        soup.peft.set_adapter(name)
        with torch.no_grad():
            want = soup.peft(**soup.batch).logits
        torch.testing.assert_close(logits(soup.mixed, soup.batch, torch.eye(3)[i]), want, atol=ATOL, rtol=0)
    soup.peft.set_adapter(NAMES[0])
    torch.testing.assert_close(
        logits(soup.mixed, soup.batch, [0.0] * 3), logits(soup.base, soup.batch), atol=0, rtol=0
    )


def test_tied_lm_head_keeps_input_embedding(soup):
    lm_head = soup.mixed.lm_head
    assert isinstance(lm_head, MixedLoRALinear) and lm_head.n == 3 and lm_head.r == 8  # ranks padded to max
    assert lm_head.base_layer.weight is soup.mixed.transformer.wte.weight  # tie kept, never written
    logits(soup.mixed, soup.batch, C_BS)
    torch.testing.assert_close(
        soup.mixed.transformer.wte.weight, soup.base.transformer.wte.weight, atol=0, rtol=0
    )


def test_mixed_batch_rows_equal_rows_alone(soup):
    batched = logits(soup.mixed, soup.batch, C_ROWS)
    for i, c in enumerate(C_ROWS):
        row = {k: v[i : i + 1] for k, v in soup.batch.items()}
        torch.testing.assert_close(batched[i : i + 1], logits(soup.mixed, row, [c]), atol=ATOL, rtol=0)
    # per-token c constant over positions is per-row c
    per_token = torch.tensor(C_ROWS)[:, None, :].expand(-1, soup.batch["input_ids"].shape[1], -1)
    torch.testing.assert_close(logits(soup.mixed, soup.batch, per_token), batched, atol=0, rtol=0)


def test_per_token_coefficients(soup):
    layer = soup.mixed.transformer.h[0].attn.c_attn  # Conv1D: weight [in, out]
    peft_layer = soup.peft.base_model.model.transformer.h[0].attn.c_attn
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(1))
    c = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(2))
    set_coefficients(soup.mixed, c)
    with torch.no_grad():
        got = layer(x)
        deltas = torch.stack([peft_layer.get_delta_weight(a) for a in NAMES])  # [n, in, out]
        want = soup.base.transformer.h[0].attn.c_attn(x) + torch.einsum("bti,btn,nio->bto", x, c, deltas)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="per-token coefficients cover 5 positions"):
        layer(x[:, :1])  # a decode step with a KV cache needs c for the new token only


def _generate(model, batch, **kw):
    with torch.no_grad():
        return model.generate(**batch, do_sample=False, max_new_tokens=8, use_cache=True, **kw)


@pytest.mark.parametrize("num_beams", [1, 2], ids=["greedy", "beam"])
def test_generate_mixed_batch_equals_dense_per_row(soup, num_beams):
    set_coefficients(soup.mixed, [0.0, 0.0, 0.0])
    with use_coefficients(soup.mixed, C_ROWS):
        out = _generate(soup.mixed, soup.batch, num_beams=num_beams)
    assert torch.equal(soup.mixed.soup_mix.c, torch.zeros(3))  # restored after the block
    assert not torch.equal(out, _generate(soup.base, soup.batch, num_beams=num_beams))
    pad = soup.tok.pad_token_id
    for i, c in enumerate(C_ROWS):
        row = {k: v[i : i + 1] for k, v in soup.batch.items()}
        alone = _generate(dense_reference(soup, c), row, num_beams=num_beams)[0]
        assert torch.equal(out[i, : alone.numel()], alone), (i, out[i], alone)
        assert (out[i, alone.numel() :] == pad).all()  # the row alone stopped at EOS; the batch padded it


def test_materialize_and_save(soup, tmp_path):
    c = C_BS
    dense = materialize(soup.base, soup.adapters, c, soup.cfgs)
    want = dense_reference(soup, c).state_dict()
    got = dense.state_dict()
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=0, msg=k)
    # only the output projection moved: the input embedding is W0, lm_head is untied in weights and config
    torch.testing.assert_close(dense.transformer.wte.weight, soup.base.transformer.wte.weight, atol=0, rtol=0)
    assert dense.lm_head.weight is not dense.transformer.wte.weight and not dense.config.tie_word_embeddings
    assert soup.base.lm_head.weight is soup.base.transformer.wte.weight  # base left alone
    mixed = logits(soup.mixed, soup.batch, c)
    torch.testing.assert_close(logits(dense, soup.batch), mixed, atol=ATOL, rtol=0)

    from transformers import AutoModelForCausalLM

    out = save_materialized(dense, soup.tok, tmp_path / "dense")
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(logits(reloaded, soup.batch), mixed, atol=ATOL, rtol=0)


def test_ab_averaged_is_a_different_model(soup):
    two, cfg, w = soup.adapters[:2], soup.cfgs[0], [0.5, 0.5]
    exact = logits(materialize(soup.base, two, w, cfg), soup.batch)
    averaged = logits(ab_averaged_merge(soup.base, two, w, cfg), soup.batch)
    assert (exact - averaged).abs().max() > 1e-2  # cross terms B_i A_j
    same = logits(ab_averaged_merge(soup.base, [two[0], two[0]], w, cfg), soup.batch)
    torch.testing.assert_close(
        same, logits(materialize(soup.base, two[:1], [1.0], cfg), soup.batch), atol=ATOL, rtol=0
    )
    with pytest.raises(ValueError, match="identical modules and ranks"):
        ab_averaged_merge(soup.base, [two[0], soup.adapters[2]], w, cfg)


def _drop(state, needle):
    return {k: v for k, v in state.items() if needle not in k}


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("missing_B", "not both lora_A and lora_B"),
        ("targets", "targets different modules"),
        ("rank", "has rank 4 but its lora config says r=8"),
        ("other_base", "trained on another base"),
        ("dora", "unsupported key"),
    ],
)
def test_build_refuses_inconsistent_adapters(soup, case, match):
    adapters, cfgs = list(soup.adapters), soup.cfgs
    if case == "missing_B":
        adapters[1] = _drop(adapters[1], "h.0.mlp.c_fc.lora_B")
    elif case == "targets":
        adapters[1] = _drop(adapters[1], "lm_head")
    elif case == "rank":
        cfgs = soup.cfgs[0]
    elif case == "other_base":
        key = next(k for k in adapters[0] if k.endswith("base_layer.weight"))
        adapters[0] = {**adapters[0], key: adapters[0][key] + 0.1}
    else:
        adapters[0] = {**adapters[0], "base_model.model.lm_head.lora_magnitude_vector": torch.ones(248)}
    with pytest.raises(ValueError, match=match):
        build_mixed_model(soup.base, adapters, cfgs)
    assert not hasattr(soup.base, "soup_mix")


def test_coefficient_errors(soup):
    with pytest.raises(ValueError, match="n=3"):
        set_coefficients(soup.mixed, [0.5, 0.5])
    with pytest.raises(ValueError, match="NaN"):
        set_coefficients(soup.mixed, [0.5, float("nan"), 0.5])
    with pytest.raises(ValueError, match="not a PeftModel"):
        build_mixed_model(soup.peft, soup.adapters, soup.cfgs)
    with use_coefficients(soup.mixed, None), pytest.raises(RuntimeError, match="set_coefficients"):
        logits(soup.mixed, soup.batch)


# --------------------------------------------------------------------------------------------- bundle

NORM = {
    "warm": {"mean": 0.1, "std": 0.5},
    "calm": {"mean": 0.0, "std": 1.0},
    "long": {"mean": 3.0, "std": 2.0},
}


@pytest.fixture(scope="module")
def bundle_dir(soup, tmp_path_factory):
    """A bundle written from trainable.safetensors files (adapter.* and value_heads.* keys, like PPO's)."""
    root = tmp_path_factory.mktemp("bundle")
    backbones = []
    for name, state in zip(NAMES, soup.adapters, strict=True):
        ckpt = root / "ckpt" / name
        ckpt.mkdir(parents=True)
        w = [1.0 if k == len(backbones) else 0.0 for k in range(len(NAMES))]
        backbones.append({"name": name, "weights": w, "checkpoint": str(ckpt)})
        save_file(
            {**{f"adapter.{k}": v for k, v in state.items()}, "value_heads.weight": torch.zeros(3, 64)},
            str(ckpt / "trainable.safetensors"),
        )
    space = RewardSpace.identity(soup.recipe.objectives)
    manifest = write_manifest(root / "manifest.json", soup.recipe, "bone_soup", backbones, space)
    sources = adapters_from_manifest(manifest)
    assert sources == [(b["name"], Path(b["checkpoint"]) / "trainable.safetensors") for b in backbones]
    kw = dict(
        base=soup.recipe.model,
        adapters=sources,
        beta=0.6,
        alpha=0.5,
        objectives=list(NORM),
        normalization=NORM,
        ref_point=[0.0, 0.0, 0.0],
        lora_config=soup.cfgs,
    )
    write_bundle(root / "soup", **kw)
    return SimpleNamespace(path=root / "soup", kw=kw, root=root)


def test_bundle_roundtrip(soup, bundle_dir):
    b = load_bundle(bundle_dir.path, base_model=soup.base)
    assert b.n == 3 and b.names == NAMES and b.objectives == list(NORM) and [s.r for s in b.lora] == [8, 8, 4]
    assert sorted(p.name for p in (bundle_dir.path / "adapters").iterdir()) == [
        f"{n}.safetensors" for n in NAMES
    ]
    assert not any("base_layer" in k or "value_heads" in k for a in b.adapters for k in a)
    mu = [0.1, 0.3, 0.6]
    torch.testing.assert_close(b.coefficients(mu), torch.tensor(C_BS, dtype=torch.float32))
    torch.testing.assert_close(
        b.coefficients([mu, mu], alpha=0.0)[1], torch.tensor(merge_coefficients(mu, 0.6)).float()
    )
    torch.testing.assert_close(b.coefficients(mu, method="rewarded_soups"), torch.tensor(mu).float())
    base, _ = b.load_base_model()
    mixed = b.mixed_model(base)
    torch.testing.assert_close(
        logits(mixed, soup.batch, C_ROWS), logits(soup.mixed, soup.batch, C_ROWS), atol=0, rtol=0
    )
    with pytest.raises(FileExistsError):
        write_bundle(bundle_dir.path, **bundle_dir.kw)


def _edit(doc_key, value):
    def edit(path):
        doc = json.loads((path / "bundle.json").read_text())
        target = doc
        *parents, last = doc_key
        for p in parents:
            target = target[p]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
        (path / "bundle.json").write_text(json.dumps(doc))

    return edit


def _tamper(path):
    with open(path / "adapters" / "a1.safetensors", "ab") as f:
        f.write(b"\0")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_edit(["objectives"], ["warm", "calm"]), "adapters: has 3 adapters but there are 2 objectives"),
        (lambda p: (p / "adapters" / "a1.safetensors").unlink(), r"adapters.1.file: .* is missing"),
        (_tamper, r"adapters.1.sha256"),
        (_edit(["adapters", 2, "r"], 8), "has rank 4 but its lora config says r=8"),
        (_edit(["target_modules"], ["c_attn", "c_fc"]), "not in lora target_modules"),
        (_edit(["modules", "lm_head"], [64, 100]), "modules: recorded base layer shapes"),
        (_edit(["beta"], 0.3), r"beta: beta must be in \(1/n, 1\]"),
        (_edit(["alpha"], -0.5), r"alpha: must lie in \[0, inf\), got -0.5"),
        (_edit(["normalization", "long"], KeyError), "normalization: needs exactly one entry per objective"),
        (
            _edit(["normalization", "warm", "std"], 0.0),
            r"normalization.warm.std: must lie in \(0, inf\), got 0.0",
        ),
        (_edit(["ref_point"], [0.0, 0.0]), "ref_point: must list one value per objective"),
        (_edit(["format"], "other"), "format"),
    ],
    ids=[
        "n",
        "missing_file",
        "sha256",
        "rank",
        "targets",
        "shapes",
        "beta",
        "alpha",
        "norm",
        "std",
        "ref",
        "format",
    ],
)
def test_load_bundle_refuses_inconsistent(bundle_dir, tmp_path, edit, match):
    import shutil

    path = tmp_path / "soup"
    shutil.copytree(bundle_dir.path, path)
    edit(path)
    with pytest.raises(ConfigError, match=match):
        load_bundle(path)


def test_bundle_checks_base_and_writes_atomically(soup, bundle_dir, tmp_path):
    other = replace(soup.recipe.model, tiny=replace(soup.recipe.model.tiny, n_embd=32))
    with pytest.raises(ConfigError, match="base: adapters do not fit this base model"):
        load_bundle(bundle_dir.path, base_model=load_base_model(other)[0])
    bad = dict(bundle_dir.kw, beta=0.2)
    with pytest.raises(ConfigError, match="beta"):
        write_bundle(tmp_path / "bad", **bad)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.tmp-*"))
    entry = {"name": "a0", "weights": [1.0, 0.0, 0.0], "checkpoint": "s3://bucket/a0"}
    space = RewardSpace.identity(soup.recipe.objectives)
    remote = write_manifest(tmp_path / "manifest.json", soup.recipe, "rewarded_soups", [entry], space)
    with pytest.raises(ConfigError, match=r"backbones.0.checkpoint: .* is remote"):
        adapters_from_manifest(remote)
