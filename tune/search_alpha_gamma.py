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

import json
import sys
from pathlib import Path

import ray

from soupkitchen import cli, search
from soupkitchen.config import ConfigError, load_recipe
from soupkitchen.evaluation import read_source
from soupkitchen.methods import GUIDED_MODES, Mode, parse
from soupkitchen.training.launcher import run_dir, storage_root

parser = cli.recipe_parser(__doc__, "--search.searcher optuna")
parser.add_argument("--source", required=True, help="Bone Soup backbones manifest.json or soup bundle dir")
parser.add_argument("--alphas", default=None, help="comma-separated α (default: search.alphas)")
parser.add_argument("--gammas", default=None, help="comma-separated γ (default: search.gammas); needs --mode")
parser.add_argument("--mode", default="bone_soup", help="bone_soup (no guidance) or a guided decoding mode")
parser.add_argument("--value-models", default=None, help="explicit value models dir (mage_e, mage_e_m)")
parser.add_argument("--run-name", default=None, help="default: <recipe>-alpha-search; reuse it to resume")
parser.add_argument("--storage", default=None, help="Tune results: local path or s3:// URI")
parser.add_argument("--out", default=None, help="outputs (default: <storage>/<run-name>)")


@cli.entry
def main(argv: list[str] | None = None) -> int:
    args, overrides = cli.parse_args(parser, argv)
    for flag, key in (("--alphas", "search.alphas"), ("--gammas", "search.gammas")):
        value = getattr(args, flag[2:])
        if value is not None:
            overrides[key] = search.parse_floats(value, flag)
    recipe = load_recipe(args.recipe, overrides)
    mode = parse(Mode, args.mode, "--mode")
    if mode is Mode.REWARDED_SOUPS:
        raise ConfigError("--mode", f"a Bone Soup search: use bone_soup or one of {', '.join(GUIDED_MODES)}")
    if not mode.guided and any(g != 0 for g in recipe.search.gammas):
        raise ConfigError(
            "search.gammas", "γ is the guidance strength of a guided mode: pass --mode mage_i_m"
        )
    source = read_source(args.source, "bone_soup", flag="--source")  # validated before any trial
    run_name = args.run_name or f"{recipe.name}-alpha-search"
    storage = storage_root(recipe, args.storage)
    out = Path(args.out or run_dir(storage, run_name))
    ray.init(ignore_reinit_error=True)
    done = search.search_alpha_gamma(recipe, source, mode, run_name, storage, out, args.value_models)
    keys = ["alpha"] + (["gamma"] if mode.guided else [])
    print(done.table)
    chosen = ", ".join(f"{k} = {done.winner[k]}" for k in keys)
    print(
        f"best {chosen} (hypervolume {done.winner[search.SCORE]:.4g}); "
        f"bundle: {done.bundle}, registered as models:/{done.registered}@candidate"
    )
    print(
        json.dumps({**{f"best_{k}": done.winner[k] for k in keys}, "hypervolume": done.winner[search.SCORE]})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
