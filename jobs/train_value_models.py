"""Train MAGE's explicit value models: one LoRA adapter per objective over W0 (notes/mage.md §1.3, Eq. 16).

    python jobs/train_value_models.py --recipe tiny --backbones runs/tiny-bone_soup/manifest.json
    python jobs/train_value_models.py --recipe demo --value_model.policies sft --value_model.epochs 1
    python jobs/train_value_models.py --recipe demo --backbones <bundle> --attach <bundle>   # serve MAGE-E
    ray job submit --working-dir . -- python jobs/train_value_models.py --recipe demo --backbones <bundle>

Rollouts come from the SFT model (c = 0, the π_ref of Eq. 15) and/or each backbone of --backbones (a
backbones manifest or a soup bundle), per ``value_model.policies``; every response is scored by all
rewards, and objective i's value model regresses V(x, y<t)[y_t] to r_i (Eq. 16), with V read as a residual
head, V = logits(W0 + ΔV_i) − logits(W0) (0 before training). Output in --out:
value_models.json + adapters/value-<objective>.safetensors (stackable with the backbones: same W0 and
LoRA targets), loss per step and validation MSE / pairwise accuracy logged to MLflow. Runs in-process
(on a Ray cluster, submit it as a job).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from soupkitchen.config import ConfigError, Recipe, load_recipe, parse_cli_overrides


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Any other --section.key VALUE overrides that recipe key, e.g. --value_model.epochs 1.",
    )
    p.add_argument("--recipe", default="demo", help="recipe name in recipes/ or a YAML path (default: demo)")
    p.add_argument("--backbones", metavar="PATH", help="backbones manifest.json or soup bundle dir")
    p.add_argument("--out", default=None, help="output dir (default: <cache>/value-models/<recipe>)")
    p.add_argument(
        "--attach",
        metavar="BUNDLE",
        help="also ship the value models inside this soup bundle dir (rewritten atomically), for serving",
    )
    args, rest = p.parse_known_args(argv)
    return args, parse_cli_overrides(rest)


def rollout_policies(recipe: Recipe, backbones: str | None):
    """(model, tokenizer, [(name, c)]): SFT as c = 0 and each backbone as c = e_j of a mixed model."""
    from soupkitchen.evaluation import build_plan, load_mixed, read_source
    from soupkitchen.models import resolve_device

    kind = recipe.value_model.policies
    if kind in ("backbones", "both") and not backbones:
        raise ConfigError(
            "--backbones", f"value_model.policies is {kind!r}: pass the backbones, or set it to 'sft'"
        )
    sources = {}
    if backbones and kind != "sft":
        src = read_source(backbones, flag="--backbones")
        sources[src.method] = src
    plan = build_plan(recipe, sources, include_sft=True)
    model, tok = load_mixed(plan, recipe, resolve_device(recipe.device))
    m = len(plan.adapters)
    policies = [("sft", np.zeros(m))] if kind in ("sft", "both") else []
    policies += [(name, np.eye(m)[j]) for j, name in enumerate(plan.names)]
    return model, tok, policies


def run(recipe: Recipe, backbones: str | None, out: Path, progress: bool = True) -> tuple[Path, dict]:
    """Rollouts, one value model per objective, the output directory and the MLflow run."""
    from soupkitchen.models import resolve_device
    from soupkitchen.tracking import RunLogger
    from soupkitchen.value_models import collect_rollouts, train_value_model, write_value_models

    device = resolve_device(recipe.device)
    model, tok, policies = rollout_policies(recipe, backbones)
    logger = RunLogger(
        recipe, f"train_value_models:{recipe.name}", tags={"soupkitchen.job": "train_value_models"}
    )
    try:
        rollouts = collect_rollouts(recipe, policies, model, tok, device=device, progress=progress)
        del model
        states, metrics = {}, {}
        for i, obj in enumerate(recipe.objectives):
            on_step = lambda s, m, o=obj: logger.log_metrics({f"{o}/{k}": v for k, v in m.items()}, s)  # noqa: E731
            states[obj], metrics[obj] = train_value_model(recipe, rollouts, i, device=device, on_step=on_step)
            logger.log_metrics({f"{obj}/{k}": v for k, v in metrics[obj].items()}, 0)
            if progress:
                print(f"value model {obj}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics[obj].items()))
        manifest = write_value_models(out, recipe, states, metrics, overwrite=True)
        for f in [manifest, *sorted((out / "adapters").glob("*.safetensors"))]:
            logger.client.log_artifact(
                logger.run_id, str(f), "value_models" if f == manifest else "value_models/adapters"
            )
    except BaseException:
        logger.finish("FAILED")
        raise
    logger.finish()
    return manifest, metrics


def main(argv: list[str] | None = None) -> int:
    from soupkitchen.models import cache_root

    try:
        args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
        recipe = load_recipe(args.recipe, overrides)
        out = Path(args.out) if args.out else cache_root() / "value-models" / recipe.name
        if args.attach:
            from soupkitchen.merging import load_bundle

            try:  # refuse a bad --attach before hours of training
                load_bundle(args.attach)
            except ConfigError as e:
                raise ConfigError("--attach", f"not a valid soup bundle: {e}") from e
        manifest, _ = run(recipe, args.backbones, out)
        if args.attach:
            from soupkitchen.merging import attach_value_models
            from soupkitchen.value_models import load_value_models

            attach_value_models(args.attach, load_value_models(out))
            print(f"value models attached to the bundle {args.attach}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"value models: {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
