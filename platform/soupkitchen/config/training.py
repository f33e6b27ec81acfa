"""Sections of training: SFT, PPO, the reward-space calibration, the soup method, Ray Train workers."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from soupkitchen.config.schema import Schema
from soupkitchen.errors import ConfigError
from soupkitchen.methods import Method


class SFTConfig(Schema):
    """Supervised fine-tuning stage (TRL SFTTrainer + LoRA, merged into W0 afterwards).

    Loss on the completion tokens only. ``output_dir`` None → ``$SOUPKITCHEN_CACHE/sft/<recipe name>``.
    """

    enabled: bool = False
    max_steps: int = Field(100, ge=1)
    learning_rate: float = Field(1.41e-4, gt=0.0)
    batch_size: int = Field(8, ge=1)
    lr_scheduler: Literal["linear", "constant", "cosine"] = "linear"
    weight_decay: float = Field(0.0, ge=0.0)
    # prompt + completion tokens (≤ model positions); the rest is cut
    max_seq_length: int = Field(1024, ge=8, le=131072)
    gradient_checkpointing: bool = True
    logging_steps: int = Field(10, ge=1)
    output_dir: str | None = None


class PPOConfig(Schema):
    """Vector-reward PPO (docs/methods/bone_soup.md: Table 8 defaults for the paper recipes).
    ``mini_batch_size`` must divide ``batch_size``."""

    algorithm: Literal["ppo", "grpo"] = "ppo"
    steps: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)
    mini_batch_size: int = Field(4, ge=1)
    ppo_epochs: int = Field(4, ge=1)
    learning_rate: float = Field(1e-5, gt=0.0)
    kl_coef: float = Field(0.2, ge=0.0)
    adaptive_kl: bool = True
    kl_target: float = Field(6.0, gt=0.0)
    kl_horizon: int = Field(10000, ge=1)
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    lam: float = Field(0.95, ge=0.0, le=1.0)
    cliprange: float = Field(0.2, gt=0.0)
    cliprange_value: float = Field(0.2, gt=0.0)
    vf_coef: float = Field(0.1, ge=0.0)
    max_grad_norm: float = Field(0.5, gt=0.0)
    whiten_advantages: bool = True
    missing_eos: Literal["truncate", "penalize"] = "truncate"  # score a cut-off response as is, or penalise
    missing_eos_penalty: float = -1.0
    # unit_spread: divide h = wᵀz by its SFT spread sqrt(wᵀΣw) so the KL penalty weighs the same against the
    # reward for a mixed backbone as for a specialist (conflicting objectives shrink a mix's spread); none: h.
    scale_rewards: Literal["unit_spread", "none"] = "unit_spread"
    target_kl: float | None = Field(None, gt=0.0)  # stop an update's epochs once KL > 1.5×
    checkpoint_every: int = Field(10, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _minibatches_tile_the_batch(self):
        if self.batch_size % self.mini_batch_size:
            raise ConfigError(
                "mini_batch_size",
                f"must divide ppo.batch_size ({self.batch_size}), got {self.mini_batch_size}",
            )
        return self


class RewardSpaceConfig(Schema):
    """Calibration of the run's reward space (``soupkitchen.reward_space``): SFT rollouts on a seeded sample
    of training prompts, sampled with ``generation``, before any policy trains."""

    num_prompts: int = Field(64, ge=1)  # training prompts rolled out by W0
    samples_per_prompt: int = Field(2, ge=1)  # samples per prompt (mean/std over prompts and samples)
    seed: int = 0  # prompt sample and sampling seed: the same space for every policy and every re-run


class SoupConfig(Schema):
    """How backbones are trained and merged (``soupkitchen.methods``).

    bone_soup: backbone i is trained on h_i = w_iᵀ r with w_i column i of circulant B(β) and merged
    with λ = (1+α) B⁻¹μ (β in (1/n, 1] for n objectives: checked by the recipe); rewarded_soups: w_i = e_i,
    λ = μ; morlhf: one policy per μ in ``morlhf_preferences`` (the baseline; each μ on the simplex, one
    entry per objective).
    """

    method: Method = Field(Method.BONE_SOUP, strict=False)  # strict=False: the value string names it
    beta: float = Field(0.7, gt=0.0, le=1.0)
    alpha: float = Field(0.0, ge=0.0)
    beta_candidates: list[float] = Field(default_factory=lambda: [0.6, 0.7, 0.8])
    morlhf_preferences: list[list[float]] = Field(default_factory=lambda: [[0.5, 0.5]])

    @field_validator("method", mode="before")
    @classmethod
    def _a_backbone_method(cls, v):
        # MOC / RiC / HoE: jobs/train_moc.py, train_ric.py, build_hoe.py
        allowed = [m.value for m in Method if not m.conditioned and m is not Method.HOE]
        if v not in allowed:
            raise ValueError(f"must be one of {', '.join(map(repr, allowed))}; got {v!r}")
        return v

    @model_validator(mode="after")
    def _preferences_on_the_simplex(self):
        for i, mu in enumerate(self.morlhf_preferences):
            if any(not math.isfinite(m) or m < 0 for m in mu) or abs(sum(mu) - 1.0) > 1e-6:
                raise ConfigError(f"morlhf_preferences.{i}", f"must be non-negative and sum to 1, got {mu}")
        return self


class DistributedConfig(Schema):
    """Ray Train + DeepSpeed settings for each backbone trainer (``use_gpu`` needs ``gpus_per_worker`` > 0;
    ``num_workers`` must divide ``ppo.mini_batch_size``: checked by the recipe)."""

    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    zero_stage: int = Field(2, ge=0, le=3)
    max_failures: int = Field(1, ge=-1)
    storage_path: str = "~/.cache/soupkitchen/runs"
    # Backbones trained at once. 0: all (Ray queues those the cluster cannot place yet; their controllers may
    # hit Ray Train's 60 s worker-group start timeout and retry, harmless); N: at most N at once.
    max_concurrent_backbones: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _gpu_workers_get_gpus(self):
        if self.use_gpu and self.gpus_per_worker <= 0:
            raise ConfigError("gpus_per_worker", "must be > 0 when distributed.use_gpu is true")
        return self
