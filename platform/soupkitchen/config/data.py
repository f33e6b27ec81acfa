"""Sections of the prompts and of sampling."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from soupkitchen.config.schema import Schema


class DataConfig(Schema):
    """Prompts. ``source``: ``builtin:<name>`` (shipped in the package), a local JSONL path, or
    ``hf:<dataset id>`` (Hugging Face datasets, paper-scale; needs network or a local cache)."""

    source: str = "builtin:tiny"
    hf_config: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    prompt_field: str = "prompt"
    format: Literal["plain", "hh_rlhf", "tldr"] = "plain"
    max_train_prompts: int | None = Field(None, ge=1)
    max_eval_prompts: int = Field(32, ge=1)
    max_validation_prompts: int = Field(32, ge=1)  # seeded sample of train prompts, for searches
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    sft_source: str | None = None
    seed: int = 0


class GenerationConfig(Schema):
    """Sampling settings for rollouts and evaluation."""

    max_new_tokens: int = Field(16, ge=1, le=8192)
    temperature: float = Field(0.7, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    do_sample: bool = True
    stop: list[str] = Field(default_factory=list)
