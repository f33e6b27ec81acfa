"""HoE (hierarchical experts, docs/methods/hoe.md): how the LoRA experts are extracted and merged, where the
router experts sit and how they train. The paper leaves most of these open; each is a key so a run records
the choice it made."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from soupkitchen.config.schema import Schema
from soupkitchen.errors import ConfigError


class HoEConfig(Schema):
    """Task-SVD (Sec. 3.1, App. D.1), the multi-objective merges (Eq. 4) and the router experts (Eqs. 5-8).

    ``mo_experts`` / ``routers`` None: the paper's configuration for n objectives (App. D.2): the simplex
    centre as the one MO LoRA expert; one router between a single-objective expert and the centre."""

    rank: int | None = Field(None, ge=1)  # task-SVD rank r of every LoRA expert (None: lora.r)
    keep_fraction: float = Field(0.6, gt=0.0, le=1.0)  # global magnitude pruning keeps this share (D.1: 60%)
    rescale: float = Field(1.0, gt=0.0)  # task-SVD rescale s (D.1 tunes it per expert: 1.9 for math)
    merge: Literal["linear", "ties"] = "ties"  # Merge of Eq. 4 on the dense task vectors (PEFT's merge_utils)
    merge_density: float = Field(1.0, gt=0.0, le=1.0)  # TIES trim density (the task-SVD prunes afterwards)
    mo_experts: list[list[float]] | None = None  # λ of each multi-objective LoRA expert (None: the centre)
    routers: list[list[float]] | None = None  # λ of each router expert (None: one per D.2, see docstring)
    router_steps: int | None = Field(None, ge=1)  # PPO steps per router (None: ppo.steps, a backbone's)
    router_learning_rate: float = Field(1e-3, gt=0.0)  # W starts at 0: a LoRA's rate barely moves it
    omd_step: float = Field(0.5, gt=0.0)  # α of the OMD-STCH update, Eq. 18 (not given by the paper)
    ideal_offset: float = Field(0.0)  # z*_i = expert i's mean z on objective i + this (Eq. 6's z*)
    ablation: bool = False  # also train each router over the single-objective experts (Sec. 6.1's "1 Router")

    @model_validator(mode="after")
    def _rows_on_simplex(self):
        for key in ("mo_experts", "routers"):
            for i, lam in enumerate(getattr(self, key) or []):
                if not lam or any(x < 0 for x in lam) or abs(sum(lam) - 1.0) > 1e-6:
                    raise ConfigError(
                        f"{key}.{i}", f"must be a preference on the simplex (≥ 0, summing to 1), got {lam}"
                    )
        return self

    def mo_preferences(self, n: int) -> list[list[float]]:
        """λ of the MO LoRA experts for n objectives (App. D.2: the centre; none for n = 1)."""
        if self.mo_experts is not None:
            return [list(map(float, x)) for x in self.mo_experts]
        return [[1.0 / n] * n] if n > 1 else []

    def router_preferences(self, n: int) -> list[list[float]]:
        """λ of the router experts. App. D.2 adds one for n = 2 "based on the evaluation result": ours sits
        halfway between e_1 and the centre, [0.75, 0.25]; for n > 2 the paper's 3-objective [.25, .25, .5]."""
        if self.routers is not None:
            return [list(map(float, x)) for x in self.routers]
        if n == 1:
            return []
        if n == 2:
            return [[0.75, 0.25]]
        return [[0.5 / (n - 1)] * (n - 1) + [0.5]]
