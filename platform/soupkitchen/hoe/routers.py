"""Router-expert training (Eqs. 5-8, 18-19): the PPO engine's policy is the HoE model with one router.

The base and every LoRA expert are frozen; the router's per-module Linear(in, N) weights are the only policy
parameters (plus the engine's value heads). Rows decode at c = [0…0, 1] (the router alone: its N LoRA experts
mixed per token), the advantage is Σ_i w_i Â^i with w from OMD-STCH (``ppo.scalarization.OMDTchebycheff``),
and the KL reference is the router's initial mix: the linear mix of its experts at λ_r's barycentric
weights, where training starts (KL to W0 would penalise the experts themselves; docs/methods/hoe.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from soupkitchen.config import Recipe
from soupkitchen.hoe.experts import load_experts
from soupkitchen.hoe.layer import (
    Router,
    build_hoe_model,
    hoe_layers,
    reference_routers,
    router_state_dict,
    unfreeze_routers,
)
from soupkitchen.merging.mixed import set_coefficients
from soupkitchen.models import load_base_model
from soupkitchen.ppo.policy import PolicyWithValue


@dataclass
class RouterJob:
    """What a worker needs to train one router: the HoE directory (on storage every worker reads), the
    router's name, the LoRA experts it votes over and its initial mix, z* and the OMD step α."""

    directory: str
    name: str
    votes: list[str]
    init: list[float]
    ideal: list[float]
    omd_step: float
    preference: list[float]  # λ_r
    pool: str = "all"  # its votes were chosen among all LoRA experts or the single-objective ones
    sha256: list[str] = field(default_factory=list)  # of the voted experts' files: a resume must match them


class RouterPolicy(PolicyWithValue):
    """``PolicyWithValue`` over a HoE model training its one router; π_ref = the router's initial mix."""

    def reference(self):
        return reference_routers(self.policy)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"router.{k}": v for k, v in router_state_dict(self.policy).items()}
        state |= {
            f"value_heads.{k}": v.detach().cpu().contiguous()
            for k, v in self.value_heads.state_dict().items()
        }
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, layer in hoe_layers(self.policy):
            with torch.no_grad():
                layer.router_weight.copy_(state[f"router.{name}.weight"])
                layer.router_bias.copy_(state[f"router.{name}.bias"])
        heads = {k[len("value_heads.") :]: v for k, v in state.items() if k.startswith("value_heads.")}
        self.value_heads.load_state_dict(heads)


def router_policy(recipe: Recipe, job: RouterJob, device: str = "cpu"):
    """(``RouterPolicy``, tokenizer): W0 + the set's LoRA experts + the one trainable router of ``job``."""
    experts = load_experts(job.directory)
    model, tokenizer = load_base_model(recipe.model, device=device)
    names = experts.lora_names
    router = Router(job.name, [names.index(v) for v in job.votes], list(job.init))
    model = build_hoe_model(model, experts.lora, experts.specs, names, [router])
    c = torch.zeros(len(names) + 1)
    c[-1] = 1.0
    set_coefficients(model, c)  # every row: the router alone (its votes mix the LoRA experts)
    unfreeze_routers(model)
    return RouterPolicy(model, len(recipe.objectives)).to(device), tokenizer
