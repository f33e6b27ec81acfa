"""MOC's policy-level MOO (Algorithm 1 lines 7-9): per-sample min-norm weights on PPO's unclipped advantages.

For sample b with preference p_b, per-objective GAE advantages Â^k and the current ratio z = π/π_old:

    I(Â)  = Â where the clipped surrogate still has a gradient, else 0                         (Eq. 10)
    R̄^k_b = (r^k_b − mean_k) / (2 std_k) + offset   (running statistics per objective)          (Eq. 18)
    viol_b = 1[ MSE(R̄_b, p_b) > φ ]                                                          (Eqs. 2, 4)
    v_b[t] = Σ_k p_bk I(Â^k_bt),   v̄_b[t] = −viol_b Σ_k (R̄^k_b − p_bk) I(Â^k_bt)                   (Eq. 12)
    c_b    = argmin_{c ∈ [0, 1]} ‖c v_b + (1 − c) v̄_b‖²                                     (Algorithm 2)
    ω_bk   = c_b p_bk − (1 − c_b) viol_b (R̄^k_b − p_bk)                                    (Eqs. 5, 7)
    loss   = mean_{b,t} Σ_k ω_bk · max(−z Â^k, −clip(z, 1 ± ε) Â^k)      (ω detached; one backward pass)

The sum of per-objective clipped terms is linear in ω, so its gradient is Σ_k ω_bk ∇J^k, the scalarised
direction of Eq. 7. c is recomputed in every minibatch from the current z (on the first one z = 1 and
I(Â) = Â). The choices the paper leaves open are ``MOCConfig`` keys (docs/methods/moc.md).
"""

from __future__ import annotations

import numpy as np
import torch

from soupkitchen.config import MOCConfig, NormalizationConfig
from soupkitchen.ppo import core
from soupkitchen.ppo.objectives import global_whiten
from soupkitchen.rewards.normalization import RewardNormalizer


def unclipped_advantage(adv: torch.Tensor, ratio: torch.Tensor, clip: float) -> torch.Tensor:
    """I(A) of Eq. 10: A where (A > 0 and z ≤ 1+ε) or (A < 0 and z ≥ 1−ε), else 0 (shapes broadcast)."""
    live = ((adv > 0) & (ratio <= 1.0 + clip)) | ((adv < 0) & (ratio >= 1.0 - clip))
    return torch.where(live, adv, torch.zeros_like(adv))


def min_norm_coefficients(v: torch.Tensor, v_bar: torch.Tensor) -> torch.Tensor:
    """Algorithm 2 over the last dimension: c ∈ [0, 1] minimising ‖c v + (1 − c) v̄‖² for each row.

    c = 1 if vᵀv̄ ≥ vᵀv; c = 0 if vᵀv̄ ≥ v̄ᵀv̄; else c = (v̄ − v)ᵀv̄ / ‖v̄ − v‖² (Sener & Koltun 2018)."""
    vv, vb, bb = (v * v).sum(-1), (v * v_bar).sum(-1), (v_bar * v_bar).sum(-1)
    inner = (bb - vb) / (vv - 2 * vb + bb).clamp_min(torch.finfo(v.dtype).tiny)
    return torch.where(vb >= vv, torch.ones_like(vv), torch.where(vb >= bb, torch.zeros_like(vv), inner))


def min_norm_2(v, v_bar) -> float:
    """Algorithm 2 for two vectors (torch tensors or numpy arrays): c ∈ [0, 1]."""
    v = torch.as_tensor(np.asarray(v, dtype=np.float64) if not torch.is_tensor(v) else v, dtype=torch.float64)
    v_bar = torch.as_tensor(
        np.asarray(v_bar, dtype=np.float64) if not torch.is_tensor(v_bar) else v_bar, dtype=torch.float64
    )
    return float(min_norm_coefficients(v.reshape(-1), v_bar.reshape(-1)))


def moc_weights(c: torch.Tensor, p: torch.Tensor, gap: torch.Tensor, violated: torch.Tensor) -> torch.Tensor:
    """ω [B, K] = c p − (1 − c) 1[violated] (R̄ − p): the weights of the per-objective PPO terms (Eq. 7)."""
    c = c.unsqueeze(-1)
    return c * p - (1.0 - c) * violated.to(p.dtype).unsqueeze(-1) * gap


class MOCObjective:
    """The engine's ``PolicyObjective`` for MOC (module docstring); ``rollout.weights`` holds each row's p."""

    def __init__(self, cfg: MOCConfig, n_objectives: int, whiten: bool = True):
        self.cfg = cfg
        self.whiten = whiten and cfg.whiten == "per_objective"
        self.stats = RewardNormalizer([NormalizationConfig(kind="running")] * n_objectives)

    def targets(self, rollout, comm) -> torch.Tensor:
        """R̄ [B, K] (Eq. 18): running statistics over every worker's rows, or the run's frozen z."""
        if self.cfg.normalizer == "running":
            self.stats.update(comm.gather_rows(rollout.raw_rewards))
            z = torch.as_tensor(self.stats.normalize(rollout.raw_rewards), dtype=torch.float32)
        else:
            z = rollout.rewards.float().cpu()
        rbar = z / 2.0 + self.cfg.offset
        if self.cfg.target == "group":  # mean over the rows (every worker's) that share the preference
            p = rollout.weights.detach().double().cpu().numpy()
            every = comm.gather_rows(np.concatenate([p, rbar.double().numpy()], 1))
            k = p.shape[1]
            keys = [tuple(np.round(r, 9)) for r in every[:, :k]]
            means = {key: every[[x == key for x in keys], k:].mean(0) for key in set(keys)}
            rbar = torch.as_tensor(np.stack([means[tuple(np.round(r, 9))] for r in p]), dtype=torch.float32)
        return rbar.to(rollout.weights.device)

    def advantages(self, rollout, adv_k, mask, comm):
        rbar = self.targets(rollout, comm)
        gap = rbar - rollout.weights
        dist = (gap**2).mean(-1) if self.cfg.distance == "mse" else (gap**2).sum(-1)
        rollout.extras = {"gap": gap, "violated": dist > self.cfg.phi, "distance": dist}
        if not self.whiten:
            return adv_k
        return torch.stack([global_whiten(adv_k[..., k], mask, comm) for k in range(adv_k.shape[-1])], -1)

    def loss(self, logp, rollout, idx, mask, clip):
        adv = rollout.advantages[idx]  # [b, T, K]
        ratio = torch.exp(logp - rollout.logprobs[idx])
        p, gap, violated = rollout.weights[idx], rollout.extras["gap"][idx], rollout.extras["violated"][idx]
        with torch.no_grad():
            live = unclipped_advantage(adv, ratio.detach().unsqueeze(-1), clip) * mask.unsqueeze(-1)
            v = (live * p.unsqueeze(1)).sum(-1)
            v_bar = -violated.to(v.dtype).unsqueeze(-1) * (live * gap.unsqueeze(1)).sum(-1)
            c = min_norm_coefficients(v, v_bar)
            if self.cfg.satisfied == "linear":  # v̄ = 0: Algorithm 2 says c = 0 (no update); fall back to pᵀJ
                c = torch.where(violated, c, torch.ones_like(c))
            omega = moc_weights(c, p, gap, violated)
        z = ratio.unsqueeze(-1)
        surrogate = torch.maximum(-adv * z, -adv * torch.clamp(z, 1.0 - clip, 1.0 + clip))  # [b, T, K]
        loss = core.masked_mean((surrogate * omega.unsqueeze(1)).sum(-1), mask)
        clipped = (torch.abs(ratio - 1.0) > clip).float()
        stats = {
            "moc/c1": float(c.mean()),
            "moc/violated": float(violated.float().mean()),
            "moc/distance": float(rollout.extras["distance"][idx].mean()),
        }
        return loss, core.masked_mean(clipped, mask), stats

    def state_dict(self) -> dict:
        return {"stats": self.stats.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "stats" in state:
            self.stats.load_state_dict(state["stats"])
