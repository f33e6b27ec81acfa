"""KL-penalty coefficient controllers (Ziegler et al. 2019, as in TRL ≤ 0.11 used by the seeds)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FixedKLController:
    value: float

    def update(self, current_kl: float, n_steps: int) -> None:  # noqa: ARG002 - same interface
        return None

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


@dataclass
class AdaptiveKLController(FixedKLController):
    """η ← η · (1 + clip(KL/target − 1, −0.2, 0.2) · n_steps / horizon).

    ``current_kl`` is the mean over the batch of the summed per-token KL of a response; ``n_steps`` the
    number of responses in the batch (TRL's convention, so the paper's init 0.2 / target / horizon 10000
    carry over unchanged).
    """

    target: float = 6.0
    horizon: int = 10000

    def update(self, current_kl: float, n_steps: int) -> None:
        error = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + error * n_steps / self.horizon


def make_kl_controller(init: float, adaptive: bool, target: float, horizon: int) -> FixedKLController:
    if adaptive:
        return AdaptiveKLController(init, target, horizon)
    return FixedKLController(init)
