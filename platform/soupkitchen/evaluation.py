"""Pareto-front evaluation of soup methods from real generations (notes/bonesoup.md §2, §4).

Every compared method is a set of points; a point is a preference μ and a coefficient vector c over one
shared list of LoRA adapters (all methods' backbones, deduplicated by file):

    bone_soup        c = (1 + α) B(β)⁻¹ μ over its n backbones, for each α in ``eval.alphas`` (Eqs. 8-9)
    rewarded_soups   c = μ over its n single-reward backbones
    morlhf           c = e_j at μ = w_j: one point per policy trained on w_jᵀr (retrained per preference)
    sft              c = 0: W0 alone, a single point
    mage_i_m, mage_i, mage_e_m, mage_e, mod
                     guided decoding (``soupkitchen.decoding``, notes/mage.md §1.5-1.6) over the Bone Soup
                     base (α = ``soup.alpha``) with strength γ; every point a ``RowPlan`` of forward rows
                     over the same stack (value models are stacked adapters too); MOD mixes the Rewarded
                     Soups backbones when given, else the base's backbones

All rows of all methods run through one mixed model (``merging.build_mixed_model``) with per-row c, in
batches ordered by prompt, so every method sees the same prompts, decoding settings and batch shapes.

Every source must have been trained in the same reward space (``soupkitchen.reward_space``: the run's
frozen z = (r − m) / s); points, the reference point and every metric are in that space (``points``),
with the raw rewards kept beside them (``raw_points``). A point's score is the mean z per objective over
the evaluation prompts (and their samples); ``front_metrics`` scores each method against one reference
point (``eval.ref_point``, default −1 per objective: one SFT standard deviation below SFT's calibration
mean, the same for every run of one space), and a paired bootstrap over prompts (``soupkitchen.bootstrap``:
one resample for all methods) gives every metric and every HV ratio its interval.

    sources = {"bone_soup": read_source("runs/demo-bs/manifest.json"), ...}
    plan = build_plan(recipe, sources)
    result = evaluate(plan, recipe)            # generations, rewards, per-method points and metrics
    write_outputs(result, "outputs/eval")      # points.csv, metrics.csv, front.png, samples.jsonl
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from soupkitchen.bootstrap import BootstrapResult, paired_bootstrap, percentile_interval, resample_counts
from soupkitchen.config import ConfigError, LoraConfig, Recipe, from_dict, read_format, to_dict
from soupkitchen.metrics import METRIC_KEYS, diversity, front_metrics
from soupkitchen.preferences import backbone_weights, merge_coefficients, preference_grid
from soupkitchen.reward_space import RewardSpace

DEFAULT_REF = -1.0  # per objective, in z units, when eval.ref_point is unset
INTERVAL_KEYS = ("hypervolume", "inner_product", "controllability")  # metrics with bootstrap intervals

SOURCE_METHODS = ("bone_soup", "rewarded_soups", "morlhf")


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


@dataclass
class MethodFront:
    label: str
    preferences: np.ndarray  # [k, n] μ of each point
    coefficients: np.ndarray  # [k, m] c over ``EvalPlan.adapters`` (guided: the base's c)
    plans: list | None = None  # guided decoding: one ``decoding.RowPlan`` per point (None: plain generate)


@dataclass
class EvalPlan:
    objectives: list[str]
    adapters: list[Path]
    names: list[str]
    lora: list
    fronts: list[MethodFront]
    space: RewardSpace  # shared by every source: points and metrics live in it


@dataclass
class EvalResult:
    plan: EvalPlan
    ref_point: list[float]  # in the reward space (z units)
    points: dict[str, np.ndarray]  # label → [k, n] mean z per objective
    raw_points: dict[str, np.ndarray]  # label → [k, n] mean raw reward per objective
    lengths: dict[str, np.ndarray]  # label → [k] mean response length (words)
    metrics: dict[str, dict[str, float]]  # front_metrics + <key>_lo/_hi + hv_ratio_vs_<den>[_lo/_hi]
    intervals: BootstrapResult | None = None
    prompts: int = 0
    samples: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    generated_tokens: int = 0
    costs: dict[str, dict[str, float]] = field(default_factory=dict)  # guided label → timing vs plain


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
    doc = read_format(path, flag, "soupkitchen.backbones/v1", "backbones manifest")
    if method and doc["method"] != method:
        raise ConfigError(flag, f"{path} holds {doc['method']} backbones, not {method}")
    from soupkitchen.merging import adapters_from_manifest

    recipe = doc.get("recipe", {})
    lora = from_dict(LoraConfig, recipe.get("lora", {}), "lora")
    files = [p for _, p in adapters_from_manifest(path)]
    for name, f in zip((b["name"] for b in doc["backbones"]), files, strict=True):
        if not f.is_file():
            raise ConfigError(
                flag, f"backbone {name}: adapter {f} is missing (was the run moved or cleaned?)"
            )
    return BackboneSource(
        method=doc["method"],
        path=path,
        objectives=list(doc["objectives"]),
        beta=doc.get("beta"),
        names=[b["name"] for b in doc["backbones"]],
        weights=[list(map(float, b["weights"])) for b in doc["backbones"]],
        adapters=files,
        lora=[lora] * len(files),
        model=recipe.get("model"),
        space=RewardSpace.of_manifest(doc, flag),
    )


def _from_bundle(path: Path, method: str | None, flag: str) -> BackboneSource:
    from soupkitchen.merging import load_bundle

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


def _check_source(recipe: Recipe, src: BackboneSource, flag: str) -> None:
    if src.objectives != recipe.objectives:
        raise ConfigError(
            flag, f"backbones were trained on objectives {src.objectives}, the recipe has {recipe.objectives}"
        )
    current = to_dict(recipe.model)
    # Keys both sides know (a manifest from an older version may lack newer fields).
    differ = sorted(k for k in (src.model or {}) if k in current and src.model[k] != current[k])
    if differ:
        raise ConfigError(
            flag,
            f"backbones were trained over another base model (model.{', model.'.join(differ)} differ); "
            "evaluate with the recipe they were trained with",
        )
    if src.method in ("bone_soup", "rewarded_soups") and len(src.names) != len(recipe.objectives):
        raise ConfigError(flag, f"{src.method} needs one backbone per objective, got {len(src.names)}")


def soup_front(label: str, idx: list[int], m: int, grid: np.ndarray, beta: float | None, alpha: float):
    """BS (β) or RS (β None): c = (1 + α) B⁻¹μ on the adapters ``idx`` for every μ of ``grid``."""
    C = np.zeros((len(grid), m))
    C[:, idx] = [merge_coefficients(mu, beta, alpha) for mu in grid]
    return MethodFront(label, np.asarray(grid, dtype=np.float64), C)


def policy_front(label: str, idx: list[int], m: int, weights: list[list[float]]) -> MethodFront:
    """One point per independently trained policy: c = e_j at μ = w_j (MORLHF)."""
    C = np.zeros((len(idx), m))
    C[np.arange(len(idx)), idx] = 1.0
    return MethodFront(label, np.asarray(weights, dtype=np.float64), C)


def alpha_label(alpha: float) -> str:
    return "bone_soup" if alpha == 0 else f"bone_soup_a{alpha:g}"


def build_plan(
    recipe: Recipe,
    sources: dict[str, BackboneSource],
    include_sft: bool = True,
    modes: list[str] | tuple[str, ...] = (),
    gamma: float | None = None,
    value_models=None,
) -> EvalPlan:
    """The fronts to evaluate: every source's method (Bone Soup at each α of ``eval.alphas``), SFT, and the
    guided ``modes`` at strength ``gamma`` (default ``decoding.gamma``); ``value_models``
    (``value_models.load_value_models``) are stacked for mage_e / mage_e_m."""
    n = len(recipe.objectives)
    adapters: list[Path] = []
    names: list[str] = []
    lora: list = []
    index: dict[Path, int] = {}
    placed: dict[str, list[int]] = {}
    for method, src in sources.items():
        _check_source(recipe, src, f"--{method.replace('_', '-')}")
        placed[method] = []
        for name, path, cfg in zip(src.names, src.adapters, src.lora, strict=True):
            key = path.resolve()
            if key not in index:
                index[key] = len(adapters)
                adapters.append(path)
                names.append(name if name not in names else f"{method}.{name}")
                lora.append(cfg)
            placed[method].append(index[key])
    values = _stack_values(recipe, value_models, modes, adapters, names, lora)
    m, grid = len(adapters), preference_grid(n, recipe.eval.grid_step)
    fronts = []
    for method, src in sources.items():
        idx = placed[method]
        if method == "bone_soup":
            if src.beta is None:
                raise ConfigError("--bone-soup", f"{src.path} has no β (Rewarded Soups backbones?)")
            fronts += [soup_front(alpha_label(a), idx, m, grid, src.beta, a) for a in recipe.eval.alphas]
        elif method == "rewarded_soups":
            fronts.append(soup_front("rewarded_soups", idx, m, grid, None, 0.0))
        else:
            fronts.append(policy_front(method, idx, m, src.weights))
    fronts += guided_fronts(recipe, sources, placed, values, m, grid, modes, gamma)
    if include_sft:
        fronts.append(MethodFront("sft", np.full((1, n), 1.0 / n), np.zeros((1, m))))
    if not fronts:
        raise ConfigError(
            "methods", "nothing to evaluate: give at least one of --bone-soup/--rewarded-soups/--morlhf"
        )
    space = shared_space(sources) if sources else RewardSpace.identity(recipe.objectives)  # SFT alone: raw
    return EvalPlan(list(recipe.objectives), adapters, names, lora, fronts, space)


def _stack_values(
    recipe: Recipe, value_models, modes, adapters: list, names: list, lora: list
) -> list[int] | None:
    """Append the value adapters to the stack (in place); their indices, or None without value models."""
    from soupkitchen.decoding.plans import EXPLICIT

    if value_models is None:
        if any(md in EXPLICIT for md in modes):
            raise ConfigError(
                "--value-models", f"modes {list(modes)} include explicit ones: pass --value-models"
            )
        return None
    if value_models.objectives != recipe.objectives:
        raise ConfigError(
            "--value-models",
            f"value models are for objectives {value_models.objectives}, the recipe has {recipe.objectives}",
        )
    if value_models.model and value_models.model != to_dict(recipe.model):
        raise ConfigError("--value-models", "value models were trained over another base model (model.*)")
    start = len(adapters)
    adapters += value_models.files
    names += value_models.names
    lora += value_models.lora
    return list(range(start, len(adapters)))


def guided_fronts(recipe, sources, placed, values, m, grid, modes, gamma) -> list[MethodFront]:
    """One front per guided mode (module docstring); the point at μ decodes ``roles.plan(mode, μ, γ)``.

    π_base and MAGE-I's π*_i (Eq. 26) are the base's Stage-1 backbones (Bone Soup, with its β); MOD's experts
    are the Rewarded Soups specialists when given, else the same backbones."""
    from soupkitchen.config import DECODING_MODES
    from soupkitchen.decoding import AdapterRoles, check_gamma

    if not modes:
        return []
    gamma = check_gamma(recipe.decoding.gamma if gamma is None else gamma, "--gamma")
    for md in modes:
        if md not in DECODING_MODES or md == "plain":
            allowed = ", ".join(x for x in DECODING_MODES if x != "plain")
            raise ConfigError("--modes", f"unknown guided mode {md!r}; choose from {allowed}")
    base = next((k for k in ("bone_soup", "rewarded_soups") if k in sources), None)
    if base is None:
        raise ConfigError("--modes", "guided modes need a base: pass --bone-soup (or --rewarded-soups)")
    beta = sources[base].beta if base == "bone_soup" else None
    roles = AdapterRoles(
        m,
        placed[base],
        beta,
        recipe.soup.alpha,
        mod_experts=placed.get("rewarded_soups"),  # None: MOD mixes the base's backbones
        values=values,
    )
    dec = recipe.decoding
    fronts = []
    for md in dict.fromkeys(modes):
        plans = [
            roles.plan(md, mu, gamma, ensemble_weights=dec.ensemble_weights, shortcut=dec.implicit_shortcut)
            for mu in grid
        ]
        C = np.array([_display_coefficients(pl) for pl in plans])
        fronts.append(MethodFront(md, np.asarray(grid, dtype=np.float64), C, plans))
    return fronts


def _display_coefficients(plan) -> np.ndarray:
    """The c shown in points.csv: the base's (MOD: Σ_j w_j c_j of its experts)."""
    if plan.base is not None:
        return np.asarray(plan.components[plan.base].c)
    return np.sum([np.asarray(c.c) * c.weight for c in plan.components], axis=0)


def load_mixed(plan: EvalPlan, recipe: Recipe, device: str = "cpu"):
    """W0 from the recipe with every adapter of the plan stacked for per-row mixing: (model, tokenizer)."""
    from soupkitchen.merging import build_mixed_model, load_adapter_state
    from soupkitchen.models import load_base_model

    model, tokenizer = load_base_model(recipe.model, device=device)
    if plan.adapters:
        states = [load_adapter_state(p) for p in plan.adapters]
        model = build_mixed_model(model, states, plan.lora, plan.names)
    return model, tokenizer


def ref_point(recipe: Recipe) -> list[float]:
    """The reference point of every hypervolume: ``eval.ref_point`` or ``DEFAULT_REF`` per objective (z units;
    never computed from the points being scored, so fronts of different runs and trials compare)."""
    n = len(recipe.objectives)
    return list(recipe.eval.ref_point) if recipe.eval.ref_point is not None else [DEFAULT_REF] * n


def eval_settings(recipe: Recipe):
    """The decoding settings of every evaluated row: greedy if ``eval.greedy``, else the training sampling
    settings (``generation``), with ``decoding``'s guidance options."""
    from soupkitchen.decoding import DecodeSettings

    gen = recipe.generation
    return dataclasses.replace(
        DecodeSettings.from_config(recipe.decoding, gen, recipe.seed),
        greedy=recipe.eval.greedy,
        temperature=gen.temperature,
        top_k=gen.top_k,
        top_p=gen.top_p,
    ).check()


def row_seed(seed: int, prompt: int, sample: int) -> int:
    """The sampling seed of (prompt, sample), the same for every method and μ: common random numbers, so
    two points differ by their coefficients, not by their draws (inverse-CDF sampling couples them)."""
    return (seed * 1_000_003 + prompt * 10_007 + sample) % (2**63 - 1)


def backbone_separation(front: MethodFront, scores: np.ndarray, intervals: BootstrapResult) -> dict:
    """How far apart the trained backbones land: the mean pairwise distance (z units) between the points
    whose coefficients are one backbone alone (c = e_j: Bone Soup at μ = w_j with α = 0, Rewarded Soups at
    μ = e_j), with its interval on the bootstrap's resamples. Empty for fronts with fewer than two."""
    C = front.coefficients
    if front.plans is not None or C.shape[1] == 0:
        return {}
    alone = [k for k in range(len(C)) if np.isclose(C[k].max(), 1.0) and np.isclose(np.abs(C[k]).sum(), 1.0)]
    if len(alone) < 2:
        return {}
    w = resample_counts(scores.shape[0], intervals.samples, intervals.seed) / scores.shape[0]
    pts = scores[:, alone]  # [P, b, n]
    reps = [diversity(x) for x in (w @ pts.reshape(len(pts), -1)).reshape(len(w), *pts.shape[1:])]
    lo, hi = percentile_interval(np.asarray(reps), intervals.confidence)
    value = diversity(pts.mean(0))
    return {"backbone_distance": value, "backbone_distance_lo": float(lo), "backbone_distance_hi": float(hi)}


@torch.no_grad()
def evaluate(
    plan: EvalPlan,
    recipe: Recipe,
    *,
    split: str = "eval",
    device: str | None = None,
    model=None,
    tokenizer=None,
    rewards=None,
    progress: bool = True,
    keep_samples: int = 2,
) -> EvalResult:
    """Generate for every (method, μ, prompt, sample) row, score every objective, average per point in the
    run's reward space, front metrics with paired-bootstrap intervals.

    ``model``/``tokenizer`` (from ``load_mixed``) and ``rewards`` can be passed to reuse them across calls.
    Every row decodes through ``decoding.decode`` (plain fronts as one-component plans) with the seed of
    its (prompt, sample) (``row_seed``). Plain fronts share batches ordered by prompt; each guided front
    runs in batches of its own, so its cost per token is timed against the plain fronts' in the same loop.
    ``keep_samples`` responses per point are kept in ``samples`` for inspection.
    """
    from tqdm.auto import tqdm

    from soupkitchen.data import load_prompt_records
    from soupkitchen.decoding import Component, RowPlan, decode
    from soupkitchen.models import format_prompt, resolve_device
    from soupkitchen.rewards import build_rewards

    device = device or resolve_device(recipe.device)
    if model is None:
        model, tokenizer = load_mixed(plan, recipe, device)
    rewards = rewards or build_rewards(recipe.rewards, device=device)
    records = load_prompt_records(recipe.data, split)[: recipe.eval.num_prompts]
    if not records:
        raise ConfigError("data", f"no {split} prompts to evaluate on")
    n, reps, bs = len(plan.objectives), recipe.eval.samples_per_prompt, recipe.eval.batch_size
    settings = eval_settings(recipe)
    plans = [
        fr.plans or [RowPlan((Component(tuple(map(float, c)), 1.0),), base=0) for c in fr.coefficients]
        for fr in plan.fronts
    ]
    # Plain rows ordered by prompt (a batch shares one prompt length and mixes many c); guided per front.
    groups = [[(f, k) for f, fr in enumerate(plan.fronts) if fr.plans is None for k in range(len(plans[f]))]]
    groups += [[(f, k) for k in range(len(plans[f]))] for f, fr in enumerate(plan.fronts) if fr.plans]
    sums = {cell: np.zeros((len(records), n)) for group in groups for cell in group}  # per prompt: bootstrap
    words = dict.fromkeys(sums, 0.0)
    samples, timing = [], {}
    fmt = lambda p: format_prompt(tokenizer, p, recipe.model.use_chat_template)  # noqa: E731
    t0 = time.perf_counter()
    for group in groups:
        if not group:
            continue
        label = plan.fronts[group[0][0]].label if plan.fronts[group[0][0]].plans else "plain"
        rows = [(p, s, cell) for p in range(len(records)) for s in range(reps) for cell in group]
        seconds, tokens, width = 0.0, 0, 0
        for start in tqdm(
            range(0, len(rows), bs), desc=f"evaluate {label}", disable=not progress, unit="batch"
        ):
            chunk = rows[start : start + bs]
            out = decode(
                model,
                tokenizer,
                [records[p].prompt for p, _, _ in chunk],
                [plans[f][k] for _, _, (f, k) in chunk],
                # The chunk-level beam takes one setting per batch (and one generator); rows otherwise
                # sample with their own (prompt, sample) seed.
                settings
                if settings.beam_width
                else [dataclasses.replace(settings, seed=row_seed(recipe.seed, p, s)) for p, s, _ in chunk],
                format_prompt=fmt,
                max_prompt_tokens=recipe.model.max_prompt_tokens,
                device=device,
                generator=torch.Generator().manual_seed(recipe.seed + start) if settings.beam_width else None,
            )
            seconds, tokens, width = (
                seconds + out.seconds,
                tokens + out.generated_tokens,
                width + out.forward_rows,
            )
            scores = np.asarray(rewards.score([records[p].context for p, _, _ in chunk], out.texts))
            for (p, s, cell), text, score in zip(chunk, out.texts, scores, strict=True):
                sums[cell][p] += score
                words[cell] += len(text.split())
                if p < keep_samples and s == 0:
                    fr = plan.fronts[cell[0]]
                    samples.append(
                        {
                            "method": fr.label,
                            "mu": fr.preferences[cell[1]].tolist(),
                            "prompt": records[p].prompt,
                            "response": text,
                            "rewards": dict(zip(plan.objectives, score.tolist(), strict=True)),
                        }
                    )
        timing[label] = {
            "seconds": seconds,
            "tokens": float(tokens),
            "seconds_per_token": seconds / max(tokens, 1),
            "forward_rows_per_row": width / len(rows),
        }
    seconds = time.perf_counter() - t0
    plain = timing.pop("plain", None)
    if plain:  # generation time only (no reward scoring) on both sides, one decoding loop
        for c in timing.values():
            c["plain_seconds_per_token"] = plain["seconds_per_token"]
            c["cost_per_token_vs_plain"] = c["seconds_per_token"] / plain["seconds_per_token"]
    tokens = int(sum(c["tokens"] for c in timing.values()) + (plain["tokens"] if plain else 0))
    count = len(records) * reps
    per_prompt, raw_points, lengths = {}, {}, {}
    for f, fr in enumerate(plan.fronts):
        raw = np.stack([sums[(f, k)] / reps for k in range(len(fr.preferences))], axis=1)  # [P, k, n]
        per_prompt[fr.label] = plan.space.normalize(raw)
        raw_points[fr.label] = raw.mean(0)
        lengths[fr.label] = np.array([words[(f, k)] / count for k in range(len(fr.preferences))])
    ref = ref_point(recipe)
    ev = recipe.eval
    intervals = paired_bootstrap(
        per_prompt,
        {fr.label: fr.preferences for fr in plan.fronts},
        ref,
        samples=ev.bootstrap_samples,
        confidence=ev.confidence,
        seed=recipe.seed,
        metric_keys=INTERVAL_KEYS,
    )
    points = intervals.points
    metrics = {}
    for fr in plan.fronts:
        m = front_metrics(points[fr.label], fr.preferences, ref)
        for k, v in intervals.point[fr.label].items():
            m |= {k: v, f"{k}_lo": intervals.lo[fr.label][k], f"{k}_hi": intervals.hi[fr.label][k]}
        metrics[fr.label] = m | backbone_separation(fr, per_prompt[fr.label], intervals)
    return EvalResult(
        plan,
        ref,
        points,
        raw_points,
        lengths,
        metrics,
        intervals,
        len(records),
        samples,
        seconds,
        tokens,
        timing,
    )


RATIO_PREFIX = "hv_ratio_vs_"


def hypervolume_ratios(result: EvalResult) -> dict[str, tuple[float, float, float]]:
    """``{"bone_soup/sft": (ratio, lo, hi)}``: HV(method) / HV(baseline) with its paired-bootstrap interval,
    for every method against each baseline after it (``bootstrap.default_ratios``)."""
    out = {}
    for label, m in result.metrics.items():
        for key in (k for k in m if k.startswith(RATIO_PREFIX) and not k.endswith(("_lo", "_hi"))):
            out[f"{label}/{key.removeprefix(RATIO_PREFIX)}"] = (m[key], m[f"{key}_lo"], m[f"{key}_hi"])
    return out


def _cell(m: dict, key: str) -> str:
    """``value [lo, hi]`` when the metric has an interval, else the value."""
    if f"{key}_lo" in m:
        return f"{m[key]:.4g} [{m[key + '_lo']:.3g}, {m[key + '_hi']:.3g}]"
    return f"{m[key]:.4g}"


def format_table(result: EvalResult) -> str:
    """Console table: one row per method, front metrics with their intervals, then the HV ratios."""
    keys = ("hypervolume", "inner_product", "controllability", "front_length", "sparsity", "spacing")
    rows = [
        [fr.label, str(len(fr.preferences)), *(_cell(result.metrics[fr.label], k) for k in keys)]
        for fr in result.plan.fronts
    ]
    head = ["method", "points", *keys]
    widths = [max(len(r[i]) for r in [head, *rows]) + 2 for i in range(len(head))]

    def fmt(r):
        return r[0].ljust(widths[0]) + "".join(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))

    lines = [fmt(head), "-" * sum(widths), *map(fmt, rows)]
    conf = f"{result.intervals.confidence:.0%}" if result.intervals else "95%"
    lines.append(
        f"[lo, hi]: {conf} paired bootstrap over {result.prompts} prompts; all metrics in z units against "
        f"reference point {[round(v, 4) for v in result.ref_point]}"
    )
    lines.append(result.plan.space.describe())
    for label, m in result.metrics.items():
        if "backbone_distance" in m:
            dist = _cell(m, "backbone_distance")
            lines.append(f"backbone separation {label} (mean distance between its backbones, z): {dist}")
    for k, (v, lo, hi) in hypervolume_ratios(result).items():
        lines.append(f"hypervolume ratio {k}: {v:.3f} [{lo:.3f}, {hi:.3f}]" + _verdict(lo, hi))
    for label, c in result.costs.items():
        ratio = c.get("cost_per_token_vs_plain", math.nan)
        lines.append(
            f"cost per generated token {label}: {ratio:.2f}x plain "
            f"({c['forward_rows_per_row']:.1f} forward rows per row, {c['tokens']:.0f} tokens)"
        )
    return "\n".join(lines)


def _verdict(lo: float, hi: float) -> str:
    if lo > 1:
        return "  (above 1)"
    if hi < 1:
        return "  (below 1)"
    return "  (interval contains 1: not separated)"


def metric_columns(result: EvalResult) -> list[str]:
    """metrics.csv columns after ``method``/``points``: each metric (with ``_lo``/``_hi`` where it has an
    interval), then every ``hv_ratio_vs_<den>`` with its bounds."""
    ratios = sorted({k for m in result.metrics.values() for k in m if k.startswith(RATIO_PREFIX)})
    cols = []
    for k in [*METRIC_KEYS, "backbone_distance", *ratios]:
        if k.endswith(("_lo", "_hi")) or not any(k in m for m in result.metrics.values()):
            continue
        cols.append(k)
        if any(f"{k}_lo" in m for m in result.metrics.values()):
            cols += [f"{k}_lo", f"{k}_hi"]
    return cols


def write_outputs(result: EvalResult, out_dir: str | Path, title: str | None = None) -> dict[str, Path]:
    """points.csv (method, μ, c, mean z and raw rewards with the z bounds, length), metrics.csv (one row per
    method, intervals, the reference point), front.png (z units, error bars), samples.jsonl."""
    from soupkitchen.plotting import pareto_plot

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    objs, plan, iv = result.plan.objectives, result.plan, result.intervals
    paths = {
        "points": out / "points.csv",
        "metrics": out / "metrics.csv",
        "plot": out / "front.png",
        "samples": out / "samples.jsonl",
    }
    with paths["points"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "method",
                *(f"mu_{o}" for o in objs),
                *(f"c_{a}" for a in plan.names),
                *(f"reward_{o}" for o in objs),
                *(f"reward_{o}_{b}" for o in objs for b in ("lo", "hi")),
                *(f"raw_{o}" for o in objs),
                "response_words",
            ]
        )
        for fr in plan.fronts:
            lo, hi = iv.point_lo[fr.label], iv.point_hi[fr.label]
            for k, mu in enumerate(fr.preferences):
                w.writerow(
                    [
                        fr.label,
                        *mu.round(6),
                        *fr.coefficients[k].round(6),
                        *result.points[fr.label][k].round(6),
                        *(round(float(v), 6) for j in range(len(objs)) for v in (lo[k, j], hi[k, j])),
                        *result.raw_points[fr.label][k].round(6),
                        round(float(result.lengths[fr.label][k]), 2),
                    ]
                )
    cols = metric_columns(result)
    with paths["metrics"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "points", *cols, *(f"ref_{o}" for o in objs), "prompts"])
        for fr in plan.fronts:
            m = result.metrics[fr.label]
            w.writerow(
                [
                    fr.label,
                    len(fr.preferences),
                    *(m.get(k, "") for k in cols),
                    *result.ref_point,
                    result.prompts,
                ]
            )
    fronts = {fr.label: (result.points[fr.label], fr.preferences) for fr in plan.fronts}
    pareto_plot(fronts, paths["plot"], [f"{o} (z)" for o in objs], title=title, errors=iv.errors())
    with paths["samples"].open("w") as f:
        for s in result.samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    if result.costs:
        paths["costs"] = out / "costs.csv"
        keys = sorted({k for c in result.costs.values() for k in c})
        with paths["costs"].open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["method", *keys])
            for label, c in result.costs.items():
                w.writerow([label, *(c.get(k, "") for k in keys)])
    return paths
