"""Paired bootstrap over prompts: interval widths match the known sampling error, shrink as 1/√P, pair
methods (and separately evaluated trials) on the same resamples, and handle NaN / infinite replicates."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from soupkitchen.bootstrap import (
    default_ratios,
    paired_bootstrap,
    paired_difference,
    percentile_interval,
    resample_counts,
    winner_separated,
)
from soupkitchen.metrics import METRIC_KEYS, front_metrics, kendall_tau

Z = 1.959964  # standard normal 97.5% quantile


def _line(k: int) -> np.ndarray:
    t = np.linspace(0, 1, k)
    return np.stack([t, 1 - t], axis=1)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def test_interval_width_matches_the_known_sampling_error():
    P, sigma, truth = 400, 1.0, np.array([2.0, 3.0])
    rng = np.random.default_rng(1)
    scores = truth + sigma * rng.standard_normal((P, 1, 2))
    mu = np.array([[0.5, 0.5]])
    res = paired_bootstrap({"m": scores}, {"m": mu}, [0.0, 0.0], samples=2000)
    width = res.point_hi["m"][0] - res.point_lo["m"][0]  # per objective: 2·z·σ/√P
    np.testing.assert_allclose(width, 2 * Z * sigma / math.sqrt(P), rtol=0.15)
    ip_width = res.hi["m"]["inner_product"] - res.lo["m"]["inner_product"]  # σ(μᵀr) = σ/√2
    assert ip_width == pytest.approx(2 * Z * sigma / math.sqrt(2 * P), rel=0.15)
    assert res.format("m", "inner_product").startswith(f"{res.point['m']['inner_product']:.4g} [")


def test_intervals_cover_the_truth_95_percent_of_the_time():
    rng, truth, hits = np.random.default_rng(7), np.array([2.0, 3.0]), []
    for i in range(60):
        scores = truth + rng.standard_normal((100, 1, 2))
        res = paired_bootstrap(
            {"m": scores}, {"m": [[0.5, 0.5]]}, [0, 0], samples=200, seed=i, metric_keys=[]
        )
        hits += list((res.point_lo["m"][0] <= truth) & (truth <= res.point_hi["m"][0]))
    assert 0.88 <= np.mean(hits) <= 1.0  # 120 intervals: 0.95 ± 0.02


def test_intervals_shrink_as_one_over_sqrt_prompts():
    rng, mu = np.random.default_rng(2), _line(11)

    def mean_width(P: int) -> float:
        scores = np.sqrt(mu) + 0.5 * rng.standard_normal((P, *mu.shape))
        res = paired_bootstrap({"m": scores}, {"m": mu}, [-1.0, -1.0], samples=1000)
        return float(np.mean(res.point_hi["m"] - res.point_lo["m"]))

    assert mean_width(25) / mean_width(400) == pytest.approx(4.0, rel=0.15)


def test_pairing_cancels_shared_prompt_noise():
    """b = a + 0.05 on every prompt, under per-prompt noise σ = 1 shared by both: the marginal HV intervals
    overlap, the paired ratio and difference exclude 1 and 0."""
    rng, P = np.random.default_rng(3), 200
    a = 5.0 + rng.standard_normal((P, 1, 2))
    b = a + 0.05 + 0.005 * rng.standard_normal((P, 1, 2))
    mu = {"a": [[0.5, 0.5]], "b": [[0.5, 0.5]]}
    res = paired_bootstrap({"a": a, "b": b}, mu, [0.0, 0.0], ratios=[("b", "a")])
    lo, hi = res.lo, res.hi
    assert lo["b"]["hypervolume"] < hi["a"]["hypervolume"]  # marginal intervals overlap
    assert lo["b"]["hv_ratio_vs_a"] > 1.0
    assert res.point["b"]["hv_ratio_vs_a"] == res.point["b"]["hypervolume"] / res.point["a"]["hypervolume"]
    hv = {m: res.reps[m]["hypervolume"] for m in res.reps}
    est = {m: res.point[m]["hypervolume"] for m in res.point}
    diff, dlo, dhi = paired_difference(hv["b"], hv["a"], a=est["b"], b=est["a"])
    assert diff == est["b"] - est["a"] and 0 < dlo <= diff <= dhi
    sep = winner_separated(est, hv)
    assert (sep.winner, sep.runner_up, sep.separated) == ("b", "a", True)
    assert sep.describe("HV").endswith("— separated at 95%")
    # Unpaired (b's replicates on another seed's resamples) the same difference is not separated.
    other = paired_bootstrap({"b": b}, {"b": mu["b"]}, [0.0, 0.0], seed=1).reps["b"]["hypervolume"]
    sep = winner_separated(est, {"b": other, "a": hv["a"]})
    assert sep.winner == "b" and not sep.separated and "not separated at 95%" in sep.describe("HV")


def test_point_estimates_are_front_metrics_of_the_prompt_means():
    rng = np.random.default_rng(4)
    mu = rng.dirichlet(np.ones(3), size=6)
    scores = {
        "bone_soup": rng.random((30, 6, 3)),
        "rewarded_soups": rng.random((30, 6, 3)),
        "sft": rng.random((30, 1, 3)),
    }
    prefs = {"bone_soup": mu, "rewarded_soups": mu, "sft": np.full((1, 3), 1 / 3)}
    ref = [-0.1, -0.1, -0.1]
    res = paired_bootstrap(scores, prefs, ref, samples=50, metric_keys=METRIC_KEYS)
    for m, s in scores.items():
        expected = front_metrics(s.mean(axis=0), prefs[m], ref)
        assert _same({k: res.point[m][k] for k in METRIC_KEYS}, expected)
        np.testing.assert_array_equal(res.points[m], s.mean(axis=0))
    assert set(res.point["bone_soup"]) - set(METRIC_KEYS) == {"hv_ratio_vs_rewarded_soups", "hv_ratio_vs_sft"}
    row = res.row("bone_soup")  # flat scalars for a Tune / CSV row
    assert row["hypervolume_lo"] == res.lo["bone_soup"]["hypervolume"] and "hv_ratio_vs_sft_hi" in row
    assert json.loads(row["hypervolume_reps"]) == res.reps["bone_soup"]["hypervolume"].tolist()
    # One prompt: every resample is that prompt, so every replicate equals the point estimate (the
    # per-key replicate metrics are front_metrics' terms).
    one = paired_bootstrap(
        {m: s[:1] for m, s in scores.items()}, prefs, ref, samples=5, metric_keys=METRIC_KEYS
    )
    for m in scores:
        for k, v in one.reps[m].items():
            np.testing.assert_array_equal(v, np.full(5, one.point[m][k]))


def test_resample_counts_are_deterministic_so_separate_trials_pair():
    c = resample_counts(37, 200, seed=5)
    assert c.shape == (200, 37) and np.all(c.sum(axis=1) == 37)
    np.testing.assert_array_equal(c, resample_counts(37, 200, seed=5))
    assert not np.array_equal(c, resample_counts(37, 200, seed=6))
    # Two trials evaluated on their own (separate processes) get the replicates of a joint evaluation.
    rng, mu = np.random.default_rng(5), _line(3)
    s = {"x": rng.random((37, 3, 2)), "y": rng.random((37, 3, 2))}
    joint = paired_bootstrap(s, {"x": mu, "y": mu}, [0, 0], samples=200, seed=5)
    for m in s:
        alone = paired_bootstrap({m: s[m]}, {m: mu}, [0, 0], samples=200, seed=5)
        np.testing.assert_array_equal(alone.reps[m]["hypervolume"], joint.reps[m]["hypervolume"])


def test_nan_and_infinite_replicates():
    lo, hi = percentile_interval(np.r_[np.full(10, np.nan), np.arange(101.0)])
    assert (lo, hi) == (2.0, 98.0)  # NaNs ignored: the percentiles of 0..100
    assert all(math.isnan(v) for v in percentile_interval(np.full(10, np.nan)))
    assert percentile_interval(np.r_[np.arange(10.0), np.full(90, np.inf)]) == (2.0, math.inf)
    # A 1-point front's controllability is NaN on every replicate; a zero-HV baseline gives ratio inf.
    rng = np.random.default_rng(6)
    scores = {"bone_soup": 1 + rng.random((20, 3, 2)), "sft": -1 - rng.random((20, 1, 2))}
    prefs = {"bone_soup": _line(3), "sft": [[0.5, 0.5]]}
    res = paired_bootstrap(scores, prefs, [0.0, 0.0], samples=100)
    assert math.isnan(res.point["sft"]["controllability"]) and math.isnan(res.lo["sft"]["controllability"])
    assert math.isnan(res.hi["sft"]["controllability"]) and math.isfinite(
        res.hi["bone_soup"]["controllability"]
    )
    r = "hv_ratio_vs_sft"
    assert res.point["bone_soup"][r] == res.lo["bone_soup"][r] == res.hi["bone_soup"][r] == math.inf
    assert res.format("bone_soup", r) == "inf [inf, inf]"
    # Kendall τ is NaN on the replicates that draw only prompt 0 (both points equal), ±1 otherwise.
    two = np.array([[[1.0, 1.0], [1.0, 1.0]], [[1.0, 2.0], [2.0, 1.0]]])
    res = paired_bootstrap({"m": two}, {"m": [[0.0, 1.0], [1.0, 0.0]]}, [0, 0], metric_keys=["kendall_tau"])
    tau = res.reps["m"]["kendall_tau"]
    assert 0 < np.isnan(tau).sum() < len(tau)
    assert res.lo["m"]["kendall_tau"] == res.hi["m"]["kendall_tau"] == res.point["m"]["kendall_tau"] == 1.0


def test_kendall_tau_and_p_value_around_the_projection_point():
    """τ and its p-value (MOC Listing 1): one kendall_tau call per replicate, around projection_ref."""
    rng, mu = np.random.default_rng(7), _line(11)
    scores = {"m": _line(11)[None] + 0.3 * rng.standard_normal((25, 11, 2))}
    ref, proj = [-1.0, -1.0], [-2.0, -2.0]
    res = paired_bootstrap(
        scores, {"m": mu}, ref, samples=40, metric_keys=["kendall_tau", "kendall_p"], projection_ref=proj
    )
    point = front_metrics(scores["m"].mean(0), mu, ref, projection_ref=proj)
    assert all(res.point["m"][k] == point[k] for k in ("kendall_tau", "kendall_p"))
    w = resample_counts(25, 40) / 25
    expected = np.array([kendall_tau(p, mu, proj) for p in np.einsum("bp,pkn->bkn", w, scores["m"])])
    np.testing.assert_allclose(res.reps["m"]["kendall_tau"], expected[:, 0], rtol=1e-12)
    np.testing.assert_allclose(res.reps["m"]["kendall_p"], expected[:, 1], rtol=1e-12)
    assert 0 < res.lo["m"]["kendall_p"] <= res.hi["m"]["kendall_p"] <= 1
    assert res.lo["m"]["kendall_tau"] <= point["kendall_tau"] <= res.hi["m"]["kendall_tau"]


def test_default_ratios_and_bad_inputs():
    labels = ["bone_soup", "bone_soup_a0.3", "rewarded_soups", "mage_i_m", "sft"]
    assert default_ratios(labels) == [
        ("bone_soup", "rewarded_soups"), ("bone_soup", "sft"),
        ("bone_soup_a0.3", "bone_soup"), ("bone_soup_a0.3", "rewarded_soups"), ("bone_soup_a0.3", "sft"),
        ("rewarded_soups", "sft"),
        ("mage_i_m", "bone_soup"), ("mage_i_m", "rewarded_soups"), ("mage_i_m", "sft"),
    ]  # fmt: skip
    mu = _line(2)
    with pytest.raises(ValueError, match="same prompts"):
        paired_bootstrap({"a": np.ones((3, 2, 2)), "b": np.ones((4, 2, 2))}, {"a": mu, "b": mu}, [0, 0])
    with pytest.raises(ValueError, match=r"must be \[P, k, n\]"):
        paired_bootstrap({"a": np.ones((3, 2))}, {"a": mu}, [0, 0])
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap({"a": np.ones((3, 2, 2))}, {"a": mu}, [0, 0], metric_keys=["hv"])
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([1.0, 2.0], [1.0])
    sep = winner_separated({"a": 1.0, "b": 2.0}, {"a": [1.0] * 3, "b": None})
    assert sep.winner == "b" and not sep.separated and "no interval (no replicates)" in sep.describe("HV")
