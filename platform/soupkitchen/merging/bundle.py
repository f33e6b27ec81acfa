"""Soup bundle: everything needed to serve a soup, as a directory with a manifest.

    <dir>/bundle.json                 base reference, objectives, adapters (+ sha256, r, α), targets,
                                      module shapes, β, α (extrapolation), γ, normalisation, ref point
    <dir>/adapters/<name>.safetensors  LoRA A/B only (PEFT keys; value heads and W0 copies dropped)

Adapter i is the backbone of objective i. Optionally ``value_models`` lists MAGE's explicit value models
(one LoRA adapter per objective over the same W0 and targets, ``value_models.py``), stacked after the
backbones so one mixed model serves every decoding mode. ``load_bundle`` checks everything and refuses an
inconsistent bundle with a ``ConfigError`` naming the field and the fix; ``write_bundle`` runs the same
checks on the temp dir before renaming it into place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import types
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from soupkitchen.checkpoint import sha256_of
from soupkitchen.conditioning import Conditioning
from soupkitchen.config import ConfigError, ModelConfig, from_dict, model_differences, to_dict
from soupkitchen.hoe import experts as hoe_experts  # a module: soupkitchen.hoe imports merging.mixed
from soupkitchen.hoe import layer as hoe_layer
from soupkitchen.manifests import AdapterEntry, BackboneManifest, BundleManifest, ConditionedEntry, ValueEntry
from soupkitchen.merging.mixed import (
    LoraSpec,
    build_mixed_model,
    load_adapter_state,
    lora_specs,
    parse_adapter,
    stack_adapters,
)
from soupkitchen.models import load_base_model
from soupkitchen.preferences import merge_coefficients
from soupkitchen.reward_space import RewardSpace

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Bundle:
    """A validated soup bundle; ``adapters`` are the loaded LoRA state dicts (adapter i ↔ objective i)."""

    directory: Path
    base: dict
    objectives: list[str]
    names: list[str]
    lora: list[LoraSpec]
    adapters: list[dict[str, torch.Tensor]]
    beta: float | None
    alpha: float
    gamma: float | None
    normalization: dict[str, dict[str, float]]
    ref_point: list[float]
    modules: dict[str, list[int]]
    value_names: list[str] = dataclasses.field(default_factory=list)
    value_adapters: list[dict[str, torch.Tensor]] = dataclasses.field(default_factory=list)
    value_lora: list[LoraSpec] = dataclasses.field(default_factory=list)
    reward_space: RewardSpace | None = None  # the run's frozen space (normalization is its mean/std)
    diagnostics: dict = dataclasses.field(default_factory=dict)  # e.g. effective_B of the trained backbones
    conditioned: list[Conditioned] = dataclasses.field(default_factory=list)  # MOC / RiC, after the values
    hoe: hoe_experts.ExpertSet | None = None  # HoE: LoRA experts after the conditioned policies, routers last

    @property
    def n(self) -> int:
        return len(self.objectives)

    @property
    def value_indices(self) -> list[int] | None:
        """Positions of the value models in ``mixed_model``'s stack (after the n backbones), or None."""
        return list(range(self.n, self.n + len(self.value_names))) if self.value_names else None

    @property
    def conditioned_indices(self) -> dict[str, int]:
        """``{method: position}`` of the conditioned policies in the stack (after the value models)."""
        start = self.n + len(self.value_names)
        return {c.method: start + i for i, c in enumerate(self.conditioned)}

    @property
    def hoe_start(self) -> int:
        """Position of HoE's first LoRA expert in the stack (after the conditioned policies)."""
        return self.n + len(self.value_names) + len(self.conditioned)

    @property
    def stack_size(self) -> int:
        """Adapters in the stack (backbones, value models, conditioned policies, HoE's LoRA experts)."""
        return self.hoe_start + (len(self.hoe.lora) if self.hoe else 0)

    @property
    def hoe_served(self) -> list[str]:
        """The experts mode ``hoe`` routes over (HoE's full configuration, ``hoe.configurations``)."""
        return hoe_experts.configurations(self.hoe.manifest)["hoe"] if self.hoe else []

    @property
    def hoe_routers(self) -> list[str]:
        """The served router experts (one coefficient slot each, after the stack)."""
        return [x for x in self.hoe_served if x not in self.hoe.lora_names]

    @property
    def width(self) -> int:
        """Entries of a coefficient row: the stack, then one slot per served router (``hoe.layer``)."""
        return self.stack_size + len(self.hoe_routers)

    def hoe_stack(self) -> hoe_experts.ExpertStack | None:
        """Where HoE's experts sit in a coefficient row (preference routing → row), or None without HoE."""
        if self.hoe is None:
            return None
        return hoe_experts.ExpertStack.of(self.hoe, self.hoe_start, self.stack_size, self.hoe_routers)

    def coefficients(self, mu, method: str = "bone_soup", alpha: float | None = None) -> torch.Tensor:
        """c = (1 + α) B⁻¹μ for μ [n] or a batch [k, n] (``preferences.merge_coefficients``).

        ``bone_soup`` uses the bundle's β and (unless given) α; ``rewarded_soups`` is c = (1 + α)μ with α = 0
        unless given. Returns float32 [n] or [k, n], ready for ``set_coefficients``.
        """
        if method == "bone_soup":
            if self.beta is None:
                raise ValueError(
                    "bundle has beta: null (Rewarded Soups backbones); use method='rewarded_soups'"
                )
            beta, a = self.beta, self.alpha if alpha is None else alpha
        elif method == "rewarded_soups":
            beta, a = None, 0.0 if alpha is None else alpha
        else:
            raise ValueError(f"method must be 'bone_soup' or 'rewarded_soups', got {method!r}")
        mu = np.asarray(mu, dtype=np.float64)
        if mu.ndim == 2:
            return torch.tensor(np.stack([merge_coefficients(m, beta, a) for m in mu]), dtype=torch.float32)
        return torch.tensor(merge_coefficients(mu, beta, a), dtype=torch.float32)

    def load_base_model(self, device: str = "cpu"):
        """``(model, tokenizer)`` from ``base["model"]`` (a ModelConfig as dict) via ``load_base_model``."""

        if not isinstance(self.base.get("model"), dict):
            raise ConfigError("base.model", "bundle has no ModelConfig under base.model; load W0 yourself")
        return load_base_model(from_dict(ModelConfig, self.base["model"], "base.model"), device=device)

    def mixed_model(self, base_model: nn.Module) -> nn.Module:
        """The mixed model of the whole stack over ``base_model`` (in place): the backbones, the value models,
        the conditioned policies and HoE's LoRA experts; with HoE, its routers after them (``hoe.layer``)."""
        c = self.conditioned
        h = self.hoe
        stack = (
            self.adapters + self.value_adapters + [x.adapter for x in c] + (h.lora if h else []),
            self.lora + self.value_lora + [x.lora for x in c] + (h.specs if h else []),
            self.names + self.value_names + [x.name for x in c] + (h.lora_names if h else []),
        )
        if h is None:
            return build_mixed_model(base_model, *stack)
        return hoe_layer.build_hoe_model(base_model, *stack, h.routers(self.hoe_start, self.hoe_routers))


@dataclass
class Conditioned:
    """A conditioned policy of the bundle (``manifests.ConditionedEntry``) with its loaded adapter."""

    method: str
    name: str
    lora: LoraSpec
    adapter: dict[str, torch.Tensor]
    conditioning: Conditioning


def _specs(entries, targets: list[str]) -> list[LoraSpec]:
    return [LoraSpec(e.r, e.alpha, tuple(targets), e.use_rslora) for e in entries]


def load_bundle(directory: str | Path, base_model: nn.Module | None = None) -> Bundle:
    """Read and validate a bundle (files, sha256, n, ranks, targets, shapes, β, α, normalisation, ref point).

    With ``base_model``, the adapters are also checked against its layers (module names and shapes).
    """
    directory = Path(directory)
    doc = BundleManifest.read(directory)
    objectives, names = doc.objectives, [a.name for a in doc.adapters]
    specs = _specs(doc.adapters, doc.target_modules)
    states = _load_states(directory, doc.adapters, "adapters")
    vnames, vspecs = [v.name for v in doc.value_models], _specs(doc.value_models, doc.target_modules)
    vstates = _load_states(directory, doc.value_models, "value_models")
    cnames, cspecs = [c.name for c in doc.conditioned], _specs(doc.conditioned, doc.target_modules)
    cstates = _load_states(directory, doc.conditioned, "conditioned")
    hoe = None
    if doc.hoe is not None:
        if sha256_of(directory / doc.hoe / "hoe.json") != doc.hoe_sha256:
            raise ConfigError("hoe_sha256", "hoe/hoe.json does not match the recorded sha256 (replaced?)")
        hoe = hoe_experts.load_experts(directory / doc.hoe, "bundle.json hoe")
        _check_hoe_fits(hoe.manifest, doc)
    hstates, hspecs, hnames = (hoe.lora, hoe.specs, hoe.lora_names) if hoe else ([], [], [])
    clash = sorted(set(hnames) & set(names + vnames + cnames))
    if clash:
        raise ConfigError("hoe", f"expert names {clash} clash with other adapters")
    stack = (
        states + vstates + cstates + hstates,
        specs + vspecs + cspecs + hspecs,
        names + vnames + cnames + hnames,
    )
    try:
        _, stacked = stack_adapters(None, *stack)
    except ValueError as err:
        raise ConfigError("adapters", f"{err} (bundle.json: adapters[].r / alpha, target_modules)") from err
    shapes = {m: [ab[0][0].shape[1], ab[0][1].shape[0]] for m, ab in stacked.items()}
    if shapes != doc.modules:
        raise ConfigError(
            "modules", "recorded base layer shapes do not match the adapters' tensors; re-write"
        )
    if base_model is not None:
        try:
            stack_adapters(base_model, *stack)
        except (ValueError, TypeError) as err:
            raise ConfigError("base", f"adapters do not fit this base model: {err}") from err
    return Bundle(
        directory=directory,
        base=doc.base,
        objectives=objectives,
        names=names,
        lora=specs,
        adapters=states,
        beta=doc.beta,
        alpha=doc.alpha,
        gamma=doc.gamma,
        normalization=doc.normalization_dict(),
        ref_point=list(doc.ref_point),
        modules=shapes,
        value_names=vnames,
        value_adapters=vstates,
        value_lora=vspecs,
        reward_space=doc.space,
        diagnostics=dict(doc.diagnostics),
        conditioned=[
            Conditioned(e.method, e.name, spec, state, e.conditioning)
            for e, spec, state in zip(doc.conditioned, cspecs, cstates, strict=True)
        ],
        hoe=hoe,
    )


def _check_hoe_fits(hoe, doc: BundleManifest) -> None:
    """HoE's set was built over this bundle's W0, objectives, targets and reward space."""
    if hoe.objectives != doc.objectives:
        raise ConfigError("hoe", f"experts are for {hoe.objectives}, the soup's for {doc.objectives}")
    if sorted(hoe.target_modules) != sorted(doc.target_modules):
        raise ConfigError("hoe", "experts target other modules than the soup's adapters; re-build them")
    if differ := model_differences(hoe.base.get("model"), doc.base.get("model")):
        raise ConfigError("hoe", f"experts were built over another base model ({differ} differ)")
    space = doc.space
    if space is not None and not RewardSpace.from_dict(hoe.reward_space).same_as(space):
        raise ConfigError("hoe", "experts were built in another reward space than the soup's backbones")


def _load_states(directory: Path, entries: list[AdapterEntry], field: str) -> list[dict[str, torch.Tensor]]:
    """The adapters' tensors, each file checked against its recorded sha256."""
    states = []
    for i, e in enumerate(entries):
        path = directory / e.file
        if not path.is_file():
            raise ConfigError(f"{field}.{i}.file", f"{path} is missing; copy the whole bundle directory")
        if sha256_of(path) != e.sha256:
            raise ConfigError(
                f"{field}.{i}.sha256", f"{e.file} does not match the recorded sha256 (modified or truncated)"
            )
        states.append(load_file(str(path)))
    return states


def write_bundle(
    directory: str | Path,
    base: Mapping | ModelConfig,
    adapters: Sequence[tuple[str, str | Path]],
    beta: float | None,
    alpha: float,
    objectives: Sequence[str],
    normalization: Mapping[str, Mapping[str, float]],
    ref_point: Sequence[float],
    lora_config,
    gamma: float | None = None,
    overwrite: bool = False,
    value_models=None,
    reward_space: RewardSpace | None = None,
    diagnostics: Mapping | None = None,
    conditioned: Sequence[tuple[str, str, str | Path, object, Conditioning]] = (),
    hoe: str | Path | None = None,
) -> Bundle:
    """Write ``bundle.json`` + ``adapters/<name>.safetensors`` (+ sha256) atomically; return it loaded.

    ``adapters`` are ``(name, path)`` in objective order; a path is a safetensors file or a checkpoint dir
    (``trainable.safetensors`` with ``adapter.*`` keys, or PEFT's ``adapter_model.safetensors``).
    ``base`` is a JSON-able reference to W0, or a ModelConfig (stored as ``{"model": ...}``).
    ``lora_config`` is one config or one per adapter (ranks may differ). ``value_models``: MAGE's explicit
    value models to ship along (``value_models.ValueModels``: names, objectives, files, lora, in objective
    order), or None. ``reward_space``: the run's frozen space (then ``normalization`` must be its mean/std);
    ``diagnostics``: JSON-able facts about the trained backbones (e.g. ``effective_B``). ``conditioned``:
    ``(method, name, adapter path, lora config, Conditioning)`` of MOC / RiC policies to serve beside it.
    ``hoe``: a HoE directory (``hoe.build``) copied in as ``hoe/``: mode ``hoe`` over its experts.
    """
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory} exists and is not empty; pass overwrite=True to replace it")
    if isinstance(base, ModelConfig):
        base = {"model": to_dict(base)}
    specs = lora_specs(lora_config, len(adapters))
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    (tmp / "adapters").mkdir(parents=True)
    try:
        modules = {}
        entries = [
            _write_adapter(tmp, name, src, spec, modules)
            for (name, src), spec in zip(adapters, specs, strict=True)
        ]
        values = []
        if value_models is not None:
            if list(value_models.objectives) != list(objectives):
                raise ConfigError(
                    "value_models",
                    f"are for {value_models.objectives}, the bundle's objectives are {objectives}",
                )
            vspecs = lora_specs(value_models.lora, len(value_models.files))
            for obj, name, src, spec in zip(
                value_models.objectives, value_models.names, value_models.files, vspecs, strict=True
            ):
                values.append(
                    ValueEntry(**_write_adapter(tmp, name, src, spec, modules).model_dump(), objective=obj)
                )
            specs = specs + vspecs
        extra = []
        for method, name, src, lora, cond in conditioned:
            (spec,) = lora_specs(lora, 1)
            entry = _write_adapter(tmp, name, src, spec, modules).model_dump()
            extra.append(ConditionedEntry(**entry, method=method, conditioning=cond))
            specs = specs + [spec]
        if hoe is not None:
            hoe_experts.load_experts(hoe, "hoe")  # checked before it is copied
            shutil.copytree(hoe, tmp / "hoe")
        if any(s.target_modules != specs[0].target_modules for s in specs):
            raise ConfigError("target_modules", "all adapters must share the same lora target_modules")
        BundleManifest(
            base=dict(base),
            objectives=list(objectives),
            adapters=entries,
            target_modules=list(specs[0].target_modules),
            modules=modules,
            beta=beta,
            alpha=float(alpha),
            gamma=None if gamma is None else float(gamma),
            normalization={
                k: {"mean": float(v["mean"]), "std": float(v["std"])} for k, v in normalization.items()
            },
            ref_point=[float(v) for v in ref_point],
            value_models=values,
            conditioned=extra,
            hoe="hoe" if hoe is not None else None,
            hoe_sha256=sha256_of(tmp / "hoe" / "hoe.json") if hoe is not None else None,
            reward_space=None if reward_space is None else reward_space.to_dict(),
            diagnostics=dict(diagnostics or {}),
        ).write(tmp)
        load_bundle(tmp)  # the same checks as a reader's, before the bundle becomes visible
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_bundle(directory)


def _write_adapter(tmp: Path, name: str, src, spec: LoraSpec, modules: dict) -> dict:
    """Save one adapter's LoRA A/B (PEFT keys) as ``adapters/<name>.safetensors``; its bundle.json entry."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError("adapters", f"name {name!r} must be a plain file name ([A-Za-z0-9_.-])")
    pairs, _ = parse_adapter(load_adapter_state(src), name)
    tensors = {}
    for m, (A, B) in pairs.items():
        tensors[f"base_model.model.{m}.lora_A.weight"] = A.contiguous()
        tensors[f"base_model.model.{m}.lora_B.weight"] = B.contiguous()
        modules.setdefault(m, [A.shape[1], B.shape[0]])
    rel = f"adapters/{name}.safetensors"
    save_file(tensors, str(tmp / rel))
    return AdapterEntry(
        name=name,
        file=rel,
        sha256=sha256_of(tmp / rel),
        r=spec.r,
        alpha=float(spec.alpha),
        use_rslora=spec.use_rslora,
    )


def attach_value_models(directory: str | Path, value_models) -> Bundle:
    """Re-write the bundle at ``directory`` (atomically) with ``value_models`` shipped along; return it."""
    return _rewrite(Path(directory), value_models=value_models)


def check_bundle(directory: str | Path, recipe, flag: str = "--bundle") -> None:
    """A ConfigError naming ``flag`` unless ``directory`` is a valid soup bundle whose objectives, LoRA
    targets and W0 are the recipe's (what a HoE set built with it must match)."""
    try:
        b = load_bundle(directory)
    except ConfigError as err:
        raise ConfigError(flag, f"{directory}: {err}") from None
    if b.objectives != recipe.objectives:
        raise ConfigError(
            flag, f"{directory} serves objectives {b.objectives}, the recipe has {recipe.objectives}"
        )
    if sorted(b.lora[0].target_modules) != sorted(recipe.lora.target_modules):
        raise ConfigError(
            flag, f"{directory}'s adapters target {list(b.lora[0].target_modules)}, not lora.target_modules"
        )
    if differ := model_differences(b.base.get("model"), to_dict(recipe.model)):
        raise ConfigError(flag, f"{directory} is over another base model ({differ} differ)")


def attach_hoe(directory: str | Path, hoe: str | Path) -> Bundle:
    """Re-write the bundle at ``directory`` (atomically) with the HoE expert set ``hoe``; return it."""
    return _rewrite(Path(directory), hoe=Path(hoe))


def _rewrite(directory: Path, **changes) -> Bundle:
    """The bundle re-written with ``changes`` (``value_models`` / ``hoe``), everything else kept."""
    b = load_bundle(directory)
    with _staged_copy(directory) as copy:
        kept_hoe = copy / "hoe" if b.hoe is not None else None
        return write_bundle(
            directory,
            b.base,
            [(nm, copy / f"adapters/{nm}.safetensors") for nm in b.names],
            b.beta,
            b.alpha,
            b.objectives,
            b.normalization,
            b.ref_point,
            b.lora,
            gamma=b.gamma,
            overwrite=True,
            value_models=changes["value_models"] if "value_models" in changes else _kept_values(b, copy),
            reward_space=b.reward_space,
            diagnostics=b.diagnostics,
            conditioned=[
                (c.method, c.name, copy / f"adapters/{c.name}.safetensors", c.lora, c.conditioning)
                for c in b.conditioned
            ],
            hoe=changes.get("hoe", kept_hoe),
        )


def _kept_values(b: Bundle, copy: Path):
    """The bundle's value models as ``write_bundle`` takes them (read from the staged copy), or None."""
    if not b.value_names:
        return None
    files = [copy / f"adapters/{nm}.safetensors" for nm in b.value_names]
    return types.SimpleNamespace(objectives=b.objectives, names=b.value_names, files=files, lora=b.value_lora)


@contextlib.contextmanager
def _staged_copy(directory: Path):
    """A temporary copy of ``directory`` next to it (the source of a rewrite that replaces the original)."""
    tmp = directory.parent / f".{directory.name}.src-{uuid.uuid4().hex[:8]}"
    shutil.copytree(directory, tmp)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def adapters_from_manifest(manifest: str | Path) -> list[tuple[str, Path]]:
    """``(name, adapter file)`` of each backbone of a backbones manifest (``manifests.BackboneManifest``)."""
    return BackboneManifest.read(manifest, "manifest").adapters()
