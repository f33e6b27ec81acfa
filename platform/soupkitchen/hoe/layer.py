"""The HoE layer: the mixing layer's coefficient row, with router experts adding per-token terms (Eqs. 11-12).

A HoE model is the per-row mixing layer (``merging.mixed``) over a stack of m LoRA adapters, followed by R
router slots. A row's coefficient vector is [c_1..c_m, ω_1..ω_R]: c holds the preference-routing weights ω_r
of the selected LoRA experts (constant per row), ω_k the weight of router expert k. Per token and module,

    ω_l(x) = c + Σ_k ω_k · scatter_{votes_k}( softmax(W_k x + b_k) )           (Eq. 11, LoRA j ≡ router e_j)
    y      = W0 x + Σ_j ω_l,j(x) · s_j B_j A_j x                                (Eq. 12)

W_k [N, in], b_k [N] read the same x as the LoRA A matrices; votes_k are the N LoRA experts router k votes
over. A batch whose rows select no router never computes a router (the per-row fast path); the reference
policy of router training replaces softmax(W_k x + b_k) by its initial value (``HoEState.reference``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from soupkitchen.merging.mixed import MixedLoRALinear, MixState, build_mixed_model, mix_state


@dataclass
class Router:
    """One router expert: its slot name, the stack positions of the N LoRA experts it votes over, the initial
    mix (λ_r's barycentric weights over them) and, when trained, ``{module path: (W [N, in], b [N])}``."""

    name: str
    votes: list[int]
    init: list[float]
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


class HoEState(MixState):
    """The coefficient state of a HoE model: n = m LoRA slots + R router slots (module docstring)."""

    def __init__(self, m: int, names: list[str], routers: Sequence[Router]):
        super().__init__(m + len(routers), names + [r.name for r in routers])
        self.m = m
        self.routers = list(routers)
        self.reference = False  # routers emit their initial mix: π_ref of router training
        self._seen: torch.Tensor | None = None
        self._routed = False

    def routed(self) -> bool:
        """Whether any row of the current coefficients selects a router (computed once per tensor set, not
        once per module: on CUDA each check is a device sync)."""
        if self.c is not self._seen:
            self._seen, self._routed = self.c, bool(self.routers) and bool((self.c[..., self.m :] != 0).any())
        return self._routed


class HoELoRALinear(MixedLoRALinear):
    """``MixedLoRALinear`` whose coefficients gain the router experts' per-token votes (Eq. 11)."""

    def __init__(self, base_layer, ab, scaling, state: HoEState, module: str):
        super().__init__(base_layer, ab, scaling, state)
        R, N = len(state.routers), len(state.routers[0].votes) if state.routers else 0
        self.R, self.N = R, N
        w = base_layer.weight
        weight = torch.zeros(R * N, self.in_features, dtype=torch.float32)
        bias = torch.tensor([math.log(max(p, 1e-8)) for r in state.routers for p in r.init])
        for k, r in enumerate(state.routers):
            if module in r.weights:
                W, b = r.weights[module]
                if tuple(W.shape) != (N, self.in_features) or tuple(b.shape) != (N,):
                    raise ValueError(
                        f"router {r.name}: {module!r} has W {tuple(W.shape)}, b {tuple(b.shape)}; expected "
                        f"[{N}, {self.in_features}] and [{N}] (a router of another base model or expert set)"
                    )
                weight[k * N : (k + 1) * N], bias[k * N : (k + 1) * N] = W.float(), b.float()
        self.router_weight = nn.Parameter(weight.to(w.device), requires_grad=False)
        self.router_bias = nn.Parameter(bias.to(w.device, torch.float32), requires_grad=False)
        votes = [j for r in state.routers for j in r.votes]
        self.register_buffer(
            "votes", torch.tensor(votes, dtype=torch.long, device=w.device), persistent=False
        )
        init = torch.tensor([p for r in state.routers for p in r.init], dtype=torch.float32)
        self.register_buffer("init", init.to(w.device), persistent=False)

    def router_probs(self, x: torch.Tensor) -> torch.Tensor:
        """softmax(W_k x + b_k) over each router's N experts: [.., seq, R, N] (float32)."""
        logits = F.linear(x.float(), self.router_weight.float(), self.router_bias.float())  # bf16 engines too
        return logits.unflatten(-1, (self.R, self.N)).softmax(-1)

    def coefficients(self, x: torch.Tensor) -> torch.Tensor:
        c = self.mix.rows_for(x)
        static, w = c[..., : self.n], c[..., self.n :]
        if not self.mix.routed():
            return static
        if self.mix.reference:
            p = self.init.view(*([1] * (x.ndim - 1)), self.R, self.N)
        else:
            p = self.router_probs(x)
        votes = (w.unsqueeze(-1) * p).flatten(-2)  # [b, seq|1, R·N]
        shape = torch.broadcast_shapes(static.shape[:-1], votes.shape[:-1])
        out = static.expand(*shape, self.n).index_add(-1, self.votes, votes.expand(*shape, votes.shape[-1]))
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", routers={self.R}"


def build_hoe_model(
    model: nn.Module,
    adapters: Sequence[Mapping[str, torch.Tensor]],
    lora_config,
    names: Sequence[str],
    routers: Sequence[Router],
) -> nn.Module:
    """``build_mixed_model`` with ``HoELoRALinear`` layers and the router slots after the m adapters.

    Coefficients are [m + R] per row (``set_coefficients``): the routing weights of the LoRA adapters, then
    each router's weight. Router weights absent from ``Router.weights`` start at W = 0, b = log(init)."""
    n_objectives = {len(r.votes) for r in routers}
    if len(n_objectives) > 1:
        raise ValueError(f"every router must vote over the same number of experts, got {n_objectives}")
    for r in routers:
        if any(not 0 <= j < len(adapters) for j in r.votes) or len(r.init) != len(r.votes):
            raise ValueError(
                f"router {r.name}: votes {r.votes} / init {r.init} do not fit {len(adapters)} adapters"
            )
    state = HoEState(len(adapters), list(names), routers)
    model = build_mixed_model(
        model,
        adapters,
        lora_config,
        names,
        state=state,
        layer=lambda module, base, ab, scaling, st: HoELoRALinear(base, ab, scaling, st, module),
    )
    modules = {name for name, _ in hoe_layers(model)}
    for r in routers:
        if r.weights and set(r.weights) != modules:
            diff = sorted(set(r.weights) ^ modules)
            raise ValueError(
                f"router {r.name}: its weights cover other modules than the experts (differ on {diff[:3]}); "
                "a router of another expert set or target list"
            )
    return model


def hoe_layers(model: nn.Module) -> Iterator[tuple[str, HoELoRALinear]]:
    return ((name, m) for name, m in model.named_modules() if isinstance(m, HoELoRALinear))


def router_state_dict(model: nn.Module, k: int = 0) -> dict[str, torch.Tensor]:
    """Router k's weights as ``{"<module>.weight": W [N, in], "<module>.bias": b [N]}`` (CPU, contiguous)."""
    out = {}
    for name, layer in hoe_layers(model):
        N = layer.N
        out[f"{name}.weight"] = layer.router_weight[k * N : (k + 1) * N].detach().cpu().contiguous()
        out[f"{name}.bias"] = layer.router_bias[k * N : (k + 1) * N].detach().cpu().contiguous()
    return out


def router_weights(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``router_state_dict`` → ``Router.weights``."""
    modules = {k.rsplit(".", 1)[0] for k in state}
    missing = [m for m in modules if f"{m}.weight" not in state or f"{m}.bias" not in state]
    if missing:
        raise ValueError(f"router file lacks the weight or bias of {missing[:3]}")
    return {m: (state[f"{m}.weight"], state[f"{m}.bias"]) for m in sorted(modules)}


def unfreeze_routers(model: nn.Module) -> list[nn.Parameter]:
    """Freeze every weight but the routers'; return the router parameters (the only ones PPO trains)."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for _, layer in hoe_layers(model):
        for p in (layer.router_weight, layer.router_bias):
            p.requires_grad_(True)
            params.append(p)
    return params


@contextlib.contextmanager
def reference_routers(model: nn.Module) -> Iterator[None]:
    """Routers emit their initial mix inside the context (the linear mix at λ_r's barycentric weights)."""
    state = mix_state(model)
    previous, state.reference = state.reference, True
    try:
        yield
    finally:
        state.reference = previous
