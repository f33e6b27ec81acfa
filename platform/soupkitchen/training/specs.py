"""The policies each training method trains (``methods.Method``): names and scalarisation weights w."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soupkitchen.config import ConfigError, Recipe
from soupkitchen.hoe.routers import RouterJob
from soupkitchen.methods import Method
from soupkitchen.preferences import backbone_weights
from soupkitchen.reward_space import check_shared_space


@dataclass
class BackboneSpec:
    """One policy to train: its name and scalarisation weights w (MOC: the centre of the simplex, used only
    for the reward scale; each row's own p scalarises it)."""

    name: str
    weights: list[float]
    moc: bool = False  # one preference-conditioned policy trained with MOC's objective (``soupkitchen.moc``)
    router: RouterJob | None = None  # a HoE router expert (``soupkitchen.hoe.routers``); w = its λ


def backbone_specs(recipe: Recipe, method: Method | str | None = None) -> list[BackboneSpec]:
    """The policies ``method`` (default ``soup.method``) trains, named ``<method>-<i>``."""
    method = Method(method or recipe.soup.method)
    n = len(recipe.objectives)
    if method is Method.BONE_SOUP:
        W = backbone_weights(n, recipe.soup.beta)
    elif method is Method.REWARDED_SOUPS:
        W = backbone_weights(n, None)
    elif method is Method.MOC:
        return [BackboneSpec(f"{method}-0", [round(1.0 / n, 12)] * n, moc=True)]
    elif method is Method.RIC:
        raise ConfigError("--method", "ric is trained by supervised fine-tuning: use jobs/train_ric.py")
    elif method is Method.HOE:
        raise ConfigError("--method", "hoe trains routers over extracted experts: use jobs/build_hoe.py")
    else:
        W = np.asarray(recipe.soup.morlhf_preferences, dtype=np.float64)
    check_shared_space(recipe, W.tolist())
    return [BackboneSpec(f"{method}-{i}", [round(float(x), 12) for x in w]) for i, w in enumerate(W)]
