"""The backbones manifest (``<run>/manifest.json``), read and written in one place.

A training run (``training.launcher``) writes one manifest: the recipe it ran, the method, β, the objectives,
the run's reward space and one entry per trained policy (its w, where its adapter is, its own normaliser
state). Merging (``merging.write_bundle``), evaluation, the searches and ``jobs/compare.py`` read it through
:meth:`BackboneManifest.read`, which checks the format, every field's type and that the reward space is
recorded, and raises a ``ConfigError`` naming the CLI flag the path came from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from soupkitchen.config import ConfigError, LoraConfig, Recipe, from_dict, to_dict
from soupkitchen.methods import Method
from soupkitchen.reward_space import RewardSpace

BACKBONES_FORMAT = "soupkitchen.backbones/v1"
ADAPTER_FILE = "trainable.safetensors"  # inside each backbone's checkpoint directory


class BackboneEntry(BaseModel):
    """One trained policy: w, its checkpoint, its normaliser state and the run's diagnostics."""

    model_config = ConfigDict(extra="forbid")

    name: str
    weights: list[float]  # the scalarisation w it was trained on, in the run's reward space
    checkpoint: str  # a local directory (or file:// / s3:// URI from Ray Train)
    adapter_file: str = ADAPTER_FILE
    reward_normalizer: dict[str, Any] = {}  # the policy's RewardNormalizer state (frozen = the run's space)
    effective_weights: list[float] | None = None  # reward_space.effective_weights: what it really optimised
    reward_scale: float = 1.0  # factor on h = wᵀz during PPO (ppo.scale_rewards)
    resumed_from_step: int = 0
    rewards_first_steps: dict[str, float | None] = {}  # mean reward per objective, first 4 steps
    rewards_last_steps: dict[str, float | None] = {}  # ... and last 4

    def adapter_path(self, where: str = "backbones") -> Path:
        """The local adapter file; a ConfigError if the checkpoint is remote."""
        ckpt = self.checkpoint.removeprefix("file://")
        if "://" in ckpt:
            raise ConfigError(f"{where}.checkpoint", f"{ckpt} is remote; download it and pass local paths")
        return Path(ckpt) / self.adapter_file


class BackboneManifest(BaseModel):
    """The typed ``manifest.json``; ``path`` is where it was read from (not written)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["soupkitchen.backbones/v1"] = BACKBONES_FORMAT
    recipe: dict[str, Any]  # the recipe the run trained with (to_dict)
    method: Method
    beta: float | None  # Bone Soup's β; None for other methods
    objectives: list[str]
    reward_space: dict[str, Any]  # RewardSpace.to_dict(): every backbone trained in it
    backbones: list[BackboneEntry]

    @classmethod
    def read(cls, path: str | os.PathLike, flag: str = "manifest") -> BackboneManifest:
        """Read and check ``path`` (a manifest.json or a run directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "manifest.json"
        try:
            doc = json.loads(path.read_text())
        except OSError as e:
            raise ConfigError(flag, f"cannot read {path} ({e.strerror or e})") from e
        except json.JSONDecodeError as e:
            raise ConfigError(flag, f"{path} is not valid JSON ({e})") from e
        found = doc.get("format") if isinstance(doc, dict) else None
        if found != BACKBONES_FORMAT:
            raise ConfigError(flag, f"{path} is not a backbones manifest (format {found!r})")
        RewardSpace.of_manifest(doc, f"{flag} {path}")  # recorded and well-formed
        try:
            return cls.model_validate(doc)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise ConfigError(flag, f"{path}: {where}: {err['msg']}") from None

    @property
    def space(self) -> RewardSpace:
        return RewardSpace.from_dict(self.reward_space)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.backbones]

    @property
    def weights(self) -> list[list[float]]:
        return [list(b.weights) for b in self.backbones]

    def recipe_config(self) -> Recipe:
        """The recipe the run trained with, validated."""
        return from_dict(Recipe, self.recipe)

    def lora(self) -> LoraConfig:
        return from_dict(LoraConfig, self.recipe.get("lora", {}), "lora")

    def adapters(self) -> list[tuple[str, Path]]:
        """``(name, local adapter file)`` of each backbone, in order."""
        return [(b.name, b.adapter_path(f"backbones.{i}")) for i, b in enumerate(self.backbones)]

    def write(self, path: str | os.PathLike) -> Path:
        """Atomically write to ``path`` (parents created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=1))
        os.replace(tmp, path)
        return path


def write_manifest(
    path: str | os.PathLike,
    recipe: Recipe,
    method: Method | str,
    backbones: list[dict] | list[BackboneEntry],
    space: RewardSpace,
) -> Path:
    """The merging/evaluation job's input: backbones, weights, β, objectives and the run's reward space."""
    method = Method(method)
    return BackboneManifest(
        recipe=to_dict(recipe),
        method=method,
        beta=recipe.soup.beta if method is Method.BONE_SOUP else None,
        objectives=recipe.objectives,
        reward_space=space.to_dict(),
        backbones=[b if isinstance(b, BackboneEntry) else BackboneEntry(**b) for b in backbones],
    ).write(path)
