"""HoE's experts: task vectors → LoRA experts (task-SVD, Eq. 4 merges) in a HoE directory, and loading one.

    tau = [TaskVector(name, sha, lora_task_vector(load_adapter_state(p), spec)) ...]  # or dense_task_vector
    doc = build_experts(out, recipe, tau, space)        # single + MO LoRA experts, hoe.json
    experts = load_experts(out)                         # checked (sha256, ranks, router shapes)

Single-objective LoRA expert i: task-SVD of τ_i (Sec. 3.1). Multi-objective LoRA expert at λ: task-SVD of
Merge({τ_i}, λ) (Eq. 4). Each prunes globally: one magnitude threshold over all modules of its task vector
(App. D.1 "across the entire model"), then a rank-r SVD per matrix with the rescale s. Routers are added by
router training (``hoe.routers``, ``hoe.build``); ``ExpertStack`` places a set in an adapter stack and turns
λ_user into a coefficient row (Eqs. 9-10).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from soupkitchen.checkpoint import sha256_of
from soupkitchen.config import ConfigError, Recipe, to_dict
from soupkitchen.hoe.layer import Router, router_weights
from soupkitchen.hoe.manifest import ExpertEntry, ExpertSource, HoEManifest
from soupkitchen.hoe.routing import nearest, preference_routing
from soupkitchen.hoe.svd import global_threshold, merge_task_vectors, task_svd
from soupkitchen.merging.mixed import LoraSpec, linear_shape, parse_adapter
from soupkitchen.reward_space import RewardSpace


def lora_task_vector(state: Mapping[str, torch.Tensor], spec: LoraSpec) -> dict[str, torch.Tensor]:
    """τ = s·B A per module [out, in] (fp32) of a LoRA-trained single-objective policy."""
    pairs, _ = parse_adapter(state)
    return {m: spec.scaling * (B.float() @ A.float()) for m, (A, B) in pairs.items()}


def dense_task_vector(base: nn.Module, tuned: nn.Module, targets: Sequence[str]) -> dict[str, torch.Tensor]:
    """τ = θ_tuned − θ_pre (Eq. 2) of every linear whose name ends in a target, as [out, in] (fp32).

    For fully fine-tuned single-objective models (GPU recipes); embeddings, norms and lm_head deltas are
    dropped, as the paper's LoRA-only experts do (docs/methods/hoe.md)."""
    tuned_modules = dict(tuned.named_modules())
    out = {}
    for name, layer in base.named_modules():
        if not any(name == t or name.endswith("." + t) for t in targets):
            continue
        try:
            fan_in, fan_out = linear_shape(layer)
        except TypeError:
            continue
        other = tuned_modules.get(name)
        if other is None or tuple(other.weight.shape) != tuple(layer.weight.shape):
            raise ValueError(f"{name}: the fine-tuned model has no matching layer (another architecture?)")
        delta = other.weight.detach().float() - layer.weight.detach().float()
        out[name] = delta if tuple(delta.shape) == (fan_out, fan_in) else delta.T.contiguous()
    if not out:
        raise ValueError(f"no linear layer of the base matches the targets {list(targets)}")
    return out


@dataclass
class TaskVector:
    """τ of one single-objective policy (objective i's), with where it came from."""

    name: str
    sha256: str
    delta: dict[str, torch.Tensor]


def _extract(directory: Path, name: str, lam, tau: dict, recipe: Recipe, **meta) -> ExpertEntry:
    """Task-SVD of one task vector (global threshold over its modules) → ``<name>.safetensors``."""
    cfg, r = recipe.hoe, recipe.hoe.rank or recipe.lora.r
    t = global_threshold(list(tau.values()), cfg.keep_fraction)
    tensors, err, norm = {}, 0.0, 0.0
    for m, d in sorted(tau.items()):
        A, B = task_svd(d, r, threshold=t, rescale=cfg.rescale)
        tensors[f"base_model.model.{m}.lora_A.weight"] = A.contiguous()
        tensors[f"base_model.model.{m}.lora_B.weight"] = B.contiguous()
        err += float(((B.float() @ A.float()) / cfg.rescale - d).pow(2).sum())
        norm += float(d.pow(2).sum())
    save_file(tensors, str(directory / f"{name}.safetensors"))
    return ExpertEntry(
        name=name,
        kind="lora",
        preference=[float(x) for x in lam],
        file=f"{name}.safetensors",
        sha256=sha256_of(directory / f"{name}.safetensors"),
        r=r,
        rescale=cfg.rescale,
        threshold=t,
        relative_error=math.sqrt(err / max(norm, 1e-30)),
        **meta,
    )


def build_experts(
    directory: str | Path, recipe: Recipe, sources: Sequence[TaskVector], space: RewardSpace
) -> HoEManifest:
    """The LoRA experts of ``recipe.hoe`` from the single-objective task vectors (``sources[i]`` is objective
    i's): one per objective, then one per MO preference (Eq. 4). Writes ``hoe.json`` without routers."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n, cfg = len(recipe.objectives), recipe.hoe
    if len(sources) != n:
        raise ConfigError("--rewarded-soups", f"needs one single-objective policy per objective ({n})")
    srcs = [ExpertSource(name=s.name, sha256=s.sha256) for s in sources]
    experts = [
        _extract(directory, f"hoe-{obj}", np.eye(n)[i], s.delta, recipe, sources=[srcs[i]])
        for i, (obj, s) in enumerate(zip(recipe.objectives, sources, strict=True))
    ]
    for k, lam in enumerate(cfg.mo_preferences(n)):
        merged = {
            m: merge_task_vectors([s.delta[m] for s in sources], lam, cfg.merge, cfg.merge_density)
            for m in sources[0].delta
        }
        experts.append(_extract(directory, f"hoe-mo{k}", lam, merged, recipe, merge=cfg.merge, sources=srcs))
    doc = HoEManifest(
        objectives=list(recipe.objectives),
        base={"model": to_dict(recipe.model)},
        target_modules=list(recipe.lora.target_modules),
        reward_space=space.to_dict(),
        keep_fraction=cfg.keep_fraction,
        experts=experts,
    )
    doc.write(directory)
    return doc


def router_entry(doc: HoEManifest, name: str, lam, pool: str) -> ExpertEntry:
    """A router at λ over its N nearest LoRA experts (``pool``: all, or single-objective only), starting at
    λ's barycentric weights over them (a router file is attached when it is trained)."""
    lora = [e for e in doc.lora if pool == "all" or e.merge is None]
    prefs = np.array([e.preference for e in lora])
    votes = nearest(np.asarray(lam, dtype=np.float64), prefs, len(doc.objectives))
    init = preference_routing(np.asarray(lam, dtype=np.float64), prefs[votes])
    return ExpertEntry(
        name=name,
        kind="router",
        preference=[float(x) for x in lam],
        file=f"{name}.safetensors",
        sha256="",
        votes=[lora[j].name for j in votes],
        init=[float(x) for x in init],
        pool=pool,
    )


@dataclass
class ExpertSet:
    """A loaded HoE directory: LoRA states in manifest order, router weights by name."""

    directory: Path
    manifest: HoEManifest
    lora: list[dict[str, torch.Tensor]]
    router_states: dict[str, dict[str, torch.Tensor]]

    @property
    def lora_names(self) -> list[str]:
        return [e.name for e in self.manifest.lora]

    @property
    def specs(self) -> list[LoraSpec]:
        t = tuple(sorted(self.manifest.target_modules))
        return [LoraSpec(e.r, float(e.r), t) for e in self.manifest.lora]

    def routers(self, start: int, names: Sequence[str] | None = None) -> list[Router]:
        """``Router``s (votes as stack positions, the LoRA experts placed from ``start``) of ``names``."""
        pos = {nm: start + i for i, nm in enumerate(self.lora_names)}
        entries = {e.name: e for e in self.manifest.routers}
        out = []
        for nm in names if names is not None else list(entries):
            e = entries[nm]
            weights = router_weights(self.router_states[nm])
            out.append(Router(nm, [pos[v] for v in e.votes], list(e.init), weights))
        return out


def load_experts(directory: str | Path, flag: str = "--hoe") -> ExpertSet:
    """Read and check a HoE directory (``hoe.json``, every file's sha256)."""
    directory = Path(directory)
    doc = HoEManifest.read(directory, flag)
    states, parsed = {}, {}
    for i, e in enumerate(doc.experts):
        path = directory / e.file
        if not path.is_file():
            raise ConfigError(f"{flag} experts.{i}.file", f"{path} is missing; copy the whole HoE directory")
        if sha256_of(path) != e.sha256:
            raise ConfigError(f"{flag} experts.{i}.sha256", f"{e.file} does not match its sha256 (modified?)")
        try:
            states[e.name] = load_file(str(path))
        except SafetensorError as err:
            raise ConfigError(
                f"{flag} experts.{i}.file", f"{e.file} is not a safetensors file ({err})"
            ) from None
        parsed[e.name] = _parsed(states[e.name], e, f"{flag} experts.{i}")
    fan_in = {m: A.shape[1] for e in doc.lora for m, (A, _) in parsed[e.name].items()}
    for e in doc.routers:
        w = parsed[e.name]
        bad = sorted(
            m
            for m in set(w) | set(fan_in)
            if m not in w or tuple(w[m][0].shape) != (len(e.votes), fan_in.get(m))
        )
        if bad:
            raise ConfigError(
                f"{flag} {e.name}",
                f"the router does not fit the set's LoRA experts (modules or shapes: {bad[:3]})",
            )
    return ExpertSet(
        directory,
        doc,
        [states[e.name] for e in doc.lora],
        {e.name: states[e.name] for e in doc.routers},
    )


def _parsed(state: dict, e: ExpertEntry, where: str) -> dict:
    """``{module: (A, B)}`` of a LoRA expert (PEFT pairs of its recorded rank) or ``{module: (W, b)}`` of a
    router; a ConfigError at ``where`` otherwise."""
    try:
        if e.kind == "router":
            return router_weights(state)
        pairs, _ = parse_adapter(state, e.name)
        ranks = {A.shape[0] for A, _ in pairs.values()}
        if ranks != {e.r}:
            raise ValueError(f"ranks {sorted(ranks)} but hoe.json says r={e.r}")
        return pairs
    except ValueError as err:
        raise ConfigError(f"{where}.file", f"{e.file}: {err}; re-build the experts") from None


def configurations(doc: HoEManifest) -> dict[str, list[str]]:
    """The expert-count ablation (Sec. 6.1) a set supports, label → expert names: ``hoe`` (every LoRA expert
    and the routers over them), ``hoe_lora`` (no router), ``hoe_router`` (single-objective LoRA experts and
    the routers over them only), ``hoe_linear`` (single-objective experts: Eq. 3)."""
    single = [e.name for e in doc.lora if e.merge is None]
    every = [e.name for e in doc.lora]
    r_all = [e.name for e in doc.routers if e.pool == "all"]
    r_single = [e.name for e in doc.routers if e.pool == "single"]
    out = {"hoe": every + r_all}
    if r_all and len(every) > len(single):
        out["hoe_lora"] = every
    if r_single:
        out["hoe_router"] = single + r_single
    if len(every) > len(single) or r_all:
        out["hoe_linear"] = single
    return out


@dataclass
class ExpertStack:
    """Where a set's experts sit in one coefficient row: LoRA expert → its adapter position, router → its
    router slot (after the m adapters). ``coefficients`` is preference routing (Eqs. 9-10) as that row."""

    slots: dict[str, int]
    preferences: dict[str, np.ndarray]
    width: int

    @classmethod
    def of(cls, experts: ExpertSet, start: int, m: int, routers: Sequence[str]) -> ExpertStack:
        slots = {nm: start + i for i, nm in enumerate(experts.lora_names)}
        slots |= {nm: m + k for k, nm in enumerate(routers)}
        prefs = {e.name: np.asarray(e.preference, dtype=np.float64) for e in experts.manifest.experts}
        return cls(slots, prefs, m + len(routers))

    def route(self, mu, names: Sequence[str]) -> dict[str, float]:
        """ω_r of the experts ``names`` at λ_user = ``mu`` (only the non-zero ones, largest first)."""
        omega = preference_routing(
            np.asarray(mu, dtype=np.float64), np.stack([self.preferences[x] for x in names])
        )
        return {names[j]: float(omega[j]) for j in np.argsort(-omega, kind="stable") if omega[j] > 0}

    def coefficients(self, mu, names: Sequence[str]) -> np.ndarray:
        c = np.zeros(self.width)
        for name, w in self.route(mu, names).items():
            c[self.slots[name]] = w
        return c

    def selected(self, c, names: Sequence[str]) -> dict[str, float]:
        """The experts of ``names`` a coefficient row ``c`` uses and their ω_r, largest first (read back from
        the row ``coefficients`` built, so what is reported is what is decoded)."""
        weights = {x: float(c[self.slots[x]]) for x in names if c[self.slots[x]] > 0}
        return dict(sorted(weights.items(), key=lambda kv: -kv[1]))
