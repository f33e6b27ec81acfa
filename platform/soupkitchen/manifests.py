"""The two documents runs hand on: the backbones manifest (``<run>/manifest.json``) and the soup bundle's
``bundle.json``, each read and written in one place.

A training run (``training.launcher``) writes one manifest: the recipe it ran, the method, β, the objectives,
the run's reward space and one entry per trained policy (its w, where its adapter is, its own normaliser
state). Merging (``merging.write_bundle``), evaluation, the searches and ``jobs/compare.py`` read it through
:meth:`BackboneManifest.read`, which checks the format, every field's type and that the reward space is
recorded, and raises a ``ConfigError`` naming the CLI flag the path came from.

A soup bundle (``merging.write_bundle``; served by ``serving``) is a directory with ``bundle.json`` and
``adapters/<name>.safetensors``. :class:`BundleManifest` is its typed ``bundle.json``: every field and
cross-field rule (one adapter per objective, β in the circulant's range, one normalisation entry per
objective, the reward space agreeing with it...) is checked on read, before any tensor is loaded;
``merging.load_bundle`` then checks the files (sha256, ranks, shapes) against it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from soupkitchen.conditioning import Conditioning
from soupkitchen.config import ConfigError, LoraConfig, Recipe, from_dict, read_format, to_dict
from soupkitchen.config.schema import Schema
from soupkitchen.methods import Method
from soupkitchen.preferences import circulant_matrix
from soupkitchen.reward_space import RewardSpace

BACKBONES_FORMAT = "soupkitchen.backbones/v1"
ADAPTER_FILE = "trainable.safetensors"  # inside each backbone's checkpoint directory
BUNDLE_FORMAT = "soupkitchen.soup/v1"
BUNDLE_FILE = "bundle.json"


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
    train_seconds: float | None = None  # wall time of its Ray Train fit in the launch that finished it
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
    conditioning: Conditioning | None = None  # MOC / RiC: how μ enters the prompt of its one policy

    @model_validator(mode="after")
    def _conditioned_methods_say_how(self):
        if self.method.conditioned and (self.conditioning is None or len(self.backbones) != 1):
            raise ValueError(f"a {self.method} manifest holds one policy and its conditioning block")
        return self

    @classmethod
    def read(cls, path: str | os.PathLike, flag: str = "manifest") -> BackboneManifest:
        """Read and check ``path`` (a manifest.json or a run directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "manifest.json"
        doc = read_format(path, flag, BACKBONES_FORMAT, "backbones manifest")
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
    conditioning: Conditioning | None = None,
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
        conditioning=conditioning,
    ).write(path)


# --------------------------------------------------------------------------------------------- bundle.json


class AdapterEntry(Schema):
    """One adapter file of a bundle (a backbone, or with ``objective`` a value model)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # also its file name
    file: str  # relative to the bundle directory
    sha256: str
    r: int = Field(ge=1)
    alpha: float = Field(gt=0)
    use_rslora: bool = False


class ValueEntry(AdapterEntry):
    objective: str  # the objective this value model scores (MAGE-E)


class ConditionedEntry(AdapterEntry):
    """A conditioned policy shipped with the soup (MOC, RiC): decoded alone (c = 1), prompt relabeled."""

    method: Literal["moc", "ric"]  # also its serving mode
    conditioning: Conditioning


class Normalization(Schema):
    mean: float
    std: float = Field(gt=0)  # 1.0 for raw rewards


class BundleManifest(Schema):
    """The typed ``bundle.json`` of a soup bundle (module docstring)."""

    format: Literal["soupkitchen.soup/v1"] = BUNDLE_FORMAT
    base: dict[str, Any]  # a reference to W0, e.g. {"model": ModelConfig as dict}
    objectives: list[str]
    adapters: list[AdapterEntry]  # one backbone per objective, in objective order
    target_modules: list[str]  # the LoRA targets every adapter shares
    modules: dict[str, list[int]]  # base layer → [in, out] features, checked against the tensors
    beta: float | None  # Bone Soup's β; None: Rewarded Soups (B = I)
    alpha: float = Field(ge=0)  # extrapolation strength of c = (1+α)B⁻¹μ
    gamma: float | None = Field(default=None, ge=0)  # default guidance strength (guided modes)
    normalization: dict[str, Normalization]  # objective → the reward space's {mean, std}
    ref_point: list[float]  # the hypervolume reference point, one value per objective
    value_models: list[ValueEntry] = []  # MAGE-E value models, one per objective, in objective order
    conditioned: list[ConditionedEntry] = []  # MOC / RiC policies served beside the soup (one per method)
    hoe: Literal["hoe"] | None = None  # HoE's expert set: the directory holding its hoe.json (hoe.manifest)
    hoe_sha256: str | None = None  # of that hoe.json (each expert file's own sha256 is inside it)
    reward_space: dict[str, Any] | None = None  # RewardSpace.to_dict() of the run
    diagnostics: dict[str, Any] = {}  # facts about the trained backbones (effective_B...)

    @model_validator(mode="after")
    def _consistent(self) -> BundleManifest:
        if not self.base:
            raise ConfigError(
                "base", "must be a non-empty mapping referencing W0 (e.g. {'model': ModelConfig})"
            )
        n, objectives = len(self.objectives), self.objectives
        if not n or not all(objectives) or len(set(objectives)) != n:
            raise ConfigError("objectives", f"must be a non-empty list of unique names, got {objectives}")
        if len(self.adapters) != n:
            raise ConfigError(
                "adapters",
                f"has {len(self.adapters)} adapters but there are {n} objectives; one per objective",
            )
        if not self.target_modules:
            raise ConfigError("target_modules", "must be the non-empty list of LoRA targets")
        names = [a.name for a in self.adapters]
        if len(set(names)) != n:
            raise ConfigError("adapters", f"adapter names must be unique, got {names}")
        if self.value_models:
            if [v.objective for v in self.value_models] != objectives:
                raise ConfigError(
                    "value_models", f"must list one value model per objective {objectives}, in order"
                )
            clash = sorted({v.name for v in self.value_models} & set(names))
            if clash:
                raise ConfigError("value_models", f"names {clash} clash with adapters")
        methods = [c.method for c in self.conditioned]
        if len(set(methods)) != len(methods):
            raise ConfigError("conditioned", f"holds at most one policy per method, got {methods}")
        clash = sorted(
            {c.name for c in self.conditioned} & (set(names) | {v.name for v in self.value_models})
        )
        if clash:
            raise ConfigError("conditioned", f"names {clash} clash with other adapters")
        if self.beta is not None:
            try:
                circulant_matrix(n, self.beta)
            except ValueError as err:
                raise ConfigError("beta", f"{err}; use null for Rewarded Soups (B = I)") from None
        if set(self.normalization) != set(objectives):
            raise ConfigError(
                "normalization",
                f"needs exactly one entry per objective {objectives}, got {sorted(self.normalization)}",
            )
        if self.reward_space is not None:
            space = RewardSpace.from_dict(self.reward_space, "reward_space")
            if space.objectives != objectives or space.normalization() != self.normalization_dict():
                raise ConfigError(
                    "reward_space", "disagrees with objectives/normalization; re-write the bundle"
                )
        if (self.hoe is None) != (self.hoe_sha256 is None):
            raise ConfigError("hoe_sha256", "hoe and hoe_sha256 go together; re-attach the HoE set")
        if len(self.ref_point) != n:
            raise ConfigError("ref_point", f"must list one value per objective ({n}), got {self.ref_point}")
        return self

    def normalization_dict(self) -> dict[str, dict[str, float]]:
        return {o: self.normalization[o].model_dump() for o in self.objectives}

    @property
    def space(self) -> RewardSpace | None:
        return None if self.reward_space is None else RewardSpace.from_dict(self.reward_space)

    @classmethod
    def read(cls, directory: str | os.PathLike) -> BundleManifest:
        """``<directory>/bundle.json``, checked; a ConfigError naming the field and the fix."""
        path = Path(directory) / BUNDLE_FILE
        if not path.is_file():
            raise ConfigError(BUNDLE_FILE, f"not found in {directory}; write the bundle with write_bundle")
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(BUNDLE_FILE, f"is not valid JSON ({err}); re-write the bundle") from None
        found = doc.get("format") if isinstance(doc, dict) else None
        if found != BUNDLE_FORMAT:
            raise ConfigError("format", f"expected {BUNDLE_FORMAT!r}, got {found!r}; not a soup bundle")
        return from_dict(cls, doc)

    def write(self, directory: str | os.PathLike) -> Path:
        """``<directory>/bundle.json`` (the directory exists; ``merging.write_bundle`` makes it atomic)."""
        path = Path(directory) / BUNDLE_FILE
        path.write_text(json.dumps(self.model_dump(mode="json", exclude_defaults=False), indent=1))
        return path
