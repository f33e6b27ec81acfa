"""Confidence intervals by a paired bootstrap over prompts.

Data. Method m has k_m points over n objectives; scores[m][p, j] ∈ ℝⁿ is the mean reward vector over prompt
p's samples at point j (preference preferences[m][j]). All methods share the same P prompts in the same
order. The front is the mean over prompts, points[m] = (1/P) Σ_p scores[m][p].

Replicates. Replicate b draws P prompt indices uniformly with replacement, as counts
c_b ~ Multinomial(P, (1/P, …, 1/P)), and recomputes every method's front on that same resample,

    points_b[m] = (1/P) Σ_p c_b[p] · scores[m][p]        (one [B, P] @ [P, k·n] matmul per method),

then every statistic θ on it: the front metrics (``soupkitchen.metrics``, one shared reference point, and
one shared projection point for Kendall's τ) and the hypervolume ratios ρ = HV(num) / HV(den) (∞ when
HV(den) = 0, as ``evaluation.hypervolume_ratios``). All methods see the same c_b (paired), so prompt
difficulty shared by the methods cancels in their ratios and differences.

Interval. The (1 − a) percentile interval [θ_(a/2), θ_(1−a/2)] of the B replicates, NaN replicates left out
(NaN bounds only when every replicate is NaN). The bounds are order statistics (numpy methods "lower" and
"higher", no interpolation): an infinite ratio replicate gives an infinite bound rather than NaN, and the
interval is never narrower than the interpolated one. Point estimates are the statistics of the full data,
``front_metrics(points[m], preferences[m], ref, projection_ref)``.

Pairing across processes. c_b depends only on (P, samples, seed) (``resample_counts``): trials evaluated
separately on the same P prompts with the same seed draw identical resamples, so their replicates pair
(``paired_difference``, ``winner_separated``).

    res = paired_bootstrap(scores, preferences, ref, samples=1000)
    res.format("bone_soup", "hypervolume")                 # '0.1234 [0.11, 0.137]'
    res.format("bone_soup", "hv_ratio_vs_rewarded_soups")
    pareto_plot(fronts, "front.png", objectives, errors=res.errors())
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from soupkitchen import metrics
from soupkitchen.metrics import METRIC_KEYS, front_metrics

DEFAULT_KEYS = ("hypervolume", "inner_product", "controllability")
BASELINES = ("bone_soup", "rewarded_soups", "morlhf", "sft")  # ratio denominators, in this order

# One metric of one front (p [k, n], μ [k, n], ref [n], projection ref [n]): the terms of ``front_metrics``,
# so a replicate computes only the requested keys.
_METRIC: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]] = {
    "hypervolume": lambda p, mu, ref, proj: metrics.hypervolume(p, ref),
    "inner_product": lambda p, mu, ref, proj: metrics.inner_product(p, mu),
    "controllability": lambda p, mu, ref, proj: metrics.controllability(p, mu),
    "front_length": lambda p, mu, ref, proj: float(metrics.pareto_mask(p).sum()),
    "sparsity": lambda p, mu, ref, proj: metrics.sparsity(p, mu),
    "spacing": lambda p, mu, ref, proj: metrics.spacing(p),
    "kendall_tau": lambda p, mu, ref, proj: metrics.kendall_tau(p, mu, proj)[0],
    "kendall_p": lambda p, mu, ref, proj: metrics.kendall_tau(p, mu, proj)[1],
    "diversity": lambda p, mu, ref, proj: metrics.diversity(p),
}
assert tuple(_METRIC) == METRIC_KEYS
_KENDALL = ("kendall_tau", "kendall_p")  # both from one kendall_tau call per replicate


def _replicates(
    keys: Sequence[str], pts_b: np.ndarray, mu: np.ndarray, ref: np.ndarray, proj: np.ndarray
) -> dict[str, np.ndarray]:
    """{key: [B]} statistics of the replicate fronts pts_b [B, k, n]; τ and its p-value share one call."""
    out = {k: np.array([_METRIC[k](p, mu, ref, proj) for p in pts_b]) for k in keys if k not in _KENDALL}
    if wanted := [k for k in _KENDALL if k in keys]:
        tp = np.array([metrics.kendall_tau(p, mu, proj) for p in pts_b], dtype=np.float64).reshape(-1, 2)
        out |= {k: tp[:, _KENDALL.index(k)] for k in wanted}
    return {k: out[k] for k in keys}


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def resample_counts(prompts: int, samples: int, seed: int = 0) -> np.ndarray:
    """[samples, prompts] ints c_b ~ Multinomial(P, 1/P): how often replicate b draws each prompt.

    A deterministic function of (prompts, samples, seed) (numpy ``default_rng(seed)``), so separate
    processes draw the same resamples.
    """
    if prompts < 1 or samples < 1:
        raise ValueError(f"need at least one prompt and one sample, got prompts={prompts}, samples={samples}")
    return np.random.default_rng(seed).multinomial(prompts, np.full(prompts, 1.0 / prompts), size=samples)


def percentile_interval(reps: ArrayLike, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) over axis 0 of replicates [B, ...]: the a/2 and 1 − a/2 order statistics, a = 1 − confidence.

    NaN replicates are ignored (bounds NaN only where all are NaN); ±inf replicates are ordered as values.
    """
    _check_confidence(confidence)
    r = np.asarray(reps, dtype=np.float64)
    a = 50.0 * (1.0 - confidence)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice → NaN, which is what we want
        return (
            np.nanpercentile(r, a, axis=0, method="lower"),
            np.nanpercentile(r, 100.0 - a, axis=0, method="higher"),
        )


def hv_ratio(num: ArrayLike, den: ArrayLike) -> np.ndarray:
    """HV(num) / HV(den), elementwise; ∞ where HV(den) ≤ 0 (as ``evaluation.hypervolume_ratios``)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast_shapes(num.shape, den.shape), math.inf)
    return np.divide(num, den, out=out, where=den > 0)


def default_ratios(labels: Iterable[str]) -> list[tuple[str, str]]:
    """(num, den) pairs: every label against each baseline of BASELINES present that is listed after it
    (a non-baseline such as bone_soup_a0.3 or mage_i_m against all of them)."""
    labels = list(labels)
    rank = {b: i for i, b in enumerate(BASELINES)}
    return [(m, b) for m in labels for b in BASELINES if b in labels and rank[b] > rank.get(m, -1)]


def format_interval(value: float, lo: float | None = None, hi: float | None = None, digits: int = 4) -> str:
    """``value [lo, hi]`` (``value`` alone when a bound is missing)."""
    if lo is None or hi is None:
        return f"{value:.{digits}g}"
    return f"{value:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]"


@dataclass
class BootstrapResult:
    """Per method label and statistic key (the front metrics and ``hv_ratio_vs_<den>``): the full-data
    estimate, its percentile bounds and its replicates; per point, the bounds of the mean reward vector."""

    prompts: int
    samples: int
    seed: int
    confidence: float
    point: dict[str, dict[str, float]]
    lo: dict[str, dict[str, float]]
    hi: dict[str, dict[str, float]]
    reps: dict[str, dict[str, np.ndarray]]  # [samples] per label and key, on resample_counts(P, ...)
    points: dict[str, np.ndarray]  # [k, n] mean reward vectors of the full data
    point_lo: dict[str, np.ndarray]  # [k, n] percentile bounds of each point's mean reward vector
    point_hi: dict[str, np.ndarray]

    def format(self, label: str, key: str, digits: int = 4) -> str:
        """``value [lo, hi]`` of one statistic."""
        return format_interval(self.point[label][key], self.lo[label][key], self.hi[label][key], digits)

    def errors(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{label: (point_lo, point_hi)}, the ``errors`` argument of ``plotting.pareto_plot``."""
        return {m: (self.point_lo[m], self.point_hi[m]) for m in self.points}

    def row(self, label: str, reps: Sequence[str] = ("hypervolume",)) -> dict[str, float | str]:
        """Flat scalars for a CSV or Tune row: ``key``, ``key_lo``, ``key_hi`` per statistic, and
        ``key_reps`` (a JSON list of the replicates) for each key of ``reps``."""
        out: dict[str, float | str] = {}
        for k, v in self.point[label].items():
            out |= {k: v, f"{k}_lo": float(self.lo[label][k]), f"{k}_hi": float(self.hi[label][k])}
        return out | {f"{k}_reps": json.dumps(self.reps[label][k].tolist()) for k in reps}


def paired_bootstrap(
    scores: Mapping[str, ArrayLike],
    preferences: Mapping[str, ArrayLike],
    ref: ArrayLike,
    *,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    ratios: Iterable[tuple[str, str]] | None = None,
    metric_keys: Sequence[str] = DEFAULT_KEYS,
    projection_ref: ArrayLike | None = None,
) -> BootstrapResult:
    """Paired percentile bootstrap (module docstring) of every method's front metrics and HV ratios.

    ``scores[m]`` [P, k, n] per-prompt mean reward vectors, ``preferences[m]`` [k, n], ``ref`` [n] the shared
    reference point; ``ratios`` (num, den) label pairs (default ``default_ratios``), reported as
    ``hv_ratio_vs_<den>`` of ``num``. ``metric_keys`` from METRIC_KEYS (hypervolume is always included).
    ``projection_ref`` [n] the point Kendall's τ measures angles around (default ``ref``).
    """
    _check_confidence(confidence)
    if set(scores) != set(preferences) or not scores:
        raise ValueError(f"scores {sorted(scores)} and preferences {sorted(preferences)}: different labels")
    keys = list(dict.fromkeys(("hypervolume", *metric_keys)))
    if unknown := [k for k in keys if k not in _METRIC]:
        raise ValueError(f"unknown metric keys {unknown}; choose from {METRIC_KEYS}")
    ratios = default_ratios(scores) if ratios is None else list(ratios)
    if missing := sorted({m for pair in ratios for m in pair} - set(scores)):
        raise ValueError(f"ratios name labels without scores: {missing}")
    s = {m: np.asarray(v, dtype=np.float64) for m, v in scores.items()}
    mus = {m: np.asarray(preferences[m], dtype=np.float64) for m in s}
    for m in s:
        if s[m].ndim != 3 or s[m].shape[1:] != mus[m].shape:
            raise ValueError(f"scores[{m!r}] {s[m].shape} must be [P, k, n] with preferences {mus[m].shape}")
    prompts = {m: v.shape[0] for m, v in s.items()}
    if len(set(prompts.values())) != 1:
        raise ValueError(f"methods need the same prompts (paired), got P = {prompts}")
    P, r = next(iter(prompts.values())), np.asarray(ref, dtype=np.float64)
    proj = r if projection_ref is None else np.asarray(projection_ref, dtype=np.float64)
    w = resample_counts(P, samples, seed) / P  # [B, P] replicate weights

    point, reps, points, point_lo, point_hi = {}, {}, {}, {}, {}
    for m, x in s.items():
        points[m] = x.mean(axis=0)
        full = front_metrics(points[m], mus[m], r, proj)
        point[m] = {k: float(full[k]) for k in keys}
        pts_b = (w @ x.reshape(P, -1)).reshape(samples, *x.shape[1:])  # [B, k, n]
        reps[m] = _replicates(keys, pts_b, mus[m], r, proj)
        point_lo[m], point_hi[m] = percentile_interval(pts_b, confidence)
    for num, den in ratios:
        key = f"hv_ratio_vs_{den}"
        point[num][key] = float(hv_ratio(point[num]["hypervolume"], point[den]["hypervolume"]))
        reps[num][key] = hv_ratio(reps[num]["hypervolume"], reps[den]["hypervolume"])
    bounds = {m: {k: percentile_interval(v, confidence) for k, v in reps[m].items()} for m in s}
    lo = {m: {k: float(b[0]) for k, b in bounds[m].items()} for m in s}
    hi = {m: {k: float(b[1]) for k, b in bounds[m].items()} for m in s}
    return BootstrapResult(P, samples, seed, confidence, point, lo, hi, reps, points, point_lo, point_hi)


def paired_difference(
    a_reps: ArrayLike,
    b_reps: ArrayLike,
    confidence: float = 0.95,
    *,
    a: float | None = None,
    b: float | None = None,
) -> tuple[float, float, float]:
    """(Δ, lo, hi): Δ = a − b and the percentile interval of the paired replicate differences a_b − b_b.

    Both replicate lists must come from the same resamples (same P, samples and seed). Δ is a − b when the
    full-data estimates are given, else the median of the differences.
    """
    ra, rb = np.asarray(a_reps, dtype=np.float64), np.asarray(b_reps, dtype=np.float64)
    if ra.ndim != 1 or ra.shape != rb.shape:
        raise ValueError(f"replicates must be two equally long lists, got shapes {ra.shape}, {rb.shape}")
    d = ra - rb
    lo, hi = percentile_interval(d, confidence)
    diff = a - b if a is not None and b is not None else float(np.nanmedian(d))
    return float(diff), float(lo), float(hi)


@dataclass(frozen=True)
class Separation:
    """Winner vs runner-up: Δ = estimate(winner) − estimate(runner-up) with its paired interval [lo, hi]
    (NaN with a ``note`` saying why when there is none)."""

    winner: str
    runner_up: str
    diff: float
    lo: float
    hi: float
    confidence: float
    note: str = ""

    @property
    def separated(self) -> bool:
        """The interval excludes 0 (False without an interval)."""
        return self.lo > 0 or self.hi < 0

    def describe(self, stat: str = "") -> str:
        """``winner beta=0.7 vs runner-up beta=0.8: ΔHV 0.031 [-0.004, 0.066] — not separated at 95%``."""
        head = f"winner {self.winner} vs runner-up {self.runner_up}: Δ{stat} "
        if self.note:
            return f"{head}{self.diff:.4g} — no interval ({self.note})"
        verdict = "separated" if self.separated else "not separated"
        return f"{head}{format_interval(self.diff, self.lo, self.hi)} — {verdict} at {self.confidence:.0%}"


def winner_separated(
    estimates: Mapping[str, float], reps: Mapping[str, ArrayLike | None], confidence: float = 0.95
) -> Separation:
    """The candidate with the highest estimate (the first on ties) vs the runner-up, by
    ``paired_difference`` of their replicates; no interval when either has none or their lengths differ."""
    if len(estimates) < 2:
        raise ValueError(f"need at least two candidates, got {list(estimates)}")
    (w, a), (r, b) = sorted(estimates.items(), key=lambda kv: -kv[1])[:2]
    ra, rb = reps.get(w), reps.get(r)
    if ra is None or rb is None:
        return Separation(w, r, a - b, math.nan, math.nan, confidence, "no replicates")
    if len(ra) != len(rb):
        return Separation(w, r, a - b, math.nan, math.nan, confidence, f"{len(ra)} vs {len(rb)} replicates")
    return Separation(w, r, *paired_difference(ra, rb, confidence, a=a, b=b), confidence)
