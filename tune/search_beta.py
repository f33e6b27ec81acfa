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

from ray import tune

from soupkitchen import cli, search
from soupkitchen.comparison import write_bundles
from soupkitchen.config import ConfigError, load_recipe
from soupkitchen.methods import Method
from soupkitchen.tracking import RunLogger
from soupkitchen.training.launcher import run_dir, storage_root, train_backbones

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


def _betas(args, recipe) -> list[float]:
    if args.betas is None:
        return list(recipe.search.betas or recipe.soup.beta_candidates)
    return search.parse_floats(args.betas, "--betas")


@cli.entry
def main(argv: list[str] | None = None) -> int:
    args, overrides = cli.parse_args(parser, argv)
    recipe = load_recipe(args.recipe, overrides)
    betas = _betas(args, recipe)
    specs = search.beta_specs(recipe, betas)
    if len(set(betas)) < 2:
        raise ConfigError("--betas", f"a search needs at least two distinct β, got {betas}")
    run_name = args.run_name or f"{recipe.name}-beta-search"
    storage = storage_root(recipe, args.storage)
    out = Path(args.out or run_dir(storage, run_name))
    steps = search.short_steps(recipe, recipe.search.beta_fraction)
    short = search.with_overrides(recipe, ppo={"steps": steps, "checkpoint_every": steps})
    with RunLogger(recipe, f"search_beta:{run_name}", tags={"soupkitchen.job": "search_beta"}) as parent:
        print(f"β search: {betas}, {len(specs)} backbones × {steps} PPO steps (of {recipe.ppo.steps})")
        trained = train_backbones(short, Method.BONE_SOUP, run_name, storage, specs=specs)
        manifests = {b: search.split_beta_manifest(trained, b, out) for b in betas}
        space = {
            "recipe": recipe,
            "search": "search_beta",
            "parent_run_id": parent.run_id,
            "beta": tune.grid_search(betas),
            "sources": {f"{b:g}": str(p) for b, p in manifests.items()},  # each trial takes its β's
        }
        rows = search.run_search(search.trial_run_name(run_name, space), recipe, space, storage, ["beta"])
        table = search.results_table(rows, ["beta"], out / "beta_search.csv")
        winner = search.best(rows)
        parent.log_metrics({"best_beta": winner["beta"], "best_hypervolume": winner[search.SCORE]}, 0)
        parent.client.log_artifact(parent.run_id, str(out / "beta_search.csv"))
        if args.cont:
            full = search.with_overrides(recipe, soup={"beta": winner["beta"]})
            chosen = [s for s in specs if s.name.startswith(f"beta{winner['beta']:g}-")]
            final = train_backbones(full, Method.BONE_SOUP, run_name, storage, specs=chosen)
            manifest = search.split_beta_manifest(final, winner["beta"], out / "final")
            bundle = write_bundles(full, {Method.BONE_SOUP: manifest}, out)[Method.BONE_SOUP]
            parent.log_bundle(bundle)  # registered as soup-<recipe>, alias @candidate
    print(table)
    print(
        f"best β = {winner['beta']} (hypervolume {winner[search.SCORE]:.4g}); "
        f"table: {out / 'beta_search.csv'}"
    )
    if args.cont:
        print(
            f"continued β={winner['beta']} to {recipe.ppo.steps} steps; "
            f"bundle: {out / 'bundles' / 'bone_soup'}"
        )
    print(json.dumps({"best_beta": winner["beta"], "hypervolume": winner[search.SCORE]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
