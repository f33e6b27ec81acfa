"""What an evaluation compares: backbones from a manifest or a soup bundle, all in one reward space."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from soupkitchen.conditioning import Conditioning
from soupkitchen.config import ConfigError, Recipe, model_differences, to_dict
from soupkitchen.manifests import BackboneManifest
from soupkitchen.merging import load_bundle
from soupkitchen.methods import SOUPS
from soupkitchen.preferences import backbone_weights
from soupkitchen.reward_space import RewardSpace


@dataclass
class BackboneSource:
    """The trained backbones of one method, read from a backbones manifest or a soup bundle."""

    method: str
    path: Path
    objectives: list[str]
    beta: float | None
    names: list[str]
    weights: list[list[float]]  # w_j of each backbone (its scalarisation during PPO)
    adapters: list[Path]
    lora: list  # one LoraConfig / LoraSpec per adapter
    model: dict | None  # the ModelConfig (as dict) the backbones were trained on, when recorded
    space: RewardSpace  # the reward space the backbones were trained in
    conditioning: Conditioning | None = None  # MOC / RiC: how μ enters the prompt of the one policy


def read_source(path: str | Path, method: str | None = None, flag: str | None = None) -> BackboneSource:
    """A backbones manifest (``train_backbones``' manifest.json) or a soup bundle directory.

    ``method`` (if given) must match what the file says; ``flag`` names the CLI option in errors.
    """
    path = Path(path)
    flag = flag or f"--{(method or 'source').replace('_', '-')}"
    if path.is_dir() and (path / "bundle.json").is_file():
        return _from_bundle(path, method, flag)
    if path.is_dir() and (path / "manifest.json").is_file():
        path = path / "manifest.json"
    if not path.is_file():
        raise ConfigError(flag, f"{path} is neither a backbones manifest.json nor a soup bundle directory")
    doc = BackboneManifest.read(path, flag)
    if method and doc.method != method:
        raise ConfigError(flag, f"{path} holds {doc.method} backbones, not {method}")
    files = [p for _, p in doc.adapters()]
    for name, f in zip(doc.names, files, strict=True):
        if not f.is_file():
            raise ConfigError(
                flag, f"backbone {name}: adapter {f} is missing (was the run moved or cleaned?)"
            )
    return BackboneSource(
        method=doc.method,
        path=path,
        objectives=list(doc.objectives),
        beta=doc.beta,
        names=doc.names,
        weights=doc.weights,
        adapters=files,
        lora=[doc.lora()] * len(files),
        model=doc.recipe.get("model"),
        space=doc.space,
        conditioning=doc.conditioning,
    )


def _from_bundle(path: Path, method: str | None, flag: str) -> BackboneSource:
    try:
        b = load_bundle(path)
    except ConfigError as e:
        raise ConfigError(f"{flag} bundle.json {e.path}", e.msg) from e
    kind = "rewarded_soups" if b.beta is None else "bone_soup"
    if method and method != kind:
        raise ConfigError(flag, f"bundle {path} is a {kind} soup (beta {b.beta}), not {method}")
    return BackboneSource(
        method=kind,
        path=path,
        objectives=b.objectives,
        beta=b.beta,
        names=b.names,
        weights=[list(map(float, w)) for w in backbone_weights(b.n, b.beta)],
        adapters=[path / f"adapters/{name}.safetensors" for name in b.names],
        lora=list(b.lora),
        model=b.base.get("model"),
        space=b.reward_space or _space_of_normalization(b.objectives, b.normalization),
    )


def _space_of_normalization(objectives: list[str], norm: dict) -> RewardSpace:
    """A bundle written before reward spaces were recorded: its ``normalization`` is the space."""
    space = RewardSpace.identity(objectives)
    space.kinds = ["fixed"] * len(objectives)
    space.mean = [float(norm[o]["mean"]) for o in objectives]
    space.std = [float(norm[o]["std"]) for o in objectives]
    space.source = "bundle normalization"
    return space


def shared_space(sources: dict[str, BackboneSource]) -> RewardSpace:
    """The one reward space of all sources; sources trained in different spaces cannot be compared."""
    (first, a), *rest = sources.items()
    for method, src in rest:
        if not src.space.same_as(a.space):
            raise ConfigError(
                f"--{method.replace('_', '-')}",
                f"was trained in another reward space ({src.space.describe()}) than "
                f"--{first.replace('_', '-')} ({a.space.describe()}): their fronts and hypervolumes are not "
                "comparable; train every method in one run (jobs/compare.py) or in one reward_space.json",
            )
    return a.space


def check_source(recipe: Recipe, src: BackboneSource, flag: str) -> None:
    if src.objectives != recipe.objectives:
        raise ConfigError(
            flag, f"backbones were trained on objectives {src.objectives}, the recipe has {recipe.objectives}"
        )
    if differ := model_differences(src.model, to_dict(recipe.model)):
        raise ConfigError(
            flag,
            f"backbones were trained over another base model ({differ} differ); "
            "evaluate with the recipe they were trained with",
        )
    if src.method in SOUPS and len(src.names) != len(recipe.objectives):
        raise ConfigError(flag, f"{src.method} needs one backbone per objective, got {len(src.names)}")
