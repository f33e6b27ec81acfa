"""Explicit value models on the tiny recipe (a few Eq. 16 steps on the residual head), stacked with the
backbones, and the guided fronts of evaluate_front: γ = 0 fronts equal the Bone Soup front, MOD's ends equal
the RS ends, costs."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from soupkitchen.config import ConfigError, load_recipe
from soupkitchen.evaluation import build_plan, evaluate, load_mixed, read_source
from soupkitchen.models import attach_lora, left_pad_position_ids, load_base_model
from soupkitchen.value_models import (
    Rollout,
    collate,
    eq16_loss,
    load_value_models,
    token_values,
    value_lora,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def value_dir(tiny_value_models):
    return tiny_value_models


def test_value_models_fit_eq16_and_are_saved_as_stackable_adapters(value_dir, tmp_path):
    import mlflow

    out, manifest, metrics = value_dir
    doc = json.loads(manifest.read_text())
    assert doc["format"] == "soupkitchen.value_models/v1" and doc["objectives"] == ["warm", "calm"]
    assert doc["head"] == "residual"
    for obj in ("warm", "calm"):
        m = metrics[obj]
        assert m["train_mse"] < m["before_train_mse"], m  # Eq. 16 regression moved V[y_t] toward r
        assert m["steps"] >= 3 and m["val_rollouts"] > 0
        for split in ("val", "train"):  # pairwise accuracy wherever a prompt has responses of unequal r
            assert (f"{split}_pairwise_accuracy" in m) == (m[f"{split}_pairs"] > 0), m
    vm = load_value_models(out)
    assert [f.name for f in vm.files] == ["value-warm.safetensors", "value-calm.safetensors"]
    runs = mlflow.search_runs(experiment_names=["soupkitchen"], output_format="list")
    run = next(r for r in runs if r.info.run_name == "train_value_models:tiny")
    assert run.info.status == "FINISHED" and "warm.train_mse" in run.data.metrics
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "adapters" / "value-warm.safetensors").write_bytes(b"broken")
    with pytest.raises(ConfigError, match="--value-models: value model value-warm: .* sha256"):
        load_value_models(broken)
    raw = tmp_path / "raw"  # written before the residual head: no "head", refused
    shutil.copytree(out, raw)
    (raw / "value_models.json").write_text(json.dumps({k: v for k, v in doc.items() if k != "head"}))
    with pytest.raises(ConfigError, match='--value-models: .* has no "head" .* retrain'):
        load_value_models(raw)


@torch.no_grad()
def _taken(model, ids, mask) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=mask, position_ids=left_pad_position_ids(mask)).logits
    return torch.nn.functional.pad(logits[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1), (1, 0))


def test_eq16_reads_the_residual_head():
    """Q = logits(W0 + ΔV) − logits(W0) at the taken tokens: 0 for a fresh adapter (B = 0), so Eq. 16 starts
    at ½ Σ_t r²; with B ≠ 0 it is the difference against an independent W0, and only ΔV gets gradients."""
    recipe = load_recipe("tiny")
    w0, tok = load_base_model(recipe.model)
    base, _ = load_base_model(recipe.model)
    model = attach_lora(base, value_lora(recipe), seed=0).eval()
    rollouts = [
        Rollout([5, 6, 7], [8, 9, 10, 11], np.array([1.5, -1.0]), "sft", "a"),
        Rollout([5, 6], [12, 13], np.array([-0.5, 2.0]), "sft", "b"),
    ]
    ids, mask, resp = collate(rollouts, tok.pad_token_id)
    r = torch.tensor([1.5, -0.5])
    q = token_values(model, ids, mask, resp)
    assert not q.any()
    assert eq16_loss(q, resp, r).item() == pytest.approx(0.5 * (4 * 1.5**2 + 2 * 0.5**2) / 2)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    q = token_values(model, ids, mask, resp)
    want = (_taken(model, ids, mask) - _taken(w0, ids, mask)) * resp
    assert q.abs().max() > 1e-3
    torch.testing.assert_close(q, want, atol=1e-5, rtol=0)
    eq16_loss(q, resp, r).backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    assert grads and all("lora_" in n for n in grads)


def test_guided_fronts_gamma_zero_equal_bone_soup_and_mod_ends_equal_rs(tiny_policies, value_dir, tmp_path):
    recipe, trained = tiny_policies
    good, _, _ = value_dir
    rec = load_recipe(
        "tiny",
        {"eval.greedy": True, "eval.samples_per_prompt": 1, "eval.num_prompts": 3, "eval.alphas": [0.0]},
    )
    sources = {m: read_source(trained["manifests"][m], m) for m in ("bone_soup", "rewarded_soups")}
    modes = ["mage_i_m", "mage_e_m", "mage_e", "mod"]
    plan = build_plan(rec, sources, False, modes, 0.0, load_value_models(good))
    assert len(plan.adapters) == 6 and plan.names[-2:] == ["value-warm", "value-calm"]
    model, tok = load_mixed(plan, rec)
    res = evaluate(plan, rec, model=model, tokenizer=tok, progress=False)
    for md in ("mage_i_m", "mage_e_m", "mage_e"):
        np.testing.assert_allclose(res.points[md], res.points["bone_soup"], atol=1e-12, err_msg=md)
    for end in (0, -1):  # μ = e_i: MOD is RS backbone i, RS at μ = e_i too
        np.testing.assert_allclose(res.points["mod"][end], res.points["rewarded_soups"][end], atol=1e-12)
    assert set(res.costs) == set(modes) and all(c["cost_per_token_vs_plain"] > 0 for c in res.costs.values())
    assert res.costs["mage_i_m"]["forward_rows_per_row"] == 1.0  # γ = 0: no guidance rows
    assert res.costs["mod"]["forward_rows_per_row"] == pytest.approx((2 + 9 * 2) / 11)


def test_evaluate_front_job_with_modes(tiny_policies, value_dir, tmp_path, capsys):
    import jobs.evaluate_front as job

    _, trained = tiny_policies
    args = [
        "--recipe",
        "tiny",
        "--out",
        str(tmp_path / "eval"),
        "--eval.num_prompts",
        "2",
        "--eval.alphas",
        "[0.0]",
    ]
    args += ["--bone-soup", str(trained["manifests"]["bone_soup"]), "--no-sft"]
    assert job.main([*args, "--modes", "bone_soup,mage_i_m,mod", "--gamma", "1.5"]) == 0
    printed = capsys.readouterr().out
    assert "cost per generated token mage_i_m" in printed and "mage_i_m/bone_soup" in printed
    with (tmp_path / "eval" / "costs.csv").open() as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"mage_i_m", "mod"} and float(rows["mage_i_m"]["forward_rows_per_row"]) == 2.0
    assert job.main([*args, "--modes", "mage_x"]) == 2
    assert "--modes: unknown guided mode 'mage_x'" in capsys.readouterr().err
    assert job.main([*args, "--modes", "mage_e_m"]) == 2
    assert "--value-models" in capsys.readouterr().err
    assert job.main([*args, "--modes", "mage_i_m", "--gamma", "-1"]) == 2
    assert "--gamma: guidance strength" in capsys.readouterr().err
