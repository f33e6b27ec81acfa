"""LoRA adapters on the base model (PEFT), with target checks that name the recipe key."""

from __future__ import annotations

import contextlib

from torch import nn

from soupkitchen.config import ConfigError, LoraConfig
from soupkitchen.models.base import seeded


def _linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Linear layers (``nn.Linear``, GPT-2 ``Conv1D``) by name; a LoRA-wrapped layer counts as its base."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers.pytorch_utils import Conv1D

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, BaseTunerLayer):
            out[name] = m.get_base_layer()
        elif isinstance(m, (nn.Linear, Conv1D)) and name:
            parts = name.split(".")
            if not any(p == "base_layer" or p.startswith("lora_") for p in parts):
                out[name] = m
    return out


def lora_target_candidates(model: nn.Module) -> list[str]:
    """Sorted name suffixes of the linear layers (``nn.Linear``, GPT-2 ``Conv1D``) that LoRA can target."""
    return sorted({name.rsplit(".", 1)[-1] for name in _linear_modules(model)})


def attach_lora(model: nn.Module, lora: LoraConfig, adapter_name: str = "default", seed: int | None = None):
    """Wrap ``model`` in a PEFT ``PeftModel`` with one LoRA adapter (or add ``adapter_name`` to a PeftModel).

    Targets are module-name suffixes (``c_attn``, ``q_proj``) or dotted tails (``attn.c_attn``); a target that
    matches no linear layer is a ConfigError naming ``lora.target_modules``. ``seed`` makes the A init
    reproducible (B starts at zero, so the adapter starts as a no-op).
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model
    from transformers.pytorch_utils import Conv1D

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    linear = _linear_modules(base)
    matched: dict[str, list[nn.Module]] = {}
    for t in lora.target_modules:
        matched[t] = [m for n, m in linear.items() if n == t or n.endswith("." + t)]
    missing = [t for t, ms in matched.items() if not ms]
    if missing:
        raise ConfigError(
            "lora.target_modules",
            f"{missing} match no linear module of {type(base).__name__}; "
            f"available: {lora_target_candidates(base)}",
        )
    all_conv1d = all(isinstance(m, Conv1D) for ms in matched.values() for m in ms)
    peft_cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
        fan_in_fan_out=all_conv1d,  # GPT-2 Conv1D stores weights transposed
    )
    with seeded(seed) if seed is not None else contextlib.nullcontext():
        if isinstance(model, PeftModel):
            model.add_adapter(adapter_name, peft_cfg)
            return model
        return get_peft_model(model, peft_cfg, adapter_name=adapter_name)
