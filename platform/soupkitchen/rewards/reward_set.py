"""The objectives of a job as one object: rewards in objective order, scored into a [batch, n] matrix."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from soupkitchen.rewards.base import Reward, check_batch
from soupkitchen.rewards.normalization import RewardNormalizer


class RewardSet:
    """Rewards in objective order plus their per-objective normaliser.

    The reward vector is kept end to end: :meth:`score` returns float64 [batch, n_objectives]; any
    scalarisation (w, μ, Tchebycheff) happens downstream.
    """

    def __init__(self, rewards: Sequence[Reward], normalizer: RewardNormalizer | None = None):
        self.rewards = list(rewards)
        names = [r.name for r in self.rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"reward names must be unique, got {names}")
        self.normalizer = normalizer or RewardNormalizer.identity(len(names), names)
        if self.normalizer.n != len(names):
            raise ValueError(f"normaliser has {self.normalizer.n} objectives, there are {len(names)} rewards")

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rewards]

    def __len__(self) -> int:
        return len(self.rewards)

    def __iter__(self) -> Iterator[Reward]:
        return iter(self.rewards)

    def __getitem__(self, key: int | str) -> Reward:
        if isinstance(key, str):
            return self.rewards[self.names.index(key)]
        return self.rewards[key]

    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """Raw rewards, float64 [batch, n_objectives], columns in :attr:`names` order."""
        prompts, responses = check_batch(prompts, responses)
        out = np.zeros((len(responses), len(self.rewards)), dtype=np.float64)
        for j, reward in enumerate(self.rewards):
            col = np.asarray(reward.score(prompts, responses), dtype=np.float64)
            if col.shape != (len(responses),):
                raise ValueError(
                    f"reward {reward.name!r} returned shape {col.shape} for {len(responses)} rows"
                )
            bad = np.flatnonzero(~np.isfinite(col))
            if bad.size:
                raise ValueError(
                    f"reward {reward.name!r} returned non-finite scores at rows {bad[:10].tolist()}"
                )
            out[:, j] = col
        return out

    def score_normalized(
        self, prompts: list[str], responses: list[str], *, update: bool = False
    ) -> np.ndarray:
        """Normalised rewards; ``update=True`` first folds this batch into the running statistics."""
        raw = self.score(prompts, responses)
        if update:
            self.normalizer.update(raw)
        return self.normalizer.normalize(raw)

    def __repr__(self) -> str:
        return f"RewardSet({self.rewards!r})"
