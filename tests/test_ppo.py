"""Vector-reward PPO: the tensor math against hand loops, and real training on the tiny recipe."""

import numpy as np
import pytest
import torch

from soupkitchen.config import load_recipe
from soupkitchen.ppo import AdaptiveKLController, FixedWeights, PerSamplePreference, Tchebycheff, core
from soupkitchen.training.specs import backbone_specs
from soupkitchen.training.worker import build_trainer, prompt_schedule, save_checkpoint
from tests.tiny_training import train_tiny


def test_gae_matches_a_hand_loop_per_objective():
    torch.manual_seed(0)
    B, T, K, gamma, lam = 3, 5, 2, 0.9, 0.8
    rewards, values = torch.randn(B, T, K), torch.randn(B, T, K)
    mask = torch.ones(B, T)
    mask[1, 3:] = 0
    adv, ret = core.gae(rewards, values, mask, gamma, lam)
    for b in range(B):
        L = int(mask[b].sum())
        for k in range(K):
            running = 0.0
            for t in reversed(range(L)):
                nxt = values[b, t + 1, k] if t + 1 < L else 0.0
                running = rewards[b, t, k] + gamma * nxt - values[b, t, k] + gamma * lam * running
                assert adv[b, t, k] == pytest.approx(float(running), abs=1e-5)
                assert ret[b, t, k] == pytest.approx(float(running + values[b, t, k]), abs=1e-5)
    assert torch.all(adv[1, 3:] == 0)


def test_token_rewards_put_the_terminal_reward_on_the_last_token_and_kl_everywhere():
    terminal = torch.tensor([[1.0, -2.0], [0.5, 0.25]])
    kl = torch.ones(2, 4)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).float()
    r = core.token_rewards(terminal, kl, mask, kl_coef=0.1)
    assert torch.allclose(r[0, :, 0], torch.tensor([-0.1, -0.1, 0.9, 0.0]))
    assert torch.allclose(r[0, :, 1], torch.tensor([-0.1, -0.1, -2.1, 0.0]))
    assert torch.allclose(r[1, 3], torch.tensor([0.4, 0.15]))


def test_linear_scalarisation_of_gae_equals_gae_of_the_scalarised_reward():
    """Σ_k w_k Â^k == GAE(wᵀr, wᵀV): the vector critic loses nothing for fixed-weight backbones."""
    torch.manual_seed(1)
    rewards, values, mask = torch.randn(4, 6, 3), torch.randn(4, 6, 3), torch.ones(4, 6)
    w = torch.tensor([0.5, 0.3, 0.2])
    adv_k, _ = core.gae(rewards, values, mask, 1.0, 0.95)
    adv_s, _ = core.gae(
        (rewards * w).sum(-1, keepdim=True), (values * w).sum(-1, keepdim=True), mask, 1.0, 0.95
    )
    assert torch.allclose((adv_k * w).sum(-1), adv_s[..., 0], atol=1e-5)


def test_policy_loss_clips_and_reports_the_clip_fraction():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 1.0]]))
    adv = torch.ones(1, 2)
    loss, clipfrac = core.policy_loss(new, old, adv, torch.ones(1, 2), clip=0.2)
    assert float(loss) == pytest.approx(-(1.2 + 1.0) / 2)
    assert float(clipfrac) == pytest.approx(0.5)


def test_adaptive_kl_controller_moves_towards_the_target():
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    ctl.update(12.0, n_steps=64)  # KL too high → coefficient grows by the clipped error
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 64 / 10000))
    ctl.update(0.0, n_steps=64)
    assert ctl.value < 0.2 * (1 + 0.2 * 64 / 10000)


def test_scalarisers():
    r = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.equal(FixedWeights([0.7, 0.3]).weights(r), torch.tensor([[0.7, 0.3], [0.7, 0.3]]))
    mu = torch.tensor([[0.2, 0.8], [0.9, 0.1]])
    assert torch.equal(PerSamplePreference().weights(r, mu), mu)
    assert torch.equal(Tchebycheff([0.5, 0.5], [1.0, 1.0]).weights(r), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="weights given"):
        FixedWeights([1.0, 0.0, 0.0]).weights(r)


def test_backbone_specs_per_method():
    recipe = load_recipe("tiny")
    assert [s.weights for s in backbone_specs(recipe, "bone_soup")] == [[0.7, 0.3], [0.3, 0.7]]
    assert [s.weights for s in backbone_specs(recipe, "rewarded_soups")] == [[1.0, 0.0], [0.0, 1.0]]
    assert [s.weights for s in backbone_specs(recipe, "morlhf")] == [[0.5, 0.5]]


def test_prompt_schedule_is_a_resumable_sequence_of_epochs():
    full = [i for s in range(5) for i in prompt_schedule(10, 4, s, seed=3)]
    assert sorted(full[:10]) == list(range(10)) and sorted(full[10:20]) == list(range(10))
    assert prompt_schedule(10, 4, 3, seed=3) == full[12:16]


@pytest.fixture(scope="module")
def trained_tiny_backbones(tiny_policies):
    recipe, trained = tiny_policies
    ws = [tuple(s.weights) for s in backbone_specs(recipe)]
    return recipe, [(trained["trainers"][w], trained["histories"][w]) for w in ws]


def test_tiny_backbones_learn_their_own_trade_off(trained_tiny_backbones):
    recipe, runs = trained_tiny_backbones
    finals = []
    for _, history in runs:
        scalar = [h["reward/scalarized"] for h in history]
        assert np.mean(scalar[-4:]) > np.mean(scalar[:4]) + 0.05, scalar
        finals.append([np.mean([h[f"reward/{o}"] for h in history[-4:]]) for o in recipe.objectives])
        for key in ("kl", "kl_coef", "entropy", "policy_loss", "value_loss", "clipfrac", "tokens_per_s"):
            assert np.isfinite(history[-1][key]), key
    (w0, c0), (w1, c1) = finals
    assert w0 > w1 and c0 < c1, finals  # backbone 1 leans to objective 1, backbone 2 to objective 2


def test_checkpoint_resume_continues_bit_for_bit(tmp_path):
    recipe = load_recipe("tiny", {"ppo.steps": 4})
    weights = backbone_specs(recipe)[0].weights
    straight, history = train_tiny(recipe, weights, 4)
    half, _ = train_tiny(recipe, weights, 2)
    save_checkpoint(half, tmp_path / "ckpt", {"data_position": 2})
    resumed = build_trainer(recipe, weights, restore=tmp_path / "ckpt")
    assert resumed.global_step == 2
    resumed, resumed_history = train_tiny(recipe, weights, 4, resumed)
    assert resumed_history[-1]["reward/scalarized"] == pytest.approx(history[-1]["reward/scalarized"])
    a, b = straight.model.trainable_state_dict(), resumed.model.trainable_state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    # A corrupted checkpoint is refused, never silently loaded.
    blob = (tmp_path / "ckpt" / "trainable.safetensors").read_bytes()
    (tmp_path / "ckpt" / "trainable.safetensors").write_bytes(blob[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="corrupt"):
        build_trainer(recipe, weights, restore=tmp_path / "ckpt")


def test_resume_with_another_worker_layout_is_refused(tmp_path):
    import json

    from soupkitchen.config import ConfigError

    recipe = load_recipe("tiny", {"ppo.steps": 1})
    weights = backbone_specs(recipe)[0].weights
    trainer, _ = train_tiny(recipe, weights, 1)
    save_checkpoint(
        trainer, tmp_path / "ckpt", {"data_position": 1, "backbone": {"name": "b", "weights": weights}}
    )
    # A run name re-used for a policy with other weights is refused, not resumed into the wrong objective.
    with pytest.raises(ConfigError, match="was trained with w=.*pick another --run-name"):
        build_trainer(recipe, [0.5, 0.5], restore=tmp_path / "ckpt")
    state_file = tmp_path / "ckpt" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["layout"] == {"world_size": 1, "zero_stage": 0}
    state["layout"] = {"world_size": 2, "zero_stage": 3}
    state_file.write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="cannot be re-partitioned"):
        build_trainer(recipe, weights, restore=tmp_path / "ckpt")


def test_resume_with_other_lora_targets_is_refused(tmp_path):
    recipe = load_recipe("tiny", {"ppo.steps": 1})
    weights = backbone_specs(recipe)[0].weights
    save_checkpoint(build_trainer(recipe, weights), tmp_path / "ckpt", {"data_position": 0})
    wider = load_recipe("tiny", {"lora.target_modules": ["c_attn", "c_fc", "c_proj", "lm_head"]})
    with pytest.raises(ValueError, match="does not match the recipe's LoRA.*missing"):
        build_trainer(wider, weights, restore=tmp_path / "ckpt")


def test_latest_checkpoint_picks_the_newest_complete_one(tmp_path):
    """A run killed between writing a checkpoint and Ray Train registering it resumes from the disk."""
    import json

    from soupkitchen.training.worker import latest_checkpoint

    for name, position, ranks in (("a", 5, True), ("b", 15, False), ("c", 10, True)):
        d = tmp_path / f"checkpoint_{name}"
        d.mkdir()
        (d / "state.json").write_text(json.dumps({"data_position": position, "files": {}}))
        if ranks:
            (d / "state-rank1.json").write_text('{"files": {}}')
    (tmp_path / "checkpoint_d").mkdir()  # state.json never written: incomplete
    (tmp_path / "checkpoint_e").mkdir()
    (tmp_path / "checkpoint_e" / "state.json").write_text("{trunc")
    assert latest_checkpoint(str(tmp_path), world_size=1) == tmp_path / "checkpoint_b"
    assert latest_checkpoint(str(tmp_path), world_size=2) == tmp_path / "checkpoint_c"  # b lacks rank 1
    assert latest_checkpoint(str(tmp_path / "none"), 1) is None
    assert latest_checkpoint("s3://bucket/run", 1) is None


def test_a_corrupt_or_truncated_checkpoint_is_refused_for_the_previous_complete_one(tmp_path):
    """Resume never loads a checkpoint whose files differ from their recorded sha256 (truncated, altered,
    missing): ``latest_checkpoint`` skips it, and given the refused one it picks the newest older one."""
    from soupkitchen.checkpoint import checkpoint_problem
    from soupkitchen.training.worker import latest_checkpoint

    recipe = load_recipe("tiny", {"ppo.steps": 2})
    weights = backbone_specs(recipe)[0].weights
    trainer, _ = train_tiny(recipe, weights, 1)
    old, new = tmp_path / "checkpoint_000001", tmp_path / "checkpoint_000002"
    save_checkpoint(trainer, old, {"data_position": 1})
    trainer, _ = train_tiny(recipe, weights, 2, trainer)
    save_checkpoint(trainer, new, {"data_position": 2})
    assert checkpoint_problem(new) is None and latest_checkpoint(str(tmp_path), 1) == new
    blob = (new / "trainable.safetensors").read_bytes()
    (new / "trainable.safetensors").write_bytes(blob[: len(blob) // 2])  # truncated by a full disk
    assert "trainable.safetensors corrupt" in checkpoint_problem(new)
    assert latest_checkpoint(str(tmp_path), 1) == old
    assert latest_checkpoint(str(tmp_path), 1, refuse=new) == old
    assert latest_checkpoint(str(tmp_path), 1, refuse=old) is None  # nothing older: start from step 0
    (new / "trainable.safetensors").unlink()
    assert checkpoint_problem(new) == "trainable.safetensors missing"
    assert checkpoint_problem(old, world_size=2) == "state-rank1.json unreadable (FileNotFoundError)"
    assert build_trainer(recipe, weights, restore=latest_checkpoint(str(tmp_path), 1)).global_step == 1


def test_scalarisation_weights_must_sum_to_one():
    r = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="sum to 1"):
        FixedWeights([0.7, 0.7])
    with pytest.raises(ValueError, match="sum to 1"):
        PerSamplePreference().weights(r, torch.tensor([[0.5, 0.5], [1.0, 1.0]]))


def test_lora_dropout_is_off_so_the_first_ppo_ratio_is_one():
    recipe = load_recipe("tiny", {"lora.dropout": 0.5, "ppo.steps": 1})
    trainer = build_trainer(recipe, [0.7, 0.3])
    rollout = trainer.evaluate_rollout(
        trainer.score(trainer.generate(["hello there"] * 4), ["hello there"] * 4)
    )
    P, T = rollout.prompt_len, rollout.response_mask.shape[1]
    trainer.model.train()  # the mode of the update
    with torch.no_grad():
        _, logp, _ = trainer._forward(rollout.input_ids, rollout.attention_mask, P, T)
    mask = rollout.response_mask.float()
    torch.testing.assert_close(logp * mask, rollout.logprobs, atol=1e-6, rtol=0)


def test_tokens_after_a_stop_string_get_no_credit():
    from soupkitchen.data import load_prompt_records
    from soupkitchen.generation import generate_batch, stop_index
    from soupkitchen.models import load_base_model

    recipe = load_recipe("tiny")
    model, tok = load_base_model(recipe.model)
    prompts = [load_prompt_records(recipe.data, "train")[0].prompt] * 3
    torch.manual_seed(0)
    free = generate_batch(model, tok, prompts, recipe.generation)
    words = free.texts[0].split()
    assert len(words) >= 4
    stop = words[2]
    cfg = load_recipe("tiny", {"generation.stop": [stop]}).generation
    torch.manual_seed(0)  # the same samples: stop strings only cut afterwards
    cut = generate_batch(model, tok, prompts, cfg)
    ids = free.sequences[0, free.prompt_len :]
    t = stop_index(tok, ids, [stop])
    assert stop in tok.decode(ids[: t + 1]) and stop not in tok.decode(ids[:t])
    assert int(cut.response_mask[0].sum()) == t + 1 < int(free.response_mask[0].sum())
    assert stop not in cut.texts[0] and bool(cut.has_eos[0])


def test_target_kl_stops_the_update_early():
    recipe = load_recipe("tiny", {"ppo.ppo_epochs": 8, "ppo.target_kl": 1e-9, "ppo.learning_rate": 0.05})
    trainer = build_trainer(recipe, [0.7, 0.3])
    stats = trainer.step(["hello there"] * 16)
    assert stats["ppo_minibatches"] < 8 * recipe.ppo.batch_size // recipe.ppo.mini_batch_size
