"""Front metrics against hand-computed fronts and independent implementations; the Pareto plot helper."""

import itertools
import math

import numpy as np
import pytest
from scipy.spatial.distance import pdist
from scipy.stats import kendalltau

from soupkitchen.metrics import (
    METRIC_KEYS,
    controllability,
    diversity,
    front_metrics,
    hypervolume,
    inner_product,
    kendall_tau,
    pareto_mask,
    spacing,
    sparsity,
)
from soupkitchen.plotting import pareto_plot
from soupkitchen.preferences import preference_grid

# ---------------------------------------------------------------- independent references


def hv2d_sweep(points, ref):
    """Maximisation HV in 2-D: sort by r1 descending and add the rectangles above the running best r2."""
    pts = sorted((p for p in points if p[0] > ref[0] and p[1] > ref[1]), key=lambda p: -p[0])
    hv, best_y = 0.0, ref[1]
    for x, y in pts:
        if y > best_y:
            hv += (x - ref[0]) * (y - best_y)
            best_y = y
    return hv


def hv_inclusion_exclusion(points, ref):
    """Σ_{S ≠ ∅} (−1)^{|S|+1} vol(∩_{i∈S} [ref, p_i]) — exact in any dimension, O(2^N)."""
    points, ref = np.asarray(points, float), np.asarray(ref, float)
    total = 0.0
    for size in range(1, len(points) + 1):
        for subset in itertools.combinations(points, size):
            total += (-1) ** (size + 1) * np.prod(np.clip(np.min(subset, axis=0) - ref, 0, None))
    return total


def controllability_loop(points, prefs):
    """Eq. 10 verbatim (ordered pairs, all objectives), valid when no preference coordinates tie."""
    n, dims = len(points), range(len(points[0]))
    hits = sum(
        all(np.sign(prefs[i][k] - prefs[j][k]) == np.sign(points[i][k] - points[j][k]) for k in dims)
        for i, j in itertools.permutations(range(n), 2)
    )
    return hits / (n * (n - 1))


def controllable_front():
    """A concave, perfectly controllable 2-D front on the 11-point grid: r = (sin, cos) of μ_1·π/2."""
    mu = preference_grid(2)
    angle = mu[:, 0] * np.pi / 2
    return np.column_stack([np.sin(angle), np.cos(angle)]), mu


# ---------------------------------------------------------------- hypervolume


def test_hypervolume_hand():
    assert hypervolume([[1, 0], [0, 1]], [-1, -1]) == pytest.approx(3.0)
    front = [[3, 1], [2, 2], [1, 3]]
    assert hypervolume(front, [0, 0]) == pytest.approx(3 + 2 + 1)
    assert hypervolume(front + [[1, 1], [2.5, 0.5]], [0, 0]) == pytest.approx(6)  # dominated: nothing
    assert hypervolume(front + [[5, -1], [5, 0]], [0, 0]) == pytest.approx(6)  # not dominating ref: nothing
    assert hypervolume([[5, -1]], [0, 0]) == 0.0
    assert hypervolume(np.zeros((0, 2)), [0, 0]) == 0.0
    assert hypervolume([[1, 2, 3]], [0, 0, 0]) == pytest.approx(6)
    assert hypervolume([[2, 1, 1], [1, 2, 1]], [0, 0, 0]) == pytest.approx(2 + 2 - 1)
    assert hypervolume([[3], [1]], [0]) == pytest.approx(3)
    assert hypervolume([[-1, -1]], [-3, -3]) == pytest.approx(4)  # MOC Table 8 style negative ref


def test_hypervolume_vs_sweep_2d():
    rng = np.random.default_rng(0)
    for _ in range(50):
        pts = rng.normal(size=(rng.integers(1, 15), 2))
        ref = rng.normal(size=2) - 1
        assert hypervolume(pts, ref) == pytest.approx(hv2d_sweep(pts.tolist(), ref), abs=1e-12)


@pytest.mark.parametrize("dim", [3, 4])
def test_hypervolume_vs_inclusion_exclusion(dim):
    rng = np.random.default_rng(dim)
    for _ in range(20):
        pts = rng.uniform(-0.5, 1, size=(rng.integers(1, 9), dim))
        ref = np.zeros(dim)
        assert hypervolume(pts, ref) == pytest.approx(hv_inclusion_exclusion(pts, ref), abs=1e-12)


def test_hypervolume_vs_monte_carlo_3d():
    rng = np.random.default_rng(1)
    pts, ref = rng.uniform(0, 1, size=(10, 3)), np.zeros(3)
    samples = rng.uniform(0, 1, size=(200_000, 3))
    covered = np.any(np.all(samples[:, None, :] <= pts[None], axis=-1), axis=1)
    assert hypervolume(pts, ref) == pytest.approx(covered.mean(), abs=0.005)


@pytest.mark.parametrize(
    "points, ref, match",
    [
        ([[1, np.nan]], [0, 0], "NaN or inf"),
        ([[1, 2]], [0, np.inf], "NaN or inf"),
        ([[1, 2]], [0, 0, 0], r"ref must have shape \(2,\)"),
        ([1, 2], [0, 0], r"shape \[N, n_objectives\]"),
    ],
)
def test_hypervolume_rejects(points, ref, match):
    with pytest.raises(ValueError, match=match):
        hypervolume(points, ref)


# ---------------------------------------------------------------- other metrics, by hand


def test_pareto_mask():
    pts = [[3, 1], [2, 2], [1, 3], [1, 1], [2, 2], [3, 0.5]]
    assert pareto_mask(pts).tolist() == [True, True, True, False, True, False]


def test_inner_product_hand():
    pts, mu = [[1, 0], [0.5, 0.5], [0, 1]], [[1, 0], [0.5, 0.5], [0, 1]]
    assert inner_product(pts, mu) == pytest.approx((1 + 0.5 + 1) / 3)


def test_controllability_hand():
    mu = [[0, 1], [0.5, 0.5], [1, 0]]
    assert controllability([[0, 2], [1, 1], [2, 0]], mu) == 1.0
    # swap the last two solutions: pair (1, 2) fails in both orders -> 4/6
    assert controllability([[0, 2], [2, 0], [1, 1]], mu) == pytest.approx(4 / 6)
    # a tie in rewards with distinct preferences fails (sign 0 != sign ±1)
    assert controllability([[0, 2], [0, 1], [2, 0]], mu) == pytest.approx(4 / 6)


def test_controllability_one_swap_on_grid_is_108_of_110():
    pts, mu = controllable_front()
    assert controllability(pts, mu) == 1.0
    pts[[4, 5]] = pts[[5, 4]]
    assert controllability(pts, mu) == pytest.approx(108 / 110)  # Bone Soup's 0.98 (docs/metrics.md)


def test_controllability_vs_loop():
    rng = np.random.default_rng(0)
    mu = preference_grid(2)
    for _ in range(20):
        pts = rng.normal(size=(11, 2))
        assert controllability(pts, mu) == pytest.approx(controllability_loop(pts, mu))


def test_controllability_three_objectives_skips_tied_dimensions():
    mu = [[0.2, 0.3, 0.5], [0.2, 0.5, 0.3]]  # μ_1 ties: only objectives 2 and 3 are compared
    assert controllability([[0.0, 1.0, 2.0], [5.0, 2.0, 1.0]], mu) == 1.0
    assert controllability([[0.0, 1.0, 2.0], [5.0, 0.5, 1.0]], mu) == 0.0
    # rows 1 and 2 share μ and are not compared; (0, 1) passes, (0, 2) fails on objective 3
    assert controllability([[0, 1, 2], [5, 2, 1], [9, 9, 9]], mu + [[0.2, 0.5, 0.3]]) == pytest.approx(2 / 4)
    assert math.isnan(controllability([[1, 2, 3]], [[0.2, 0.3, 0.5]]))


def test_sparsity_hand_and_order():
    pts, mu = np.array([[0, 2], [1, 1], [2, 0]]), np.array([[0, 1], [0.5, 0.5], [1, 0]])
    assert sparsity(pts, mu) == pytest.approx(2.0)  # each step ‖(1, −1)‖² = 2
    perm = [2, 0, 1]
    assert sparsity(pts[perm], mu[perm]) == pytest.approx(2.0)  # ordered by preference, not by row
    assert sparsity([[0, 0], [3, 4]], [[0, 1], [1, 0]]) == pytest.approx(25.0)
    assert math.isnan(sparsity([[1, 1]], [[0.5, 0.5]]))


def test_spacing_hand():
    assert spacing([[0, 0], [1, 0], [3, 0]]) == pytest.approx(math.sqrt(2 / 9))  # d = 1, 1, 2
    assert spacing([[0, 0], [1, 1], [2, 2], [3, 3]]) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(spacing([[1, 1]]))


def test_diversity_hand_and_pdist():
    assert diversity([[0, 0], [3, 4]]) == pytest.approx(5.0)
    rng = np.random.default_rng(0)
    for dim in (2, 3):
        pts = rng.normal(size=(11, dim))
        assert diversity(pts) == pytest.approx(pdist(pts).mean())
    assert math.isnan(diversity([[1, 1]]))


# ---------------------------------------------------------------- Kendall τ (MOC)


def moc_projection(points, ref):
    """MOC Eq. 24 literally: s = π/2 − arctan((r2 − ref2)/(r1 − ref1))."""
    points = np.asarray(points)
    return np.pi / 2 - np.arctan((points[:, 1] - ref[1]) / (points[:, 0] - ref[0]))


def ordered_front(n):
    """n perfectly ordered points: μ = (i/(n−1), 1 − i/(n−1)), the point moving monotonically toward r1."""
    t = np.linspace(0.0, 1.0, n)
    mu = np.column_stack([t, 1 - t])
    return mu.copy(), mu  # r = μ: the angle around (−2, −2) grows with μ_1


def test_kendall_tau_p_value_listing1():
    """MOC Listing 1's numbers: a perfect order of 11 gives τ = 1, p = 2/11! = 5.0e-8 (exact test)."""
    pts, mu = ordered_front(11)
    tau, p = kendall_tau(pts, mu, (-2, -2))
    assert tau == pytest.approx(1.0)
    assert p == pytest.approx(5.0e-8, rel=1e-2) and p == pytest.approx(2 / math.factorial(11), rel=1e-9)
    tau, p = kendall_tau(*ordered_front(5), (-2, -2))
    assert tau == pytest.approx(1.0) and p == pytest.approx(1.7e-2, rel=2e-2)  # 2/5! = 0.0167
    pts[[4, 5]] = pts[[5, 4]]  # one discordant pair of 55
    tau, p = kendall_tau(pts, mu, (-2, -2))
    assert tau == pytest.approx(53 / 55) and tau == pytest.approx(0.9636, abs=1e-4)
    assert p == pytest.approx(5.5e-7, rel=1e-2)  # 2 · 11 permutations with ≤ 1 inversion / 11!


def test_kendall_tau_hand():
    pts, mu = controllable_front()
    assert kendall_tau(pts, mu, (-2, -2))[0] == pytest.approx(1.0)
    assert kendall_tau(pts[::-1], mu, (-2, -2))[0] == pytest.approx(-1.0)
    pts[[4, 5]] = pts[[5, 4]]
    assert kendall_tau(pts, mu, (-2, -2))[0] == pytest.approx(53 / 55)  # one discordant pair: MOC's RS 0.96
    # undefined: 3 objectives, one point, constant projection, constant ground truth
    assert all(math.isnan(v) for v in kendall_tau(np.ones((4, 3)), np.full((4, 3), 1 / 3), (0, 0, 0)))
    assert all(math.isnan(v) for v in kendall_tau([[1, 2]], [[0.5, 0.5]], (0, 0)))
    assert all(math.isnan(v) for v in kendall_tau(np.ones((4, 2)), ordered_front(4)[1], (0, 0)))
    assert all(math.isnan(v) for v in kendall_tau(ordered_front(4)[0], np.full((4, 2), 0.5), (-2, -2)))
    with pytest.raises(ValueError, match=r"projection_ref must have shape \(2,\)"):
        kendall_tau(pts, mu, (0, 0, 0))


def test_kendall_tau_vs_scipy():
    rng = np.random.default_rng(0)
    ref = (-2, -2)
    mu = preference_grid(2)
    for _ in range(30):
        pts = rng.uniform(-1.5, 2, size=(11, 2))
        expected = kendalltau(mu[:, 0], moc_projection(pts, ref))
        assert kendall_tau(pts, mu, ref) == pytest.approx((expected.statistic, expected.pvalue), abs=1e-12)
    # ties (duplicated μ_1 and duplicated points): scipy's default τ-b, as in MOC Listing 1
    mu_t = np.array([[0.0, 1], [0.0, 1], [0.5, 0.5], [0.7, 0.3], [1, 0]])
    pts_t = np.array([[0.1, 1.0], [0.3, 0.9], [0.3, 0.9], [0.8, 0.2], [0.6, 0.1]])
    expected = kendalltau(mu_t[:, 0], moc_projection(pts_t, ref))
    assert kendall_tau(pts_t, mu_t, ref) == pytest.approx((expected.statistic, expected.pvalue), abs=1e-12)


# ---------------------------------------------------------------- front_metrics


def test_front_metrics_keys_and_values():
    pts, mu = controllable_front()
    ref = np.array([-0.1, -0.1])
    m = front_metrics(pts, mu, ref)
    assert tuple(m) == METRIC_KEYS == (
        "hypervolume", "inner_product", "controllability", "front_length",
        "sparsity", "spacing", "kendall_tau", "kendall_p", "diversity",
    )
    assert m["hypervolume"] == pytest.approx(hv2d_sweep(pts.tolist(), ref))
    assert m["inner_product"] == pytest.approx(np.mean(np.sum(pts * mu, axis=1)))
    assert m["controllability"] == 1.0 and m["kendall_tau"] == pytest.approx(1.0)
    assert m["kendall_p"] == pytest.approx(2 / math.factorial(11))
    assert all(isinstance(v, (int, float)) for v in m.values())
    assert m["front_length"] == 11
    # consecutive points on the unit circle are 2 sin(π/40) apart
    assert m["sparsity"] == pytest.approx((2 * np.sin(np.pi / 40)) ** 2)
    assert m["spacing"] == pytest.approx(0.0, abs=1e-12)
    assert m["diversity"] == pytest.approx(pdist(pts).mean())
    assert front_metrics(pts, mu, ref, projection_ref=(-2, -2))["kendall_tau"] == pytest.approx(1.0)
    # the projection point matters: seen from (0.5, 0.5), on the front itself, the angles tie in two groups
    far, near = ((-2, -2), (0.5, 0.5))
    pts_l, mu_l = ordered_front(11)
    assert front_metrics(pts_l, mu_l, ref, projection_ref=far)["kendall_tau"] == pytest.approx(1.0)
    assert front_metrics(pts_l, mu_l, ref, projection_ref=near)["kendall_tau"] < 1.0


def test_front_metrics_three_objectives():
    mu = preference_grid(3)
    pts = np.sqrt(mu)  # on the unit sphere, monotone in each μ_k
    m = front_metrics(pts, mu, np.zeros(3))
    assert set(m) == set(METRIC_KEYS)
    assert m["front_length"] == 66 and m["controllability"] == 1.0
    assert math.isnan(m["kendall_tau"]) and math.isnan(m["kendall_p"])
    assert 0 < m["hypervolume"] < 1


@pytest.mark.parametrize(
    "points, prefs, ref, match",
    [
        ([[1, 2]], [[0.5, 0.5], [1, 0]], [0, 0], "same shape"),
        (np.zeros((0, 2)), np.zeros((0, 2)), [0, 0], "front is empty"),
        ([[1, 2]], [[0.5, 0.5]], [0], r"ref must have shape \(2,\)"),
        ([[1, np.nan]], [[0.5, 0.5]], [0, 0], "NaN"),
    ],
)
def test_front_metrics_rejects(points, prefs, ref, match):
    with pytest.raises(ValueError, match=match):
        front_metrics(points, prefs, ref)


# ---------------------------------------------------------------- plotting

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_pareto_plot_two_objectives(tmp_path):
    pts, mu = controllable_front()
    out = pareto_plot({"BS": (pts, mu), "RS": (pts * 0.9, mu)}, tmp_path / "sub" / "front.png",
                      ["helpful", "harmless"], title="toy")
    assert out == tmp_path / "sub" / "front.png"
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def test_pareto_plot_three_objectives(tmp_path):
    mu = preference_grid(3)
    out = pareto_plot({"BS": (np.sqrt(mu), mu)}, tmp_path / "front3.png", ["f", "r", "c"])
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_pareto_plot_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="must both be"):
        pareto_plot({"BS": (np.ones((3, 2)), np.ones((3, 2)))}, tmp_path / "x.png", ["a", "b", "c"])
    with pytest.raises(ValueError, match="at least one"):
        pareto_plot({}, tmp_path / "x.png", ["a", "b"])
