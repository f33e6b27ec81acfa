"""Ray Tune searches through `ray job submit` on the tiny recipe: β by short backbone runs (then continued to
the full budget), α by evaluation-only trials; the winners are the argmax of the reported hypervolumes and
end up in the soup bundle."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from soupkitchen.bootstrap import paired_bootstrap
from soupkitchen.config import ConfigError, load_recipe
from soupkitchen.merging import load_bundle
from soupkitchen.search import best, beta_specs, results_table, short_steps
from tests.test_train_backbones import _logs, _wait


def _job(head, script: str, *args: str) -> str:
    out = head["ray"](
        "job", "submit", "--address", head["address"], "--no-wait", "--runtime-env", "jobs/runtime_env.yaml",
        "--", "python", script, *args, env=head["env"],
    )  # fmt: skip
    return re.search(r"raysubmit_\w+", out.stdout + out.stderr).group(0)


def _rows(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_beta_then_alpha_search_pick_the_argmax_and_write_it_into_the_bundle(ray_head, tmp_path):
    storage, out = tmp_path / "runs", tmp_path / "out"
    common = ["--recipe", "tiny", "--storage", str(storage), "--ppo.steps", "10", "--eval.num_prompts", "8"]
    job = _job(
        ray_head, "tune/search_beta.py", *common, "--betas", "0.6,0.8", "--out", str(out), "--continue"
    )
    status, log = _wait(ray_head, job), _logs(ray_head, job)
    assert status == "SUCCEEDED", log[-4000:]
    rows = _rows(out / "beta_search.csv")
    assert sorted(float(r["beta"]) for r in rows) == [0.6, 0.8] and not any(r["error"] for r in rows)
    hv = {float(r["beta"]): float(r["hypervolume"]) for r in rows}
    best = max(hv, key=hv.get)
    assert json.loads(log.strip().splitlines()[-1])["best_beta"] == best
    bundle = load_bundle(out / "bundles" / "bone_soup")
    assert bundle.beta == best
    # The winner's backbones continued from their 2-step checkpoints to the full 10 steps.
    final = json.loads((out / "final" / f"beta{best:g}" / "manifest.json").read_text())
    for b in final["backbones"]:
        assert b["resumed_from_step"] == 2, b
        state = json.loads((tmp_path / b["checkpoint"] / "state.json").read_text())
        assert state["data_position"] == 10

    job = _job(
        ray_head, "tune/search_alpha_gamma.py", *common, "--source", str(out / "bundles" / "bone_soup"),
        "--mode", "mage_i_m", "--alphas", "0,0.3", "--gammas", "0,1", "--out", str(tmp_path / "alpha"),
    )  # fmt: skip
    status, log = _wait(ray_head, job), _logs(ray_head, job)
    assert status == "SUCCEEDED", log[-4000:]
    rows = _rows(tmp_path / "alpha" / "alpha_search.csv")
    hv = {(float(r["alpha"]), float(r["gamma"])): float(r["hypervolume"]) for r in rows}
    assert set(hv) == {(0.0, 0.0), (0.0, 1.0), (0.3, 0.0), (0.3, 1.0)}
    retuned = load_bundle(tmp_path / "alpha" / "bundles" / "bone_soup")
    assert (retuned.alpha, retuned.gamma) == max(hv, key=hv.get) and retuned.beta == best


def test_beta_specs_and_short_runs():
    recipe = load_recipe("tiny")
    specs = beta_specs(recipe, [0.6, 0.8])
    assert [s.name for s in specs] == ["beta0.6-0", "beta0.6-1", "beta0.8-0", "beta0.8-1"]
    assert [s.weights for s in specs] == [[0.6, 0.4], [0.4, 0.6], [0.8, 0.2], [0.2, 0.8]]
    assert short_steps(recipe, 0.2) == 4 and short_steps(recipe, 0.01) == 1
    with pytest.raises(ConfigError, match=r"search.betas: β must lie in .*\(0.5, 1\], got 0.4"):
        beta_specs(recipe, [0.4, 0.7])


@pytest.mark.parametrize(
    ("script", "args", "fragment"),
    [
        ("search_beta", ["--betas", "0.7"], "at least two distinct β"),
        ("search_beta", ["--betas", "0.7,x"], "--betas: must be comma-separated numbers"),
        ("search_alpha_gamma", ["--source", "/nonexistent"], "--source: /nonexistent is neither"),
        ("search_alpha_gamma", ["--source", ".", "--search.gammas", "[1.0]"], "search.gammas: γ is the guid"),
        ("search_alpha_gamma", ["--source", ".", "--mode", "magic"], "--mode: unknown mode 'magic'"),
        (
            "search_alpha_gamma",
            ["--source", ".", "--alphas", "0,2"],
            r"search.alphas.1: must be in \[0, 1.0\]",
        ),
    ],
)
def test_bad_search_inputs_fail_before_any_trial(script, args, fragment, capsys, monkeypatch):
    import importlib

    job = importlib.import_module(f"tune.{script}")
    started = []
    monkeypatch.setattr("ray.init", lambda *a, **k: started.append(1))
    assert job.main(["--recipe", "tiny", *args]) == 2
    assert re.search(fragment, capsys.readouterr().err)
    assert not started


def _trials(scores: dict[float, np.ndarray]) -> list[dict]:
    """One Tune row per β, each bootstrapped on its own (as separate trial processes) with the same seed."""
    mu = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    rows = []
    for beta, s in scores.items():
        res = paired_bootstrap({"bone_soup": s}, {"bone_soup": mu}, [-3.0, -3.0], samples=300, seed=0)
        rows.append({"beta": beta, "error": None} | res.row("bone_soup"))
    return rows


def test_results_table_prints_intervals_and_whether_the_winner_is_separated(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((100, 3, 2))  # per-prompt difficulty shared by every trial
    rows = _trials({0.6: base - 0.2, 0.7: base + 0.03, 0.8: base})
    rows.append({"beta": 0.9, "error": "RuntimeError('boom')"})
    text = results_table(rows, ["beta"], tmp_path / "t.csv")
    w = next(r for r in rows if r["beta"] == 0.7)
    assert best(rows) is w
    lines = text.splitlines()
    assert f"{w['hypervolume']:.4g} [{w['hypervolume_lo']:.4g}, {w['hypervolume_hi']:.4g}]" in lines[1]
    assert "FAILED: RuntimeError('boom')" in lines[-2]
    assert lines[-1].startswith("winner beta=0.7 vs runner-up beta=0.8: ΔHV ")
    assert lines[-1].endswith("— separated at 95%")
    csv_rows = _rows(tmp_path / "t.csv")
    assert [r["beta"] for r in csv_rows] == ["0.7", "0.8", "0.6", "0.9"]
    assert float(csv_rows[0]["hypervolume_lo"]) == w["hypervolume_lo"] and csv_rows[3]["hypervolume_hi"] == ""

    # Independent noise per trial (not shared) with the same small shift: not separated.
    rows = _trials({0.7: base + 0.03, 0.8: rng.standard_normal((100, 3, 2))})
    last = results_table(rows, ["beta"]).splitlines()[-1]
    assert last.startswith(f"winner beta={best(rows)['beta']:g} vs") and last.endswith("not separated at 95%")


def test_results_table_of_old_rows_without_intervals():
    rows = [
        {"alpha": 0.0, "gamma": 1.0, "error": None, "hypervolume": 0.5, "front_length": 3},
        {"alpha": 0.3, "gamma": 1.0, "error": None, "hypervolume": 0.6, "front_length": 4},
    ]
    lines = results_table(rows, ["alpha", "gamma"]).splitlines()
    assert lines[1].split() == ["0.3", "1", "0.6", "None", "None", "4"]
    assert (
        lines[-1]
        == "winner alpha=0.3, gamma=1 vs runner-up alpha=0, gamma=1: ΔHV 0.1 — no interval (no replicates)"
    )
    assert results_table(rows[:1], ["alpha"]).splitlines()[-1] == "winner alpha=0: no runner-up"
    assert best(rows) is rows[1]


class _Shifted:
    """The tiny rewards with a constant added: the same front moved up by ``delta`` on every objective."""

    def __init__(self, rewards, delta: float):
        self.rewards, self.delta = rewards, delta

    def score(self, prompts, responses):
        return self.rewards.score(prompts, responses) + self.delta


def test_trials_with_shifted_fronts_get_different_scores_against_the_shared_reference_point(tiny_policies):
    """A reference point computed from each trial's own points (worst point − 10%) is shift-invariant and
    would score these two trials alike; the search's one reference point ranks the shifted front higher."""
    from soupkitchen.evaluation import build_plan, load_mixed, read_source
    from soupkitchen.rewards import build_rewards
    from soupkitchen.search import evaluate_config

    _, trained = tiny_policies
    recipe = load_recipe("tiny", {"eval.num_prompts": 4, "eval.bootstrap_samples": 200})
    source = trained["manifests"]["bone_soup"]
    plan = build_plan(recipe, {"bone_soup": read_source(source, "bone_soup")}, include_sft=False)
    model, tok = load_mixed(plan, recipe)
    key = tuple(str(p) for p in plan.adapters)
    rewards = build_rewards(recipe.rewards)
    config = {"recipe": recipe, "source": str(source), "alpha": 0.0, "label": "t"}
    scores = {}
    for delta in (0.0, 0.05):
        scores[delta] = evaluate_config(config, {key: (model, tok, _Shifted(rewards, delta))})
    assert scores[0.05]["hypervolume"] > scores[0.0]["hypervolume"] + 0.01
    assert scores[0.0]["hypervolume_lo"] <= scores[0.0]["hypervolume_hi"]
    assert len(json.loads(scores[0.0]["hypervolume_reps"])) == 200  # paired with every other trial's
