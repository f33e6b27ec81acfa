"""Evaluation trials on Ray Tune: one front scored by hypervolume per trial (``evaluate_config``), the Tune
run that resumes (``run_search``), and the results table with intervals (``results_table``)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import tempfile
from pathlib import Path

import ray.tune
from ray import tune

from soupkitchen.bootstrap import format_interval, winner_separated
from soupkitchen.config import ConfigError, Recipe, from_dict, to_dict
from soupkitchen.evaluation import alpha_label, build_plan, evaluate, load_mixed, read_source, write_outputs
from soupkitchen.methods import Mode
from soupkitchen.models import resolve_device
from soupkitchen.rewards import build_rewards
from soupkitchen.tracking import RunLogger
from soupkitchen.value_models import load_value_models

SCORE = "hypervolume"


def parse_floats(value: str, flag: str) -> list[float]:
    """A CLI list such as ``0.6,0.7,0.8`` → floats; anything else is a ConfigError naming ``flag``."""
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError as e:
        raise ConfigError(flag, f"must be comma-separated numbers, got {value!r}") from e


def with_overrides(recipe: Recipe, **sections) -> Recipe:
    """A validated copy of ``recipe`` with ``{section: {key: value}}`` replaced."""
    tree = to_dict(recipe)
    for section, values in sections.items():
        tree[section].update(values)
    return from_dict(Recipe, tree).validate()


_CACHE: dict = {}  # per trial actor: survives between trials when Tune reuses the actor


def front_trial(config: dict) -> None:
    """Tune trainable: one front evaluation (``evaluate_config``), reported to Tune."""

    ray.tune.report(evaluate_config(config, _CACHE))


def trial_run_name(run_name: str, space: dict) -> str:
    """``<run>-eval-<hash of the searched values>``: a changed grid starts a new Tune experiment instead of
    restoring a stale one; the same grid resumes (``Tuner.restore``)."""

    searched = {k: v for k, v in space.items() if k not in ("recipe", "parent_run")}
    digest = hashlib.sha256(json.dumps(searched, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{run_name}-eval-{digest}"


def run_search(
    name: str, recipe: Recipe, param_space: dict, storage: str, keys: list[str], fresh: bool = False
) -> list[dict]:
    """Run (or resume, with ``Tuner.restore``) the evaluation trials of ``param_space`` (``tune.grid_search``
    values, or plain lists handed to the optuna searcher); returns one row per trial, errors included."""

    s = recipe.search
    resources = {"CPU": s.cpus_per_trial} | ({"GPU": s.gpus_per_trial} if recipe.distributed.use_gpu else {})
    trainable = tune.with_resources(front_trial, resources)
    path = f"{storage}/{name}"
    if not fresh and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True)
    else:
        search_alg, space = None, dict(param_space)
        if s.searcher == "optuna":
            search_alg, space = _optuna(space, keys)
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=SCORE,
                mode="max",
                search_alg=search_alg,
                num_samples=s.num_samples if search_alg else 1,
                max_concurrent_trials=s.max_concurrent_trials or None,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(name=name, storage_path=storage),
        )
    rows = []
    for r in tuner.fit():
        cfg = r.config or {}
        row = {k: cfg.get(k) for k in keys} | {"error": None if r.error is None else repr(r.error)}
        row.update({k: v for k, v in (r.metrics or {}).items() if isinstance(v, (int, float, str))})
        rows.append(row)
    return rows


def _optuna(space: dict, keys: list[str]):
    """Bayesian search (Ray Tune's OptunaSearch) over [min, max] of each grid in ``keys``."""

    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as e:  # optuna is optional
        raise ConfigError(
            "search.searcher", f"'optuna' needs `pip install optuna` ({e}); or use 'grid'"
        ) from e
    out = dict(space)
    for k in keys:
        values = space[k]["grid_search"] if isinstance(space[k], dict) else space[k]
        out[k] = tune.uniform(min(values), max(values)) if min(values) < max(values) else values[0]
    return OptunaSearch(), out


def evaluate_config(config: dict, cache: dict) -> dict:
    """Score one trial on the validation prompts: the Bone Soup front of ``config["source"]`` (manifest or
    bundle) at its α, or with ``mode`` (mage_i_m, mage_e_m, mod, ...) the guided front at α and γ.
    ``cache`` keeps (model, tokenizer, rewards) per adapter stack. Logs an MLflow child run with the front
    plot; returns the metrics for Tune."""

    recipe: Recipe = config["recipe"]  # the validated object, as the search passed it
    alpha = float(config.get("alpha", 0.0))
    recipe = with_overrides(recipe, eval={"alphas": [alpha]}, soup={"alpha": alpha})
    path = config.get("source") or config["sources"][f"{config['beta']:g}"]
    source = read_source(path, "bone_soup", flag="source")
    mode = Mode(config.get("mode", Mode.BONE_SOUP))
    values = None
    if config.get("value_models"):
        values = load_value_models(config["value_models"])
    plan = build_plan(
        recipe,
        {"bone_soup": source},
        include_sft=False,
        modes=[mode] if mode.guided else [],
        gamma=config.get("gamma"),
        value_models=values,
    )
    target = alpha_label(alpha) if mode == "bone_soup" else mode
    plan.fronts = [f for f in plan.fronts if f.label == target]  # score only this trial's front
    key = tuple(str(p) for p in plan.adapters)
    device = resolve_device(recipe.device)
    if key not in cache:
        cache.clear()  # one stack per worker: free the previous model first
        model, tok = load_mixed(plan, recipe, device)
        cache[key] = (model, tok, build_rewards(recipe.rewards, device=device))
    model, tok, rewards = cache[key]
    logger = RunLogger(
        recipe,
        f"{config.get('search', 'search')}:{config.get('label', key[0])}",
        parent=config.get("parent_run"),
        tags={"soupkitchen.job": "search_trial"},
    )
    with logger:
        result = evaluate(
            plan, recipe, split="validation", model=model, tokenizer=tok, rewards=rewards, progress=False
        )
        metrics = dict(result.metrics[target]) | result.intervals.row(target)  # + hypervolume_reps (pairing)
        params = {k: config[k] for k in ("beta", "alpha", "gamma", "mode") if k in config}
        logger.log_params(params)
        logger.log_metrics(
            {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}, 0
        )
        with tempfile.TemporaryDirectory() as tmp:
            files = write_outputs(result, tmp, title=f"{recipe.name} {params}")
            for f in (files["plot"], files["points"]):
                logger.log_file(f)
    clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else -1.0) for k, v in metrics.items()}
    return clean | {"mlflow_run_id": logger.run_id}


def results_table(
    rows: list[dict], keys: list[str], path: Path | None = None, confidence: float = 0.95
) -> str:
    """Trials sorted by hypervolume (best first; failed trials last, marked), as text and optionally CSV.

    A metric whose row has ``<metric>_lo`` / ``<metric>_hi`` (bootstrap percentile bounds over the prompts,
    ``soupkitchen.bootstrap``) prints as ``value [lo, hi]``; the CSV has the three columns. The last line
    says whether the winner is separated from the runner-up: the paired difference of their
    ``hypervolume_reps`` (per-replicate HVs on the same prompt resamples), or "no interval" without them.
    """
    ok = sorted((r for r in rows if r.get("error") is None), key=lambda r: -r[SCORE])
    failed = [r for r in rows if r.get("error") is not None]
    metrics = [SCORE, "inner_product", "controllability", "front_length"]
    if path is not None:
        cols = [*keys, *(c for m in metrics for c in (m, f"{m}_lo", f"{m}_hi"))]
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow([*cols, "error"])
            for r in ok + failed:
                w.writerow([r.get(c, "") for c in cols] + [r.get("error") or ""])

    def cell(r: dict, c: str) -> str:
        v = r.get(c)
        if c in metrics and isinstance(v, (int, float)):
            return format_interval(v, r.get(f"{c}_lo"), r.get(f"{c}_hi"))
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    def name(r: dict) -> str:
        return ", ".join(f"{k}={r[k]:g}" if isinstance(r.get(k), float) else f"{k}={r.get(k)}" for k in keys)

    table = [[*keys, *metrics]] + [[cell(r, c) for c in (*keys, *metrics)] for r in ok]
    widths = [max(len(line[i]) for line in table) + 3 for i in range(len(table[0]))]
    lines = ["".join(f"{v:>{wd}}" for v, wd in zip(line, widths, strict=True)) for line in table]
    for r in failed:
        lines.append("".join(f"{r.get(c)!s:>{wd}}" for c, wd in zip(keys, widths, strict=False)))
        lines[-1] += f"   FAILED: {str(r['error'])[:200]}"
    if len(ok) >= 2:
        reps = {name(r): json.loads(r[f"{SCORE}_reps"]) if r.get(f"{SCORE}_reps") else None for r in ok}
        lines.append(winner_separated({name(r): r[SCORE] for r in ok}, reps, confidence).describe("HV"))
    elif ok:
        lines.append(f"winner {name(ok[0])}: no runner-up")
    return "\n".join(lines)


def best(rows: list[dict]) -> dict:
    """The trial with the highest hypervolume (point estimate; the first on ties, as ``results_table``
    ranks them) among those that finished; whether it is separated from the runner-up is
    ``results_table``'s last line."""
    ok = [r for r in rows if r.get("error") is None]
    if not ok:
        raise RuntimeError(
            f"all {len(rows)} trials failed; first error: {rows[0].get('error') if rows else None}"
        )
    return max(ok, key=lambda r: r[SCORE])
