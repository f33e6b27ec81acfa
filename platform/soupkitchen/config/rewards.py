"""Sections of the objectives: one reward per objective and its normalisation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from soupkitchen.config.schema import Schema


class NormalizationConfig(Schema):
    """Per-objective reward normalisation z = (r - mean) / std: the run's one reward space (``reward_space``).

    ``calibrated``: mean/std of SFT rollouts on training prompts, measured once before any policy trains
    and frozen for every policy, evaluation and serving; ``fixed``: constants from the recipe; ``none``: raw
    rewards; ``running``: each policy's own online statistics (only for policies with one-hot w: in a soup
    they would give w a different meaning per policy, so mixed-w methods refuse it).
    """

    kind: Literal["none", "calibrated", "running", "fixed"] = "none"
    mean: float = 0.0
    std: float = Field(1.0, gt=0.0)


class RewardConfig(Schema):
    """One objective. ``kind`` picks the scorer; ``params`` are checked by that scorer's own schema
    (``soupkitchen.rewards``: each kind's ``Params``) when the reward is built."""

    name: str = ""
    kind: Literal["length", "keyword", "vader", "minilm_relevance", "hf_classifier"] = "length"
    params: dict[str, Any] = Field(default_factory=dict)
    normalization: NormalizationConfig = Field(default_factory=NormalizationConfig)
