"""β selection as in Bone Soup: short backbone runs per candidate β, scored by front hypervolume.

    ray job submit --runtime-env jobs/runtime_env.yaml -- python tune/search_beta.py --recipe demo
    python tune/search_beta.py --recipe tiny --betas 0.6,0.8 --continue

1. Every candidate's n backbones train for ``search.beta_fraction`` × ``ppo.steps`` (paper: 20%), all at
   once: one Tune trial per (β, i), each a Ray Train ``TorchTrainer`` (as jobs/train_backbones.py).
2. One evaluation trial per β (Tune, an MLflow child run with the front plot): hypervolume of its Bone
   Soup front (α = 0, the ``eval.grid_step`` grid) on the validation prompts, with ``eval.ref_point``.
3. The trials sorted by hypervolume (console + ``<out>/beta_search.csv``); the best β.
4. ``--continue``: the best β's backbones resume from their short-run checkpoints up to ``ppo.steps`` (no
   step thrown away), and a soup bundle with that β is written to ``<out>/bundle``.
Re-running with the same --run-name resumes: finished backbones are reused, evaluation trials restored.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from soupkitchen import cli, search
from soupkitchen.config import ConfigError, load_recipe
from soupkitchen.training.launcher import run_dir, storage_root

parser = cli.recipe_parser(__doc__, "--search.beta_fraction 0.1")
parser.add_argument(
    "--betas", default=None, help="comma-separated β (default: search.betas or soup.beta_candidates)"
)
parser.add_argument("--run-name", default=None, help="default: <recipe>-beta-search; reuse it to resume")
parser.add_argument(
    "--storage", default=None, help="local path or s3:// URI (default: distributed.storage_path)"
)
parser.add_argument("--out", default=None, help="outputs (default: <storage>/<run-name>)")
parser.add_argument("--continue", dest="cont", action="store_true", help="train the best β to ppo.steps")


@cli.entry
def main(argv: list[str] | None = None) -> int:
    args, overrides = cli.parse_args(parser, argv)
    recipe = load_recipe(args.recipe, overrides)
    if args.betas is None:
        betas = list(recipe.search.betas or recipe.soup.beta_candidates)
    else:
        betas = search.parse_floats(args.betas, "--betas")
    search.beta_specs(recipe, betas)  # every β in range, before any worker starts
    if len(set(betas)) < 2:
        raise ConfigError("--betas", f"a search needs at least two distinct β, got {betas}")
    run_name = args.run_name or f"{recipe.name}-beta-search"
    storage = storage_root(recipe, args.storage)
    out = Path(args.out or run_dir(storage, run_name))
    done = search.search_beta(recipe, betas, run_name, storage, out, cont=args.cont)
    best = done.winner["beta"]
    print(done.table)
    print(f"best β = {best} (hypervolume {done.winner[search.SCORE]:.4g}); table: {out / 'beta_search.csv'}")
    if done.bundle is not None:
        print(f"continued β={best} to {recipe.ppo.steps} steps; bundle: {done.bundle}")
    print(json.dumps({"best_beta": best, "hypervolume": done.winner[search.SCORE]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
