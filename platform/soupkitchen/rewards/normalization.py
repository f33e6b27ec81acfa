"""Per-objective reward normalisation: r̃_j = (r_j − mean_j) / max(std_j, eps).

Each column follows its objective's :class:`~soupkitchen.config.NormalizationConfig`:
``none`` (identity), ``fixed`` (recipe constants) or ``running`` (population mean/std tracked online);
``calibrated`` columns get their constants from the run's reward space (``RewardSpace.normalizer`` turns
them into ``fixed``) and cannot normalise before that.
Running statistics of every column are always tracked (handy for logging) with the parallel-merge form
of Welford's algorithm (Chan et al.), so ``update`` on batches, ``merge`` of several workers' normalisers
and one pass over the concatenated data agree to rounding. Until two samples have been seen a running
column uses std 1. ``state_dict`` holds plain Python numbers (JSON-ready, for checkpoints and manifests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from soupkitchen.config import NormalizationConfig

KINDS = ("none", "calibrated", "running", "fixed")


class RewardNormalizer:
    """Normalises [batch, n_objectives] reward matrices column by column."""

    def __init__(
        self, configs: Sequence[NormalizationConfig], names: Sequence[str] | None = None, eps: float = 1e-6
    ):
        if names is not None and len(names) != len(configs):
            raise ValueError(f"{len(names)} names for {len(configs)} normalisation configs")
        for c in configs:
            if c.kind not in KINDS:
                raise ValueError(f"unknown normalisation kind {c.kind!r}; allowed: {KINDS}")
        self.names = list(names) if names is not None else None
        self.kinds = [c.kind for c in configs]
        self.fixed_mean = np.array([float(c.mean) for c in configs], dtype=np.float64)
        self.fixed_std = np.array([float(c.std) for c in configs], dtype=np.float64)
        self.eps = float(eps)
        self.count = 0
        self.mean = np.zeros(len(configs), dtype=np.float64)
        self.m2 = np.zeros(len(configs), dtype=np.float64)

    @classmethod
    def identity(cls, n: int, names: Sequence[str] | None = None) -> RewardNormalizer:
        return cls([NormalizationConfig() for _ in range(n)], names)

    @property
    def n(self) -> int:
        return len(self.kinds)

    @property
    def var(self) -> np.ndarray:
        """Population variance of everything seen (0 before any data)."""
        return self.m2 / self.count if self.count else np.zeros(self.n)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var)

    def _matrix(self, matrix) -> np.ndarray:
        x = np.asarray(matrix, dtype=np.float64)
        x2 = x.reshape(1, -1) if x.ndim == 1 else x
        if x2.ndim != 2 or x2.shape[1] != self.n:
            raise ValueError(f"expected shape [batch, {self.n}], got {x.shape}")
        return x2

    def _combine(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        if count == 0:
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * count / total)
        self.count = total

    def update(self, matrix) -> RewardNormalizer:
        """Fold a [batch, n] (or [n]) matrix of raw rewards into the running statistics."""
        x = self._matrix(matrix)
        if not np.isfinite(x).all():
            raise ValueError("rewards contain NaN or inf; refusing to update normalisation statistics")
        if len(x):
            mean = x.mean(axis=0)
            self._combine(len(x), mean, ((x - mean) ** 2).sum(axis=0))
        return self

    def merge(self, other: RewardNormalizer) -> RewardNormalizer:
        """Add another normaliser's statistics (e.g. from another worker) into this one, in place."""
        if other.kinds != self.kinds:
            raise ValueError(f"cannot merge normalisers with kinds {other.kinds} into {self.kinds}")
        self._combine(other.count, other.mean.copy(), other.m2.copy())
        return self

    def center_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) used per column by :meth:`normalize`; std already floored at ``eps``."""
        mean, std = np.zeros(self.n), np.ones(self.n)
        for j, kind in enumerate(self.kinds):
            if kind == "calibrated":
                raise ValueError(
                    f"objective {j} is 'calibrated': normalise with the run's RewardSpace.normalizer()"
                )
            if kind == "fixed":
                mean[j], std[j] = self.fixed_mean[j], self.fixed_std[j]
            elif kind == "running" and self.count:
                mean[j] = self.mean[j]
                std[j] = self.std[j] if self.count >= 2 else 1.0
        return mean, np.maximum(std, self.eps)

    def normalize(self, matrix) -> np.ndarray:
        """Normalised copy of a [batch, n] (or [n]) reward matrix, same shape, float64."""
        x = np.asarray(matrix, dtype=np.float64)
        mean, std = self.center_scale()
        return ((self._matrix(x) - mean) / std).reshape(x.shape)

    def frozen_configs(self) -> list[NormalizationConfig]:
        """Running columns turned into ``fixed`` with the current statistics (for serving manifests)."""
        mean, std = self.center_scale()
        return [
            NormalizationConfig(kind="none")
            if k == "none"
            else NormalizationConfig(kind="fixed", mean=float(mean[j]), std=float(std[j]))
            for j, k in enumerate(self.kinds)
        ]

    def state_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names) if self.names is not None else None,
            "kinds": list(self.kinds),
            "count": int(self.count),
            "mean": [float(v) for v in self.mean],
            "m2": [float(v) for v in self.m2],
            "std": [float(v) for v in self.std],  # informative; recomputed from m2 on load
            "fixed_mean": [float(v) for v in self.fixed_mean],
            "fixed_std": [float(v) for v in self.fixed_std],
            "eps": self.eps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> RewardNormalizer:
        n = len(state["kinds"])
        if n != self.n:
            raise ValueError(f"state has {n} objectives, this normaliser has {self.n}")
        names = state.get("names")
        if names is not None and self.names is not None and list(names) != self.names:
            raise ValueError(f"state is for objectives {names}, this normaliser is for {self.names}")
        self.kinds = list(state["kinds"])
        self.count = int(state["count"])
        self.mean = np.array(state["mean"], dtype=np.float64)
        self.m2 = np.array(state["m2"], dtype=np.float64)
        self.fixed_mean = np.array(state["fixed_mean"], dtype=np.float64)
        self.fixed_std = np.array(state["fixed_std"], dtype=np.float64)
        self.eps = float(state.get("eps", self.eps))
        return self

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> RewardNormalizer:
        return cls.identity(len(state["kinds"]), state.get("names")).load_state_dict(state)

    def __repr__(self) -> str:
        return f"RewardNormalizer(kinds={self.kinds}, count={self.count})"
