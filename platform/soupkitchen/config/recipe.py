"""The recipe: every section of one job, and the rules that span sections.

Each section checks its own keys (types, ranges, its own rules) when it is built or assigned; what is left
here needs two sections at once: the number of objectives n (``rewards``) against β, the MORLHF
preferences and the reference point, and the PPO minibatch against the Ray Train workers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from soupkitchen.config.data import DataConfig, GenerationConfig
from soupkitchen.config.evaluation import DecodingConfig, EvalConfig, SearchConfig, ValueModelConfig
from soupkitchen.config.hoe import HoEConfig
from soupkitchen.config.moc import MOCConfig
from soupkitchen.config.model import LoraConfig, ModelConfig
from soupkitchen.config.rewards import RewardConfig
from soupkitchen.config.ric import RiCConfig
from soupkitchen.config.schema import Schema
from soupkitchen.config.tracking import TrackingConfig
from soupkitchen.config.training import (
    DistributedConfig,
    PPOConfig,
    RewardSpaceConfig,
    SFTConfig,
    SoupConfig,
)
from soupkitchen.errors import ConfigError
from soupkitchen.methods import Method


class Recipe(Schema):
    """One job configuration, loaded from a shipped recipe (``soupkitchen/recipes/<name>.yaml``) or a path.

    At least one reward (one per objective), each named by a unique identifier.
    """

    name: str = "unnamed"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rewards: list[RewardConfig] = Field(default_factory=list)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    reward_space: RewardSpaceConfig = Field(default_factory=RewardSpaceConfig)
    soup: SoupConfig = Field(default_factory=SoupConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    decoding: DecodingConfig = Field(default_factory=DecodingConfig)
    value_model: ValueModelConfig = Field(default_factory=ValueModelConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    moc: MOCConfig = Field(default_factory=MOCConfig)
    ric: RiCConfig = Field(default_factory=RiCConfig)
    hoe: HoEConfig = Field(default_factory=HoEConfig)

    @property
    def objectives(self) -> list[str]:
        return [r.name for r in self.rewards]

    def validate(self) -> Recipe:
        """The recipe itself: it is checked whenever it is built or a field is assigned."""
        return self

    @model_validator(mode="after")
    def _objectives(self):
        n = len(self.rewards)
        if n < 1:
            raise ConfigError("rewards", "at least one reward is required (one per objective)")
        names = self.objectives
        for i, r in enumerate(self.rewards):
            if not r.name or not r.name.replace("_", "").replace("-", "").isalnum():
                raise ConfigError(f"rewards.{i}.name", f"must be a non-empty identifier, got {r.name!r}")
        if len(set(names)) != n:
            raise ConfigError("rewards", f"objective names must be unique, got {names}")
        return self

    @model_validator(mode="after")
    def _one_entry_per_objective(self):
        n, soup = len(self.rewards), self.soup
        if soup.method == Method.BONE_SOUP and n > 1:
            lo = 1.0 / n
            for path, b in [("soup.beta", soup.beta)] + [
                (f"soup.beta_candidates.{i}", b) for i, b in enumerate(soup.beta_candidates)
            ]:
                if not (lo < b <= 1.0):
                    raise ConfigError(
                        path, f"β must lie in (1/n, 1] = ({lo:.4g}, 1] for n={n} objectives, got {b}"
                    )
        for i, mu in enumerate(soup.morlhf_preferences):
            if len(mu) != n:
                raise ConfigError(
                    f"soup.morlhf_preferences.{i}",
                    f"has {len(mu)} entries but there are {n} objectives {self.objectives}",
                )
        for i, mu in enumerate(self.moc.preferences or []):
            if len(mu) != n:
                raise ConfigError(
                    f"moc.preferences.{i}",
                    f"has {len(mu)} entries but there are {n} objectives {self.objectives}",
                )
        for key in ("mo_experts", "routers"):
            for i, lam in enumerate(getattr(self.hoe, key) or []):
                if len(lam) != n:
                    raise ConfigError(
                        f"hoe.{key}.{i}", f"has {len(lam)} entries, need one per objective ({n})"
                    )
        for key in ("ref_point", "projection_ref"):
            ref = getattr(self.eval, key)
            if ref is not None and len(ref) != n:
                raise ConfigError(f"eval.{key}", f"has {len(ref)} entries, need one per objective ({n})")
        if self.eval.unseen_groups and n != 2:
            raise ConfigError(
                "eval.unseen_groups", f"draws w1 = k/100 for two objectives, the recipe has {n}"
            )
        return self

    @model_validator(mode="after")
    def _workers_split_minibatches(self):
        workers, mini = self.distributed.num_workers, self.ppo.mini_batch_size
        if mini % workers:
            raise ConfigError(
                "distributed.num_workers",
                f"must divide ppo.mini_batch_size ({mini}) so each worker gets "
                f"whole rows of every minibatch, got {workers}",
            )
        return self
