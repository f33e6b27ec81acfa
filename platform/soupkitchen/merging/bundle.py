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
from soupkitchen.config import ConfigError, ModelConfig, from_dict, to_dict
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
    def stack_size(self) -> int:
        return self.n + len(self.value_names) + len(self.conditioned)

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
        """``build_mixed_model`` of the backbones, then the value models, over ``base_model`` (in place)."""
        c = self.conditioned
        return build_mixed_model(
            base_model,
            self.adapters + self.value_adapters + [x.adapter for x in c],
            self.lora + self.value_lora + [x.lora for x in c],
            self.names + self.value_names + [x.name for x in c],
        )


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
    stack = (states + vstates + cstates, specs + vspecs + cspecs, names + vnames + cnames)
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
    )


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
    b = load_bundle(directory)
    with _staged_copy(Path(directory)) as copy:
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
            value_models=value_models,
            reward_space=b.reward_space,
            diagnostics=b.diagnostics,
            conditioned=[
                (c.method, c.name, copy / f"adapters/{c.name}.safetensors", c.lora, c.conditioning)
                for c in b.conditioned
            ],
        )


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
