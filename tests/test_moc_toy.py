"""MOC's fishwood-style toy: a preference-conditioned policy follows the preference rays, linear PPO does not.

Environment: a contextual bandit on a linear front. The context is the preference p = (p₁, 1 − p₁), p₁ from
the grid {0.1, …, 0.9}; the policy (an MLP over an RBF encoding of p₁) picks one of ``N_ACTIONS`` actions
a ∈ {0, 0.05, …, 1} as a single token (T = 1) and gets r(a) = (a, 1 − a) + N(0, ``NOISE``²) per objective.
Every point of the front is Pareto-optimal and pᵀr = p₁a + p₂(1 − a) is maximised at a vertex (a = 1 for
p₁ > ½, a = 0 for p₁ < ½), so linearly scalarised PPO sends every preference but ½ to a corner. MOC's
constraint R̄ ≈ p asks for the ray point a = p₁, where the reward share r₁ / (r₁ + r₂) is p₁.

Both trainers call the engine's own objectives the way ``PPOTrainer.evaluate_rollout`` / ``optimize`` do
(``advantages`` once per batch, ``loss`` per minibatch): ``MOCObjective`` (Eq. 10's I(Â) by
``unclipped_advantage``, Algorithm 2's per-sample c by ``min_norm_coefficients``, Eq. 7's ω by
``moc_weights``, ω-weighted per-objective clipped terms) and ``LinearObjective`` (ω = p in one clipped
surrogate), on top of ``core.token_rewards``, ``core.gae``, ``core.logprobs_of``, ``core.value_loss`` and a
per-objective critic V^k(p); same seed, preference draws (``batch_preferences``), budget and optimiser.

Choices made for MOC (each checked against the alternative over several seeds):
- Normalisation: ``normalizer="space"`` with rewards in the frozen space z = (r − 1) / 0.5 (a ``fixed``
  ``RewardNormalizer``, mean 1, std ½), so Eq. 18's R̄ = z / 2 + offset (offset 1) is R̄ = r and the
  ray-following policy has R̄ = p exactly. With Eq. 18's running statistics, mean_b R̄_b = offset = 1 per
  objective while p averages ½ (here R̄₁ + R̄₂ ≈ 2 in every sample, so MSE(R̄, p) ≥ ¼ > φ always) and the
  target spread scales with the reward population's own std, so the rays are not the target (shares come
  out stretched toward the corners: 0.02–0.04 at p₁ = 0.1, 0.97–0.98 at 0.9).
- ``target="group"``: R̄ is the mean over the batch rows with the same preference. With the sample's own R̄
  the weight on each sample vanishes as its action nears the ray, the policy turns deterministic first and
  shares freeze at 0.25–0.3 / 0.7–0.8 whatever p₁.
- φ = ``PHI`` = 0 (the constraint always counts as violated): here MSE(R̄, p) = (ā − p₁)², and inside the
  φ-ball ``satisfied: linear`` takes the linear step toward the vertex; φ = 0.002 (|ā − p₁| < 0.045)
  already makes the deviation 2.5× larger, the paper's φ = 0.1 would accept |ā − p₁| < 0.32.
With T = 1 and Â² ≈ −Â¹, v and v̄ of Eq. 12 are scalars per sample: Algorithm 2 keeps the smaller when they
agree in sign and cancels the sample's step when they disagree, so MOC moves with the linear direction until
the group crosses its ray and stops there; the reward noise (independent per objective) is what lets v̄ win
near the ray and pull back an overshoot (with ``NOISE`` = 0 the deviation is ~3× larger).

Sabotage check (by hand): flipping the gap's sign in ``moc_weights`` (shares 0.43–0.74, max deviation ≈ 0.45)
or forcing c = 1 (corners, like linear PPO) makes ``test_moc_follows_the_preference_rays`` fail.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from soupkitchen.config import MOCConfig, NormalizationConfig
from soupkitchen.moc import MOCObjective, batch_preferences
from soupkitchen.ppo import core
from soupkitchen.ppo.comm import LocalComm
from soupkitchen.ppo.objectives import LinearObjective
from soupkitchen.rewards.normalization import RewardNormalizer

N_ACTIONS = 21
GRID = np.round(np.arange(1, 10) / 10.0, 10)  # p₁ ∈ {0.1, …, 0.9}
PREFS = np.stack([GRID, 1.0 - GRID], 1)
NOISE = 0.1  # reward noise std per objective
PHI = 0.0  # φ of Eq. 4 (module docstring)
TARGET = "group"  # R̄ of each row: its preference group's mean
STEPS, BATCH, EPOCHS, MINIBATCHES = 80, 512, 4, 2
CLIP, LR, VF_COEF = 0.2, 3e-3, 0.5
SEED = 0
# RBF encoding of p₁ fed to the MLPs (neighbouring grid points barely overlap; hidden layer shared)
CENTERS, WIDTH = torch.linspace(0.0, 1.0, 11), 0.04


def mlp(out: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(len(CENTERS), 32), torch.nn.Tanh(), torch.nn.Linear(32, out))


def features(p: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * ((p[:, :1] - CENTERS) / WIDTH) ** 2)


def train(method: str, seed: int, objective=None, steps: int | None = None) -> np.ndarray:
    """Train one preference-conditioned policy ("moc" or "linear", or the given ``objective``); return its
    expected (noise-free) reward vectors at the grid preferences, [len(GRID), 2]."""
    actions = torch.linspace(0.0, 1.0, N_ACTIONS, dtype=torch.float64)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        policy, critic = mlp(N_ACTIONS), mlp(2)
        torch.nn.init.zeros_(policy[-1].weight)  # uniform start: E a = ½ at every preference
        torch.nn.init.zeros_(policy[-1].bias)
    if objective is None:
        cfg = MOCConfig(phi=PHI, normalizer="space", target=TARGET)
        objective = MOCObjective(cfg, 2) if method == "moc" else LinearObjective()
    space = RewardNormalizer([NormalizationConfig(kind="fixed", mean=1.0, std=0.5)] * 2)
    params = [*policy.parameters(), *critic.parameters()]
    opt = torch.optim.Adam(params, lr=LR)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    comm = LocalComm()
    mask = torch.ones(BATCH, 1)
    for step in range(STEPS if steps is None else steps):
        p = torch.as_tensor(batch_preferences(PREFS, BATCH, step, seed), dtype=torch.float32)
        x = features(p)
        with torch.no_grad():
            logits = policy(x).unsqueeze(1)  # [B, T=1, N]
            tokens = torch.multinomial(torch.softmax(logits[:, 0], -1), 1, generator=gen)  # [B, 1]
            logp = core.logprobs_of(logits, tokens)
            values = critic(x).unsqueeze(1)  # [B, 1, K]
        a = actions[tokens[:, 0]].numpy()
        raw = np.stack([a, 1.0 - a], 1) + NOISE * rng.standard_normal((BATCH, 2))
        z = torch.as_tensor(space.normalize(raw), dtype=torch.float32)
        rollout = SimpleNamespace(
            raw_rewards=raw, rewards=z, weights=p, logprobs=logp, values=values, extras={}
        )
        token_r = core.token_rewards(z, torch.zeros(BATCH, 1), mask, 0.0)
        adv_k, rollout.returns = core.gae(token_r, values, mask, 1.0, 1.0)
        rollout.advantages = objective.advantages(rollout, adv_k, mask, comm)
        for _ in range(EPOCHS):
            order = torch.randperm(BATCH, generator=gen)
            for idx in order.view(MINIBATCHES, -1):
                xb, mb = x[idx], mask[idx]
                new_logp = core.logprobs_of(policy(xb).unsqueeze(1), tokens[idx])
                pg, _, _ = objective.loss(new_logp, rollout, idx, mb, CLIP)
                vf = core.value_loss(
                    critic(xb).unsqueeze(1), values[idx], rollout.returns[idx], mb, CLIP * 10
                )
                opt.zero_grad()
                (pg + VF_COEF * vf).backward()
                opt.step()
    with torch.no_grad():
        probs = torch.softmax(policy(features(torch.as_tensor(PREFS, dtype=torch.float32))), -1).double()
    r1 = (probs * actions).sum(-1).numpy()
    return np.stack([r1, 1.0 - r1], 1)


def shares(rewards: np.ndarray) -> np.ndarray:
    return rewards[:, 0] / rewards.sum(1)


@pytest.fixture(scope="module")
def trained() -> dict[str, np.ndarray]:
    """Reward shares r₁ / (r₁ + r₂) per grid preference for MOC and linear PPO (same seed and budget)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest and the numbers do not depend on the host
    try:
        return {m: shares(train(m, SEED)) for m in ("moc", "linear")}
    finally:
        torch.set_num_threads(threads)


def test_moc_follows_the_preference_rays(trained):
    moc = trained["moc"]
    dev = np.abs(moc - GRID)
    assert dev.max() < 0.12 and dev.mean() < 0.06, np.round(moc, 3)  # seeds 0-10: ≤ 0.073 and ≤ 0.036
    assert np.all(np.diff(moc) > 0.03), np.round(moc, 3)  # ordered like p₁ (Kendall τ = 1)
    assert np.all((moc > 0.03) & (moc < 0.97)), np.round(moc, 3)  # no preference left in a corner


def test_linear_ppo_collapses_to_the_corners(trained):
    linear, moc = trained["linear"], trained["moc"]
    low, high = GRID < 0.5, GRID > 0.5  # p₁ = ½ is a tie for pᵀr: its share is arbitrary
    assert np.all(linear[low] < 0.02) and np.all(linear[high] > 0.98), np.round(linear, 3)
    dev_linear, dev_moc = np.abs(linear - GRID).mean(), np.abs(moc - GRID).mean()
    assert dev_linear > 0.2 and dev_linear > 3 * dev_moc, (dev_linear, dev_moc)
