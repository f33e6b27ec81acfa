"""The one reward space: frozen calibration, effective B, refusal of per-policy statistics in soups."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_training import train_tiny

from soupkitchen.config import ConfigError, Recipe, from_dict, load_recipe, to_dict
from soupkitchen.preferences import backbone_weights
from soupkitchen.reward_space import RewardSpace, effective_weights, from_stats, load_or_calibrate
from soupkitchen.training.specs import backbone_specs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def scaled_recipe(kind: str, steps: int = 6) -> Recipe:
    """tiny with its two conflicting keyword rewards at very different scales (a count vs a fraction)."""
    tree = to_dict(load_recipe("tiny", {"ppo.steps": steps}))
    tree["rewards"][0]["params"]["mode"] = "count"
    for entry in tree["rewards"]:
        entry["normalization"] = {"kind": kind}
    return from_dict(Recipe, tree).validate()


def test_effective_B_is_B_beta_in_the_frozen_space_and_not_with_running_statistics():
    W = backbone_weights(2, 0.7).tolist()
    errors = {}
    for kind in ("calibrated", "running"):
        recipe, space, states = scaled_recipe(kind), None, []
        for w in W:
            trainer, _ = train_tiny(recipe, w, recipe.ppo.steps, space=space)
            space = trainer.space  # one calibration shared by both backbones, as the launcher does
            states.append(trainer.normalizer.state_dict())
        assert space.std[0] > 5 * space.std[1]  # the scales really differ
        errors[kind] = np.abs(effective_weights(space, W, states) - np.asarray(W)).max()
    assert errors["calibrated"] < 1e-9
    assert errors["running"] > 0.03  # each backbone's own statistics bend its w: B(β) is not what trained


def test_running_statistics_are_refused_for_mixed_weights_but_not_one_hot():
    recipe = scaled_recipe("running")
    with pytest.raises(ConfigError, match=r"rewards\.0\.normalization\.kind: 'running' statistics differ"):
        backbone_specs(recipe, "bone_soup")
    assert [s.weights for s in backbone_specs(recipe, "rewarded_soups")] == [[1.0, 0.0], [0.0, 1.0]]


def test_calibration_refuses_an_objective_that_does_not_vary():
    recipe = scaled_recipe("calibrated")
    raw = np.column_stack([np.arange(10.0), np.zeros(10)])
    with pytest.raises(ConfigError, match=r"rewards\.1\.normalization\.kind: objective 'calm' does not vary"):
        from_stats(recipe, raw, "test")


def test_space_maps_both_ways_and_spread_is_the_std_of_the_scalarised_reward():
    recipe = scaled_recipe("calibrated")
    rng = np.random.default_rng(0)
    raw = rng.multivariate_normal([3.0, -1.0], [[4.0, -1.5], [-1.5, 1.0]], size=4000)
    space = from_stats(recipe, raw, "synthetic")
    z = space.normalize(raw)
    assert np.allclose(z.mean(0), 0, atol=1e-9) and np.allclose(z.std(0), 1)
    assert np.allclose(space.raw(z), raw)
    w = np.array([0.5, 0.5])
    assert space.spread(w) == pytest.approx((z @ w).std(), rel=1e-6)
    assert space.spread(w) < 0.6  # conflicting objectives: a mix spreads less than a specialist (1.0)
    assert space.reward_scale(recipe, w) == pytest.approx(1 / space.spread(w))
    off = from_dict(Recipe, to_dict(recipe) | {"ppo": to_dict(recipe.ppo) | {"scale_rewards": "none"}})
    assert space.reward_scale(off, w) == 1.0


def test_a_resumed_run_keeps_its_space_and_a_changed_recipe_is_refused(tmp_path):
    recipe = scaled_recipe("calibrated")
    raw = np.column_stack([np.arange(10.0), np.arange(10.0) % 3])
    calls = []

    def calibrator(r):
        calls.append(r.name)
        return from_stats(r, raw, "test")

    path = tmp_path / "run" / "reward_space.json"
    first = load_or_calibrate(recipe, path, calibrator)
    again = load_or_calibrate(recipe, path, calibrator)
    assert calls == ["tiny"] and again.same_as(first) and again.cov == first.cov
    assert RewardSpace.from_dict(json.loads(path.read_text())).source == "test"
    with pytest.raises(ConfigError, match="--run-name"):
        load_or_calibrate(scaled_recipe("fixed"), path, calibrator)
