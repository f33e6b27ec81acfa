"""The few collectives the PPO loop needs: the same loop runs in one process or across Ray Train workers."""

from __future__ import annotations

import numpy as np
import torch


class LocalComm:
    """Single process: every collective is the identity."""

    world_size = 1
    rank = 0

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def gather_rows(self, x: np.ndarray) -> np.ndarray:
        return x


class TorchDistComm(LocalComm):
    """``torch.distributed`` collectives (gloo on CPU, nccl on GPU) over the default process group."""

    def __init__(self, device: torch.device | str = "cpu"):
        import torch.distributed as dist

        self.dist = dist
        self.world_size = dist.get_world_size()
        self.rank = dist.get_rank()
        self.device = torch.device(device)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        y = x.detach().to(self.device, torch.float64).clone()
        self.dist.all_reduce(y)
        return y.to(x.device, x.dtype)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.sum(x) / self.world_size

    def gather_rows(self, x: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float64, device=self.device)
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        self.dist.all_gather(parts, t)
        return torch.cat(parts).cpu().numpy()
