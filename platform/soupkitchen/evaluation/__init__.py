"""Pareto-front evaluation of soup methods from real generations (docs/evaluation.md).

Every compared method is a set of points; a point is a preference μ and a coefficient vector c over one
shared list of LoRA adapters (all methods' backbones, deduplicated by file):

    bone_soup        c = (1 + α) B(β)⁻¹ μ over its n backbones, for each α in ``eval.alphas`` (Eqs. 8-9)
    rewarded_soups   c = μ over its n single-reward backbones
    morlhf           c = e_j at μ = w_j: one point per policy trained on w_jᵀr (retrained per preference)
    sft              c = 0: W0 alone, a single point
    mage_i_m, mage_i, mage_e_m, mage_e, mod
                     guided decoding (``soupkitchen.decoding``) over the Bone Soup
                     base (α = ``soup.alpha``) with strength γ; every point a ``RowPlan`` of forward rows
                     over the same stack (value models are stacked adapters too); MOD mixes the Rewarded
                     Soups backbones when given, else the base's backbones

All rows of all methods run through one mixed model (``merging.build_mixed_model``) with per-row c, in
batches ordered by prompt, so every method sees the same prompts, decoding settings and batch shapes.

Every source must have been trained in the same reward space (``soupkitchen.reward_space``: the run's
frozen z = (r − m) / s); points, the reference point and every metric are in that space (``points``),
with the raw rewards kept beside them (``raw_points``). A point's score is the mean z per objective over
the evaluation prompts (and their samples); ``front_metrics`` scores each method against one reference
point (``eval.ref_point``, default −1 per objective: one SFT standard deviation below SFT's calibration
mean, the same for every run of one space), and a paired bootstrap over prompts (``soupkitchen.bootstrap``:
one resample for all methods) gives every metric and every HV ratio its interval.

Modules: ``sources`` (what is compared), ``plan`` (the fronts over one adapter stack), ``run`` (generation,
scores, intervals), ``report`` (table and files), ``job`` (all of it plus MLflow: ``evaluate_front``).

    sources = {"bone_soup": read_source("runs/demo-bs/manifest.json"), ...}
    plan = build_plan(recipe, sources)
    result = evaluate(plan, recipe)            # generations, rewards, per-method points and metrics
    write_outputs(result, "outputs/eval")      # points.csv, metrics.csv, front.png, samples.jsonl
"""

from soupkitchen.evaluation.job import evaluate_front
from soupkitchen.evaluation.plan import (
    DEFAULT_REF,
    EvalPlan,
    MethodFront,
    alpha_label,
    build_plan,
    eval_settings,
    guided_fronts,
    load_mixed,
    policy_front,
    ref_point,
    soup_front,
)
from soupkitchen.evaluation.report import (
    RATIO_PREFIX,
    format_table,
    hypervolume_ratios,
    metric_columns,
    write_outputs,
)
from soupkitchen.evaluation.run import INTERVAL_KEYS, EvalResult, backbone_separation, evaluate, row_seed
from soupkitchen.evaluation.sources import BackboneSource, check_source, read_source, shared_space

__all__ = [
    "DEFAULT_REF",
    "INTERVAL_KEYS",
    "RATIO_PREFIX",
    "BackboneSource",
    "EvalPlan",
    "EvalResult",
    "MethodFront",
    "alpha_label",
    "backbone_separation",
    "build_plan",
    "check_source",
    "eval_settings",
    "evaluate",
    "evaluate_front",
    "format_table",
    "guided_fronts",
    "hypervolume_ratios",
    "load_mixed",
    "metric_columns",
    "policy_front",
    "read_source",
    "ref_point",
    "row_seed",
    "shared_space",
    "soup_front",
    "write_outputs",
]
