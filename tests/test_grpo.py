"""GRPO backbones through TRL's GRPOTrainer: reward adapters, the recipe mapping, real training on tiny."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from soupkitchen.checkpoint import load_training_checkpoint
from soupkitchen.config import ConfigError, NormalizationConfig, load_recipe
from soupkitchen.training.grpo import (
    ObjectiveReward,
    build_grpo_trainer,
    default_num_generations,
    grpo_plan,
    train_grpo_backbone,
)
from soupkitchen.training.specs import backbone_specs

# TRL computes log-probs from lm_head.weight directly, so the tiny recipe's lm_head LoRA is left out.
GRPO_TINY = {"ppo.algorithm": "grpo", "lora.target_modules": ["c_attn", "c_fc"]}


class EchoReward:
    """Scores the number of response words and records what it was asked to score."""

    name = "echo"

    def __init__(self):
        self.calls = []

    def score(self, prompts, responses):
        self.calls.append((list(prompts), list(responses)))
        return [float(len(r.split())) for r in responses]


def test_objective_reward_reads_plain_and_conversational_rows_and_normalises():
    echo = EchoReward()
    f = ObjectiveReward(echo, NormalizationConfig(kind="running"), stop=["STOP"], eos_token_ids=[1])
    assert f.__name__ == "echo"  # TRL's metric names come from __name__
    logged = {}
    out = f(
        prompts=["<chat>tell me</chat>", "<chat>talk</chat>"],
        completions=["a b c STOP d", " x "],
        completion_ids=[[5, 6, 1], [7]],
        context=["tell me", "talk"],
        trainer_state=None,
        log_metric=lambda k, v: logged.__setitem__(k, v),
    )
    assert echo.calls[-1] == (["tell me", "talk"], ["a b c", "x"])  # context column, stop + strip
    assert out == pytest.approx([1.0, -1.0])  # running (r - mean) / std over [3, 1]
    assert logged == {"reward_raw/echo": 2.0}
    assert f.completion_tokens == [4]

    convo = f(
        prompts=[[{"role": "user", "content": "hi there"}]],
        completions=[[{"role": "assistant", "content": "one two"}]],
        completion_ids=[[3, 4]],
    )
    assert echo.calls[-1] == (["hi there"], ["one two"])
    assert math.isfinite(convo[0])

    penal = ObjectiveReward(EchoReward(), NormalizationConfig(), eos_token_ids=[1], missing_eos_penalty=-1.0)
    assert penal(prompts=["p", "p"], completions=["a", "b"], completion_ids=[[4, 1], [4, 4]]) == [1.0, -1.0]


def test_recipe_maps_onto_grpo_batching_and_rejects_what_it_cannot_train():
    recipe = load_recipe("tiny", GRPO_TINY)
    plan = grpo_plan(recipe)
    assert (
        default_num_generations(16) == 4
        and default_num_generations(6) == 3
        and default_num_generations(5) == 5
    )
    assert (plan.num_generations, plan.prompts_per_step, plan.num_iterations) == (4, 4, recipe.ppo.ppo_epochs)
    assert plan.max_steps == recipe.ppo.steps * recipe.ppo.ppo_epochs * 2  # batch 16 / minibatch 8
    with pytest.raises(ConfigError, match="ppo.batch_size"):
        grpo_plan(recipe, num_generations=5)
    spec = backbone_specs(recipe)[0]
    with pytest.raises(ConfigError, match="lora.target_modules"):
        build_grpo_trainer(load_recipe("tiny", {"ppo.algorithm": "grpo"}), spec, "/nonexistent")


def test_grpo_backbone_trains_on_tiny_and_saves_an_adapter(tmp_path):
    recipe = load_recipe("tiny", {**GRPO_TINY, "ppo.steps": 2, "ppo.ppo_epochs": 1})
    spec = backbone_specs(recipe)[0]
    run = build_grpo_trainer(recipe, spec, tmp_path / "scratch")
    assert run.trainer.reward_weights.tolist() == pytest.approx(spec.weights)
    assert run.trainer.reward_func_names == recipe.objectives
    assert (run.trainer.beta, run.trainer.num_generations) == (recipe.ppo.kl_coef, 4)

    seen = []
    result = train_grpo_backbone(recipe, spec, tmp_path / "ckpt", on_step=seen.append)
    assert result["reward_weights"] == spec.weights
    assert [s["step"] for s in seen] == [1, 2] and result["history"] == seen
    for key in [f"reward/{o}" for o in recipe.objectives] + ["reward/scalarized", "tokens_per_s", "entropy"]:
        assert np.isfinite(result[key]), key
    norm = [result[f"reward_norm/{o}"] for o in recipe.objectives]
    assert result["reward/scalarized"] == pytest.approx(float(np.dot(spec.weights, norm)), abs=1e-5)

    adapter = load_file(tmp_path / "ckpt" / "trainable.safetensors")
    assert adapter and all(k.startswith("adapter.") for k in adapter)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # trained (B starts at 0)
    # Same key layout as a PPO checkpoint's adapter, and loadable (sha256-verified) the same way.
    from soupkitchen.models import load_policy
    from soupkitchen.ppo.policy import PolicyWithValue

    policy, _ = load_policy(load_recipe("tiny", GRPO_TINY), device="cpu")
    expected = PolicyWithValue(policy, 2).trainable_state_dict()
    assert set(adapter) == {k for k in expected if k.startswith("adapter.")}
    trainable, optimizer, state = load_training_checkpoint(tmp_path / "ckpt")
    assert optimizer is None and state["algorithm"] == "grpo" and state["backbone"]["weights"] == spec.weights
    for k, v in trainable.items():
        torch.testing.assert_close(v, adapter[k])


# A learning test is deliberately absent: without LoRA on lm_head (refused by TRL) the random tiny model's
# logits stay near-uniform (entropy ≈ ln|V| ≈ 5.50 after 20 GRPO steps at lr 0.01 or 0.05) and the
# scalarised reward does not rise measurably; see bench/ppo_vs_grpo.py for GRPO on the real demo model.
