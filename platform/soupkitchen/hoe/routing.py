"""Preference routing of HoE (Multi-objective LLM alignment with Hierarchical Experts, Sec. 3.3-3.4).

M experts, each trained at its own preference λ_j ∈ Δ_N (Λ = [λ_1; ...; λ_M], shape [M, N]): LoRA experts
(one task vector each) and router experts (a learned router over N LoRA experts, trained at λ_j).
A user preference λ is served, parameter-free, by a convex combination of its n nearest experts:

    S   = the n experts nearest λ in Euclidean distance ||λ_j − λ||                    (Eq. 9)
    ω_r = argmin_{ω ≥ 0, Σω = 1, supp ω ⊆ S} ||Λᵀω − λ||²                              (Eq. 10)
    g   = Σ_{LoRA j} ω_j e_slot(j) + Σ_{router k} ω_k R_k(x)                            (Eq. 11)

g are the per-layer weights over the L LoRA experts (a LoRA expert is a constant router emitting e_slot(j)).
Everything here is numpy; ``lora_weights`` is the reference for the torch layer.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import nnls

from soupkitchen.preferences import SUM_TOL, validate_preference

HULL_TOL = 1e-9  # ||Λ_Sᵀω − λ|| at or below this: λ lies in the hull of S
SUM_WEIGHT = 1e3  # weight of the Σω = 1 row appended to the NNLS system
NOISE = 1e-12  # NNLS weights below this are zeroed before renormalising
SUBSET_SEARCH_MAX_EXPERTS = 16  # the outside-hull subset search runs only for M ≤ this


def _check(preference: ArrayLike, expert_preferences: ArrayLike, n: int | None):
    """(λ [N], Λ [M, N], n clipped to M), or a ValueError naming what is wrong."""
    try:
        E = np.array(expert_preferences, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"expert_preferences must be an [M, N] array of numbers, got {expert_preferences!r}"
        ) from e
    if E.ndim != 2 or E.shape[0] < 1 or E.shape[1] < 1:
        raise ValueError(
            f"expert_preferences must be a 2-D array [M experts, N objectives], M >= 1, got shape {E.shape}"
        )
    lam = validate_preference(preference, E.shape[1])
    for j, row in enumerate(E):
        if not np.all(np.isfinite(row)):
            raise ValueError(f"expert_preferences row {j} contains NaN or inf: {row.tolist()}")
        if np.any(row < 0):
            raise ValueError(f"expert_preferences row {j} has a negative entry: {row.tolist()}")
        if abs(row.sum() - 1.0) > SUM_TOL:
            raise ValueError(f"expert_preferences row {j} sums to {row.sum():.6g}, not 1: {row.tolist()}")
    if n is None:
        n = lam.size
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1 (the number of experts to route over), got {n!r}")
    return lam, E, min(int(n), E.shape[0])


def _distances(lam: np.ndarray, E: np.ndarray) -> np.ndarray:
    """||λ_j − λ|| rounded to 12 decimals, so float noise does not decide ties."""
    return np.round(np.linalg.norm(E - lam, axis=1), 12)


def _solve(E_S: np.ndarray, lam: np.ndarray) -> tuple[np.ndarray, float]:
    """Eq. 10 on the experts E_S [k, N]: (ω [k] on the simplex, residual ||E_Sᵀω − λ||).

    NNLS on [E_Sᵀ; w·1ᵀ] ω = [λ; w] (w = SUM_WEIGHT enforces Σω = 1), noise < 1e-12 zeroed, renormalised.
    """
    A = np.vstack([E_S.T, np.full((1, len(E_S)), SUM_WEIGHT)])
    w, _ = nnls(A, np.append(lam, SUM_WEIGHT))
    w[w < NOISE] = 0.0
    w /= w.sum()
    return w, float(np.linalg.norm(E_S.T @ w - lam))


def nearest(preference: ArrayLike, expert_preferences: ArrayLike, n: int) -> np.ndarray:
    """Indices of the n experts nearest λ by Euclidean distance (Eq. 9), sorted by (distance, index).

    Distances are rounded to 12 decimals, so ties go to the lower index. n larger than M is clipped to M.
    """
    lam, E, n = _check(preference, expert_preferences, n)
    return np.argsort(_distances(lam, E), kind="stable")[:n]


def preference_routing(
    preference: ArrayLike, expert_preferences: ArrayLike, n: int | None = None
) -> np.ndarray:
    """ω_r [M] of Eq. 10: ω ≥ 0, Σω = 1, at most n non-zero (n defaults to N, the number of objectives).

    S = the n nearest experts (Eq. 9, ties to the lower index); ω = argmin ||Λ_Sᵀω − λ|| over the simplex,
    by NNLS with a heavily weighted Σω = 1 row. λ equal to an expert's own preference gives one-hot there.
    Fallback, when λ is outside the hull of S (residual > 1e-9): if λ is in the hull of all M experts and
    M ≤ 16, subsets of at most n experts are tried in order of (Σ of their distances to λ, then their
    sorted indices, lexicographically), and the first whose hull holds λ is used. Otherwise (the experts do
    not cover λ, n is too small to reach it, or M > 16) ω stays the projection on S: the convex combination
    of the n nearest closest to λ. Deterministic: equal inputs give equal ω.
    """
    lam, E, n = _check(preference, expert_preferences, n)
    d = _distances(lam, E)
    S = np.argsort(d, kind="stable")[:n]
    omega = np.zeros(len(E))
    if d[S[0]] == 0.0:  # λ is an expert's own preference
        omega[S[0]] = 1.0
        return omega
    w, residual = _solve(E[S], lam)
    # Carathéodory on the (N−1)-dim simplex: λ ∈ hull(all) ⇒ λ ∈ hull of some ≤ N experts.
    if residual > HULL_TOL and len(E) <= SUBSET_SEARCH_MAX_EXPERTS and _solve(E, lam)[1] <= HULL_TOL:
        subsets = [c for k in range(1, n + 1) for c in itertools.combinations(range(len(E)), k)]
        subsets.sort(key=lambda c: (round(float(d[list(c)].sum()), 12), c))
        for c in subsets:
            w_c, r_c = _solve(E[list(c)], lam)
            if r_c <= HULL_TOL:
                S, w = np.array(c), w_c
                break
    omega[S] = w
    return omega


def lora_weights(
    omega: ArrayLike,
    lora_slot: ArrayLike,
    votes: Mapping[int, Sequence[int]],
    router_outputs: Mapping[int, ArrayLike],
) -> np.ndarray:
    """Weights g [L] over the L LoRA experts (Eq. 11), a selected LoRA expert read as a router emitting e_j:

        g = Σ_{j: slot(j) ≥ 0} ω_j e_slot(j) + Σ_{k: slot(k) = −1} ω_k scatter(votes[k], router_outputs[k])

    omega [M] is ω_r over all experts; lora_slot [M] gives a LoRA expert's position among the L LoRA experts
    (L = max(lora_slot) + 1) or −1 for a router; votes[k] are the LoRA slots router k votes over and
    router_outputs[k] its probabilities over them. Routers with ω_k = 0 need no entry.
    """
    w = np.asarray(omega, dtype=np.float64)
    slots = np.asarray(lora_slot)
    if w.ndim != 1 or not np.all(np.isfinite(w)):
        raise ValueError(f"omega must be a finite 1-D vector, got {w.tolist()}")
    if slots.shape != w.shape or not np.issubdtype(slots.dtype, np.integer):
        raise ValueError(f"lora_slot must be {w.size} ints (one per expert), got {slots.tolist()}")
    lora = slots >= 0
    if np.any(slots < -1) or not lora.any() or len(set(slots[lora].tolist())) != lora.sum():
        raise ValueError(
            f"lora_slot must hold distinct LoRA positions >= 0 (at least one) and -1 for routers, got "
            f"{slots.tolist()}"
        )
    g = np.zeros(int(slots.max()) + 1)
    np.add.at(g, slots[lora], w[lora])
    for k in np.flatnonzero(~lora).tolist():
        if w[k] == 0:
            continue
        if k not in votes or k not in router_outputs:
            raise ValueError(f"router expert {k} has weight {w[k]} but no votes / router_outputs entry")
        v, p = np.asarray(votes[k]), np.asarray(router_outputs[k], dtype=np.float64)
        if v.ndim != 1 or not np.issubdtype(v.dtype, np.integer) or np.any(v < 0) or np.any(v >= g.size):
            raise ValueError(f"votes[{k}] must be LoRA slots in [0, {g.size}), got {v.tolist()}")
        if p.shape != v.shape or not np.all(np.isfinite(p)):
            raise ValueError(f"router_outputs[{k}] must be {v.size} finite probabilities, got {p.tolist()}")
        np.add.at(g, v, w[k] * p)
    return g
