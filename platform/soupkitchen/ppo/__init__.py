"""Vector-reward PPO: one policy (W0 + LoRA), n value heads, one GAE stream per objective."""

from soupkitchen.ppo.kl import AdaptiveKLController, FixedKLController, make_kl_controller
from soupkitchen.ppo.scalarization import FixedWeights, PerSamplePreference, Scalarizer, Tchebycheff

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "FixedWeights",
    "PerSamplePreference",
    "Scalarizer",
    "Tchebycheff",
    "make_kl_controller",
]
