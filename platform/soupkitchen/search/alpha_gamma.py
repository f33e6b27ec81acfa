"""The α / γ search (``tune/search_alpha_gamma.py``): evaluation-only trials over one trained soup, a grid or
a Tune searcher. Each trial scores the Bone Soup front (λ = (1+α)B⁻¹μ on the ``eval.grid_step`` grid) at one α
of ``search.alphas``, or with a guided ``mode`` that mode's front at one (α, γ) of ``search.alphas`` ×
``search.gammas``. A trial actor keeps the loaded mixed model for the next trial (``reuse_actors``); the
winner is written into a soup bundle and registered as a new version of ``soup-<recipe>@candidate``."""

from __future__ import annotations

from pathlib import Path

from ray import tune

from soupkitchen.comparison import write_bundles
from soupkitchen.config import Recipe
from soupkitchen.evaluation import BackboneSource
from soupkitchen.merging import load_bundle, write_bundle
from soupkitchen.methods import Method, Mode
from soupkitchen.search.beta import SearchResult
from soupkitchen.search.trials import SCORE, best, results_table, run_search, trial_run_name, with_overrides
from soupkitchen.tracking import RunLogger


def retuned_bundle(source: Path, out: Path, alpha: float, gamma: float | None = None) -> Path:
    """A copy of the soup bundle ``source`` with the searched α (and γ) written into ``bundle.json``."""

    b = load_bundle(source)
    write_bundle(
        out,
        b.base,
        [(name, Path(source) / "adapters" / f"{name}.safetensors") for name in b.names],
        beta=b.beta,
        alpha=alpha,
        objectives=b.objectives,
        normalization=b.normalization,
        ref_point=b.ref_point,
        lora_config=b.lora,
        gamma=b.gamma if gamma is None else gamma,
        overwrite=True,
        reward_space=b.reward_space,
        diagnostics=b.diagnostics,
    )
    return out


def search_alpha_gamma(
    recipe: Recipe,
    source: BackboneSource,
    mode: Mode,
    run_name: str,
    storage: str,
    out: Path,
    value_models: Path | None = None,
) -> SearchResult:
    """Trials over ``search.alphas`` (× ``search.gammas`` for a guided ``mode``) on ``source`` (a Bone Soup
    manifest or bundle, already read), the results table, and the winner's bundle under ``out``."""
    assert mode is Mode.BONE_SOUP or mode.guided, mode  # checked where it enters (the CLI)
    keys = ["alpha"] + (["gamma"] if mode.guided else [])
    with RunLogger(recipe, f"search_alpha:{run_name}", tags={"soupkitchen.job": "search_alpha"}) as parent:
        space = {
            "recipe": recipe,
            "search": "search_alpha",
            "parent_run": parent.key,
            "source": str(source.path.parent if source.path.name == "manifest.json" else source.path),
            "alpha": tune.grid_search(sorted(set(recipe.search.alphas))),
            "mode": mode,
        }
        if mode.guided:
            space["gamma"] = tune.grid_search(sorted(set(recipe.search.gammas)))
            space["value_models"] = value_models and str(Path(value_models).resolve())
        rows = run_search(trial_run_name(run_name, space), recipe, space, storage, keys)
        table = results_table(rows, keys, out / "alpha_search.csv")
        winner = best(rows)
        parent.log_metrics({**{f"best_{k}": winner[k] for k in keys}, "best_hypervolume": winner[SCORE]}, 0)
        parent.log_file(out / "alpha_search.csv")
        gamma = winner.get("gamma")
        if source.path.name == "manifest.json":
            tuned = with_overrides(recipe, soup={"alpha": winner["alpha"], "beta": source.beta})
            bundle = write_bundles(tuned, {Method.BONE_SOUP: source.path}, out, gamma=gamma)[Method.BONE_SOUP]
        else:
            bundle = retuned_bundle(source.path, out / "bundles" / "bone_soup", winner["alpha"], gamma)
        registered = parent.log_bundle(bundle)  # a new version of soup-<recipe>, alias @candidate
    return SearchResult(rows, table, winner, bundle, registered)
