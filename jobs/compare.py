"""Bone Soup vs Rewarded Soups vs MORLHF vs MOC vs RiC vs HoE vs SFT in one command: train, then compare.

    python jobs/compare.py --recipe demo                                    # local Ray
    ray job submit --working-dir . -- python jobs/compare.py --recipe tiny --run-name tiny-compare

1. Every policy the methods need is trained once, all in parallel (one Tune trial per policy, as in
   train_backbones.py): Bone Soup's backbones (w = columns of B(β)), Rewarded Soups' (w = e_i) and
   MORLHF's (w = μ for each μ of ``soup.morlhf_preferences``) and MOC's one preference-conditioned policy;
   a w that two methods need is one PPO run, and every policy gets the same PPO budget. RiC (supervised)
   then trains in the same reward space; HoE's experts are extracted from the Rewarded Soups specialists
   and its routers trained over them (``soupkitchen.hoe.build``).
2. One manifest per method (``<out>/<method>/manifest.json``) and a soup bundle for Bone Soup and
   Rewarded Soups (``<out>/bundles/<method>``, carrying the MOC / RiC policies and HoE's experts), ready
   for serving.
3. The evaluation of all of them: table, points.csv, metrics.csv, front.png, MLflow (``<out>/eval``).
Re-running with the same --run-name resumes unfinished policies and reuses finished ones.
See ``soupkitchen.comparison``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # show every backbone's progress lines, not "repeated 2x"

from soupkitchen import cli  # noqa: E402
from soupkitchen.comparison import compare  # noqa: E402
from soupkitchen.evaluation import format_table  # noqa: E402
from soupkitchen.hoe.manifest import HoEManifest, describe  # noqa: E402
from soupkitchen.methods import GUIDED_MODES, Method, names, parse_guided_modes, parse_subset  # noqa: E402
from soupkitchen.training.launcher import storage_root  # noqa: E402

parser = cli.recipe_parser(__doc__, "--ppo.steps 10")
parser.add_argument(
    "--run-name", default=None, help="default: <recipe>-compare[-<methods>]; reuse it to resume"
)
parser.add_argument(
    "--storage", default=None, help="local path or s3:// URI (default: distributed.storage_path)"
)
parser.add_argument("--methods", default=",".join(Method), help=f"comma-separated subset of {names(Method)}")
parser.add_argument("--out", default=None, help="outputs (default: <storage>/<run-name>)")
parser.add_argument(
    "--modes",
    default="",
    help=f"guided fronts over the trained soups too, comma-separated ({', '.join(GUIDED_MODES)}; the "
    "explicit modes need value models: jobs/train_value_models.py, then jobs/evaluate_front.py)",
)


@cli.entry
def main(argv: list[str] | None = None) -> int:
    args, recipe = cli.parse_recipe(parser, argv)
    methods = parse_subset(Method, args.methods, "--methods")
    subset = "" if set(methods) == set(Method) else "-" + "-".join(methods)
    run_name = args.run_name or f"{recipe.name}-compare{subset}"
    modes = parse_guided_modes(args.modes, "--modes")
    done = compare(recipe, methods, run_name, storage_root(recipe, args.storage), args.out, modes)
    print(format_table(done.result))
    print("manifests: " + ", ".join(f"{m}={p}" for m, p in done.manifests.items()))
    print("bundles: " + ", ".join(f"{m}={p}" for m, p in done.bundles.items()))
    print("evaluation: " + ", ".join(str(p) for p in done.files.values()))
    if "moc_vs_backbone" in done.costs:
        print(f"training wall time, MOC / one PPO backbone: {done.costs['moc_vs_backbone']:.2f}")
    if done.hoe:
        print(f"HoE experts ({done.hoe}):\n{describe(HoEManifest.read(done.hoe))}")
        routers = {k: v for k, v in done.costs.items() if k.startswith("hoe-")}
        print("HoE router training wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in routers.items()))
    print(f"run directory: {done.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
