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
import json
import math
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
from soupkitchen.config import ConfigError, ModelConfig, from_dict, to_dict
from soupkitchen.manifests import BackboneManifest
from soupkitchen.merging.mixed import (
    LoraSpec,
    build_mixed_model,
    load_adapter_state,
    lora_specs,
    parse_adapter,
    stack_adapters,
)
from soupkitchen.models import load_base_model
from soupkitchen.preferences import circulant_matrix, merge_coefficients
from soupkitchen.reward_space import RewardSpace

BUNDLE_FORMAT = "soupkitchen.soup/v1"
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

    @property
    def n(self) -> int:
        return len(self.objectives)

    @property
    def value_indices(self) -> list[int] | None:
        """Positions of the value models in ``mixed_model``'s stack (after the n backbones), or None."""
        return list(range(self.n, self.n + len(self.value_names))) if self.value_names else None

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
        return build_mixed_model(
            base_model,
            self.adapters + self.value_adapters,
            self.lora + self.value_lora,
            self.names + self.value_names,
        )


def _finite(x, path: str, lo: float | None = None, lo_open: bool = False, fix: str = "") -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ConfigError(path, f"must be a finite number, got {x!r}{fix}")
    if lo is not None and (x <= lo if lo_open else x < lo):
        raise ConfigError(path, f"must be {'>' if lo_open else '>='} {lo}, got {x}{fix}")
    return float(x)


def _check_entries(entries: list, field: str, targets: list) -> tuple[list[str], list[LoraSpec]]:
    """Names and LoraSpecs of the adapter entries under ``field`` (required keys, unique names, r, α)."""
    names, specs = [], []
    for i, e in enumerate(entries):
        for key in ("name", "file", "sha256", "r", "alpha"):
            if not isinstance(e, dict) or key not in e:
                raise ConfigError(f"{field}[{i}].{key}", "is missing; re-write the bundle with write_bundle")
        names.append(e["name"])
        if isinstance(e["r"], bool) or not isinstance(e["r"], int) or e["r"] < 1:
            raise ConfigError(f"{field}[{i}].r", f"must be an int >= 1, got {e['r']!r}")
        alpha = _finite(e["alpha"], f"{field}[{i}].alpha", 0.0, lo_open=True)
        specs.append(LoraSpec(e["r"], alpha, tuple(targets), bool(e.get("use_rslora", False))))
    if len(set(names)) != len(names):
        raise ConfigError(field, f"adapter names must be unique, got {names}")
    return names, specs


def _check_doc(doc: dict) -> tuple[list[str], list[str], list[LoraSpec]]:
    """Field checks that need no files: returns (objectives, names, lora specs)."""
    if doc.get("format") != BUNDLE_FORMAT:
        raise ConfigError(
            "format", f"expected {BUNDLE_FORMAT!r}, got {doc.get('format')!r}; not a soup bundle"
        )
    if not isinstance(doc.get("base"), dict) or not doc["base"]:
        raise ConfigError("base", "must be a non-empty mapping referencing W0 (e.g. {'model': ModelConfig})")
    objectives = doc.get("objectives")
    if (
        not isinstance(objectives, list)
        or not objectives
        or not all(isinstance(o, str) and o for o in objectives)
    ):
        raise ConfigError("objectives", f"must be a non-empty list of names, got {objectives!r}")
    if len(set(objectives)) != len(objectives):
        raise ConfigError("objectives", f"names must be unique, got {objectives}")
    n = len(objectives)
    entries = doc.get("adapters")
    if not isinstance(entries, list) or len(entries) != n:
        got = len(entries) if isinstance(entries, list) else entries
        raise ConfigError(
            "adapters", f"has {got} adapters but there are {n} objectives; one backbone per objective"
        )
    targets = doc.get("target_modules")
    if not isinstance(targets, list) or not targets:
        raise ConfigError("target_modules", f"must be the non-empty list of LoRA targets, got {targets!r}")
    names, specs = _check_entries(entries, "adapters", targets)
    values = doc.get("value_models") or []
    if values:
        if not isinstance(values, list) or [e.get("objective") for e in values] != objectives:
            raise ConfigError(
                "value_models", f"must list one value model per objective {objectives}, in order"
            )
        vnames, _ = _check_entries(values, "value_models", targets)
        if set(vnames) & set(names):
            raise ConfigError("value_models", f"names {sorted(set(vnames) & set(names))} clash with adapters")
    if doc.get("beta") is not None:
        try:
            circulant_matrix(n, doc["beta"])
        except ValueError as err:
            raise ConfigError("beta", f"{err}; use null for Rewarded Soups (B = I)") from err
    _finite(doc.get("alpha"), "alpha", 0.0, fix=" (extrapolation strength α >= 0; 0 = none)")
    if doc.get("gamma") is not None:
        _finite(doc["gamma"], "gamma", 0.0)
    norm = doc.get("normalization")
    if not isinstance(norm, dict) or set(norm) != set(objectives):
        keys = sorted(norm) if isinstance(norm, dict) else norm
        raise ConfigError("normalization", f"needs exactly one entry per objective {objectives}, got {keys}")
    for o in objectives:
        if not isinstance(norm[o], dict) or set(norm[o]) != {"mean", "std"}:
            raise ConfigError(f"normalization.{o}", f"must be {{mean, std}}, got {norm[o]!r}")
        _finite(norm[o]["mean"], f"normalization.{o}.mean")
        _finite(norm[o]["std"], f"normalization.{o}.std", 0.0, lo_open=True, fix=" (use 1.0 for raw rewards)")
    if doc.get("reward_space") is not None:
        space = RewardSpace.from_dict(doc["reward_space"])
        if space.objectives != objectives or space.normalization() != norm:
            raise ConfigError("reward_space", "disagrees with objectives/normalization; re-write the bundle")
    ref = doc.get("ref_point")
    if not isinstance(ref, list) or len(ref) != n:
        raise ConfigError("ref_point", f"must list one value per objective ({n}), got {ref!r}")
    for j, v in enumerate(ref):
        _finite(v, f"ref_point[{j}]")
    return objectives, names, specs


def load_bundle(directory: str | Path, base_model: nn.Module | None = None) -> Bundle:
    """Read and validate a bundle (files, sha256, n, ranks, targets, shapes, β, α, normalisation, ref point).

    With ``base_model``, the adapters are also checked against its layers (module names and shapes).
    """
    directory = Path(directory)
    manifest = directory / "bundle.json"
    if not manifest.is_file():
        raise ConfigError("bundle.json", f"not found in {directory}; write the bundle with write_bundle")
    try:
        doc = json.loads(manifest.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError("bundle.json", f"is not valid JSON ({err}); re-write the bundle") from err
    objectives, names, specs = _check_doc(doc)
    states = _load_states(directory, doc["adapters"], "adapters")
    values = doc.get("value_models") or []
    vnames, vspecs = _check_entries(values, "value_models", doc["target_modules"])
    vstates = _load_states(directory, values, "value_models")
    try:
        _, stacked = stack_adapters(None, states + vstates, specs + vspecs, names + vnames)
    except ValueError as err:
        raise ConfigError("adapters", f"{err} (bundle.json: adapters[].r / alpha, target_modules)") from err
    shapes = {m: [ab[0][0].shape[1], ab[0][1].shape[0]] for m, ab in stacked.items()}
    if shapes != doc.get("modules"):
        raise ConfigError(
            "modules", "recorded base layer shapes do not match the adapters' tensors; re-write"
        )
    if base_model is not None:
        try:
            stack_adapters(base_model, states + vstates, specs + vspecs, names + vnames)
        except (ValueError, TypeError) as err:
            raise ConfigError("base", f"adapters do not fit this base model: {err}") from err
    return Bundle(
        directory=directory,
        base=doc["base"],
        objectives=objectives,
        names=names,
        lora=specs,
        adapters=states,
        beta=None if doc.get("beta") is None else float(doc["beta"]),
        alpha=float(doc["alpha"]),
        gamma=None if doc.get("gamma") is None else float(doc["gamma"]),
        normalization=doc["normalization"],
        ref_point=[float(v) for v in doc["ref_point"]],
        modules=shapes,
        value_names=vnames,
        value_adapters=vstates,
        value_lora=vspecs,
        reward_space=None if doc.get("reward_space") is None else RewardSpace.from_dict(doc["reward_space"]),
        diagnostics=dict(doc.get("diagnostics") or {}),
    )


def _load_states(directory: Path, entries: list, field: str) -> list[dict[str, torch.Tensor]]:
    """The adapters' tensors, each file checked against its recorded sha256."""
    states = []
    for i, e in enumerate(entries):
        path = directory / e["file"]
        if not path.is_file():
            raise ConfigError(f"{field}[{i}].file", f"{path} is missing; copy the whole bundle directory")
        if sha256_of(path) != e["sha256"]:
            raise ConfigError(
                f"{field}[{i}].sha256",
                f"{e['file']} does not match the recorded sha256 (modified or truncated)",
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
) -> Bundle:
    """Write ``bundle.json`` + ``adapters/<name>.safetensors`` (+ sha256) atomically; return it loaded.

    ``adapters`` are ``(name, path)`` in objective order; a path is a safetensors file or a checkpoint dir
    (``trainable.safetensors`` with ``adapter.*`` keys, or PEFT's ``adapter_model.safetensors``).
    ``base`` is a JSON-able reference to W0, or a ModelConfig (stored as ``{"model": ...}``).
    ``lora_config`` is one config or one per adapter (ranks may differ). ``value_models``: MAGE's explicit
    value models to ship along (``value_models.ValueModels``: names, objectives, files, lora, in objective
    order), or None. ``reward_space``: the run's frozen space (then ``normalization`` must be its mean/std);
    ``diagnostics``: JSON-able facts about the trained backbones (e.g. ``effective_B``).
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
                values.append({**_write_adapter(tmp, name, src, spec, modules), "objective": obj})
            specs = specs + vspecs
        doc = {
            "format": BUNDLE_FORMAT,
            "base": dict(base),
            "objectives": list(objectives),
            "adapters": entries,
            "target_modules": list(specs[0].target_modules),
            "modules": modules,
            "beta": beta,
            "alpha": alpha,
            "gamma": gamma,
            "normalization": {k: dict(v) for k, v in normalization.items()},
            "ref_point": [float(v) for v in ref_point],
        }
        if values:
            doc["value_models"] = values
        if reward_space is not None:
            doc["reward_space"] = reward_space.to_dict()
        if diagnostics:
            doc["diagnostics"] = dict(diagnostics)
        if any(s.target_modules != specs[0].target_modules for s in specs):
            raise ConfigError("target_modules", "all adapters must share the same lora target_modules")
        (tmp / "bundle.json").write_text(json.dumps(doc, indent=1))
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
    return {
        "name": name,
        "file": rel,
        "sha256": sha256_of(tmp / rel),
        "r": spec.r,
        "alpha": spec.alpha,
        "use_rslora": spec.use_rslora,
    }


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
