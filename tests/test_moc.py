"""MOC (docs/methods/moc.md): Eq. 3 relabeling, Eq. 10, Algorithm 2, the min-norm scalarised loss (Eqs. 7-12)
and one preference-conditioned PPO policy trained on the tiny recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soupkitchen.conditioning import Conditioning
from soupkitchen.config import ConfigError, MOCConfig, PreferencePromptConfig, load_recipe
from soupkitchen.moc import (
    MOCObjective,
    batch_preferences,
    min_norm_2,
    min_norm_coefficients,
    moc_weights,
    relabel,
    relabeled_rows,
    training_preferences,
    unclipped_advantage,
)
from soupkitchen.ppo import core
from soupkitchen.ppo.comm import LocalComm
from soupkitchen.ppo.trainer import Rollout

# ------------------------------------------------------------------------------------------- Eq. 3


def test_relabel_writes_the_preference_before_the_prompt_with_a_pinned_format():
    assert relabel("How do I cook rice?", [0.3, 0.7]) == "<R1> 0.30 <R2> 0.70 How do I cook rice?"
    assert relabel("x", np.array([1.0, 0.0])) == "<R1> 1.00 <R2> 0.00 x"
    assert relabel("x", [-0.0, 1.0]) == "<R1> 0.00 <R2> 1.00 x"  # no "-0.00"
    fmt = PreferencePromptConfig(tag="[w{i}]", decimals=1, position="suffix")
    assert relabel("x", [0.25, 0.75], fmt) == "x [w1] 0.2 [w2] 0.8"
    assert relabel("x", [0.2, 0.3, 0.5], fmt) == "x [w1] 0.2 [w2] 0.3 [w3] 0.5"


def test_prompt_format_rejects_a_tag_without_the_index():
    with pytest.raises(ConfigError, match=r"tag.*\{i\}"):
        PreferencePromptConfig(tag="<R>")


def test_conditioning_maps_preferences_to_prompt_values():
    moc = Conditioning(kind="preference")
    assert moc.prompt_for("hi", [0.4, 0.6]) == relabel("hi", [0.4, 0.6])
    ric = Conditioning(kind="rewards", low=[-1.0, -2.0], high=[1.0, 2.0])
    assert ric.values([1.0, 0.0]).tolist() == [1.0, -2.0]
    assert ric.values([0.5, 0.5]).tolist() == [1.0, 2.0]
    assert ric.values([0.2, 0.8]) == pytest.approx([-1.0 + 2 * 0.2 * 2.0, 2.0])


# ------------------------------------------------------------------------------------- Eq. 10


def test_unclipped_advantage_truth_table():
    """I(A) = A where the clipped surrogate still moves π (Eq. 10), 0 where clipping is active."""
    eps = 0.2
    cases = [  # (A, z, I)
        (1.0, 1.0, 1.0),
        (1.0, 1.2, 1.0),  # z = 1 + ε: still inside
        (1.0, 1.3, 0.0),  # A > 0, z > 1 + ε: clipped
        (1.0, 0.5, 1.0),  # A > 0, z < 1 − ε: the min keeps the unclipped term
        (-1.0, 0.8, -1.0),  # z = 1 − ε: still inside
        (-1.0, 0.7, 0.0),  # A < 0, z < 1 − ε: clipped
        (-1.0, 1.5, -1.0),  # A < 0, z > 1 + ε: unclipped term kept
        (0.0, 1.0, 0.0),
    ]
    A = torch.tensor([c[0] for c in cases])
    z = torch.tensor([c[1] for c in cases])
    assert unclipped_advantage(A, z, eps).tolist() == [c[2] for c in cases]


def test_unclipped_advantage_is_where_the_clipped_surrogate_has_a_gradient():
    torch.manual_seed(0)
    A, logz = torch.randn(200), (torch.randn(200) * 0.3).requires_grad_()
    z = logz.exp()
    surrogate = torch.minimum(z * A, torch.clamp(z, 0.8, 1.2) * A).sum()
    (grad,) = torch.autograd.grad(surrogate, logz)  # ∂/∂log z = z · I(A)
    assert torch.allclose(grad, z.detach() * unclipped_advantage(A, z.detach(), 0.2), atol=1e-6)


# --------------------------------------------------------------------------------- Algorithm 2


def test_min_norm_2_matches_a_brute_force_search():
    rng = np.random.default_rng(0)
    grid = np.linspace(0.0, 1.0, 20001)
    for _ in range(300):
        d = int(rng.integers(1, 6))
        v, vb = rng.normal(size=d), rng.normal(size=d)
        if rng.random() < 0.2:
            vb = rng.random() * v  # parallel cases: an endpoint is optimal
        norms = np.linalg.norm(grid[:, None] * v + (1 - grid[:, None]) * vb, axis=1) ** 2
        c = min_norm_2(v, vb)
        assert 0.0 <= c <= 1.0
        best = norms.min()
        mine = np.linalg.norm(c * v + (1 - c) * vb) ** 2
        assert mine <= best + 1e-6
        assert min_norm_2(torch.tensor(v), torch.tensor(vb)) == pytest.approx(c)


def test_min_norm_degenerate_cases():
    v = torch.tensor([1.0, 2.0])
    assert min_norm_2(v, torch.zeros(2)) == 0.0  # constraint met (v̄ = 0): Algorithm 2 says c = 0
    assert min_norm_2(torch.zeros(2), torch.zeros(2)) == 1.0
    assert min_norm_2(v, v) == 1.0
    assert min_norm_2(v, -v) == pytest.approx(0.5)
    batched = min_norm_coefficients(torch.stack([v, v]), torch.stack([torch.zeros(2), -v]))
    assert batched.tolist() == pytest.approx([0.0, 0.5])


# --------------------------------------------------------------------------------- the loss


def _rollout(B=4, T=5, K=2, seed=0, gap_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T)
    mask[1, 3:] = 0
    p = torch.rand(B, K, generator=g)
    p = p / p.sum(-1, keepdim=True)
    r = Rollout(
        input_ids=torch.zeros(B, T, dtype=torch.long),
        attention_mask=torch.ones(B, T),
        response_mask=mask,
        prompt_len=0,
        texts=[""] * B,
        has_eos=torch.ones(B, dtype=torch.bool),
    )
    r.raw_rewards = torch.randn(B, K, generator=g).double().numpy() * gap_scale
    r.rewards = torch.as_tensor(r.raw_rewards, dtype=torch.float32)
    r.weights = p
    r.logprobs = torch.randn(B, T, generator=g) * 0.1
    adv_k = torch.randn(B, T, K, generator=g)
    return r, adv_k, mask


def _objective(**cfg):
    return MOCObjective(MOCConfig(normalizer="space", **cfg), 2, whiten=False)


def _per_objective_clipped(logp, old, adv, clip):
    z = torch.exp(logp - old).unsqueeze(-1)
    return torch.maximum(-adv * z, -adv * torch.clamp(z, 1 - clip, 1 + clip))  # [B, T, K]


def test_loss_equals_the_linear_loss_at_omega_p_when_the_constraint_holds():
    """φ above every distance + the linear fallback: Σ_k p_k · (PPO loss of objective k), exactly; on the
    first minibatch (z = 1) that is also the scalarised PPO loss of Σ_k p_k Â^k."""
    r, adv_k, mask = _rollout()
    obj = _objective(phi=1e9, satisfied="linear")
    r.advantages = obj.advantages(r, adv_k, mask, LocalComm())
    assert not r.extras["violated"].any()
    idx = torch.arange(4)
    logp = r.logprobs + torch.randn(4, 5) * 0.3
    loss, _, stats = obj.loss(logp, r, idx, mask, 0.2)
    assert stats["moc/c1"] == 1.0
    expected = core.masked_mean(
        (_per_objective_clipped(logp, r.logprobs, adv_k, 0.2) * r.weights.unsqueeze(1)).sum(-1), mask
    )
    assert float(loss) == pytest.approx(float(expected), abs=1e-7)
    at_one, _, _ = obj.loss(r.logprobs.clone(), r, idx, mask, 0.2)
    linear, _ = core.policy_loss(r.logprobs, r.logprobs, (adv_k * r.weights.unsqueeze(1)).sum(-1), mask, 0.2)
    assert float(at_one) == pytest.approx(float(linear), abs=1e-7)
    stop = _objective(phi=1e9, satisfied="stop")
    stop.advantages(r, adv_k, mask, LocalComm())
    literal, _, _ = stop.loss(logp, r, idx, mask, 0.2)
    assert float(literal) == 0.0  # Algorithm 2 verbatim: c = 0 and v̄ = 0, no update


def test_gradient_is_the_omega_weighted_sum_of_per_objective_gradients():
    """∇ loss = Σ_b Σ_k ω_bk ∇ J^k_b with ω from Algorithm 2 (detached): one backward pass."""
    r, adv_k, mask = _rollout(seed=3, gap_scale=3.0)
    obj = _objective(phi=0.05)
    r.advantages = obj.advantages(r, adv_k, mask, LocalComm())
    assert r.extras["violated"].any()
    theta = (r.logprobs + 0.2 * torch.randn(4, 5)).clone().requires_grad_()
    idx = torch.arange(4)
    loss, _, _ = obj.loss(theta, r, idx, mask, 0.2)
    (grad,) = torch.autograd.grad(loss, theta)
    with torch.no_grad():  # ω recomputed by hand from the definitions
        z = torch.exp(theta - r.logprobs)
        live = unclipped_advantage(adv_k, z.unsqueeze(-1), 0.2) * mask.unsqueeze(-1)
        p, gap, viol = r.weights, r.extras["gap"], r.extras["violated"]
        v = (live * p.unsqueeze(1)).sum(-1)
        vb = -viol.float().unsqueeze(-1) * (live * gap.unsqueeze(1)).sum(-1)
        c = torch.tensor([min_norm_2(v[b], vb[b]) for b in range(4)], dtype=torch.float32)
        c = torch.where(viol, c, torch.ones_like(c))
        omega = moc_weights(c, p, gap, viol)
    total = torch.zeros_like(theta)
    for k in range(2):
        for b in range(4):  # J^k_b: row b's share of objective k's mean
            rows = torch.zeros(4, 1)
            rows[b] = 1.0
            (g,) = torch.autograd.grad(
                core.masked_mean(_per_objective_clipped(theta, r.logprobs, adv_k, 0.2)[..., k] * rows, mask),
                theta,
            )
            total += omega[b, k] * g
    assert torch.allclose(grad, total, atol=1e-6)
    assert not torch.allclose(omega, p)  # the constraint really changed the weights


def test_constraint_pushes_an_over_served_objective_down():
    """ω = c p − (1 − c)(R̄ − p): objective 1, served above its share (R̄_1 − p_1 = 1), gets c p_1 − (1 − c) < 0
    (pushed down); objective 2, on target, keeps c p_2."""
    p = torch.tensor([[0.5, 0.5]])
    gap = torch.tensor([[1.0, 0.0]])
    omega = moc_weights(torch.tensor([0.25]), p, gap, torch.tensor([True]))
    assert omega[0].tolist() == pytest.approx([0.25 * 0.5 - 0.75, 0.25 * 0.5])


def test_targets_follow_eq_18_with_running_statistics_and_the_group_option():
    r, adv_k, mask = _rollout(B=6)
    r.weights = torch.tensor([[0.2, 0.8]] * 3 + [[0.6, 0.4]] * 3)
    obj = MOCObjective(MOCConfig(), 2, whiten=False)
    rbar = obj.targets(r, LocalComm())
    raw = r.raw_rewards
    expected = (raw - raw.mean(0)) / (2 * raw.std(0)) + 1.0
    assert rbar.numpy() == pytest.approx(expected.astype(np.float32), abs=1e-5)
    group = MOCObjective(MOCConfig(target="group", offset=0.5), 2, whiten=False).targets(r, LocalComm())
    assert torch.allclose(group[:3], group[:3].mean(0).expand(3, 2))
    assert torch.allclose(group[:3].mean(0), torch.as_tensor(expected[:3].mean(0) - 0.5, dtype=torch.float32))
    state = obj.state_dict()
    again = MOCObjective(MOCConfig(), 2)
    again.load_state_dict(state)
    assert again.stats.count == 6


def test_training_preferences_and_batches_are_deterministic():
    P = training_preferences(MOCConfig(), 2)
    assert len(P) == 11 and P[3].tolist() == [0.3, 0.7]
    assert training_preferences(MOCConfig(preferences=[[1.0, 0.0], [0.0, 1.0]]), 2).shape == (2, 2)
    a, b = batch_preferences(P, 16, 3, 0), batch_preferences(P, 16, 3, 0)
    assert np.array_equal(a, b) and not np.array_equal(a, batch_preferences(P, 16, 4, 0))
    assert len({tuple(x) for x in batch_preferences(P, 64, 0, 0)}) > 5


def test_recipe_checks_moc_preferences_against_the_objectives():
    with pytest.raises(ConfigError, match=r"moc\.preferences\.0"):
        load_recipe("tiny", {"moc.preferences": [[0.2, 0.3, 0.5]]})
    with pytest.raises(ConfigError, match=r"moc\.preferences\.0"):
        load_recipe("tiny", {"moc.preferences": [[0.2, 0.3]]})
    with pytest.raises(ConfigError, match=r"moc\.distance"):
        load_recipe("tiny", {"moc.distance": "l1"})


# ------------------------------------------------------------------------ the engine, end to end


def test_moc_ppo_on_tiny_conditions_one_policy_on_the_preference(tmp_path):
    """Real PPO steps with MOC's objective: the prompt carries p, the objective's state is checkpointed."""
    from soupkitchen.data import load_prompt_records
    from soupkitchen.training.worker import build_trainer, prompt_schedule, save_checkpoint

    recipe = load_recipe("tiny-moc", {"ppo.steps": 3})
    trainer = build_trainer(recipe, [0.5, 0.5], moc=True)
    tok = trainer.tokenizer
    assert "<unk>" not in tok.convert_ids_to_tokens(tok(relabel("the sun", [0.3, 0.7]))["input_ids"])
    records = load_prompt_records(recipe.data, "train")
    P = training_preferences(recipe.moc, 2)
    for step in range(3):
        idx = prompt_schedule(len(records), recipe.ppo.batch_size, step, 0)
        prompts, prefs = relabeled_rows(
            [records[i].prompt for i in idx], P, len(idx), step, 0, recipe.moc.prompt
        )
        assert prompts[0].startswith(f"<R1> {prefs[0][0]:.2f} <R2> {prefs[0][1]:.2f} ")
        stats = trainer.step(prompts, [records[i].context for i in idx], prefs)
    assert 0.0 <= stats["moc/c1"] <= 1.0 and 0.0 <= stats["moc/violated"] <= 1.0
    assert np.isfinite(stats["policy_loss"]) and stats["step"] == 3
    assert trainer.objective.stats.count == 3 * recipe.ppo.batch_size
    save_checkpoint(trainer, tmp_path / "ckpt", {})
    again = build_trainer(recipe, [0.5, 0.5], moc=True, restore=tmp_path / "ckpt", space=trainer.space)
    assert again.objective.stats.count == trainer.objective.stats.count
    assert again.global_step == 3
