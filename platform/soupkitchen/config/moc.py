"""MOC (one preference-conditioned policy, docs/methods/moc.md): the prompt format and every choice the paper
leaves open, each a key so a run records which one it made."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from soupkitchen.config.schema import Schema
from soupkitchen.errors import ConfigError


class PreferencePromptConfig(Schema):
    """Eq. 3: ``<R1> p1 <R2> p2 … <RN> pN {prompt}``. The paper fixes neither the tag spelling nor the
    number format; these keys pin both for training, evaluation and serving alike."""

    tag: str = "<R{i}>"  # tag of objective i (1-based); must contain {i}
    decimals: int = Field(2, ge=0, le=6)  # 2: the unseen preferences n/100 print exactly
    position: Literal["prefix", "suffix"] = "prefix"  # Eq. 3 puts it first; the text says "appending"

    @model_validator(mode="after")
    def _tag_has_index(self):
        rest = self.tag.replace("{i}", "")
        if "{i}" not in self.tag or "{" in rest or "}" in rest or not self.tag.strip():
            raise ConfigError(
                "tag",
                f"must contain {{i}} (the 1-based objective index) and no other braces, got {self.tag!r}",
            )
        return self


class MOCConfig(Schema):
    """MOC training (Algorithm 1). ``preferences`` None: the simplex grid at ``preference_step`` (the paper's
    11 points for n = 2); each row must have one entry per objective (checked by the recipe)."""

    preferences: list[list[float]] | None = None  # training preference set P (Algorithm 1 line 3)
    preference_step: float = Field(0.1, gt=0.0, le=1.0)  # grid spacing when ``preferences`` is None
    phi: float = Field(0.1, ge=0.0)  # constraint threshold φ of Eq. 4 (Table 7: 0.1)
    offset: float = 1.0  # the "+1" of Eq. 18, R̄ = (r − mean)/(2 std) + offset
    # running: Eq. 18 with MOC's own running mean/std; space: R̄ = z/2 + offset in the run's frozen space
    normalizer: Literal["running", "space"] = "running"
    target: Literal["sample", "group"] = "sample"  # R̄ in Eq. 12: the sample's, or its preference group's mean
    distance: Literal["mse", "squared_norm"] = "mse"  # Eq. 2/4 say MSE; Appendix C says ‖·‖² (factor n)
    # constraint met (v̄ = 0): Algorithm 2 returns c = 0 (stop: no update); linear: c¹ = 1, plain pᵀJ
    satisfied: Literal["linear", "stop"] = "linear"
    # every_stream: −ηKL in each objective's reward (ω-weighted); separate: one KL stream at weight 1
    kl: Literal["every_stream", "separate"] = "every_stream"
    whiten: Literal["per_objective", "none"] = "per_objective"  # Â^k whitened per stream, or raw
    prompt: PreferencePromptConfig = Field(default_factory=PreferencePromptConfig)

    @model_validator(mode="after")
    def _preferences_on_the_simplex(self):
        for i, mu in enumerate(self.preferences or []):
            if any(not math.isfinite(m) or m < 0 for m in mu) or abs(sum(mu) - 1.0) > 1e-6:
                raise ConfigError(f"preferences.{i}", f"must be non-negative and sum to 1, got {mu}")
        if self.preferences is not None and not self.preferences:
            raise ConfigError("preferences", "must hold at least one preference (or be null for the grid)")
        return self
