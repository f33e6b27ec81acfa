"""Evaluate and compare the Pareto fronts of trained soups on the same prompts and decoding settings.

    python jobs/evaluate_front.py --recipe demo --bone-soup runs/demo-bone_soup/manifest.json \\
        --rewarded-soups runs/demo-rewarded_soups/manifest.json --morlhf runs/demo-morlhf/manifest.json
    ray job submit --working-dir . -- python jobs/evaluate_front.py --recipe tiny --bone-soup <bundle dir>

Each of --bone-soup / --rewarded-soups / --morlhf takes a backbones manifest (from train_backbones.py) or
a soup bundle directory. Bone Soup is evaluated at every α of ``eval.alphas`` (with and without
extrapolation), the soups on the ``eval.grid_step`` simplex grid (11 points for 2 objectives, 66 for 3),
MORLHF at its trained preferences, and the SFT model (W0) as one point. Output in --out: points.csv,
metrics.csv, front.png, samples.jsonl; the table is printed and everything is logged to MLflow.

Guided decoding (MAGE, MOD) over the Bone Soup base, with the cost per generated token of each mode
relative to plain decoding measured in the same run (costs.csv):

    python jobs/evaluate_front.py --recipe demo --bone-soup <bs> --rewarded-soups <rs> \\
        --modes mage_i_m,mage_e_m,mod --gamma 1.0 --value-models <train_value_models.py output>
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from soupkitchen.config import ConfigError, Recipe, load_recipe, parse_cli_overrides
from soupkitchen.evaluation import SOURCE_METHODS


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Any other --section.key VALUE overrides that recipe key, e.g. --eval.num_prompts 32.",
    )
    p.add_argument("--recipe", default="demo", help="recipe name in recipes/ or a YAML path (default: demo)")
    for m in SOURCE_METHODS:
        p.add_argument(f"--{m.replace('_', '-')}", metavar="PATH", help=f"{m} manifest.json or bundle dir")
    p.add_argument("--no-sft", action="store_true", help="leave out the SFT model (W0) point")
    p.add_argument(
        "--modes",
        default="",
        help="guided decoding fronts, comma-separated: mage_i_m, mage_i, mage_e_m, mage_e, mod "
        "(bone_soup / rewarded_soups / plain are the sources' own fronts and are skipped here)",
    )
    p.add_argument("--gamma", type=float, default=None, help="guidance strength γ (default: decoding.gamma)")
    p.add_argument("--value-models", metavar="DIR", help="explicit value models (train_value_models.py)")
    p.add_argument("--split", choices=("eval", "train"), default="eval", help="prompt split (default: eval)")
    p.add_argument("--out", default=None, help="output directory (default: outputs/eval-<recipe>)")
    args, rest = p.parse_known_args(argv)
    return args, parse_cli_overrides(rest)


def parse_modes(text: str) -> list[str]:
    """``"bone_soup,mage_i_m,mod"`` → ``["mage_i_m", "mod"]`` (the plain fronts come from the sources)."""
    return [m for m in (x.strip() for x in text.split(",")) if m and m not in SKIPPED_MODES]


SKIPPED_MODES = ("bone_soup", "rewarded_soups", "morlhf", "sft", "plain")


def run(
    recipe: Recipe,
    paths: dict[str, str],
    out: Path,
    include_sft: bool = True,
    split: str = "eval",
    modes: list[str] | tuple[str, ...] = (),
    gamma: float | None = None,
    value_models: str | None = None,
):
    """Evaluate every given method (+ SFT, + guided ``modes``), write the outputs, log to MLflow."""
    from soupkitchen.evaluation import build_plan, evaluate, read_source, write_outputs
    from soupkitchen.tracking import RunLogger
    from soupkitchen.value_models import load_value_models

    sources = {m: read_source(p, m) for m, p in paths.items() if p}
    values = load_value_models(value_models) if value_models else None
    plan = build_plan(recipe, sources, include_sft=include_sft, modes=modes, gamma=gamma, value_models=values)
    logger = RunLogger(recipe, f"evaluate_front:{recipe.name}", tags={"soupkitchen.job": "evaluate_front"})
    try:
        result = evaluate(plan, recipe, split=split)
        files = write_outputs(result, out, title=f"{recipe.name}: {', '.join(f.label for f in plan.fronts)}")
        metrics = {
            f"{label}/{k}": v for label, m in result.metrics.items() for k, v in m.items() if math.isfinite(v)
        }
        metrics["eval_seconds"] = result.seconds
        metrics["generated_tokens_per_s"] = result.generated_tokens / max(result.seconds, 1e-9)
        metrics |= {f"{label}/{k}": v for label, c in result.costs.items() for k, v in c.items()}
        logger.log_metrics(metrics, 0)
        for path in files.values():
            logger.client.log_artifact(logger.run_id, str(path))
    except BaseException:
        logger.finish("FAILED")
        raise
    logger.finish()
    return result, files


def main(argv: list[str] | None = None) -> int:
    from soupkitchen.evaluation import format_table

    try:
        args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
        recipe = load_recipe(args.recipe, overrides)
        paths = {m: getattr(args, m) for m in SOURCE_METHODS}
        if not any(paths.values()):
            raise ConfigError("--bone-soup", "give at least one of --bone-soup, --rewarded-soups, --morlhf")
        out = Path(args.out or f"outputs/eval-{recipe.name}")
        result, files = run(
            recipe,
            paths,
            out,
            include_sft=not args.no_sft,
            split=args.split,
            modes=parse_modes(args.modes),
            gamma=args.gamma,
            value_models=args.value_models,
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    print(
        f"{result.generated_tokens} tokens in {result.seconds:.1f} s; outputs: "
        + ", ".join(map(str, files.values()))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
