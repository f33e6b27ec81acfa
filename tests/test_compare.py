"""soupkitchen.comparison (jobs/compare.py) without Ray: which policies it trains, how it splits
them into per-method manifests, and the soup bundles it writes (Ray: tests/test_train_backbones.py)."""

from __future__ import annotations

import json

from soupkitchen import comparison as compare
from soupkitchen.config import load_recipe
from soupkitchen.manifests import write_manifest
from soupkitchen.merging import load_bundle
from soupkitchen.reward_space import RewardSpace


def test_policy_weights_are_the_distinct_union_in_a_fixed_order():
    recipe = load_recipe("demo")
    assert compare.policy_weights(recipe, ["bone_soup", "rewarded_soups", "morlhf"]) == [
        [1.0, 0.0],
        [0.8, 0.2],
        [0.5, 0.5],
        [0.2, 0.8],
        [0.0, 1.0],
    ]
    assert compare.policy_weights(recipe, ["bone_soup"]) == [[0.8, 0.2], [0.2, 0.8]]


def test_union_run_splits_into_method_manifests_and_bundles(tiny_policies, tmp_path):
    recipe, trained = tiny_policies
    docs = {m: json.loads(p.read_text()) for m, p in trained["manifests"].items()}
    by_w = {tuple(b["weights"]): b for d in docs.values() for b in d["backbones"]}
    union = [
        by_w[tuple(w)] | {"name": f"morlhf-{i}"}
        for i, w in enumerate(compare.policy_weights(recipe, list(docs)))
    ]
    space = RewardSpace.of_manifest(docs["bone_soup"], "bone_soup")
    union_path = write_manifest(tmp_path / "union" / "manifest.json", recipe, "morlhf", union, space)

    manifests = compare.method_manifests(recipe, list(docs), union_path, tmp_path / "out")
    for m, path in manifests.items():
        doc = json.loads(path.read_text())
        assert [b["name"] for b in doc["backbones"]] == [b["name"] for b in docs[m]["backbones"]]
        assert [b["checkpoint"] for b in doc["backbones"]] == [b["checkpoint"] for b in docs[m]["backbones"]]
    assert json.loads(manifests["bone_soup"].read_text())["beta"] == 0.7

    bundles = compare.write_bundles(recipe, manifests, tmp_path / "out")
    bs, rs = load_bundle(bundles["bone_soup"]), load_bundle(bundles["rewarded_soups"])
    assert (bs.beta, rs.beta, bs.objectives) == (0.7, None, ["warm", "calm"])
    for o in bs.objectives:
        assert bs.normalization[o]["std"] > 0
    assert bs.reward_space.same_as(space) and rs.reward_space.same_as(space)  # one space for both soups
    assert bs.diagnostics["effective_B"] == bs.diagnostics["B"] == [[0.7, 0.3], [0.3, 0.7]]
    assert set(bundles) == {"bone_soup", "rewarded_soups"}  # MORLHF is not a soup


def test_bad_methods_flag_is_a_config_error(capsys):
    import jobs.compare as job

    assert job.main(["--recipe", "tiny", "--methods", "bone_soup,hoe2"]) == 2
    assert "--methods: must be a comma-separated subset" in capsys.readouterr().err
