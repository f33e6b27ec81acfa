"""The expert manifest ``hoe.json``: every LoRA and router expert of a HoE set, read and written in one place.

A HoE directory (``hoe.build_experts``; inside a soup bundle it is ``<bundle>/hoe/``) holds ``hoe.json`` and
one safetensors file per expert: PEFT LoRA keys for a LoRA expert, ``<module>.weight`` / ``<module>.bias`` for
a router. Each entry records its λ, kind, files with sha256, and how it was made (task-SVD rank, rescale,
threshold, merge method, its sources with their sha256); a router records the N LoRA experts it votes over
(``routing.nearest`` with the index tie-break, fixed when the set is built) and its initial mix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from soupkitchen.config import ConfigError, from_dict, read_format
from soupkitchen.config.schema import Schema

HOE_FORMAT = "soupkitchen.hoe/v1"
HOE_FILE = "hoe.json"


class ExpertSource(Schema):
    name: str  # the single-objective policy a task vector came from (e.g. a Rewarded Soups specialist)
    sha256: str  # of its adapter file


class ExpertEntry(Schema):
    """One expert: a LoRA (task-SVD of one or merged task vectors) or a router over N LoRA experts."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    kind: Literal["lora", "router"]
    preference: list[float]  # λ: where on the simplex it is the expert (Eq. 9 measures distances to it)
    file: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.safetensors$")  # a file of the HoE directory
    sha256: str
    r: int | None = Field(None, ge=1)  # LoRA rank (alpha = r: scaling 1, the rescale is in the factors)
    rescale: float | None = None  # task-SVD rescale s
    threshold: float | None = None  # |τ| below it pruned (global over the task vector's modules)
    merge: Literal["linear", "ties"] | None = None  # Eq. 4's merge (multi-objective LoRA experts)
    sources: list[ExpertSource] = []
    relative_error: float | None = None  # ‖BA/s − τ‖_F / ‖τ‖_F over all modules (pruning + truncation)
    votes: list[str] = []  # router: the N LoRA experts it votes over, nearest first
    init: list[float] = []  # router: its initial mix over ``votes`` (λ's barycentric weights)
    pool: Literal["all", "single"] | None = None  # router: chosen among all LoRA experts or single-objective
    training: dict[str, Any] = {}  # router: steps, OMD step, z*, final w, checkpoint


class HoEManifest(Schema):
    """The typed ``hoe.json`` (module docstring)."""

    format: Literal["soupkitchen.hoe/v1"] = HOE_FORMAT
    objectives: list[str]
    base: dict[str, Any]  # {"model": ModelConfig as dict}: W0 of every expert
    target_modules: list[str]
    reward_space: dict[str, Any]  # RewardSpace.to_dict() the sources were trained in (z*, metrics)
    keep_fraction: float = Field(gt=0, le=1)
    experts: list[ExpertEntry]
    fidelity: dict[
        str, Any
    ] = {}  # per single-objective expert: its z vs its dense parent's, on its objective
    ideal: list[float] | None = None  # z* of the routers' Tchebycheff objective (Eq. 6)

    @model_validator(mode="after")
    def _consistent(self) -> HoEManifest:
        n = len(self.objectives)
        names = [e.name for e in self.experts]
        if len(set(names)) != len(names):
            raise ConfigError("experts", f"expert names must be unique, got {names}")
        lora = {e.name for e in self.experts if e.kind == "lora"}
        if not lora:
            raise ConfigError("experts", "needs at least one LoRA expert")
        for i, e in enumerate(self.experts):
            lam = e.preference
            if len(lam) != n or any(x < 0 for x in lam) or abs(sum(lam) - 1) > 1e-6:
                raise ConfigError(f"experts.{i}.preference", f"must be on the {n}-simplex, got {lam}")
            if e.kind == "lora" and e.r is None:
                raise ConfigError(f"experts.{i}.r", "a LoRA expert needs its rank")
            if e.kind == "router":
                if e.pool is None:
                    raise ConfigError(f"experts.{i}.pool", "a router says which LoRA experts it chose from")
                if len(e.votes) != n or len(set(e.votes)) != n or not set(e.votes) <= lora:
                    raise ConfigError(
                        f"experts.{i}.votes", f"must name {n} distinct LoRA experts of the set, got {e.votes}"
                    )
                if len(e.init) != n or abs(sum(e.init) - 1) > 1e-6 or min(e.init) < 0:
                    raise ConfigError(
                        f"experts.{i}.init", f"must be {n} mix weights summing to 1, got {e.init}"
                    )
        if self.ideal is not None and len(self.ideal) != n:
            raise ConfigError("ideal", f"needs one z* per objective ({n}), got {self.ideal}")
        return self

    @property
    def lora(self) -> list[ExpertEntry]:
        return [e for e in self.experts if e.kind == "lora"]

    @property
    def routers(self) -> list[ExpertEntry]:
        return [e for e in self.experts if e.kind == "router"]

    @classmethod
    def read(cls, directory: str | os.PathLike, flag: str = "--hoe") -> HoEManifest:
        path = Path(directory) / HOE_FILE
        if not path.is_file():
            raise ConfigError(flag, f"{path} not found; build the experts with jobs/build_hoe.py")
        doc = read_format(path, flag, HOE_FORMAT, "HoE expert manifest")
        try:
            return from_dict(cls, doc)
        except ConfigError as err:
            raise ConfigError(f"{flag} {HOE_FILE} {err.path}", err.msg) from None

    def write(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / HOE_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=1))
        os.replace(tmp, path)
        return path


def describe(doc: HoEManifest) -> str:
    """The set for people: one line per expert (λ, kind, rank, extraction error, votes), fidelity, z*."""
    lines = []
    for e in doc.experts:
        lam = "[" + ", ".join(f"{x:.2f}" for x in e.preference) + "]"
        if e.kind == "lora":
            how = f"merge {e.merge}" if e.merge else "single-objective"
            lines.append(f"  {e.name:<20} lora   λ={lam} r={e.r} ‖BA−τ‖/‖τ‖={e.relative_error:.3f} ({how})")
        else:
            init = ", ".join(f"{x:.2f}" for x in e.init)
            lines.append(f"  {e.name:<20} router λ={lam} votes {e.votes} from [{init}]")
    for name, f in doc.fidelity.items():
        d, lo, hi = f["difference"]
        lines.append(
            f"  fidelity {name}: z_{f['objective']} {f['expert_z']:.3f} vs parent {f['parent']} "
            f"{f['parent_z']:.3f} (Δ {d:+.3f} [{lo:+.3f}, {hi:+.3f}], {f['prompts']} prompts)"
        )
    if doc.ideal is not None:
        lines.append("  z* = [" + ", ".join(f"{x:.3f}" for x in doc.ideal) + "]")
    return "\n".join(lines)
