"""Build HoE's experts from the single-objective policies and train its routers on a Ray cluster.

    ray job submit --working-dir . -- python jobs/build_hoe.py --recipe tiny \\
        --rewarded-soups <run>/manifest.json --out runs/tiny-hoe --bundle <soup bundle>
    python jobs/build_hoe.py --recipe demo --rewarded-soups <m> --hoe.ablation true --hoe.router_steps 20

Algorithm 1 (``soupkitchen.hoe.build``): task-SVD LoRA experts from each specialist's task vector (or, with
--dense, each fully fine-tuned model's θ_i − θ_pre on the recipe's W0: the GPU recipes' path) and from
their Eq. 4 merges, each expert's fidelity to its dense parent and the ideal point z* on the eval prompts,
then one Ray Train PPO run per router expert (OMD-STCH, the same launcher, checkpoints and MLflow as every
policy). Output: the HoE directory (``hoe.json`` + one file per expert), the input of
``jobs/evaluate_front.py --hoe``; with --bundle it is also copied into that soup bundle (mode ``hoe``).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from soupkitchen import cli  # noqa: E402
from soupkitchen.hoe.build import build_hoe  # noqa: E402
from soupkitchen.hoe.manifest import HoEManifest, describe  # noqa: E402
from soupkitchen.merging import attach_hoe, check_bundle  # noqa: E402
from soupkitchen.training.launcher import storage_root  # noqa: E402

parser = cli.recipe_parser(__doc__, "--hoe.router_steps 10 --hoe.rank 16")
sources = parser.add_mutually_exclusive_group(required=True)
sources.add_argument("--rewarded-soups", metavar="MANIFEST", help="the specialists (w = e_i) of a run")
sources.add_argument(
    "--dense",
    metavar="MODELS",
    help="comma-separated fully fine-tuned single-objective models (dirs or HF ids), in objective order",
)
parser.add_argument(
    "--reward-space", default=None, help="with --dense: the reward_space.json to work in (default: from W0)"
)
parser.add_argument("--out", default=None, help="the HoE directory (default: outputs/<recipe>-hoe)")
parser.add_argument("--bundle", default=None, metavar="DIR", help="a soup bundle to copy the set into")
parser.add_argument("--run-name", default=None, help="the routers' training run (default: <recipe>-hoe)")
parser.add_argument(
    "--storage", default=None, help="local path or s3:// URI (default: distributed.storage_path)"
)
parser.add_argument("--no-routers", action="store_true", help="LoRA experts, fidelity and z* only")


@cli.entry
def main(argv: list[str] | None = None) -> int:
    args, recipe = cli.parse_recipe(parser, argv)
    name = args.run_name or f"{recipe.name}-hoe"
    if args.bundle:  # refused now, not after the routers trained
        check_bundle(args.bundle, recipe)
    out = build_hoe(
        recipe,
        args.out or f"outputs/{name}",
        name,
        storage_root(recipe, args.storage),
        rewarded_soups=args.rewarded_soups,
        dense=args.dense.split(",") if args.dense else None,
        reward_space=args.reward_space,
        train=not args.no_routers,
    )
    print(f"\nHoE experts in {out}:\n{describe(HoEManifest.read(out))}")
    if args.bundle:
        attach_hoe(args.bundle, out)
        print(f"copied into the bundle {args.bundle} (mode hoe)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
