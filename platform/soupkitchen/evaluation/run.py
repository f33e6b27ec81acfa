"""Running a plan: generate every row through one mixed model, score it, metrics with paired-bootstrap
intervals over prompts."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from soupkitchen.bootstrap import (
    BootstrapResult,
    default_ratios,
    paired_bootstrap,
    percentile_interval,
    resample_counts,
)
from soupkitchen.config import ConfigError, Recipe
from soupkitchen.data import load_prompt_records
from soupkitchen.decoding import Component, RowPlan, decode
from soupkitchen.evaluation.plan import (
    EvalPlan,
    MethodFront,
    eval_settings,
    load_mixed,
    projection_point,
    ref_point,
)
from soupkitchen.metrics import diversity, front_metrics
from soupkitchen.models import format_prompt, resolve_device
from soupkitchen.rewards import build_rewards

# metrics with bootstrap intervals
INTERVAL_KEYS = ("hypervolume", "inner_product", "controllability", "kendall_tau", "diversity")


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
    projection_ref: list[float] = field(default_factory=list)  # Kendall τ's angles are measured around it
    per_prompt: dict[str, np.ndarray] = field(default_factory=dict)  # label → [P, k, n] z per prompt


def row_seed(seed: int, prompt: int, sample: int) -> int:
    """The sampling seed of (prompt, sample), the same for every method and μ: common random numbers, so
    two points differ by their coefficients, not by their draws (inverse-CDF sampling couples them)."""
    return (seed * 1_000_003 + prompt * 10_007 + sample) % (2**63 - 1)


def backbone_separation(front: MethodFront, scores: np.ndarray, intervals: BootstrapResult) -> dict:
    """How far apart the trained backbones land: the mean pairwise distance (z units) between the points
    whose coefficients are one backbone alone (c = e_j: Bone Soup at μ = w_j with α = 0, Rewarded Soups at
    μ = e_j), with its interval on the bootstrap's resamples. Empty for fronts with fewer than two."""
    C = front.coefficients
    if front.plans is not None or front.conditioning is not None or front.group or C.shape[1] == 0:
        return {}  # guided, conditioned (one policy at every μ) and unseen-group fronts have no backbones
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
                [plan.fronts[f].prompt(records[p].prompt, k) for p, _, (f, k) in chunk],
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
                            "prompt": fr.prompt(records[p].prompt, cell[1]),
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
    ref, proj = ref_point(recipe), projection_point(recipe)
    ev = recipe.eval
    intervals = paired_bootstrap(
        per_prompt,
        {fr.label: fr.preferences for fr in plan.fronts},
        ref,
        samples=ev.bootstrap_samples,
        confidence=ev.confidence,
        seed=recipe.seed,
        ratios=hypervolume_pairs(plan.fronts),
        metric_keys=INTERVAL_KEYS,
        projection_ref=proj,
    )
    points = intervals.points
    metrics = {}
    for fr in plan.fronts:
        m = front_metrics(points[fr.label], fr.preferences, ref, proj)
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
        proj,
        per_prompt,
    )


def hypervolume_pairs(fronts: list[MethodFront]) -> list[tuple[str, str]]:
    """HV ratios between fronts on the same preferences only: the grid fronts' ``default_ratios`` (+ HoE vs
    MOD), and the same pairs inside every unseen group (between the pair's fronts at that group's
    preferences)."""
    grid = default_ratios([fr.label for fr in fronts if fr.group is None])
    labels = {fr.label for fr in fronts}
    grid += [("hoe", "mod")] if {"hoe", "mod"} <= labels else []  # HoE's decoding-time competitor
    pairs = list(grid)
    for group in dict.fromkeys(fr.group for fr in fronts if fr.group):
        at = [(f"{a}@{group}", f"{b}@{group}") for a, b in grid]
        pairs += [(a, b) for a, b in at if a in labels and b in labels]
    return pairs
