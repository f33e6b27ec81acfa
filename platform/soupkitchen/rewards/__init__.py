"""Rewards: one scorer per objective, built from recipe entries, scored as a [batch, n] matrix.

>>> rs = build_rewards(recipe.rewards)           # RewardSet, objectives in recipe order
>>> r = rs.score(prompts, responses)             # float64 [batch, n_objectives]
>>> r_tilde = rs.score_normalized(prompts, responses, update=True)
"""

from soupkitchen.rewards.base import BaseReward, Reward, words
from soupkitchen.rewards.hf_classifier import HFClassifierParams, HFClassifierReward
from soupkitchen.rewards.normalization import RewardNormalizer
from soupkitchen.rewards.presets import PRESET_ALIASES, PRESETS, Preset
from soupkitchen.rewards.registry import (
    REWARD_KINDS,
    build_reward,
    build_rewards,
    reward_class,
    validate_reward_params,
)
from soupkitchen.rewards.relevance import MiniLMRelevanceParams, MiniLMRelevanceReward
from soupkitchen.rewards.reward_set import RewardSet
from soupkitchen.rewards.rule import KeywordParams, KeywordReward, LengthParams, LengthReward
from soupkitchen.rewards.vader import VaderParams, VaderReward

__all__ = [
    "BaseReward",
    "HFClassifierParams",
    "HFClassifierReward",
    "KeywordParams",
    "KeywordReward",
    "LengthParams",
    "LengthReward",
    "MiniLMRelevanceParams",
    "MiniLMRelevanceReward",
    "PRESETS",
    "PRESET_ALIASES",
    "Preset",
    "REWARD_KINDS",
    "Reward",
    "RewardNormalizer",
    "RewardSet",
    "VaderParams",
    "VaderReward",
    "build_reward",
    "build_rewards",
    "reward_class",
    "validate_reward_params",
    "words",
]
