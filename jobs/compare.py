"""Bone Soup vs Rewarded Soups vs MORLHF vs SFT in one command: train what each needs, then compare fronts.

    python jobs/compare.py --recipe demo                                    # local Ray
    ray job submit --working-dir . -- python jobs/compare.py --recipe tiny --run-name tiny-compare

1. Every policy the methods need is trained once, all in parallel (one Tune trial per policy, as in
   train_backbones.py): Bone Soup's backbones (w = columns of B(β)), Rewarded Soups' (w = e_i) and
   MORLHF's (w = μ for each μ of ``soup.morlhf_preferences``). A w that two methods need is one PPO run
   (MORLHF at μ = e_i *is* Rewarded Soups' backbone i; at a column of B it is a Bone Soup backbone).
   Every policy gets the same PPO budget (ppo.steps × ppo.batch_size): equal budget per policy.
2. One backbones manifest per method (``<out>/<method>/manifest.json``) and a soup bundle for Bone Soup
   and Rewarded Soups (``<out>/bundles/<method>``), ready for serving.
3. evaluate_front.py on all of them: table, points.csv, metrics.csv, front.png, MLflow (``<out>/eval``).
Re-running with the same --run-name resumes unfinished policies and reuses finished ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python jobs/compare.py`: import jobs.*

from soupkitchen.backbones import METHODS, backbone_specs, write_manifest
from soupkitchen.config import ConfigError, Recipe, from_dict, load_recipe, parse_cli_overrides, to_dict
from soupkitchen.reward_space import RewardSpace, effective_weights


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Any other --section.key VALUE overrides that recipe key, e.g. --ppo.steps 10.",
    )
    p.add_argument("--recipe", default="demo", help="recipe name in recipes/ or a YAML path (default: demo)")
    p.add_argument(
        "--run-name", default=None, help="default: <recipe>-compare[-<methods>]; reuse it to resume"
    )
    p.add_argument(
        "--storage", default=None, help="local path or s3:// URI (default: distributed.storage_path)"
    )
    p.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}"
    )
    p.add_argument("--out", default=None, help="outputs (default: <storage>/<run-name>)")
    p.add_argument(
        "--modes",
        default="",
        help="guided fronts over the trained soups too, comma-separated (mage_i_m, mage_i, mod; the explicit "
        "modes need value models: jobs/train_value_models.py, then jobs/evaluate_front.py)",
    )
    args, rest = p.parse_known_args(argv)
    return args, parse_cli_overrides(rest)


def policy_weights(recipe: Recipe, methods: list[str]) -> list[list[float]]:
    """The distinct w of every method's policies, sorted from objective 1 down (deterministic names)."""
    seen = {tuple(s.weights) for m in methods for s in backbone_specs(recipe, m)}
    return [list(w) for w in sorted(seen, reverse=True)]


def method_manifests(recipe: Recipe, methods: list[str], union_manifest: Path, out: Path) -> dict[str, Path]:
    """Split the shared training run into one manifest per method (entries renamed to the method's names);
    every method keeps the run's one reward space."""
    union = json.loads(union_manifest.read_text())
    space = RewardSpace.of_manifest(union, str(union_manifest))
    by_w = {tuple(b["weights"]): b for b in union["backbones"]}
    paths = {}
    for m in methods:
        entries = [by_w[tuple(s.weights)] | {"name": s.name} for s in backbone_specs(recipe, m)]
        paths[m] = write_manifest(out / m / "manifest.json", recipe, m, entries, space)
    return paths


def diagnostics(manifest: Path, space: RewardSpace) -> dict:
    """B (the trained w_i as rows) and effective_B (``reward_space.effective_weights``: the w̃_i that each
    backbone's normaliser really optimised in the shared space); equal under a frozen shared space."""
    doc = json.loads(manifest.read_text())
    W = [b["weights"] for b in doc["backbones"]]
    eff = effective_weights(space, W, [b["reward_normalizer"] for b in doc["backbones"]])
    return {
        "B": W,
        "effective_B": np.round(eff, 6).tolist(),
        "effective_B_max_abs_error": float(np.max(np.abs(eff - np.asarray(W)))),
    }


def write_bundles(
    recipe: Recipe, manifests: dict[str, Path], out: Path, gamma: float | None = None
) -> dict[str, Path]:
    """A soup bundle per soup (Bone Soup with the recipe's β and α; Rewarded Soups) under out/bundles."""
    from soupkitchen.merging import adapters_from_manifest, write_bundle

    bundles = {}
    for m in ("bone_soup", "rewarded_soups"):
        if m not in manifests:
            continue
        space = RewardSpace.of_manifest(json.loads(manifests[m].read_text()), str(manifests[m]))
        write_bundle(
            out / "bundles" / m,
            recipe.model,
            adapters_from_manifest(manifests[m]),
            beta=recipe.soup.beta if m == "bone_soup" else None,
            alpha=recipe.soup.alpha if m == "bone_soup" else 0.0,
            objectives=recipe.objectives,
            normalization=space.normalization(),
            ref_point=recipe.eval.ref_point or [0.0] * len(recipe.objectives),
            lora_config=recipe.lora,
            gamma=gamma if m == "bone_soup" else None,
            overwrite=True,
            reward_space=space,
            diagnostics=diagnostics(manifests[m], space),
        )
        bundles[m] = out / "bundles" / m
    return bundles


def register_bundles(recipe: Recipe, bundles: dict[str, Path], run_name: str) -> None:
    """Log the bundles to MLflow and register them (``soup-<recipe>`` for Bone Soup, ``soup-<recipe>-rs``),
    alias ``@candidate``: ``artifacts.load_soup("models:/soup-demo@candidate")`` loads them anywhere."""
    from soupkitchen.tracking import RunLogger

    logger = RunLogger(recipe, f"compare:{run_name}", tags={"soupkitchen.job": "compare"})
    prefix = f"{recipe.tracking.registered_model_prefix}-{recipe.name}"
    for m, path in bundles.items():
        logger.log_bundle(path, name=prefix if m == "bone_soup" else f"{prefix}-rs")
    logger.finish()


def main(argv: list[str] | None = None) -> int:
    import jobs.evaluate_front as evaluate_front
    import jobs.train_backbones as train_backbones
    from soupkitchen.evaluation import format_table

    try:
        args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
        recipe = load_recipe(args.recipe, overrides)
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        if not methods or any(m not in METHODS for m in methods):
            raise ConfigError("--methods", f"must be a comma-separated subset of {', '.join(METHODS)}")
        subset = "" if set(methods) == set(METHODS) else "-" + "-".join(methods)
        run_name = args.run_name or f"{recipe.name}-compare{subset}"
        storage = train_backbones._storage(recipe, args.storage)
        # Train the union of policies as one set of linear-scalarisation PPO runs (MORLHF over every w).
        union = to_dict(recipe)
        union["soup"]["morlhf_preferences"] = policy_weights(recipe, methods)
        trained = train_backbones.run(from_dict(Recipe, union).validate(), "morlhf", run_name, storage)
        out = Path(args.out or train_backbones._local_out(storage, run_name))
        manifests = method_manifests(recipe, methods, trained, out)
        bundles = write_bundles(recipe, manifests, out)
        register_bundles(recipe, bundles, run_name)
        modes = evaluate_front.parse_modes(args.modes)
        result, files = evaluate_front.run(
            recipe, {m: str(p) for m, p in manifests.items()}, out / "eval", modes=modes
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    print("manifests: " + ", ".join(f"{m}={p}" for m, p in manifests.items()))
    print("bundles: " + ", ".join(f"{m}={p}" for m, p in bundles.items()))
    print("evaluation: " + ", ".join(str(p) for p in files.values()))
    print(f"run directory: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
