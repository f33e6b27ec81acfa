"""Typed configuration tree for every soupkitchen job.

A recipe is a YAML file (shipped ones: ``soupkitchen/recipes/<name>.yaml``) that maps onto :class:`Recipe`.
Every field is type-checked on load and on assignment; unknown keys, wrong types and out-of-range values
raise :class:`ConfigError` naming the dotted key path and what is allowed. Command-line overrides use the
same paths: ``--ppo.kl_coef 0.1`` or ``--rewards.0.params.target 40``.

    schema.py      the strict pydantic base (``Schema``), ValidationError → ConfigError, from_dict / to_dict
    model.py, rewards.py, data.py, training.py, evaluation.py, tracking.py, moc.py,
                   ric.py, hoe.py
                   the sections, each with its ranges (``Field(ge=..., lt=...)``) and its own rules
    recipe.py      ``Recipe``: the sections and the rules that span them (n objectives vs β, ...)
    loading.py     recipe files (``extends:``), dotted overrides, CLI overrides, JSON manifests
"""

from soupkitchen.config.data import DataConfig, GenerationConfig
from soupkitchen.config.evaluation import DecodingConfig, EvalConfig, SearchConfig, ValueModelConfig
from soupkitchen.config.hoe import HoEConfig
from soupkitchen.config.loading import (
    RECIPES_DIR,
    REPO_ROOT,
    apply_overrides,
    available_recipes,
    load_raw_recipe,
    load_recipe,
    parse_cli_overrides,
    read_format,
    resolve_recipe_path,
)
from soupkitchen.config.moc import MOCConfig, PreferencePromptConfig
from soupkitchen.config.model import LoraConfig, ModelConfig, TinyModelConfig, model_differences
from soupkitchen.config.recipe import Recipe
from soupkitchen.config.rewards import NormalizationConfig, RewardConfig
from soupkitchen.config.ric import RiCConfig
from soupkitchen.config.schema import Schema, _num, config_error, from_dict, replace, to_dict
from soupkitchen.config.tracking import TrackingConfig
from soupkitchen.config.training import (
    DistributedConfig,
    PPOConfig,
    RewardSpaceConfig,
    SFTConfig,
    SoupConfig,
)
from soupkitchen.errors import ConfigError

__all__ = [
    "RECIPES_DIR",
    "REPO_ROOT",
    "ConfigError",
    "DataConfig",
    "DecodingConfig",
    "DistributedConfig",
    "EvalConfig",
    "GenerationConfig",
    "HoEConfig",
    "LoraConfig",
    "MOCConfig",
    "ModelConfig",
    "model_differences",
    "NormalizationConfig",
    "PPOConfig",
    "PreferencePromptConfig",
    "Recipe",
    "RewardConfig",
    "RewardSpaceConfig",
    "RiCConfig",
    "SFTConfig",
    "Schema",
    "SearchConfig",
    "SoupConfig",
    "TinyModelConfig",
    "TrackingConfig",
    "ValueModelConfig",
    "_num",
    "apply_overrides",
    "available_recipes",
    "config_error",
    "from_dict",
    "load_raw_recipe",
    "load_recipe",
    "parse_cli_overrides",
    "read_format",
    "replace",
    "resolve_recipe_path",
    "to_dict",
]
