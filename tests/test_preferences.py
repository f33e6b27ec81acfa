"""Preference grids, validation, and the Bone Soup merging algebra (Eqs. 8-9, docs/methods/bone_soup.md)."""

import itertools

import numpy as np
import pytest

from soupkitchen.preferences import (
    backbone_weights,
    circulant_matrix,
    merge_coefficients,
    merge_coefficients_per_objective,
    normalize_preference,
    preference_grid,
    validate_preference,
)

# ---------------------------------------------------------------- grid


def test_grid_sizes_and_order():
    g2, g3 = preference_grid(2), preference_grid(3)
    assert g2.shape == (11, 2) and g3.shape == (66, 3)
    assert g2[:, 0].tolist() == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert g2[0].tolist() == [0.0, 1.0] and g2[-1].tolist() == [1.0, 0.0]
    assert g3[0].tolist() == [0.0, 0.0, 1.0] and g3[-1].tolist() == [1.0, 0.0, 0.0]
    for g in (g2, g3):
        np.testing.assert_allclose(g.sum(axis=1), 1.0, atol=1e-12)
        assert len({tuple(r) for r in g}) == len(g)
        assert np.all(g >= 0)
    assert 0.3 in g3 and 0.7 in g3  # exact decimals, no 0.30000000000000004
    assert preference_grid(1).tolist() == [[1.0]]
    assert preference_grid(2, step=0.25)[:, 0].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert preference_grid(4, step=0.5).shape == (10, 4)


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2"])
def test_grid_rejects_bad_n(n):
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        preference_grid(n)


@pytest.mark.parametrize("step", [0.3, 0.15, 0.0, -0.1, 2.0, float("nan")])
def test_grid_rejects_bad_step(step):
    with pytest.raises(ValueError, match="step"):
        preference_grid(2, step)


# ---------------------------------------------------------------- validation


def test_validate_preference_ok():
    np.testing.assert_array_equal(validate_preference([0.3, 0.7], n=2), [0.3, 0.7])
    assert validate_preference((1, 0, 0)).dtype == np.float64
    validate_preference([0.1, 0.2, 0.7 + 5e-7])  # within 1e-6


@pytest.mark.parametrize(
    "mu, n, match",
    [
        ([0.2, 0.3, 0.5], 2, "mu has 3 entries but there are 2 objectives"),
        ([[0.5, 0.5]], None, "1-D vector"),
        ([], None, "non-empty"),
        ([-0.1, 1.1], None, r"negative entry \(-0.1 at index 0\)"),
        ([np.nan, 1.0], None, "NaN or inf"),
        ([np.inf, 0.0], None, "NaN or inf"),
        ([0.5, 0.6], None, "sums to 1.1, not 1; divide it by its sum"),
        (["a", "b"], None, "sequence of numbers"),
    ],
)
def test_validate_preference_rejects(mu, n, match):
    with pytest.raises(ValueError, match=match):
        validate_preference(mu, n)


def test_normalize_preference():
    np.testing.assert_allclose(normalize_preference([3, 1]), [0.75, 0.25])
    names = ["helpful", "harmless", "humor"]
    np.testing.assert_allclose(normalize_preference({"harmless": 2, "helpful": 6}, names), [0.75, 0.25, 0.0])
    np.testing.assert_allclose(normalize_preference([1, 1, 2], names), [0.25, 0.25, 0.5])


@pytest.mark.parametrize(
    "weights, names, match",
    [
        ([0, 0], None, "all zero"),
        ([1, -1], None, ">= 0"),
        ([1, np.nan], None, "NaN or inf"),
        ({"helpful": 1, "funny": 1}, ["helpful", "harmless"], r"unknown objective name\(s\) \['funny'\]"),
        ({"helpful": 1}, None, "names .* are required"),
        ([1, 2, 3], ["helpful", "harmless"], "got 3 preference weights but there are 2 objectives"),
        ([], None, "non-empty"),
    ],
)
def test_normalize_preference_rejects(weights, names, match):
    with pytest.raises(ValueError, match=match):
        normalize_preference(weights, names)


# ---------------------------------------------------------------- B and λ


@pytest.mark.parametrize("n, beta", [(2, 0.6), (2, 0.8), (3, 0.7), (3, 0.34), (5, 0.5)])
def test_circulant_is_symmetric_column_stochastic(n, beta):
    B = circulant_matrix(n, beta)
    np.testing.assert_allclose(B.sum(axis=0), 1.0)
    np.testing.assert_allclose(B, B.T)
    np.testing.assert_allclose(np.diag(B), beta)
    np.testing.assert_allclose(B[~np.eye(n, dtype=bool)], (1 - beta) / (n - 1))
    np.testing.assert_allclose(backbone_weights(n, beta), B.T)  # row i = w_i = column i of B
    xi = (n * beta - 1) / (n - 1)  # mixup form w_1 = ξ o_1 + (1 − ξ) u (§1.2)
    np.testing.assert_allclose(B[:, 0], xi * np.eye(n)[0] + (1 - xi) / n)


def test_circulant_identity_and_trivial():
    np.testing.assert_array_equal(circulant_matrix(3, 1.0), np.eye(3))
    np.testing.assert_array_equal(circulant_matrix(1, 1.0), [[1.0]])
    np.testing.assert_array_equal(backbone_weights(3), np.eye(3))


@pytest.mark.parametrize(
    "n, beta, match",
    [
        (2, 0.5, r"beta must be in \(1/n, 1\] = \(0.5, 1\] for n=2"),
        (2, 0.3, r"\(0.5, 1\]"),
        (3, 1 / 3, r"\(0.3333, 1\] for n=3"),
        (2, 1.1, r"\(0.5, 1\]"),
        (2, float("nan"), "finite number"),
        (2, None, "finite number"),
        (1, 0.7, "beta must be 1 for n=1"),
        (0, 0.7, "n must be an int"),
    ],
)
def test_circulant_rejects(n, beta, match):
    with pytest.raises(ValueError, match=match):
        circulant_matrix(n, beta)


def closed_form(mu, beta):
    """λ_i = ((n − 1) μ_i − (1 − β)) / (nβ − 1) (docs/methods/bone_soup.md)."""
    n = len(mu)
    return ((n - 1) * np.asarray(mu) - (1 - beta)) / (n * beta - 1)


@pytest.mark.parametrize("n, beta", [(2, 0.6), (2, 0.7), (2, 0.8), (2, 1.0), (3, 0.6), (3, 0.4), (4, 0.55)])
def test_lambda_solves_B_sums_to_one_and_matches_closed_form(n, beta):
    B = circulant_matrix(n, beta)
    for mu in preference_grid(n, step=0.1 if n < 4 else 0.25):
        lam = merge_coefficients(mu, beta)
        np.testing.assert_allclose(B @ lam, mu, atol=1e-12)
        assert lam.sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(lam, closed_form(mu, beta), atol=1e-12)
        np.testing.assert_array_equal(lam < -1e-12, mu < (1 - beta) / (n - 1) - 1e-12)


def test_rewarded_soups_is_identity():
    for mu in preference_grid(3):
        np.testing.assert_array_equal(merge_coefficients(mu), mu)
        np.testing.assert_allclose(merge_coefficients(mu, beta=1.0), mu)


def test_negative_lambda_kept():
    lam = merge_coefficients([1.0, 0.0], beta=0.7)
    np.testing.assert_allclose(lam, [1.75, -0.75])
    assert lam.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "beta, lam1",
    [
        (0.6, np.arange(-2.0, 3.01, 0.5)),
        (0.7, np.arange(-0.75, 1.76, 0.25)),
        (0.8, -1 / 3 + np.arange(11) / 6),
    ],
)
def test_lambda_table_two_objectives(beta, lam1):
    """λ_1 over μ_1 = 0, 0.1, ..., 1 (docs/methods/bone_soup.md) and cond(B) = 1/(2β − 1)."""
    got = np.array([merge_coefficients(mu, beta) for mu in preference_grid(2)])
    np.testing.assert_allclose(got[:, 0], lam1, atol=1e-12)
    np.testing.assert_allclose(got[:, 1], 1 - lam1, atol=1e-12)
    assert np.linalg.cond(circulant_matrix(2, beta)) == pytest.approx(1 / (2 * beta - 1))


@pytest.mark.parametrize("beta, expected", [(0.6, [2, -0.5, -0.5]), (0.7, [1.5455, -0.2727, -0.2727]),
                                            (0.8, [1.2857, -0.1429, -0.1429])])
def test_lambda_three_objectives_unit_preference(beta, expected):
    np.testing.assert_allclose(merge_coefficients([1, 0, 0], beta), expected, atol=5e-5)


def test_extrapolation_alpha():
    mu = [0.3, 0.7]
    lam = merge_coefficients(mu, 0.6)
    np.testing.assert_allclose(merge_coefficients(mu, 0.6, alpha=0.3), 1.3 * lam)
    # Eq. 9: θ_sft + Σ c_i (θ_i − θ_sft) == (1 + α) θ̂ − α θ_sft with θ̂ = Σ λ_i θ_i
    rng = np.random.default_rng(0)
    thetas, sft = rng.normal(size=(2, 5)), rng.normal(size=5)
    c = merge_coefficients(mu, 0.6, alpha=0.3)
    np.testing.assert_allclose(sft + c @ (thetas - sft), 1.3 * (lam @ thetas) - 0.3 * sft)


@pytest.mark.parametrize("alpha", [-0.1, float("nan"), float("inf"), "0.1", None])
def test_alpha_rejected(alpha):
    with pytest.raises(ValueError, match="alpha must be"):
        merge_coefficients([0.5, 0.5], 0.7, alpha=alpha)


def test_merge_rejects_bad_mu_and_beta():
    with pytest.raises(ValueError, match="sums to"):
        merge_coefficients([0.5, 0.6], 0.7)
    with pytest.raises(ValueError, match=r"\(0.5, 1\]"):
        merge_coefficients([0.5, 0.5], 0.5)


def test_per_objective_extrapolation():
    mu, beta = np.array([0.3, 0.7]), 0.7
    a = np.array([0.2, 0.5])
    k = 1 / (1 - a)
    c = merge_coefficients_per_objective(mu, beta, a)
    np.testing.assert_allclose(circulant_matrix(2, beta) @ c, k * mu)  # λ_ext = B⁻¹(k ⊙ μ)
    assert 1 - c.sum() == pytest.approx(np.sum(mu * (1 - k)))  # coefficient left on θ_sft
    # one a for all objectives == Eq. 9 with α = a / (1 − a)
    np.testing.assert_allclose(merge_coefficients_per_objective(mu, beta, 0.2),
                               merge_coefficients(mu, beta, alpha=0.25), atol=1e-12)
    np.testing.assert_allclose(merge_coefficients_per_objective(mu, beta), merge_coefficients(mu, beta))
    for bad in (1.0, -0.1, [0.1, 0.2, 0.3]):
        with pytest.raises(ValueError, match="a must"):
            merge_coefficients_per_objective(mu, beta, bad)


# ---------------------------------------------------------------- Example 1 (§6.1)


def r_toy(t):
    x, y = t
    return np.array([-(x - 1) ** 2 - (y - 1) ** 2, -(x - 3) ** 2 - 4 * (y + 1) ** 2])


def argmax_toy(w):
    """argmax_θ w_1 r_1 + w_2 r_2 (closed form, §6.1)."""
    a, b = w
    return np.array([(a + 3 * b) / (a + b), (a - 4 * b) / (a + 4 * b)])


# μ_1 | θ_BS | g(RS) | g(BS) | g(θ*)   (Bone Soup §2.2 Example 1)
EXAMPLE1 = [
    (0.0, (3.0, -1.2338), 0.0000, -0.2186, 0.0000),
    (0.1, (2.8, -1.1039), -0.8280, -0.8415, -0.7492),
    (0.2, (2.6, -0.9740), -1.6640, -1.4215, -1.3929),
    (0.3, (2.4, -0.8442), -2.4360, -1.9283, -1.9239),
    (0.4, (2.2, -0.7143), -3.0720, -2.3314, -2.3314),
    (0.5, (2.0, -0.5844), -3.5000, -2.6006, -2.6000),
    (0.6, (1.8, -0.4545), -3.6480, -2.7055, -2.7055),
    (0.7, (1.6, -0.3247), -3.4440, -2.6156, -2.6084),
    (0.8, (1.4, -0.1948), -2.8160, -2.3007, -2.2400),
    (0.9, (1.2, -0.0649), -1.6920, -1.7304, -1.4677),
    (1.0, (1.0, 0.0649), 0.0000, -0.8743, 0.0000),
]


def test_example1_closed_form_argmax_is_stationary():
    for w in [(1, 0), (0, 1), (0.4, 0.6), (0.3, 0.7)]:
        x, y = argmax_toy(w)
        grad = w[0] * np.array([-2 * (x - 1), -2 * (y - 1)]) + w[1] * np.array([-2 * (x - 3), -8 * (y + 1)])
        np.testing.assert_allclose(grad, 0, atol=1e-12)


def test_example1_table():
    specialists = np.array([argmax_toy(w) for w in backbone_weights(2)])
    bones = np.array([argmax_toy(w) for w in backbone_weights(2, 0.6)])
    np.testing.assert_allclose(specialists, [[1, 1], [3, -1]])
    np.testing.assert_allclose(bones, [[1.8, -5 / 11], [2.2, -5 / 7]])  # w_1 = (0.6, 0.4), w_2 = (0.4, 0.6)
    bs_better = []
    for mu1, theta_bs, g_rs, g_bs, g_star in EXAMPLE1:
        mu = np.array([mu1, 1 - mu1])
        t_rs = merge_coefficients(mu) @ specialists
        t_bs = merge_coefficients(mu, 0.6) @ bones
        np.testing.assert_allclose(t_bs, theta_bs, atol=5e-5)
        np.testing.assert_allclose([mu @ r_toy(t_rs), mu @ r_toy(t_bs), mu @ r_toy(argmax_toy(mu))],
                                   [g_rs, g_bs, g_star], atol=5e-5)
        bs_better.append(mu @ r_toy(t_bs) > mu @ r_toy(t_rs))
    assert bs_better == [False, False] + [True] * 7 + [False, False]  # BS wins for μ_1 ∈ [0.2, 0.8]
    np.testing.assert_allclose(merge_coefficients([0.5, 0.5], 0.6) @ bones, [2, -0.58442], atol=5e-6)
    # μ equal to a column of B: λ is one-hot and BS is exact
    np.testing.assert_allclose(merge_coefficients([0.4, 0.6], 0.6), [0, 1], atol=1e-12)
    np.testing.assert_allclose(merge_coefficients([0.4, 0.6], 0.6) @ bones, argmax_toy([0.4, 0.6]))


# ---------------------------------------------------------------- Theorem 1 (§6.2)


def argmax_iso(w, k, thetas):
    """argmax of Σ_i w_i (c_i − k_i‖θ − θ_i‖²) = Σ w_i k_i θ_i / Σ w_i k_i."""
    wk = np.asarray(w) * np.asarray(k)
    return wk @ thetas / wk.sum()


def err_direct(beta, mu1, k, thetas):
    """E(β, μ) = ‖θ̄^bone − θ*‖² via the library's B and λ (β = 1 is RS)."""
    mu = np.array([mu1, 1 - mu1])
    bones = np.array([argmax_iso(w, k, thetas) for w in backbone_weights(2, beta)])
    return np.sum((merge_coefficients(mu, beta) @ bones - argmax_iso(mu, k, thetas)) ** 2)


def err_closed(beta, mu, k, thetas):
    k1, k2 = k
    d2 = np.sum((thetas[0] - thetas[1]) ** 2)
    num = k1 * k2 * (k1 - k2) * (beta - mu) * (beta + mu - 1)
    den = (mu * k1 + (1 - mu) * k2) * (beta * k1 + (1 - beta) * k2) * ((1 - beta) * k1 + beta * k2)
    return (num / den) ** 2 * d2


def err_rs_closed(mu, k, thetas):
    k1, k2 = k
    return ((k1 - k2) * (1 - mu) * mu / (mu * k1 + (1 - mu) * k2)) ** 2 * np.sum((thetas[0] - thetas[1]) ** 2)


def interval(beta):
    s = np.sqrt(2 * beta**2 - 2 * beta + 1)
    return (1 - s) / 2, (1 + s) / 2


K, THETAS = (1.0, 3.0), np.array([[0.0, 0.0], [1.0, 0.0]])


def test_theorem1_closed_forms():
    for beta, mu in itertools.product((0.6, 0.7, 0.8), np.linspace(0, 1, 11)):
        assert err_direct(beta, mu, K, THETAS) == pytest.approx(err_closed(beta, mu, K, THETAS), abs=1e-12)
        assert err_direct(1.0, mu, K, THETAS) == pytest.approx(err_rs_closed(mu, K, THETAS), abs=1e-12)


def test_theorem1_interval_table():
    for beta, (lo, hi), length in [(0.6, (0.1394, 0.8606), 0.7211), (0.7, (0.1192, 0.8808), 0.7616),
                                   (0.8, (0.0877, 0.9123), 0.8246)]:
        got = interval(beta)
        np.testing.assert_allclose(got, (lo, hi), atol=5e-5)
        assert got[1] - got[0] == pytest.approx(length, abs=5e-5)


def test_theorem1_sample_values_beta07():
    table = [(0.0, 0.011963, 0.0), (0.1, 0.004484, 0.004133), (0.2, 0.000903, 0.015148), (0.3, 0.0, 0.030625),
             (0.5, 0.000977, 0.0625), (0.7, 0.0, 0.068906), (0.9, 0.024414, 0.0225), (1.0, 0.107666, 0.0)]
    for mu, e_bone, e_rs in table:
        assert err_direct(0.7, mu, K, THETAS) == pytest.approx(e_bone, abs=5e-7)
        assert err_direct(1.0, mu, K, THETAS) == pytest.approx(e_rs, abs=5e-7)
    assert err_direct(0.8, 0.1, K, THETAS) == pytest.approx(0.001698, abs=5e-7)
    assert err_direct(0.8, 0.1, K, THETAS) < err_direct(1.0, 0.1, K, THETAS)


def test_theorem1_random_instances():
    rng = np.random.default_rng(0)
    for _ in range(300):
        beta = rng.uniform(0.51, 0.99)
        k = rng.uniform(0.1, 5.0, size=2)
        thetas = rng.normal(size=(2, 4))
        lo, hi = interval(beta)
        for mu in rng.uniform(lo, hi, size=5):
            assert err_direct(beta, mu, k, thetas) < err_direct(1.0, mu, k, thetas)
        # exact at μ = β and μ = 1 − β
        tol = 1e-12 * (1 + np.sum(thetas**2))
        assert err_direct(beta, beta, k, thetas) == pytest.approx(0.0, abs=tol)
        assert err_direct(beta, 1 - beta, k, thetas) == pytest.approx(0.0, abs=tol)
