"""α and γ selection for a trained soup: evaluation-only trials scored by front hypervolume.

    ray job submit --runtime-env jobs/runtime_env.yaml -- python tune/search_alpha_gamma.py --recipe demo \
        --source ~/.cache/soupkitchen/runs/demo-compare/bundles/bone_soup
    python tune/search_alpha_gamma.py --recipe tiny --source <manifest.json | bundle dir> --alphas 0,0.2,0.4
    python tune/search_alpha_gamma.py --recipe demo --source <...> --mode mage_i_m --alphas 0,0.2 \
        --gammas 0.1,0.2,1,3,5                       # MAGE's γ grid, α × γ trials

Each trial evaluates the Bone Soup front (λ = (1+α)B⁻¹μ on the ``eval.grid_step`` grid) of ``--source`` at
one α of ``search.alphas`` (paper: {0.1, …, 0.5}; 0 = no extrapolation) on the validation prompts. Trials
run in parallel within ``search.cpus_per_trial`` / ``search.gpus_per_trial``; a trial actor keeps the
loaded model for the next trial (Tune ``reuse_actors``). ``search.searcher: optuna`` replaces the grid by
Bayesian optimisation over [min, max] (``search.num_samples`` trials). With ``--mode`` a guided decoding
mode (mage_i_m, mage_e_m with ``--value-models``, mod...), every trial scores that mode's front at one
(α, γ) of ``search.alphas`` × ``search.gammas`` (MAGE: γ ∈ {0.1, 0.2, 1, 3, 5}).
Output: the trials sorted by hypervolume (console + ``<out>/alpha_search.csv``) and the soup bundle with
the winning α (and γ) written to ``<out>/bundles/bone_soup``. Re-running the same grid resumes
(``Tuner.restore``).
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
    p.add_argument("--gammas", default=None, help="comma-separated γ (default: search.gammas); needs --mode")
    p.add_argument("--mode", default="bone_soup", help="bone_soup (no guidance) or a guided decoding mode")
    p.add_argument("--value-models", default=None, help="explicit value models dir (mage_e, mage_e_m)")
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
        for flag, key in (("--alphas", "search.alphas"), ("--gammas", "search.gammas")):
            value = getattr(args, flag[2:])
            if value is not None:
                overrides[key] = search.parse_floats(value, flag)
        recipe = load_recipe(args.recipe, overrides)
        guided = args.mode != "bone_soup"
        if guided:
            from soupkitchen.config import DECODING_MODES

            if args.mode not in DECODING_MODES or args.mode == "plain":
                allowed = ", ".join(["bone_soup", *(m for m in DECODING_MODES if m != "plain")])
                raise ConfigError("--mode", f"unknown mode {args.mode!r}; choose from {allowed}")
        elif any(g != 0 for g in recipe.search.gammas):
            raise ConfigError(
                "search.gammas", "γ is the guidance strength of a guided mode: pass --mode mage_i_m"
            )
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
                "mode": args.mode,
            }
            keys = ["alpha"]
            if guided:
                space["gamma"] = tune.grid_search(sorted(set(recipe.search.gammas)))
                space["value_models"] = args.value_models and str(Path(args.value_models).resolve())
                keys.append("gamma")
            name = search.trial_run_name(run_name, space)
            rows = search.run_search(name, recipe, space, storage, keys)
            table = search.results_table(rows, keys, out / "alpha_search.csv")
            winner = search.best(rows)
            best = {f"best_{k}": winner[k] for k in keys}
            parent.log_metrics({**best, "best_hypervolume": winner[search.SCORE]}, 0)
            parent.client.log_artifact(parent.run_id, str(out / "alpha_search.csv"))
            gamma = winner.get("gamma")
            if source.path.name == "manifest.json":
                tuned = search.with_overrides(recipe, soup={"alpha": winner["alpha"], "beta": source.beta})
                bundle = compare.write_bundles(tuned, {"bone_soup": source.path}, out, gamma=gamma)
                bundle = bundle["bone_soup"]
            else:
                target = out / "bundles" / "bone_soup"
                bundle = search.retuned_bundle(source.path, target, winner["alpha"], gamma)
            registered = parent.log_bundle(bundle)  # a new version of soup-<recipe>, alias @candidate
        except BaseException:
            parent.finish("FAILED")
            raise
        parent.finish()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table)
    chosen = ", ".join(f"{k} = {winner[k]}" for k in keys)
    print(
        f"best {chosen} (hypervolume {winner[search.SCORE]:.4g}); "
        f"bundle: {bundle}, registered as models:/{registered}@candidate"
    )
    print(json.dumps({**best, "hypervolume": winner[search.SCORE]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
