"""Scalarisation: per-sample weights ω[b, k] that turn the objective vector into one training signal.

The PPO engine keeps rewards, values and advantages as vectors (one stream per objective) and asks a
scalariser for ω at the end: A_b,t = Σ_k ω_b,k · Â^k_b,t. This keeps fixed backbone weights
(Bone Soup column w_i of B(β), Rewarded Soups e_i, MORLHF μ), per-sample preferences (MOC) and
Tchebycheff weights (HoE) behind one interface.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


def check_simplex(w: np.ndarray, what: str) -> None:
    """Rows must be ≥ 0 and sum to 1: otherwise Σ_k ω_k Â^k silently rescales the KL term of every stream."""
    sums = w.sum(-1)
    if np.any(w < -1e-9) or np.any(np.abs(sums - 1.0) > 1e-6):
        raise ValueError(
            f"scalarisation {what} must be non-negative and sum to 1, got sums {sums[:4].tolist()}"
        )


class Scalarizer(Protocol):
    def weights(self, rewards: torch.Tensor, preferences: torch.Tensor | None = None) -> torch.Tensor:
        """ω of shape [batch, n_objectives] for the batch's (normalised) terminal rewards [batch, n]."""


class FixedWeights:
    """ω_b = w for every sample: h = wᵀr (Bone Soup Eq. 6 with w = column i of B; RS w = e_i)."""

    def __init__(self, w):
        w = np.asarray(w, dtype=np.float64)
        if w.ndim != 1 or not np.all(np.isfinite(w)):
            raise ValueError(f"scalarisation weights must be a finite 1-D vector, got {w!r}")
        check_simplex(w[None, :], "w")
        self.w = torch.as_tensor(w, dtype=torch.float32)

    def weights(self, rewards: torch.Tensor, preferences: torch.Tensor | None = None) -> torch.Tensor:
        if rewards.shape[-1] != self.w.numel():
            raise ValueError(f"{rewards.shape[-1]} objectives scored but {self.w.numel()} weights given")
        return self.w.to(rewards.device).expand(rewards.shape[0], -1)


class PerSamplePreference:
    """ω_b = μ_b: each sample carries its own preference (MOC-style conditioning)."""

    def weights(self, rewards: torch.Tensor, preferences: torch.Tensor | None = None) -> torch.Tensor:
        if preferences is None or preferences.shape != rewards.shape:
            raise ValueError("per-sample scalarisation needs a preference [batch, n] for every sample")
        check_simplex(preferences.detach().cpu().double().numpy(), "preferences")
        return preferences.to(rewards.device, torch.float32)


class Tchebycheff:
    """ω_b = one-hot at argmax_k μ_k (z*_k − r_b,k): the objective furthest behind the ideal point z*."""

    def __init__(self, mu, ideal):
        self.mu = torch.as_tensor(np.asarray(mu, dtype=np.float64), dtype=torch.float32)
        self.ideal = torch.as_tensor(np.asarray(ideal, dtype=np.float64), dtype=torch.float32)

    def weights(self, rewards: torch.Tensor, preferences: torch.Tensor | None = None) -> torch.Tensor:
        gap = self.mu.to(rewards.device) * (self.ideal.to(rewards.device) - rewards)
        return torch.nn.functional.one_hot(gap.argmax(-1), rewards.shape[-1]).to(torch.float32)


class OMDTchebycheff:
    """ω = w for every sample, with w updated once per batch by online mirror descent on the Tchebycheff
    objective (HoE Eqs. 6-7 and 18): log w_i ← log w_i + α λ_i (z*_i − R̄_i), renormalised to Σ w = 1, where
    R̄ is the batch's mean reward vector over every worker (``comm``). Starts at w = λ. The mixed advantage
    Σ_i w_i Â^i (Eq. 19) is then the linear objective's. ``state_dict`` keeps w across a resume."""

    def __init__(self, preference, ideal, step: float, comm=None):
        lam = np.asarray(preference, dtype=np.float64)
        check_simplex(lam[None, :], "λ")
        self.lam = torch.as_tensor(lam, dtype=torch.float64)
        self.ideal = torch.as_tensor(np.asarray(ideal, dtype=np.float64))
        if self.ideal.shape != self.lam.shape:
            raise ValueError(f"z* has {self.ideal.numel()} entries for {self.lam.numel()} objectives")
        self.step, self.comm = float(step), comm
        self.log_w = torch.log(self.lam.clamp(min=1e-12))

    @property
    def w(self) -> torch.Tensor:
        return torch.softmax(self.log_w, -1)

    def weights(self, rewards: torch.Tensor, preferences: torch.Tensor | None = None) -> torch.Tensor:
        mean = rewards.detach().double().mean(0).cpu()
        if self.comm is not None:
            mean = self.comm.mean(mean)
        self.log_w = torch.log(self.w) + self.step * self.lam * (self.ideal - mean)
        return self.w.to(rewards.device, torch.float32).expand(rewards.shape[0], -1)

    def stats(self) -> dict[str, float]:
        return {f"omd/w{i}": float(x) for i, x in enumerate(self.w)}

    def state_dict(self) -> dict:
        return {"log_w": self.log_w.tolist()}

    def load_state_dict(self, state: dict) -> None:
        if "log_w" in state:
            self.log_w = torch.tensor(state["log_w"], dtype=torch.float64)
