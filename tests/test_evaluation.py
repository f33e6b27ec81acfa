"""Front evaluation on the tiny recipe: plans, real generations through the per-row mixing layer, metrics,
the evaluate_front job and its input checks."""

from __future__ import annotations

import csv
import json

import mlflow
import numpy as np
import pytest

from soupkitchen.config import ConfigError, load_recipe
from soupkitchen.evaluation import build_plan, evaluate, load_mixed, read_source
from soupkitchen.preferences import merge_coefficients, preference_grid


@pytest.fixture(scope="module")
def sources(tiny_policies):
    recipe, trained = tiny_policies
    return recipe, {m: read_source(p, m) for m, p in trained["manifests"].items()}


def test_plan_places_every_method_on_one_adapter_stack(sources):
    recipe, src = sources
    plan = build_plan(recipe, src)
    # 2 BS + 2 RS + 1 MORLHF backbone, nothing shared on tiny (β = 0.7 columns ≠ e_i ≠ (0.5, 0.5)).
    assert len(plan.adapters) == 5
    labels = [f.label for f in plan.fronts]
    assert labels == ["bone_soup", "bone_soup_a0.2", "rewarded_soups", "morlhf", "sft"]
    grid = preference_grid(2, 0.1)
    bs, bs_a, rs, morlhf, sft = plan.fronts
    assert len(bs.preferences) == 11
    np.testing.assert_allclose(bs.coefficients[:, :2], [merge_coefficients(mu, 0.7) for mu in grid])
    np.testing.assert_allclose(bs_a.coefficients[:, :2], 1.2 * bs.coefficients[:, :2])
    np.testing.assert_allclose(rs.coefficients[:, 2:4], grid)
    assert not bs.coefficients[:, 2:].any() and not rs.coefficients[:, [0, 1, 4]].any()
    np.testing.assert_allclose(morlhf.coefficients, [[0, 0, 0, 0, 1]])
    np.testing.assert_allclose(morlhf.preferences, [[0.5, 0.5]])
    assert not sft.coefficients.any()


@pytest.fixture(scope="module")
def evaluated(sources):
    recipe, src = sources
    plan = build_plan(recipe, src)
    model, tok = load_mixed(plan, recipe)
    return plan, evaluate(plan, recipe, model=model, tokenizer=tok, progress=False), (model, tok)


def test_bone_soup_front_is_controllable_from_real_generations(evaluated, sources):
    recipe, _ = sources
    plan, result, _ = evaluated
    bs = result.metrics["bone_soup"]
    assert bs["controllability"] >= 0.9, result.points["bone_soup"]
    assert bs["hypervolume"] > 0 and np.isfinite(bs["inner_product"])
    # Real generations: sampled responses were produced and scored for every (method, μ, prompt, sample).
    per_point = recipe.eval.num_prompts * recipe.eval.samples_per_prompt
    rows = sum(len(f.preferences) for f in plan.fronts) * per_point
    assert result.generated_tokens >= rows and result.samples
    assert all(s["response"] for s in result.samples)
    # μ moves the rewards: the two ends of the Bone Soup front differ in the direction of μ.
    pts = result.points["bone_soup"]
    assert pts[0, 1] > pts[-1, 1] and pts[-1, 0] > pts[0, 0], pts  # grid starts at μ = (0, 1)
    # The backbones alone (BS at μ = w_j, RS at μ = e_j) are apart, with an interval; α > 0 has no such point.
    k = [
        int(np.argmin(np.abs(bs_mu - w).sum(1)))
        for bs_mu in [plan.fronts[0].preferences]
        for w in ([0.7, 0.3], [0.3, 0.7])
    ]
    assert bs["backbone_distance"] == pytest.approx(np.linalg.norm(pts[k[0]] - pts[k[1]]))
    for label in ("bone_soup", "rewarded_soups"):
        m = result.metrics[label]
        assert 0 < m["backbone_distance_lo"] <= m["backbone_distance_hi"], m
    assert "backbone_distance" not in result.metrics["bone_soup_a0.2"]


@pytest.fixture(scope="module")
def greedy_run(evaluated, sources):
    """Greedy decoding (deterministic per row) of the whole plan, for the batch-composition checks."""
    _, src = sources
    plan, _, (model, tok) = evaluated
    recipe = load_recipe("tiny", {"eval.greedy": True, "eval.samples_per_prompt": 1, "eval.batch_size": 48})
    return recipe, evaluate(plan, recipe, model=model, tokenizer=tok, progress=False)


def test_mixed_batches_equal_each_method_evaluated_alone(evaluated, greedy_run):
    """Rows with different c in one batch give what each method gives on its own (greedy)."""
    plan, _, (model, tok) = evaluated
    recipe, together = greedy_run
    rs = next(f for f in plan.fronts if f.label == "rewarded_soups")
    alone = type(plan)(plan.objectives, plan.adapters, plan.names, plan.lora, [rs], plan.space)  # RS rows
    solo = evaluate(alone, recipe, model=model, tokenizer=tok, progress=False)
    np.testing.assert_allclose(solo.points["rewarded_soups"], together.points["rewarded_soups"], atol=1e-9)


def test_sft_point_is_the_base_model(greedy_run):
    """c = 0 is W0: a plain base model (no adapters at all) gives the same SFT point."""
    recipe, together = greedy_run
    empty = build_plan(recipe, {})
    assert [f.label for f in empty.fronts] == ["sft"] and not empty.adapters
    alone = evaluate(empty, recipe, progress=False)
    np.testing.assert_allclose(alone.points["sft"], together.points["sft"], atol=1e-9)


def test_evaluate_front_job_writes_table_csv_plot_and_mlflow(tiny_policies, tmp_path, capsys):
    import jobs.evaluate_front as job

    recipe, trained = tiny_policies
    out = tmp_path / "eval"
    args = ["--recipe", "tiny", "--out", str(out), "--eval.num_prompts", "4", "--eval.alphas", "[0.0]"]
    for m, path in trained["manifests"].items():
        args += [f"--{m.replace('_', '-')}", str(path)]
    assert job.main(args) == 0
    printed = capsys.readouterr().out
    assert "hypervolume ratio bone_soup/rewarded_soups" in printed and "morlhf" in printed
    with (out / "metrics.csv").open() as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"bone_soup", "rewarded_soups", "morlhf", "sft"}
    bs = rows["bone_soup"]  # every compared number carries its interval, and the reference point is stated
    for key in ("hypervolume", "controllability", "hv_ratio_vs_rewarded_soups", "hv_ratio_vs_sft"):
        assert float(bs[f"{key}_lo"]) <= float(bs[f"{key}_hi"]), key
    assert (bs["ref_warm"], bs["ref_calm"], bs["prompts"]) == ("0.0", "0.0", "4")
    assert "hypervolume ratio bone_soup/sft" in printed and "paired bootstrap over 4 prompts" in printed
    with (out / "points.csv").open() as f:
        points = list(csv.DictReader(f))
    assert len(points) == 11 + 11 + 1 + 1 and {"mu_warm", "reward_calm", "c_bone_soup-0"} <= set(points[0])
    assert (out / "front.png").read_bytes()[:4] == b"\x89PNG"
    assert all(json.loads(line)["response"] is not None for line in (out / "samples.jsonl").open())
    runs = mlflow.search_runs(experiment_names=[recipe.tracking.experiment], output_format="list")
    run = next(r for r in runs if r.info.run_name == "evaluate_front:tiny")
    assert run.info.status == "FINISHED"
    assert float(rows["bone_soup"]["hypervolume"]) == pytest.approx(run.data.metrics["bone_soup.hypervolume"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"metrics.csv", "points.csv", "front.png"} <= artifacts


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda doc: doc.update(method="rewarded_soups"), "holds rewarded_soups backbones, not bone_soup"),
        (lambda doc: doc.update(objectives=["calm", "warm"]), "trained on objectives"),
        (lambda doc: doc["recipe"]["model"]["tiny"].update(n_embd=32), "another base model"),
        (lambda doc: doc["backbones"][0].update(checkpoint="/nonexistent"), "adapter .* is missing"),
        (lambda doc: doc.update(format="something/v0"), "not a backbones manifest"),
    ],
)
def test_bad_manifests_are_refused_with_the_flag_named(tiny_policies, tmp_path, mutate, fragment, capsys):
    import jobs.evaluate_front as job

    _, trained = tiny_policies
    doc = json.loads(trained["manifests"]["bone_soup"].read_text())
    mutate(doc)
    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps(doc))
    assert job.main(["--recipe", "tiny", "--bone-soup", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--bone-soup" in err and __import__("re").search(fragment, err), err


def test_no_method_and_bad_alphas_are_config_errors(capsys):
    import jobs.evaluate_front as job

    assert job.main(["--recipe", "tiny"]) == 2
    assert "give at least one of" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"eval.alphas.1: α must be in \[0, 1\]"):
        load_recipe("tiny", {"eval.alphas": [0.0, -0.1]})


def test_moc_front_relabels_each_point_and_unseen_groups_get_their_own_fronts(sources, tiny_moc):
    """--moc: the one policy at c = e_moc for every μ of the grid, each row's prompt relabeled for its μ;
    ``eval.unseen_groups``: every method with inference-time control again at each group's w1 = k/100, and
    HV ratios only between fronts on the same preferences. τ and MPD carry intervals."""
    from soupkitchen.evaluation.plan import unseen_groups
    from soupkitchen.evaluation.run import hypervolume_pairs

    _, src = sources
    recipe = load_recipe(
        "tiny",
        {"eval.unseen_groups": 2, "eval.unseen_group_size": 3, "eval.num_prompts": 2, "eval.alphas": [0.0]},
    )
    chosen = {"bone_soup": src["bone_soup"], "moc": read_source(tiny_moc, "moc")}
    plan = build_plan(recipe, chosen)
    labels = [f.label for f in plan.fronts]
    assert labels == [
        "bone_soup",
        "moc",
        "sft",
        "bone_soup@unseen1",
        "moc@unseen1",
        "bone_soup@unseen2",
        "moc@unseen2",
    ]
    groups = unseen_groups(recipe)
    assert len(groups) == 2 and all(g.shape == (3, 2) for g in groups)
    assert all(
        np.all(np.diff(g[:, 0]) > 0) and np.allclose(g[:, 0] * 100, np.round(g[:, 0] * 100)) for g in groups
    )
    moc = plan.fronts[1]
    assert np.all(moc.coefficients[:, 2] == 1.0) and not moc.coefficients[:, :2].any()
    assert moc.prompt("hi", 3) == "<R1> 0.30 <R2> 0.70 hi"
    np.testing.assert_allclose(plan.fronts[4].preferences, groups[0])
    pairs = hypervolume_pairs(plan.fronts)
    assert ("moc", "bone_soup") in pairs and ("moc@unseen1", "bone_soup@unseen1") in pairs
    assert not any(a.endswith("unseen1") != b.endswith("unseen1") for a, b in pairs)
    result = evaluate(plan, recipe, progress=False)
    m = result.metrics["moc@unseen2"]
    assert {
        "kendall_tau",
        "kendall_tau_lo",
        "kendall_p",
        "diversity_lo",
        "hv_ratio_vs_bone_soup@unseen2",
    } <= set(m)
    shown = [s for s in result.samples if s["method"] == "moc"]
    assert shown and all(s["prompt"].startswith("<R1> ") for s in shown)
