"""Policy objectives: how the per-objective advantages Â^k [B, T, K] become one PPO policy loss.

The trainer computes token rewards, values and per-objective GAE the same way for every method, then asks
its objective to (1) turn Â^k into what the update epochs read (``advantages``) and (2) compute the policy
loss of one minibatch (``loss``). ``LinearObjective`` is the scalarised PPO of the soups and MORLHF;
MOC's min-norm objective (``soupkitchen.moc.MOCObjective``) implements the same protocol.
"""

from __future__ import annotations

from typing import Protocol

import torch

from soupkitchen.ppo import core


class PolicyObjective(Protocol):
    def advantages(self, rollout, adv_k: torch.Tensor, mask: torch.Tensor, comm) -> torch.Tensor:
        """What the update epochs read as ``rollout.advantages`` (may also set ``rollout.extras``)."""

    def loss(self, logp, rollout, idx, mask, clip: float) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(policy loss, clip fraction, extra float stats) of the minibatch ``idx``."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def global_whiten(x: torch.Tensor, mask: torch.Tensor, comm) -> torch.Tensor:
    """``core.masked_whiten`` with the mean and variance over every worker's tokens."""
    count = comm.sum(mask.sum())
    mean = comm.sum((x * mask).sum()) / count
    var = comm.sum((((x - mean) * mask) ** 2).sum()) / count
    return core.masked_whiten(x, mask, mean, var)


class LinearObjective:
    """Â = Σ_k ω_k Â^k (whitened if ``whiten``) in one clipped surrogate: linear ω with Σω = 1 makes Â the GAE
    of the scalarised reward h = ωᵀR under the scalarised critic ωᵀV (Bone Soup Eq. 6, RS, MORLHF)."""

    def __init__(self, whiten: bool = True):
        self.whiten = whiten

    def advantages(self, rollout, adv_k, mask, comm):
        adv = (adv_k * rollout.weights.unsqueeze(1)).sum(-1)
        return global_whiten(adv, mask, comm) if self.whiten else adv

    def loss(self, logp, rollout, idx, mask, clip):
        pg, clipfrac = core.policy_loss(logp, rollout.logprobs[idx], rollout.advantages[idx], mask, clip)
        return pg, clipfrac, {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
