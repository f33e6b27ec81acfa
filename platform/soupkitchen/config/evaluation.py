"""Sections of evaluation and decoding: the front evaluation, guided decoding, MAGE-E value models, and the
Ray Tune searches that score candidates by front hypervolume."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from soupkitchen.config.schema import Schema
from soupkitchen.errors import ConfigError


class EvalConfig(Schema):
    """Front evaluation over the preference grid. Points, the reference point and every metric are in the
    run's reward space (``reward_space``: z = (r − m) / s); intervals by a paired bootstrap over prompts.
    ``grid_step``: 1/grid_step must be an integer; ``alphas``: at least one, each in [0, 1]; greedy
    decoding takes one sample per prompt."""

    grid_step: float = Field(0.1, gt=0.0, le=1.0)
    ref_point: list[float] | None = None  # in z units; None: −1 each (one SFT std below SFT's mean)
    num_prompts: int | None = Field(None, ge=1)  # None: every prompt of the split (data.max_eval_prompts)
    bootstrap_samples: int = Field(1000, ge=1)  # paired bootstrap replicates over prompts
    confidence: float = Field(0.95, gt=0.0, lt=1.0)  # of every reported interval
    batch_size: int = Field(16, ge=1)
    greedy: bool = True
    samples_per_prompt: int = Field(1, ge=1)  # sampled responses per prompt and μ (greedy: 1)
    alphas: list[float] = Field(default_factory=lambda: [0.0, 0.2])  # Bone Soup α compared (0 = none)
    # Kendall τ's angle is measured around this point (MOC Listing 1 used (−2, −2)); None: ``ref_point``
    projection_ref: list[float] | None = None
    # MOC §3.3 generalisation: groups of unseen preferences w1 = k/100, k ~ U{1..100} (0: none; paper: 4 of 5)
    unseen_groups: int = Field(0, ge=0)
    unseen_group_size: int = Field(5, ge=2)
    unseen_seed: int = 0  # draws the unseen groups (the same for every method)

    @model_validator(mode="after")
    def _rules(self):
        for i, a in enumerate(self.alphas):
            if not (math.isfinite(a) and 0.0 <= a <= 1.0):
                raise ConfigError(f"alphas.{i}", f"α must be in [0, 1] (0 = no extrapolation), got {a}")
        if self.greedy and self.samples_per_prompt > 1:
            raise ConfigError(
                "samples_per_prompt", "greedy decoding repeats itself: set eval.greedy false or use 1"
            )
        if not self.alphas:
            raise ConfigError("alphas", "needs at least one α; [0.0] evaluates without extrapolation")
        steps = 1.0 / self.grid_step
        if abs(steps - round(steps)) > 1e-9:
            raise ConfigError(
                "grid_step", f"1/grid_step must be an integer (e.g. 0.1, 0.25), got {self.grid_step}"
            )
        return self


class SearchConfig(Schema):
    """Ray Tune searches (``tune/``): β by short backbone runs, α and γ by evaluation-only trials, all scored
    by front hypervolume on the validation prompts (``data.max_validation_prompts``). ``alphas`` in [0, 1]
    and ``gammas`` ≥ 0, at least one of each."""

    betas: list[float] | None = None  # None → soup.beta_candidates
    beta_fraction: float = Field(0.2, gt=0.0, le=1.0)  # share of ppo.steps per β trial (paper: 20%)
    alphas: list[float] = Field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    gammas: list[float] = Field(default_factory=lambda: [0.0])  # MAGE's grid: [0.1, 0.2, 1.0, 3.0, 5.0]
    searcher: Literal["grid", "optuna"] = "grid"
    num_samples: int = Field(8, ge=1)  # trials of the optuna searcher (grid: one per grid point)
    cpus_per_trial: float = Field(1.0, ge=0.0)
    gpus_per_trial: float = Field(0.25, ge=0.0)  # used when distributed.use_gpu
    max_concurrent_trials: int = Field(0, ge=0)  # 0: as many as the cluster's resources allow

    @model_validator(mode="after")
    def _grids(self):
        for key, values, hi in (("alphas", self.alphas, 1.0), ("gammas", self.gammas, None)):
            for i, v in enumerate(values):
                if not math.isfinite(v) or v < 0 or (hi is not None and v > hi):
                    raise ConfigError(
                        f"{key}.{i}", f"must be in {f'[0, {hi}]' if hi else '[0, inf)'}, got {v}"
                    )
            if not values:
                raise ConfigError(key, "needs at least one value")
        return self


class DecodingConfig(Schema):
    """Guided decoding (MAGE, docs/methods/mage.md; MOD baseline). See ``soupkitchen.decoding``; the mode of
    each request row is ``soupkitchen.methods.Mode``.

    Score per token: log π_base(μ) + γ·g. ``implicit_shortcut``: when π*_merge has the base's coefficients,
    score with (1+γ) log π_base − γ log π_ref (one forward row less). ``guide_top_k`` > 0 restricts
    guidance to the base's top-k tokens (not in the paper; 0 = off). ``ensemble_weights``: weights of
    the mage_i / mage_e ensembles and of mod: ``mu`` (Eq. 26) or ``bone_soup`` ((1+α)B⁻¹μ).
    Beam (chunk-level): ``beam_width`` b > 0 switches it on; each of b beams samples ``beam_expansion`` c
    chunks of ``beam_lookahead`` l tokens, the b best by value are kept.
    ``max_new_tokens`` / ``stop`` None: taken from ``generation``.
    """

    gamma: float = Field(1.0, ge=0.0, le=100.0)
    greedy: bool = True
    temperature: float = Field(1.0, gt=0.0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int | None = Field(None, ge=1, le=8192)
    stop: list[str] | None = None
    implicit_shortcut: bool = True
    guide_top_k: int = Field(0, ge=0)
    ensemble_weights: Literal["mu", "bone_soup"] = "mu"
    beam_width: int = Field(0, ge=0, le=64)
    beam_expansion: int = Field(1, ge=1, le=64)
    beam_lookahead: int = Field(10, ge=1, le=1024)


class ValueModelConfig(Schema):
    """Explicit value models (MAGE-E, docs/methods/mage.md): one LoRA adapter per objective on W0 read as a
    residual head, Q-values V(x, y<t)[v] = logits_{W0+ΔV} − logits_{W0} (0 at init), trained with Eq. 16 on
    rollouts of ``policies`` scored by the reward.

    ``policies``: ``sft`` (W0, the π_ref of Eq. 15), ``backbones`` (the given backbones at μ on the grid)
    or ``both``. ``lora_r`` / ``lora_alpha`` None: the recipe's ``lora`` (targets are always the recipe's,
    so value adapters stack with the backbones).
    """

    policies: Literal["sft", "backbones", "both"] = "both"
    num_prompts: int = Field(64, ge=1)
    samples_per_prompt: int = Field(2, ge=1)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(1e-4, gt=0.0)
    max_steps: int | None = Field(None, ge=1)
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    lora_r: int | None = Field(None, ge=1, le=1024)
    lora_alpha: float | None = Field(None, gt=0.0)
    seed: int = 0
