"""Build rewards from recipe entries. Each kind is one entry of :data:`REWARD_KINDS`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from soupkitchen.config import ConfigError, RewardConfig, from_dict
from soupkitchen.rewards.base import BaseReward
from soupkitchen.rewards.hf_classifier import HFClassifierReward
from soupkitchen.rewards.normalization import RewardNormalizer
from soupkitchen.rewards.relevance import MiniLMRelevanceReward
from soupkitchen.rewards.reward_set import RewardSet
from soupkitchen.rewards.rule import KeywordReward, LengthReward
from soupkitchen.rewards.vader import VaderReward

REWARD_KINDS: dict[str, type[BaseReward]] = {
    "length": LengthReward,
    "keyword": KeywordReward,
    "vader": VaderReward,
    "minilm_relevance": MiniLMRelevanceReward,
    "hf_classifier": HFClassifierReward,
}


def _as_config(cfg: RewardConfig | Mapping[str, Any], path: str) -> RewardConfig:
    return cfg if isinstance(cfg, RewardConfig) else from_dict(RewardConfig, dict(cfg), path)


def reward_class(kind: str, path: str = "rewards.0") -> type[BaseReward]:
    if kind not in REWARD_KINDS:
        raise ConfigError(f"{path}.kind", f"unknown reward kind {kind!r}; allowed: {', '.join(REWARD_KINDS)}")
    return REWARD_KINDS[kind]


def validate_reward_params(cfg: RewardConfig | Mapping[str, Any], path: str = "rewards.0") -> Any:
    """The kind's typed params for ``cfg`` (ConfigError with the key path if invalid). Loads nothing."""
    cfg = _as_config(cfg, path)
    cls = reward_class(cfg.kind, path)
    ppath = f"{path}.params"
    return from_dict(cls.Params, cls.prepare_params(cfg.params, ppath), ppath)


def build_reward(
    cfg: RewardConfig | Mapping[str, Any], path: str = "rewards.0", device: str | None = None
) -> BaseReward:
    """One reward from a recipe entry; ``device`` is the default for model-based kinds (params win)."""
    cfg = _as_config(cfg, path)
    params = validate_reward_params(cfg, path)
    return reward_class(cfg.kind, path).from_params(
        cfg.name or cfg.kind, params, path=f"{path}.params", device=device
    )


def build_rewards(
    cfgs: Sequence[RewardConfig | Mapping[str, Any]], path: str = "rewards", device: str | None = None
) -> RewardSet:
    """All objectives of a recipe, in order, with their normaliser."""
    cfgs = [_as_config(c, f"{path}.{i}") for i, c in enumerate(cfgs)]
    if not cfgs:
        raise ConfigError(path, "at least one reward is required (one per objective)")
    names = [c.name or c.kind for c in cfgs]
    if len(set(names)) != len(names):
        raise ConfigError(path, f"objective names must be unique, got {names}")
    rewards = [build_reward(c, f"{path}.{i}", device) for i, c in enumerate(cfgs)]
    return RewardSet(rewards, RewardNormalizer([c.normalization for c in cfgs], names))
