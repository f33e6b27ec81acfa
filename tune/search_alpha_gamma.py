"""α (and γ) selection for a trained soup: evaluation-only trials scored by front hypervolume.

    ray job submit --runtime-env jobs/runtime_env.yaml -- python tune/search_alpha_gamma.py --recipe demo \
        --source ~/.cache/soupkitchen/runs/demo-compare/bundles/bone_soup
    python tune/search_alpha_gamma.py --recipe tiny --source <manifest.json | bundle dir> --alphas 0,0.2,0.4

Each trial evaluates the Bone Soup front (λ = (1+α)B⁻¹μ on the ``eval.grid_step`` grid) of ``--source`` at
one α of ``search.alphas`` (paper: {0.1, …, 0.5}; 0 = no extrapolation) on the validation prompts. Trials
run in parallel within ``search.cpus_per_trial`` / ``search.gpus_per_trial``; a trial actor keeps the
loaded model for the next trial (Tune ``reuse_actors``). ``search.searcher: optuna`` replaces the grid by
Bayesian optimisation over [min, max] (``search.num_samples`` trials). γ (MAGE guidance strength) joins
the search once guided decoding modes exist; today ``search.gammas`` must be [0].
Output: the trials sorted by hypervolume (console + ``<out>/alpha_search.csv``) and the soup bundle with
the winning α written to ``<out>/bundles/bone_soup``. Re-running the same grid resumes (``Tuner.restore``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python tune/...`: import jobs.*

from soupkitchen.config import ConfigError, load_recipe, parse_cli_overrides, to_dict  # noqa: E402


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Any other --section.key VALUE overrides that recipe key, e.g. --search.searcher optuna.",
    )
    p.add_argument("--recipe", default="demo")
    p.add_argument("--source", required=True, help="Bone Soup backbones manifest.json or soup bundle dir")
    p.add_argument("--alphas", default=None, help="comma-separated α (default: search.alphas)")
    p.add_argument("--run-name", default=None, help="default: <recipe>-alpha-search; reuse it to resume")
    p.add_argument("--storage", default=None, help="Tune results: local path or s3:// URI")
    p.add_argument("--out", default=None, help="outputs (default: <storage>/<run-name>)")
    args, rest = p.parse_known_args(argv)
    return args, parse_cli_overrides(rest)


def main(argv: list[str] | None = None) -> int:
    import ray
    from ray import tune

    import jobs.compare as compare
    import jobs.train_backbones as train_backbones
    from soupkitchen import search
    from soupkitchen.evaluation import read_source
    from soupkitchen.tracking import RunLogger

    try:
        args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
        if args.alphas is not None:
            try:
                overrides["search.alphas"] = [float(a) for a in args.alphas.split(",") if a.strip()]
            except ValueError as e:
                raise ConfigError("--alphas", f"must be comma-separated numbers, got {args.alphas!r}") from e
        recipe = load_recipe(args.recipe, overrides)
        if any(g != 0 for g in recipe.search.gammas):
            raise ConfigError("search.gammas", "γ needs a guided decoding mode (MAGE); search α only: [0.0]")
        source = read_source(args.source, "bone_soup", flag="--source")  # validated before any trial
        run_name = args.run_name or f"{recipe.name}-alpha-search"
        storage = train_backbones._storage(recipe, args.storage)
        out = Path(args.out or train_backbones._local_out(storage, run_name))
        ray.init(ignore_reinit_error=True)
        parent = RunLogger(recipe, f"search_alpha:{run_name}", tags={"soupkitchen.job": "search_alpha"})
        try:
            space = {
                "recipe": to_dict(recipe),
                "search": "search_alpha",
                "parent_run_id": parent.run_id,
                "source": str(source.path.parent if source.path.name == "manifest.json" else source.path),
                "alpha": tune.grid_search(sorted(set(recipe.search.alphas))),
            }
            rows = search.run_search(
                search.trial_run_name(run_name, space), recipe, space, storage, ["alpha"]
            )
            table = search.results_table(rows, ["alpha"], out / "alpha_search.csv")
            winner = search.best(rows)
            parent.log_metrics({"best_alpha": winner["alpha"], "best_hypervolume": winner[search.SCORE]}, 0)
            parent.client.log_artifact(parent.run_id, str(out / "alpha_search.csv"))
            if source.path.name == "manifest.json":
                tuned = search.with_overrides(recipe, soup={"alpha": winner["alpha"], "beta": source.beta})
                bundle = compare.write_bundles(tuned, {"bone_soup": source.path}, out)["bone_soup"]
            else:
                bundle = search.retuned_bundle(source.path, out / "bundles" / "bone_soup", winner["alpha"])
        except BaseException:
            parent.finish("FAILED")
            raise
        parent.finish()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table)
    print(f"best α = {winner['alpha']} (hypervolume {winner[search.SCORE]:.4g}); bundle: {bundle}")
    print(json.dumps({"best_alpha": winner["alpha"], "hypervolume": winner[search.SCORE]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
