"""Which preference each training row gets (Algorithm 1 line 3): B draws from the preference set P per step.

The draw depends only on (seed, step), like the prompt schedule, so a resumed run continues with the same
preferences it would have drawn, and every worker agrees on the global batch before taking its shard.
"""

from __future__ import annotations

import numpy as np

from soupkitchen.config import MOCConfig, PreferencePromptConfig
from soupkitchen.moc.prompt import relabel
from soupkitchen.preferences import preference_grid


def training_preferences(cfg: MOCConfig, n: int) -> np.ndarray:
    """P [M, n]: ``moc.preferences``, or the simplex grid at ``moc.preference_step`` (11 points for n = 2)."""
    if cfg.preferences is not None:
        return np.asarray(cfg.preferences, dtype=np.float64)
    return preference_grid(n, cfg.preference_step)


def batch_preferences(P: np.ndarray, batch_size: int, step: int, seed: int) -> np.ndarray:
    """[B, n]: row b of step ``step``'s global batch gets P[j], j uniform over P (seeded by seed, step)."""
    rng = np.random.default_rng([seed, step, 7919])
    return P[rng.integers(0, len(P), size=batch_size)]


def relabeled_rows(
    prompts: list[str],
    P: np.ndarray,
    batch_size: int,
    step: int,
    seed: int,
    fmt: PreferencePromptConfig,
    start=0,
) -> tuple[list[str], np.ndarray]:
    """Rows ``start .. start + len(prompts)`` of step ``step``'s global batch (one worker's shard): the
    prompts relabeled with their preferences (Eq. 3, Algorithm 1 lines 3-4), and those preferences [b, n]."""
    prefs = batch_preferences(P, batch_size, step, seed)[start : start + len(prompts)]
    return [relabel(p, mu, fmt) for p, mu in zip(prompts, prefs, strict=True)], prefs
