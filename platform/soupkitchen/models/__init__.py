"""Loading the base model W0 (``hf``, ``gguf``, ``tiny``), chat formatting and LoRA attachment.

    model, tok = load_base_model(recipe.model, device="cpu")  # W0 + tokenizer (pad set, left padding)
    policy, tok = load_policy(recipe)                          # W0 + one LoRA adapter, eval mode, seeded
    text = format_prompt(tok, "Tell me a story", use_chat_template=True)

Modules: ``base`` (devices, seeding, tokenizer padding, chat format, HF dirs), ``gguf_cache`` (GGUF file
in an installed package → dequantised once → safetensors cache; ~20 s, then ~0.3 s for SmolLM2-135M) and
``lora`` (PEFT adapters).
"""

from __future__ import annotations

from soupkitchen.config import ConfigError, ModelConfig, Recipe
from soupkitchen.models.base import (
    DTYPES,
    format_prompt,
    left_pad_position_ids,
    load_hf,
    prepare_tokenizer,
    resolve_device,
    seeded,
)
from soupkitchen.models.gguf_cache import ensure_gguf_cache, gguf_cache_dir, gguf_path, load_gguf
from soupkitchen.models.lora import attach_lora, lora_target_candidates
from soupkitchen.models.tiny import build_tiny

__all__ = [
    "DTYPES",
    "attach_lora",
    "ensure_gguf_cache",
    "format_prompt",
    "gguf_cache_dir",
    "gguf_path",
    "left_pad_position_ids",
    "load_base_model",
    "load_policy",
    "lora_target_candidates",
    "prepare_tokenizer",
    "resolve_device",
    "seeded",
]


def load_base_model(cfg: ModelConfig, device: str = "cpu"):
    """``(model, tokenizer)`` for ``cfg.source`` (hf | gguf | tiny) on ``device``, eval mode, ``cfg.dtype``.

    The tokenizer always has a pad token and pads on the left (batched generation).
    """
    if cfg.source == "tiny":
        model, tokenizer = build_tiny(cfg.tiny)
        model = model.to(DTYPES[cfg.dtype])
    elif cfg.source == "hf":
        model, tokenizer = load_hf(cfg)
    elif cfg.source == "gguf":
        model, tokenizer = load_gguf(cfg)
    else:
        raise ConfigError("model.source", f"must be 'hf', 'gguf' or 'tiny', got {cfg.source!r}")
    prepare_tokenizer(tokenizer, model)
    return model.to(device).eval(), tokenizer


def load_policy(recipe: Recipe, device: str | None = None):
    """``(PeftModel, tokenizer)``: base model + one LoRA adapter seeded by ``recipe.seed``, eval mode."""
    device = device or resolve_device(recipe.device)
    model, tokenizer = load_base_model(recipe.model, device=device)
    policy = attach_lora(model, recipe.lora, seed=recipe.seed)
    return policy.to(device).eval(), tokenizer
