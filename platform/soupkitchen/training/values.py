"""The value-model training job (``jobs/train_value_models.py``): rollouts from SFT and/or the backbones,
one residual value adapter per objective (``value_models``, MAGE Eq. 16), the output directory and MLflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from soupkitchen.config import ConfigError, Recipe
from soupkitchen.evaluation import build_plan, load_mixed, read_source
from soupkitchen.models import resolve_device
from soupkitchen.tracking import RunLogger
from soupkitchen.value_models import collect_rollouts, train_value_model, write_value_models


def rollout_policies(recipe: Recipe, backbones: str | None):
    """(model, tokenizer, [(name, c)]): SFT as c = 0 and each backbone as c = e_j of a mixed model."""
    kind = recipe.value_model.policies
    if kind in ("backbones", "both") and not backbones:
        raise ConfigError(
            "--backbones", f"value_model.policies is {kind!r}: pass the backbones, or set it to 'sft'"
        )
    sources = {}
    if backbones and kind != "sft":
        src = read_source(backbones, flag="--backbones")
        sources[src.method] = src
    plan = build_plan(recipe, sources, include_sft=True)
    model, tok = load_mixed(plan, recipe, resolve_device(recipe.device))
    m = len(plan.adapters)
    policies = [("sft", np.zeros(m))] if kind in ("sft", "both") else []
    policies += [(name, np.eye(m)[j]) for j, name in enumerate(plan.names)]
    return model, tok, policies


def train_value_models(
    recipe: Recipe, backbones: str | None, out: Path, progress: bool = True
) -> tuple[Path, dict]:
    """Rollouts, one value model per objective, the output directory and the MLflow run."""
    device = resolve_device(recipe.device)
    model, tok, policies = rollout_policies(recipe, backbones)
    logger = RunLogger(
        recipe, f"train_value_models:{recipe.name}", tags={"soupkitchen.job": "train_value_models"}
    )
    with logger:
        rollouts = collect_rollouts(recipe, policies, model, tok, device=device, progress=progress)
        del model
        states, metrics = {}, {}
        for i, obj in enumerate(recipe.objectives):
            on_step = lambda s, m, o=obj: logger.log_metrics({f"{o}/{k}": v for k, v in m.items()}, s)  # noqa: E731
            states[obj], metrics[obj] = train_value_model(recipe, rollouts, i, device=device, on_step=on_step)
            logger.log_metrics({f"{obj}/{k}": v for k, v in metrics[obj].items()}, 0)
            if progress:
                print(f"value model {obj}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics[obj].items()))
        manifest = write_value_models(out, recipe, states, metrics, overwrite=True)
        for f in [manifest, *sorted((out / "adapters").glob("*.safetensors"))]:
            logger.log_file(f, "value_models" if f == manifest else "value_models/adapters")
    return manifest, metrics
