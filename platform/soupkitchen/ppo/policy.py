"""The PPO actor-critic: W0 + trainable LoRA (actor), n value heads on the same trunk (critic).

The reference policy π_ref is the same module with the adapter disabled, so no second copy of the
weights is held in memory.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from soupkitchen.models import left_pad_position_ids


class ValueHeads(nn.Module):
    """One head per objective, each Linear(h, h) → ReLU → Linear(h, 1) (MOC Table 7)."""

    def __init__(self, hidden_size: int, n_objectives: int):
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, 1))
            for _ in range(n_objectives)
        )
        for head in self.heads:
            nn.init.zeros_(head[2].weight)
            nn.init.zeros_(head[2].bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(hidden) for head in self.heads], dim=-1)


def adapter_state_dict(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights as ``adapter.<peft key>`` CPU tensors: the key layout of every backbone checkpoint."""
    from peft import get_peft_model_state_dict

    return {
        f"adapter.{k}": v.detach().cpu().contiguous()
        for k, v in get_peft_model_state_dict(peft_model).items()
    }


class PolicyWithValue(nn.Module):
    """``forward`` → (logits [B, L, V], values [B, L, K]); ``reference()`` disables the LoRA adapter."""

    def __init__(self, policy: nn.Module, n_objectives: int):
        super().__init__()
        self.policy = policy
        hidden = policy.config.hidden_size
        self.value_heads = ValueHeads(hidden, n_objectives)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, with_values: bool = True):
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=left_pad_position_ids(attention_mask),
            output_hidden_states=with_values,
            use_cache=False,
        )
        values = (
            self.value_heads(out.hidden_states[-1].to(self.value_heads.heads[0][0].weight.dtype))
            if with_values
            else None
        )
        return out.logits, values

    def reference(self):
        """Context in which forward/generate run the frozen reference π_ref = W0 (adapter off)."""
        disable = getattr(self.policy, "disable_adapter", None)
        return disable() if disable is not None else contextlib.nullcontext()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter + value heads: the only weights PPO changes (W0 stays frozen)."""
        state = adapter_state_dict(self.policy)
        state.update(
            {
                f"value_heads.{k}": v.detach().cpu().contiguous()
                for k, v in self.value_heads.state_dict().items()
            }
        )
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        adapter = {k[len("adapter.") :]: v for k, v in state.items() if k.startswith("adapter.")}
        heads = {k[len("value_heads.") :]: v for k, v in state.items() if k.startswith("value_heads.")}
        result = set_peft_model_state_dict(self.policy, adapter)
        unexpected = getattr(result, "unexpected_keys", [])
        missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
        if unexpected or missing:
            raise ValueError(
                f"checkpoint adapter does not match the recipe's LoRA (lora.target_modules / lora.r): "
                f"unexpected {unexpected[:3]}, missing {missing[:3]}"
            )
        self.value_heads.load_state_dict(heads)
