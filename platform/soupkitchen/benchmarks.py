"""What the bench/ scripts share: random LoRA adapters over a recipe's base, and a synchronised timer.

Benchmarks measure ratios side by side in one run (e.g. mixed-n vs plain W0 tokens/s); these helpers make
the inputs of both sides the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from peft import get_peft_model_state_dict

from soupkitchen.config import Recipe
from soupkitchen.models import attach_lora, load_base_model


def random_adapters(recipe: Recipe, n: int, device: str) -> list[dict[str, torch.Tensor]]:
    """n PEFT LoRA state dicts over the recipe's base and targets, with non-zero random A and B."""
    out = []
    for i in range(n):
        base, _ = load_base_model(recipe.model, device=device)
        peft = attach_lora(base, recipe.lora, seed=i)
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
        out.append({k: v.detach().clone() for k, v in get_peft_model_state_dict(peft).items()})
    return out


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    """Seconds ``fn()`` takes, with ``sync()`` (e.g. ``torch.cuda.synchronize``) before and after."""
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t
