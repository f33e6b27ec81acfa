"""Hyperparameter searches that maximise front hypervolume on validation prompts (docs/methods/bone_soup.md).

Modules: ``trials`` (one evaluation trial, the Tune run, the results table), ``beta`` (the β search),
``alpha_gamma`` (the α / γ search); ``tune/search_beta.py`` and ``tune/search_alpha_gamma.py`` wire them.

β ("seek", Bone Soup §5.2.1): for each candidate β the n backbones (w_i = columns of B(β)) are trained for
``search.beta_fraction`` of ``ppo.steps``, all (β, i) at once as trials of one launcher; then one evaluation
trial per β scores the hypervolume of its Bone Soup front. The best β's backbones may then continue to the
full budget: they keep their run and backbone names, so Ray Train resumes them from the short-run
checkpoints and no step is thrown away.

α, γ: evaluation-only trials over one trained soup (``front_trial``), a grid or a Tune searcher. A trial
actor keeps the loaded mixed model between trials over the same adapters (``reuse_actors``), so the base
model is loaded once per worker, not once per trial.

Every trial is an MLflow child run (params, front metrics, front plot) of the search's parent run and
reports to Tune (the Ray dashboard's Tune view); ``results_table`` sorts the trials by hypervolume.
"""

from soupkitchen.search.alpha_gamma import retuned_bundle, search_alpha_gamma
from soupkitchen.search.beta import (
    SearchResult,
    beta_name,
    beta_specs,
    search_beta,
    short_steps,
    split_beta_manifest,
)
from soupkitchen.search.trials import (
    SCORE,
    best,
    evaluate_config,
    front_trial,
    parse_floats,
    results_table,
    run_search,
    trial_run_name,
    with_overrides,
)

__all__ = [
    "SCORE",
    "SearchResult",
    "best",
    "beta_name",
    "beta_specs",
    "evaluate_config",
    "front_trial",
    "parse_floats",
    "results_table",
    "retuned_bundle",
    "run_search",
    "search_alpha_gamma",
    "search_beta",
    "short_steps",
    "split_beta_manifest",
    "trial_run_name",
    "with_overrides",
]
