"""Front metrics for controllable multi-objective generation (all objectives are MAXIMISED).

A front is `points` [N, n] with `preferences` [N, n]: points[k] is the mean reward vector obtained with
preference preferences[k]. Definitions follow Bone Soups A.5 (Eqs. 10-14, docs/metrics.md) and
MOC §3 / Appendix I (Eqs. 24-25), with the typos resolved as docs/metrics.md says.
"""

from __future__ import annotations

import math

import moocore
import numpy as np
import scipy.stats
from numpy.typing import ArrayLike

METRIC_KEYS = (
    "hypervolume", "inner_product", "controllability", "front_length",
    "sparsity", "spacing", "kendall_tau", "kendall_p", "diversity",
)


def _as_points(points: ArrayLike, name: str = "points") -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] == 0:
        raise ValueError(f"{name} must have shape [N, n_objectives], got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} contain NaN or inf")
    return p


def _as_ref(ref: ArrayLike, n: int, name: str = "ref") -> np.ndarray:
    r = np.asarray(ref, dtype=np.float64)
    if r.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one value per objective), got {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"{name} contains NaN or inf: {r.tolist()}")
    return r


def _as_front(points: ArrayLike, preferences: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, mu = _as_points(points), _as_points(preferences, "preferences")
    if p.shape != mu.shape:
        raise ValueError(f"points {p.shape} and preferences {mu.shape} must have the same shape [N, n]")
    if len(p) == 0:
        raise ValueError("the front is empty: points and preferences need at least one row")
    return p, mu


def hypervolume(points: ArrayLike, ref: ArrayLike) -> float:
    """HV (Bone Soups Eq. 11) for maximisation: volume of ∪_k [ref, points[k]], via moocore on −points.

    The reference point is always explicit (the papers do not publish theirs). Points that do not strictly
    dominate `ref` (any coordinate ≤ ref) contribute nothing; an empty front has HV 0.
    """
    p = _as_points(points)
    r = _as_ref(ref, p.shape[1])
    return float(moocore.hypervolume(-p, ref=-r)) if len(p) else 0.0


def pareto_mask(points: ArrayLike) -> np.ndarray:
    """Boolean [N]: True where no other point strictly dominates (≥ everywhere, > somewhere; maximisation).

    Duplicated points do not dominate each other, so both are kept.
    """
    p = _as_points(points)
    ge = np.all(p[:, None, :] >= p[None, :, :], axis=-1)  # ge[j, i]: p_j ≥ p_i everywhere
    gt = np.any(p[:, None, :] > p[None, :, :], axis=-1)
    return ~np.any(ge & gt, axis=0)


def inner_product(points: ArrayLike, preferences: ArrayLike) -> float:
    """IP (Bone Soups Eq. 12) averaged over the front: (1/N) Σ_k μ_kᵀ r_k (docs/metrics.md)."""
    p, mu = _as_front(points, preferences)
    return float(np.mean(np.sum(p * mu, axis=1)))


def controllability(points: ArrayLike, preferences: ArrayLike) -> float:
    """Bone Soups Definition 1, Eq. 10, over ordered pairs i ≠ j:

        C = 1/(N(N−1)) Σ_{i≠j} 1[ ∧_k sign(μ_{i,k} − μ_{j,k}) = sign(r_k(S_i) − r_k(S_j)) ].

    Ties (undefined in the paper, docs/metrics.md): objectives k with μ_{i,k} = μ_{j,k} are skipped, and
    pairs with identical μ are left out of numerator and denominator. On distinct 2-objective preferences
    this is Eq. 10 verbatim. NaN when fewer than two distinct preferences.
    """
    p, mu = _as_front(points, preferences)
    dmu = np.sign(mu[:, None, :] - mu[None, :, :])
    dr = np.sign(p[:, None, :] - p[None, :, :])
    ok = np.all((dmu == 0) | (dmu == dr), axis=-1)
    counted = np.any(dmu != 0, axis=-1)  # excludes i = j and duplicated preferences
    return float(ok[counted].mean()) if counted.any() else math.nan


def _preference_order(preferences: np.ndarray) -> np.ndarray:
    """Row order sorting preferences lexicographically (first coordinate slowest, as preference_grid)."""
    return np.lexsort(preferences.T[::-1])


def sparsity(points: ArrayLike, preferences: ArrayLike) -> float:
    """Sparsity (Bone Soups Eq. 13 with its missing Σ and n−1 → N−1 fixed, docs/metrics.md):

        Sp = 1/(N−1) Σ_{i=2}^{N} ‖r_i − r_{i−1}‖²   over points ordered by preference (lexicographic μ).

    NaN when N < 2.
    """
    p, mu = _as_front(points, preferences)
    if len(p) < 2:
        return math.nan
    p = p[_preference_order(mu)]
    return float(np.mean(np.sum(np.diff(p, axis=0) ** 2, axis=1)))


def _pairwise_distances(p: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum((p[:, None, :] - p[None, :, :]) ** 2, axis=-1))


def spacing(points: ArrayLike) -> float:
    """Spacing (Bone Soups Eq. 14, typo p_i → d_i fixed, docs/metrics.md):

        S = sqrt( (1/N) Σ_i (d_i − d̄)² ),  d_i = min_{j≠i} ‖r_i − r_j‖₂,  d̄ = (1/N) Σ_i d_i.

    Euclidean distance and 1/N as in the paper (Schott's original uses L1 and 1/(N−1)). NaN when N < 2.
    """
    p = _as_points(points)
    if len(p) < 2:
        return math.nan
    dist = _pairwise_distances(p)
    np.fill_diagonal(dist, np.inf)
    d = dist.min(axis=1)
    return float(np.sqrt(np.mean((d - d.mean()) ** 2)))


def diversity(points: ArrayLike) -> float:
    """Mean pairwise distance (MOC §3.3): MPD = 2/(N(N−1)) Σ_{i<j} ‖r_i − r_j‖₂. NaN when N < 2."""
    p = _as_points(points)
    n = len(p)
    if n < 2:
        return math.nan
    return float(_pairwise_distances(p)[np.triu_indices(n, k=1)].mean())


def kendall_tau(points: ArrayLike, preferences: ArrayLike, projection_ref: ArrayLike) -> tuple[float, float]:
    """MOC controllability (Appendix I, Eqs. 24-25, Listing 1): (τ, p-value), two objectives only.

    Predicted order (Eq. 24): the angle of r − ref from the +r2 axis, ref = `projection_ref` (MOC: (−2, −2)),
    s = π/2 − arctan((r2 − ref2)/(r1 − ref1)), computed as arctan2(r1 − ref1, r2 − ref2): equal to Eq. 24
    wherever r1 > ref1 (the usual case) and continuous across r1 = ref1, where Eq. 24 divides by zero and
    jumps by π (arctan2's only cut is the ray r1 = ref1, r2 < ref2). Ground truth: μ_1 = preferences[:, 0],
    the weight on r1. Then, as in Listing 1, ``tau, p = scipy.stats.kendalltau(ground_truth, projection)``:
    Kendall's τ-b, τ = (N_c − N_d) / sqrt((N_0 − T_μ)(N_0 − T_s)), N_0 = N(N−1)/2, T = tied pairs (Eq. 25,
    (N_c − N_d)/N_0, when there are no ties), and scipy's default two-sided p-value for "no association"
    (exact permutation distribution for small N without ties, else the normal approximation): 2/N! for a
    perfect order, 5.0e-8 at N = 11.

    (NaN, NaN) when n_objectives ≠ 2, N < 2, or either sequence is constant.
    """
    p, mu = _as_front(points, preferences)
    if p.shape[1] != 2 or len(p) < 2:
        return math.nan, math.nan
    r = _as_ref(projection_ref, 2, "projection_ref")
    ground_truth = mu[:, 0]
    projection = np.arctan2(p[:, 0] - r[0], p[:, 1] - r[1])
    if np.ptp(ground_truth) == 0 or np.ptp(projection) == 0:
        return math.nan, math.nan
    tau, p_value = scipy.stats.kendalltau(ground_truth, projection)
    return float(tau), float(p_value)


def front_metrics(
    points: ArrayLike, preferences: ArrayLike, ref: ArrayLike, projection_ref: ArrayLike | None = None
) -> dict[str, float]:
    """All front metrics as {key: float} for METRIC_KEYS; see each function for its formula.

    hypervolume (Eq. 11, ref `ref`), inner_product (Eq. 12, mean over the front), controllability (Eq. 10),
    front_length (number of strictly non-dominated points, "length of front"), sparsity (Eq. 13),
    spacing (Eq. 14), kendall_tau and kendall_p (MOC Eqs. 24-25 / Listing 1: τ-b and its p-value; angle
    measured around `projection_ref`, default `ref`; MOC itself used (−2, −2)), diversity (MOC mean pairwise
    distance). Undefined values are NaN.
    """
    p, mu = _as_front(points, preferences)
    r = _as_ref(ref, p.shape[1])
    tau, tau_p = kendall_tau(p, mu, r if projection_ref is None else projection_ref)
    return {
        "hypervolume": hypervolume(p, r),
        "inner_product": inner_product(p, mu),
        "controllability": controllability(p, mu),
        "front_length": int(pareto_mask(p).sum()),
        "sparsity": sparsity(p, mu),
        "spacing": spacing(p),
        "kendall_tau": tau,
        "kendall_p": tau_p,
        "diversity": diversity(p),
    }
