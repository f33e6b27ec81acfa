"""How a conditioned policy (MOC, RiC) is told μ: the values written into its prompt, and how.

    cond = Conditioning(kind="preference", prompt=PreferencePromptConfig())   # MOC: the values are μ itself
    cond.prompt_for("How do I ...?", [0.3, 0.7])  →  "<R1> 0.30 <R2> 0.70 How do I ...?"

RiC (``kind="rewards"``) writes desired rewards instead, mapped from μ as RiC's inference stage does
(docs/methods/ric.md): objective i asks for its best training reward ``high_i`` when μ_i ≥ 1/n and for
``low_i + n μ_i (high_i − low_i)`` below that. ``low``/``high`` are the (normalised) reward range of the
relabeled training data, recorded by the run. The block travels in the run's manifest and in every bundle,
so training, evaluation and serving build the same prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from soupkitchen.config import PreferencePromptConfig
from soupkitchen.config.schema import Schema
from soupkitchen.errors import ConfigError
from soupkitchen.moc.prompt import relabel


class Conditioning(Schema):
    """The prompt conditioning of one policy (typed; part of manifests and bundles)."""

    kind: Literal["preference", "rewards"]  # MOC writes μ; RiC writes desired rewards
    prompt: PreferencePromptConfig = Field(default_factory=PreferencePromptConfig)
    low: list[float] | None = None  # rewards: per objective, the lowest desired reward (μ_i = 0)
    high: list[float] | None = None  # rewards: per objective, the highest (μ_i ≥ 1/n)

    @model_validator(mode="after")
    def _ranges(self):
        if self.kind == "rewards":
            if self.low is None or self.high is None or len(self.low) != len(self.high):
                raise ConfigError("low", "reward conditioning needs low and high, one entry per objective")
            if any(lo > hi for lo, hi in zip(self.low, self.high, strict=True)):
                raise ConfigError(
                    "high", f"must be ≥ low per objective, got low {self.low}, high {self.high}"
                )
        return self

    def values(self, mu: Sequence[float]) -> np.ndarray:
        """What the prompt carries for preference μ: μ (MOC) or RiC's desired rewards."""
        mu = np.asarray(mu, dtype=np.float64)
        if self.kind == "preference":
            return mu
        low, high, n = np.asarray(self.low), np.asarray(self.high), len(mu)
        return np.where(mu >= 1.0 / n - 1e-12, high, low + n * mu * (high - low))

    def prompt_for(self, prompt: str, mu: Sequence[float]) -> str:
        return relabel(prompt, self.values(mu), self.prompt)
