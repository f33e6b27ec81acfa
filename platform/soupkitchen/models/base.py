"""Shared plumbing: dtypes, devices, seeding, tokenizer padding, chat formatting, HF checkpoint dirs."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from soupkitchen.config import ConfigError, ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` if available else ``cpu``; ``cuda`` without a GPU is a ConfigError."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError("device", f"must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return device


@contextlib.contextmanager
def seeded(seed: int):
    """Run the block under ``torch.manual_seed(seed)`` without changing the caller's RNG state."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# --------------------------------------------------------------------------------------------- tokenizer


def prepare_tokenizer(tokenizer, model=None):
    """Make ``tokenizer`` batch-generation ready: a pad token (eos when missing), left padding/truncation.

    The model's config and generation config get the same pad id so ``generate`` does not warn.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                "model.name", "tokenizer has neither a pad nor an eos token; cannot pad batches"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    if model is not None:
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.pad_token_id = tokenizer.pad_token_id
            if gen.eos_token_id is None:
                gen.eos_token_id = tokenizer.eos_token_id
    return tokenizer


def format_prompt(tokenizer, prompt: str, use_chat_template: bool) -> str:
    """The prompt as one user turn of the chat template (with the assistant header), or as is.

    A templated string already holds its special tokens: tokenize it with ``add_special_tokens=False``.
    """
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt


def left_pad_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch (0 at each row's first real token), as ``generate`` uses."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# --------------------------------------------------------------------------------------------- hf


def load_hf_dir(name: str, cfg: ModelConfig, *, local_only: bool, revision: str | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = dict(revision=revision, trust_remote_code=cfg.trust_remote_code, local_files_only=local_only)
    tokenizer = AutoTokenizer.from_pretrained(name, **kw)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=DTYPES[cfg.dtype], use_safetensors=True, **kw)
    return model, tokenizer


def load_hf(cfg: ModelConfig):
    name = cfg.name
    is_dir = Path(name).expanduser().is_dir()
    if name.startswith(("/", "./", "../", "~")) and not is_dir:
        raise ConfigError("model.name", f"local model directory {name!r} does not exist")
    local_only = is_dir or offline()
    try:
        return load_hf_dir(
            str(Path(name).expanduser()) if is_dir else name,
            cfg,
            local_only=local_only,
            revision=None if is_dir else cfg.revision,
        )
    except OSError as e:
        hint = (
            " (HF_HUB_OFFLINE is set: only the local Hugging Face cache is searched; download it once online "
            "or point model.name at a local directory)"
            if local_only and not is_dir
            else ""
        )
        raise ConfigError(
            "model.name", f"cannot load {name!r}{hint}; safetensors weights are required. {e}"
        ) from e
