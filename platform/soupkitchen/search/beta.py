"""The β search ("seek", Bone Soup §5.2.1; ``tune/search_beta.py``): for each candidate β the n backbones
(w_i = columns of B(β)) train for ``search.beta_fraction`` of ``ppo.steps``, all (β, i) at once as trials of
one launcher; one evaluation trial per β then scores the hypervolume of its Bone Soup front. With
``cont`` the winner's backbones continue to the full budget: they keep their run and backbone names, so Ray
Train resumes them from the short-run checkpoints and no step is thrown away."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from soupkitchen.comparison import write_bundles
from soupkitchen.config import ConfigError, Recipe
from soupkitchen.manifests import BackboneManifest, write_manifest
from soupkitchen.methods import Method
from soupkitchen.preferences import backbone_weights
from soupkitchen.search.trials import SCORE, best, results_table, run_search, trial_run_name, with_overrides
from soupkitchen.tracking import RunLogger
from soupkitchen.training.launcher import train_backbones
from soupkitchen.training.specs import BackboneSpec


def beta_name(beta: float, i: int) -> str:
    return f"beta{beta:g}-{i}"


def beta_specs(recipe: Recipe, betas: list[float]) -> list[BackboneSpec]:
    """Backbone i of every candidate β: w_i = column i of B(β), named ``beta<β>-<i>``."""
    n = len(recipe.objectives)
    specs = []
    for b in betas:
        if not (1.0 / n < b <= 1.0):
            raise ConfigError("search.betas", f"β must lie in (1/n, 1] = ({1 / n:.4g}, 1], got {b}")
        W = backbone_weights(n, b)
        specs += [BackboneSpec(beta_name(b, i), [round(float(x), 12) for x in W[i]]) for i in range(n)]
    return specs


def short_steps(recipe: Recipe, fraction: float) -> int:
    """ppo.steps of a β-selection run: ``fraction`` of the budget, at least one step (paper: 20%)."""
    return max(1, math.ceil(fraction * recipe.ppo.steps))


def split_beta_manifest(manifest: Path, beta: float, out: Path) -> Path:
    """The β-run manifest restricted to one β's backbones, as a ``bone_soup`` manifest with that β."""
    doc = BackboneManifest.read(manifest)
    recipe = with_overrides(doc.recipe_config(), soup={"beta": beta})
    prefix = f"beta{beta:g}-"
    entries = [b for b in doc.backbones if b.name.startswith(prefix)]
    if len(entries) != len(recipe.objectives):
        raise ConfigError("search.betas", f"manifest {manifest} has {len(entries)} backbones for β={beta}")
    path = out / f"beta{beta:g}" / "manifest.json"
    return write_manifest(path, recipe, Method.BONE_SOUP, entries, doc.space)


@dataclass
class SearchResult:
    """A finished search: its trials, the printed table (``<out>/<kind>_search.csv`` too), the winning row,
    and the bundle written with the winner (None for a β search without ``cont``)."""

    rows: list[dict]
    table: str
    winner: dict
    bundle: Path | None = None
    registered: str | None = None


def search_beta(
    recipe: Recipe, betas: list[float], run_name: str, storage: str, out: Path, cont: bool = False
) -> SearchResult:
    """Short runs for every β, one evaluation trial per β, and with ``cont`` the winner to ``ppo.steps``
    (its bundle registered as ``soup-<recipe>@candidate``). ``betas``: at least two distinct values."""
    assert len(set(betas)) >= 2, betas  # checked where the values enter (the CLI)
    specs = beta_specs(recipe, betas)
    steps = short_steps(recipe, recipe.search.beta_fraction)
    short = with_overrides(recipe, ppo={"steps": steps, "checkpoint_every": steps})
    bundle = None
    with RunLogger(recipe, f"search_beta:{run_name}", tags={"soupkitchen.job": "search_beta"}) as parent:
        print(f"β search: {betas}, {len(specs)} backbones × {steps} PPO steps (of {recipe.ppo.steps})")
        trained = train_backbones(short, Method.BONE_SOUP, run_name, storage, specs=specs)
        manifests = {b: split_beta_manifest(trained, b, out) for b in betas}
        space = {
            "recipe": recipe,
            "search": "search_beta",
            "parent_run": parent.key,
            "beta": tune.grid_search(betas),
            "sources": {f"{b:g}": str(p) for b, p in manifests.items()},  # each trial takes its β's
        }
        rows = run_search(trial_run_name(run_name, space), recipe, space, storage, ["beta"])
        table = results_table(rows, ["beta"], out / "beta_search.csv")
        winner = best(rows)
        parent.log_metrics({"best_beta": winner["beta"], "best_hypervolume": winner[SCORE]}, 0)
        parent.log_file(out / "beta_search.csv")
        if cont:
            full = with_overrides(recipe, soup={"beta": winner["beta"]})
            chosen = [s for s in specs if s.name.startswith(f"beta{winner['beta']:g}-")]
            final = train_backbones(full, Method.BONE_SOUP, run_name, storage, specs=chosen)
            manifest = split_beta_manifest(final, winner["beta"], out / "final")
            bundle = write_bundles(full, {Method.BONE_SOUP: manifest}, out)[Method.BONE_SOUP]
            registered = parent.log_bundle(bundle)  # soup-<recipe>, alias @candidate
    return SearchResult(rows, table, winner, bundle, registered if cont else None)
