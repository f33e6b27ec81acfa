"""Sections of the base model W0 and of its LoRA adapters."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from soupkitchen.config.schema import Schema
from soupkitchen.errors import ConfigError


class TinyModelConfig(Schema):
    """A random GPT-2-like model built in code (tests): a few hundred thousand parameters."""

    n_layer: int = Field(2, ge=1, le=48)
    n_head: int = Field(4, ge=1, le=64)
    n_embd: int = Field(64, ge=8, le=4096)
    n_positions: int = Field(256, ge=16, le=8192)
    seed: int = 0
    # digits and <R1>, <R2>, ... in the vocabulary, so a MOC/RiC relabeled prompt (Eq. 3) is readable;
    # off by default: a larger vocabulary is another random model
    preference_tokens: bool = False


class ModelConfig(Schema):
    """Where the base model W0 comes from.

    source: ``hf`` (Hugging Face id or local directory), ``gguf`` (a GGUF file shipped inside an
    installed Python package, dequantised once and cached as safetensors; needs ``gguf_package`` and
    ``gguf_file``) or ``tiny``.
    """

    source: Literal["hf", "gguf", "tiny"] = "tiny"
    name: str = "tiny"
    gguf_package: str | None = None
    gguf_file: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    use_chat_template: bool = True
    max_prompt_tokens: int = Field(256, ge=8, le=131072)
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)

    @model_validator(mode="after")
    def _gguf_needs_its_file(self):
        if self.source == "gguf" and not (self.gguf_package and self.gguf_file):
            raise ConfigError("gguf_file", "source 'gguf' needs model.gguf_package and model.gguf_file")
        return self


class LoraConfig(Schema):
    """LoRA adapters ΔW = (alpha/r)·B·A on the target modules (PEFT)."""

    r: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["c_attn"])


def model_differences(recorded: dict | None, current: dict | None) -> str | None:
    """``"model.a, model.b"`` for the keys two ModelConfig records (``to_dict``) both have and disagree on,
    or None: what "trained over another W0" means (a record from an older version may lack newer keys)."""
    recorded, current = recorded or {}, current or {}
    differ = sorted(k for k in recorded if k in current and recorded[k] != current[k])
    return ", ".join(f"model.{k}" for k in differ) or None
