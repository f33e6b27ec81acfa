"""Preferences μ on the simplex and the Bone Soup / Rewarded Soups merging algebra.

Notation of Bone Soups (Xie et al. 2025, docs/methods/bone_soup.md): n objectives, a preference μ ∈ Δ_n,
n backbones θ_i trained on h_i = w_iᵀ r (Eq. 6), B = [w_1, ..., w_n] the symmetric circulant of Eq. 8,
merging coefficients λ = B⁻¹μ (§3.3) and extrapolation away from θ_sft with α (Eq. 9).

Everything here returns the *per-row adapter coefficients* c of docs/architecture.md: the merged model is
θ = θ_sft + Σ_i c_i (θ_i − θ_sft). Negative c_i are legal (extrapolation) and are never clipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

SUM_TOL = 1e-6  # |Σμ − 1| allowed by validate_preference


def _check_n(n: int, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be an int >= 1 (the number of objectives), got {n!r}")
    return int(n)


def _compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """All tuples of `parts` non-negative ints summing to `total`, in lexicographic order."""
    if parts == 1:
        yield (total,)
        return
    for first in range(total + 1):
        for rest in _compositions(total - first, parts - 1):
            yield (first, *rest)


def preference_grid(n: int, step: float = 0.1) -> np.ndarray:
    """All points of the simplex Δ_n on a grid of spacing `step`, shape [K, n], K = C(1/step + n − 1, n − 1).

    Bone Soups A.4.1: 11 points for n=2, C(12, 2) = 66 for n=3 at step 0.1. Rows are in lexicographic
    ascending order, so for n=2 the first coordinate rises: (0, 1), (0.1, 0.9), ..., (1, 0). Values are
    k/m rounded to 12 decimals (m = 1/step), so 0.3 is the float 0.3, and rows sum to 1 within 1e-12.
    """
    n = _check_n(n)
    if not isinstance(step, (int, float, np.floating)) or not math.isfinite(step) or not 0 < step <= 1:
        raise ValueError(f"step must be a finite number in (0, 1], got {step!r}")
    m = round(1 / step)
    if abs(1 / step - m) > 1e-9:
        raise ValueError(f"step must divide 1 (1/step an integer), got step={step!r} (1/step = {1 / step})")
    grid = np.array(list(_compositions(m, n)), dtype=np.float64) / m
    return np.round(grid, 12)


def _as_vector(x, what: str) -> np.ndarray:
    """``x`` as a non-empty float64 1-D array, or a ValueError that names ``what``."""
    try:
        arr = np.array(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be a sequence of numbers, got {x!r}") from e
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D vector, got shape {arr.shape}")
    return arr


def validate_preference(mu: ArrayLike, n: int | None = None) -> np.ndarray:
    """Return μ as a float64 1-D array after checking μ ∈ Δ_n: finite, μ_i ≥ 0, |Σμ − 1| ≤ 1e-6.

    Raises ValueError naming the problem and the fix. `n`, when given, is the number of objectives.
    """
    arr = _as_vector(mu, "preference mu")
    if n is not None and arr.size != _check_n(n):
        raise ValueError(
            f"preference mu has {arr.size} entries but there are {n} objectives; "
            "pass one weight per objective"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"preference mu contains NaN or inf: {arr.tolist()}")
    if np.any(arr < 0):
        i = int(np.argmin(arr))
        raise ValueError(
            f"preference mu has a negative entry ({arr[i]} at index {i}); weights must be >= 0 "
            "(use normalize_preference for raw non-negative weights)"
        )
    if abs(arr.sum() - 1.0) > SUM_TOL:
        raise ValueError(
            f"preference mu sums to {arr.sum():.6g}, not 1; divide it by its sum "
            "(normalize_preference does this)"
        )
    return arr


def normalize_preference(
    weights: Sequence[float] | Mapping[str, float] | np.ndarray, names: Sequence[str] | None = None
) -> np.ndarray:
    """Turn non-negative weights into μ = w / Σw on the simplex.

    `weights` is a sequence (one weight per objective, in `names` order when given) or a mapping
    name → weight; a mapping needs `names` (the objective order) and objectives missing from it get 0.
    """
    if isinstance(weights, Mapping):
        if names is None:
            raise ValueError("names (the objective order) are required when weights is a mapping")
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ValueError(f"unknown objective name(s) {unknown}; known objectives are {list(names)}")
        weights = [weights.get(name, 0.0) for name in names]
    w = _as_vector(weights, "preference weights")
    if names is not None and w.size != len(names):
        raise ValueError(f"got {w.size} preference weights but there are {len(names)} objectives: {names}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"preference weights contain NaN or inf: {w.tolist()}")
    if np.any(w < 0):
        raise ValueError(f"preference weights must be >= 0, got {w.tolist()}")
    if w.sum() <= 0:
        raise ValueError("preference weights are all zero; give at least one objective a positive weight")
    return w / w.sum()


def circulant_matrix(n: int, beta: float) -> np.ndarray:
    """Bone Soup's symmetric circulant B (Eq. 8): β on the diagonal, (1 − β)/(n − 1) elsewhere.

    Columns are the backbone reward weights w_i; B is column-stochastic. β must lie in (1/n, 1]:
    β > 1/n keeps each w_i dominated by its own objective and B invertible (Rules 1-2), β = 1 is B = I
    (Rewarded Soups). n = 1 is the trivial soup B = [[1.0]], which requires β = 1.
    """
    n = _check_n(n)
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.floating)) or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number, got {beta!r}")
    if n == 1:
        if beta != 1:
            raise ValueError(f"beta must be 1 for n=1 objective (B = [[1.0]]), got {beta}")
        return np.ones((1, 1))
    if not 1 / n < beta <= 1:
        raise ValueError(f"beta must be in (1/n, 1] = ({1 / n:.4g}, 1] for n={n} objectives, got {beta}")
    B = np.full((n, n), (1 - beta) / (n - 1))
    np.fill_diagonal(B, beta)
    return B


def backbone_weights(n: int, beta: float | None = None) -> np.ndarray:
    """Reward weights w_i for backbone i (Eq. 6, h_i = w_iᵀ r), shape [n, n] with row i = w_i.

    These are the columns of B (Eq. 8); β = None gives Rewarded Soups' one-hot w_i = e_i.
    """
    n = _check_n(n)
    return np.eye(n) if beta is None else circulant_matrix(n, beta).T.copy()


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)):
        raise ValueError(f"alpha must be a number >= 0, got {alpha!r}")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be finite and >= 0 (extrapolation strength, Eq. 9), got {alpha}")
    return float(alpha)


def _solve(target: np.ndarray, beta: float | None) -> np.ndarray:
    """λ with Bλ = target (B = I when β is None)."""
    if beta is None:
        return target.copy()
    return np.linalg.solve(circulant_matrix(target.size, beta), target)


def merge_coefficients(mu: ArrayLike, beta: float | None = None, alpha: float = 0.0) -> np.ndarray:
    """Backbone coefficients c = (1 + α) B⁻¹μ for preference μ.

    Bone Soups §3.3: μ = Bλ ⇒ λ = B⁻¹μ, merged model θ̂ = Σ_i λ_i θ_i (Eq. 1); Σλ = 1 because B is
    column-stochastic. For the circulant B of Eq. 8 the solution is, in closed form,
        λ_i = ((n − 1) μ_i − (1 − β)) / (nβ − 1),
    negative whenever μ_i < (1 − β)/(n − 1): negative λ are kept as-is (A.6), never clipped or renormalised.
    β = None is Rewarded Soups (B = I, λ = μ). Eq. 9 extrapolates from θ_sft: θ̂ᵇ = (1 + α)θ̂ − αθ_sft
    = θ_sft + Σ_i (1 + α) λ_i (θ_i − θ_sft), so the returned c sums to 1 + α and θ_sft gets −α.
    """
    return Preference.of(mu).coefficients(beta, _check_alpha(alpha))


@dataclass(frozen=True)
class Preference:
    """A preference μ ∈ Δ_n validated once, where it entered (``Preference.of``; the HTTP protocol model): the
    layers it travels through (decoding plans, the merge coefficients) take it as is and only assert."""

    weights: tuple[float, ...]

    def __post_init__(self):
        w = self.weights
        assert w and all(math.isfinite(x) and x >= 0 for x in w) and abs(sum(w) - 1.0) <= SUM_TOL, w

    @classmethod
    def of(cls, mu: ArrayLike | Preference, n: int | None = None) -> Preference:
        """μ checked by ``validate_preference`` (ValueError naming the problem); a Preference as it is."""
        if isinstance(mu, Preference):
            if n is not None and len(mu) != n:
                raise ValueError(f"preference mu has {len(mu)} entries but there are {n} objectives")
            return mu
        return cls(tuple(validate_preference(mu, n).tolist()))

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self) -> Iterator[float]:
        return iter(self.weights)

    @property
    def array(self) -> np.ndarray:
        return np.array(self.weights, dtype=np.float64)

    def coefficients(self, beta: float | None = None, alpha: float = 0.0) -> np.ndarray:
        """c = (1 + α) B(β)⁻¹μ (``merge_coefficients``), α validated where it entered (asserted here)."""
        assert math.isfinite(alpha) and alpha >= 0, alpha
        return (1.0 + alpha) * _solve(self.array, beta)


def merge_coefficients_per_objective(
    mu: ArrayLike, beta: float | None = None, a: float | ArrayLike = 0.0
) -> np.ndarray:
    """Backbone coefficients of the released-code extrapolation: c = B⁻¹(k ⊙ μ), k_j = 1/(1 − a_j).

    The Bone Soups code (docs/methods/bone_soup.md) picks one a_j ∈ [0, 1) per objective j on validation and
    builds θ̂ = θ_sft + Σ_i c_i (θ_i − θ_sft) (θ_sft gets Σ_j μ_j (1 − k_j)). With one a for all objectives
    this is merge_coefficients(μ, β, α) with α = a/(1 − a) (not α = a).
    """
    mu = validate_preference(mu)
    a = np.asarray(a, dtype=np.float64)
    if a.ndim > 1 or a.size not in (1, mu.size):
        raise ValueError(f"a must be a scalar or one value per objective ({mu.size}), got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0) or np.any(a >= 1):
        raise ValueError(f"a must be in [0, 1) (per objective, k = 1/(1 - a)), got {a.tolist()}")
    return _solve(mu / (1.0 - a), beta)
