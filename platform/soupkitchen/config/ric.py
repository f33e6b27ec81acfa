"""RiC (Rewards-in-Context, Yang et al. ICML 2024; docs/methods/ric.md): one policy conditioned on desired
rewards in its prompt, trained by supervised fine-tuning on W0 rollouts relabeled with the rewards they got.

Its own SFT budget (steps, learning rate, batch) is a key here: the recipe's ``sft`` section is the W0 stage
(often disabled); scheduler, weight decay, sequence length and logging come from ``sft``.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from soupkitchen.config.moc import PreferencePromptConfig
from soupkitchen.config.schema import Schema
from soupkitchen.errors import ConfigError


class RiCConfig(Schema):
    """The offline dataset, the SFT budget, the optional online rounds and the conditioning range."""

    num_prompts: int | None = Field(None, ge=1)  # training prompts rolled out by W0 (None: all of them)
    samples_per_prompt: int = Field(4, ge=1)  # W0 samples per prompt: the responses the offline set holds
    max_steps: int = Field(200, ge=1)  # SFTTrainer steps per training stage (offline, and each online round)
    learning_rate: float = Field(1.41e-4, gt=0.0)  # RiC's offline learning rate (their code: 1.414e-4)
    batch_size: int = Field(8, ge=1)  # SFT examples per step
    # the conditioning range [low_i, high_i]: these quantiles of the training set's z (RiC: min and max)
    low_quantile: float = Field(0.0, ge=0.0, le=1.0)
    high_quantile: float = Field(1.0, ge=0.0, le=1.0)
    # RiC's online stage: generate at mapped targets, keep the best, re-SFT
    online_rounds: int = Field(0, ge=0)
    online_preference_step: float = Field(0.1, gt=0.0, le=1.0)  # spacing of the μ grid the rounds cycle

    # MORS: a generated sample is kept if some z_i reaches this quantile of its round (RiC's code: 0.7)
    online_keep_quantile: float = Field(0.7, ge=0.0, le=1.0)
    prompt: PreferencePromptConfig = Field(default_factory=PreferencePromptConfig)  # the formatter's format
    seed: int = 0  # prompt sample and rollout sampling seed

    @model_validator(mode="after")
    def _quantiles_ordered(self):
        if self.low_quantile >= self.high_quantile:
            raise ConfigError(
                "high_quantile", f"must be > low_quantile ({self.low_quantile}), got {self.high_quantile}"
            )
        m = round(1 / self.online_preference_step)
        if abs(1 / self.online_preference_step - m) > 1e-9:
            raise ConfigError("online_preference_step", f"must divide 1, got {self.online_preference_step}")
        return self
