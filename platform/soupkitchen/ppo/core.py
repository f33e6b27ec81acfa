"""PPO tensor math, vectorised over objectives. Shapes: B rows, T response tokens, K objectives.

Per-objective token rewards (MOC §1.11, the KL term in every stream):
    r^k_t = −η · KL_t + 1[t = T_b] · R^k_b,    KL_t = log π(y_t) − log π_ref(y_t)
GAE per objective (Schulman et al. 2016), γ and λ from the recipe:
    δ^k_t = r^k_t + γ V^k_{t+1} − V^k_t,      Â^k_t = Σ_l (γλ)^l δ^k_{t+l},   returns^k = Â^k + V^k
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, mean=None, var=None, shift_mean=True) -> torch.Tensor:
    """(x − mean) / std over the masked entries; ``mean``/``var`` may come from an all-reduce."""
    if mean is None:
        mean = masked_mean(x, mask)
        var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(tokens) under ``logits / temperature`` (the sampling distribution of the rollout)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_of(logits: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def token_rewards(
    terminal: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """r^k_t = −η·KL_t + 1[t = last response token]·R^k: [B, T, K] from terminal [B, K] and KL [B, T]."""
    rewards = (-kl_coef * kl * mask).unsqueeze(-1).repeat(1, 1, terminal.shape[-1])
    last = mask.long().cumsum(-1).argmax(-1)  # index of the last unmasked token
    rows = torch.arange(terminal.shape[0], device=terminal.device)
    rewards[rows, last] += terminal
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Advantages and returns per objective: rewards and values [B, T, K], mask [B, T]."""
    m = mask.to(values.dtype).unsqueeze(-1)
    values = values * m
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    T = values.shape[1]
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * m[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


def policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, clip: float
):
    """Clipped surrogate (PPO Eq. 7): mean_t max(−Â·ρ, −Â·clip(ρ, 1±ε)); returns loss and clip fraction."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac


def value_loss(values, old_values, returns, mask, clip: float):
    """Clipped value loss, averaged over objectives: ½·max((V−G)², (clip(V, V_old ± ε)−G)²)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    err = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2).mean(-1)
    return 0.5 * masked_mean(err, mask)
