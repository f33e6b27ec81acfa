"""MOC: one LoRA policy conditioned on the preference in its prompt, trained with policy-level MOO
(docs/methods/moc.md). ``prompt`` is Eq. 3, ``objective`` the min-norm scalarised PPO loss (Eqs. 7-12,
Algorithm 2) the engine runs per minibatch."""

from soupkitchen.moc.objective import (
    MOCObjective,
    min_norm_2,
    min_norm_coefficients,
    moc_weights,
    unclipped_advantage,
)
from soupkitchen.moc.prompt import preference_prefix, relabel
from soupkitchen.moc.schedule import batch_preferences, relabeled_rows, training_preferences

__all__ = [
    "MOCObjective",
    "batch_preferences",
    "min_norm_2",
    "min_norm_coefficients",
    "moc_weights",
    "preference_prefix",
    "relabel",
    "relabeled_rows",
    "training_preferences",
    "unclipped_advantage",
]
