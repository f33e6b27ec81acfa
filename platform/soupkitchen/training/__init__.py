"""Training: the Ray Train/Tune launcher (``launcher``), the per-worker PPO loop and resume (``worker``), the
backbones each method trains (``specs``), GRPO (``grpo``), SFT (``sft``) and the value-model job (``values``).
The PPO engine itself is ``soupkitchen.ppo`` (no Ray)."""
