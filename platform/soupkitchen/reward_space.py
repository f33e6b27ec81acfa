"""The one reward space of a run: every policy trains in it, and μ, w, λ and every metric live in it.

Bone Soup's backbone i optimises h_i = w_iᵀz and the soup is merged with λ = (1+α)B(β)⁻¹μ (Eqs. 6-9). That
algebra only holds if z is the *same* vector for every backbone. A normaliser per policy (running
statistics) breaks it: in the shared space backbone i really optimises w̃_ij ∝ w_ij σ_j / σ_ij, so the
matrix that applies is not B(β). Here the space is fixed once per run, before any policy trains:

    z_j = (r_j − m_j) / s_j,   (m_j, s_j) = mean, std of r_j over SFT (W0) rollouts on training prompts

for objectives whose normalisation kind is ``calibrated`` (``fixed``: the recipe's constants; ``none``:
m = 0, s = 1; ``running``: m, s from the calibration too, but the policy normalises with its own running
statistics — allowed only where w is one-hot, see :func:`check_shared_space`). The calibration is frozen,
stored in the run's ``reward_space.json``, every manifest and every bundle, and used by training,
evaluation and serving alike. ``cov`` is the covariance of z under the calibration rollouts: the spread
of a scalarised reward wᵀz is sqrt(wᵀ cov w) (:meth:`RewardSpace.spread`, used to keep the KL share of
mixed and single-objective backbones comparable, ``ppo.scale_rewards``).
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from soupkitchen.config import ConfigError, NormalizationConfig, Recipe, from_dict, to_dict
from soupkitchen.data import load_prompt_records
from soupkitchen.generation import generate_batch
from soupkitchen.models import format_prompt, load_base_model, resolve_device
from soupkitchen.rewards import build_rewards
from soupkitchen.rewards.normalization import RewardNormalizer

FORMAT = "soupkitchen.reward_space/v1"


@dataclass
class RewardSpace:
    """Frozen per-objective (mean, std) of the run, the covariance of z, and where they came from."""

    objectives: list[str]
    kinds: list[str]  # the recipe's normalisation kind per objective
    mean: list[float]
    std: list[float]
    cov: list[list[float]]  # covariance of z under the calibration rollouts [n, n]
    count: int  # calibration rollouts
    source: str

    @property
    def n(self) -> int:
        return len(self.objectives)

    @classmethod
    def identity(cls, objectives: list[str]) -> RewardSpace:
        """Raw rewards (m = 0, s = 1), e.g. for a recipe whose objectives are all ``none``."""
        n = len(objectives)
        return cls(list(objectives), ["none"] * n, [0.0] * n, [1.0] * n, np.eye(n).tolist(), 0, "identity")

    @classmethod
    def of_manifest(cls, doc: dict, where: str) -> RewardSpace:
        """The space recorded in a backbones manifest or bundle document (``reward_space`` key)."""
        if "reward_space" not in doc:
            raise ConfigError(
                where,
                "records no reward space (written before one reward space per run existed): retrain with "
                "this version, or evaluate only sources that share a recorded space",
            )
        return cls.from_dict(doc["reward_space"], f"{where} reward_space")

    def normalize(self, raw) -> np.ndarray:
        """z = (r − m) / s for a [..., n] array of raw rewards."""
        return (np.asarray(raw, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.std)

    def raw(self, z) -> np.ndarray:
        """The inverse of :meth:`normalize`."""
        return np.asarray(z, dtype=np.float64) * np.asarray(self.std) + np.asarray(self.mean)

    def spread(self, w) -> float:
        """Standard deviation of h = wᵀz under the calibration rollouts: sqrt(wᵀ cov w)."""
        w = np.asarray(w, dtype=np.float64)
        return float(math.sqrt(max(float(w @ np.asarray(self.cov) @ w), 0.0)))

    def training_configs(self) -> list[NormalizationConfig]:
        """What a policy normalises with: the frozen (m, s) everywhere except ``running`` objectives."""
        return [
            NormalizationConfig(kind="running")
            if k == "running"
            else NormalizationConfig(kind="fixed", mean=m, std=s)
            for k, m, s in zip(self.kinds, self.mean, self.std, strict=True)
        ]

    def apply(self, recipe: Recipe) -> Recipe:
        """A copy of ``recipe`` whose rewards normalise with :meth:`training_configs` (what policies run)."""
        tree = to_dict(recipe)
        for entry, cfg in zip(tree["rewards"], self.training_configs(), strict=True):
            entry["normalization"] = to_dict(cfg)
        return from_dict(Recipe, tree)

    def reward_scale(self, recipe: Recipe, w) -> float:
        """The factor on h = wᵀz during PPO: 1 / sqrt(wᵀ cov w) under ``ppo.scale_rewards: unit_spread``."""
        spread = self.spread(w)
        return 1.0 / spread if recipe.ppo.scale_rewards == "unit_spread" and spread > 1e-6 else 1.0

    def normalizer(self) -> RewardNormalizer:
        return RewardNormalizer(self.training_configs(), self.objectives)

    def normalization(self) -> dict[str, dict[str, float]]:
        """``{objective: {mean, std}}``, the bundle's ``normalization`` entry."""
        return {
            o: {"mean": m, "std": s} for o, m, s in zip(self.objectives, self.mean, self.std, strict=True)
        }

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, doc: dict, where: str = "reward_space") -> RewardSpace:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ConfigError(where, f"is not a {FORMAT} document; re-run the job that wrote it")
        fields = {k: doc[k] for k in ("objectives", "kinds", "mean", "std", "cov", "count", "source")}
        space = cls(**fields)
        if not (len(space.kinds) == len(space.mean) == len(space.std) == space.n):
            raise ConfigError(where, "objectives, kinds, mean and std must have one entry per objective")
        if np.asarray(space.cov).shape != (space.n, space.n):
            raise ConfigError(f"{where}.cov", f"must be {space.n}×{space.n}")
        if not all(math.isfinite(s) and s > 0 for s in space.std):
            raise ConfigError(f"{where}.std", f"must be finite and > 0, got {space.std}")
        return space

    def same_as(self, other: RewardSpace, rtol: float = 1e-6) -> bool:
        return (
            self.objectives == other.objectives
            and np.allclose(self.mean, other.mean, rtol=rtol, atol=1e-9)
            and np.allclose(self.std, other.std, rtol=rtol, atol=1e-9)
        )

    def describe(self) -> str:
        cells = ", ".join(
            f"{o} = (r − {m:.4g}) / {s:.4g}"
            for o, m, s in zip(self.objectives, self.mean, self.std, strict=True)
        )
        return f"reward space: {cells} [{self.source}]"


def from_stats(recipe: Recipe, raw: np.ndarray, source: str) -> RewardSpace:
    """The space of ``recipe`` from calibration rewards ``raw`` [N, n] (checks that each objective varies)."""
    raw = np.asarray(raw, dtype=np.float64)
    mean, std = raw.mean(0), raw.std(0)
    means, stds = [], []
    for j, r in enumerate(recipe.rewards):
        c = r.normalization
        if c.kind in ("calibrated", "running"):
            if not std[j] > 1e-9 * max(1.0, abs(mean[j])):
                raise ConfigError(
                    f"rewards.{j}.normalization.kind",
                    f"objective {r.name!r} does not vary under SFT ({len(raw)} calibration rollouts all "
                    f"score {mean[j]:.6g}), so it cannot be standardised: use kind 'fixed' with a mean and "
                    "std, or 'none'",
                )
            means.append(float(mean[j]))
            stds.append(float(std[j]))
        elif c.kind == "fixed":
            means.append(float(c.mean))
            stds.append(float(c.std))
        else:
            means.append(0.0)
            stds.append(1.0)
    z = (raw - np.asarray(means)) / np.asarray(stds)
    cov = np.atleast_2d(np.cov(z.T, bias=True)) if len(z) > 1 else np.eye(len(means))
    return RewardSpace(
        objectives=recipe.objectives,
        kinds=[r.normalization.kind for r in recipe.rewards],
        mean=means,
        std=stds,
        cov=cov.tolist(),
        count=len(raw),
        source=source,
    )


def calibration_prompts(recipe: Recipe) -> list:
    """A seeded sample of ``reward_space.num_prompts`` training prompt records, each repeated per sample."""

    records = load_prompt_records(recipe.data, "train")
    k = min(recipe.reward_space.num_prompts, len(records))
    picked = random.Random(recipe.reward_space.seed).sample(records, k)
    return [r for r in picked for _ in range(recipe.reward_space.samples_per_prompt)]


def calibrate(recipe: Recipe, model, tokenizer, rewards, device: str = "cpu") -> RewardSpace:
    """Roll out ``model`` (W0: the SFT policy every backbone starts from) on the calibration prompts with the
    recipe's sampling settings, score raw rewards, and freeze the space. Deterministic for a fixed seed."""
    import torch


    records = calibration_prompts(recipe)
    raw, bs = [], recipe.eval.batch_size
    fmt = lambda p: format_prompt(tokenizer, p, recipe.model.use_chat_template)  # noqa: E731
    cpu_rng = torch.get_rng_state()
    torch.manual_seed(recipe.reward_space.seed)
    try:
        with torch.no_grad():
            for i in range(0, len(records), bs):
                chunk = records[i : i + bs]
                g = generate_batch(
                    model,
                    tokenizer,
                    [r.prompt for r in chunk],
                    recipe.generation,
                    format_prompt=fmt,
                    max_prompt_tokens=recipe.model.max_prompt_tokens,
                    device=device,
                    do_sample=True,
                )
                raw.append(rewards.score([r.context for r in chunk], g.texts))
    finally:
        torch.set_rng_state(cpu_rng)
    rs = recipe.reward_space
    source = (
        f"SFT rollouts: {rs.num_prompts} train prompts × {rs.samples_per_prompt} samples, "
        f"T={recipe.generation.temperature}, seed {rs.seed}"
    )
    return from_stats(recipe, np.concatenate(raw), source)


def calibrate_recipe(recipe: Recipe, device: str | None = None) -> RewardSpace:
    """:func:`calibrate` with W0 and the rewards loaded from the recipe (a launcher's calibration step)."""

    device = device or resolve_device(recipe.device)
    model, tokenizer = load_base_model(recipe.model, device=device)
    return calibrate(recipe, model, tokenizer, build_rewards(recipe.rewards, device=device), device)


def load_or_calibrate(recipe: Recipe, path: str | os.PathLike, calibrator=calibrate_recipe) -> RewardSpace:
    """The run's space from ``path`` (a resumed run keeps its space), else calibrated and written there."""
    path = Path(path)
    if path.is_file():
        space = RewardSpace.from_dict(json.loads(path.read_text()), str(path))
        if space.objectives != recipe.objectives or space.kinds != [
            r.normalization.kind for r in recipe.rewards
        ]:
            raise ConfigError(
                "--run-name",
                f"{path} was calibrated for objectives {space.objectives} with kinds {space.kinds}; this "
                "recipe differs: pick another --run-name",
            )
        return space
    space = calibrator(recipe)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(space.to_dict(), indent=1))
    os.replace(tmp, path)
    return space


def check_shared_space(recipe: Recipe, weights: list[list[float]]) -> None:
    """Refuse ``running`` normalisation when any policy mixes objectives: each policy's running statistics
    would give its w another meaning (module docstring). A one-hot w (Rewarded Soups) is unaffected."""
    mixed = any(sum(1 for x in w if abs(x) > 1e-12) > 1 for w in weights)
    for j, r in enumerate(recipe.rewards):
        if mixed and r.normalization.kind == "running":
            raise ConfigError(
                f"rewards.{j}.normalization.kind",
                "'running' statistics differ between the policies of a soup, so a backbone weight w would "
                "mean something else in each policy: use 'calibrated' (frozen from SFT rollouts before "
                "training) or 'fixed'",
            )


def effective_weights(space: RewardSpace, weights, normalizer_states: list[dict]) -> np.ndarray:
    """w̃_i ∝ w_i ⊙ s / s_i: the weights backbone i really put on the shared z, given the (mean, std) its
    own normaliser used (``normalizer_states[i]``, a ``RewardNormalizer.state_dict``); rows sum to 1.
    Equal to w under a shared frozen space; the diagnostic of the Bone Soup matrix actually trained."""
    out = []
    for w, state in zip(weights, normalizer_states, strict=True):
        _, s_i = RewardNormalizer.from_state_dict(state).center_scale()
        wt = np.asarray(w, dtype=np.float64) * np.asarray(space.std) / s_i
        out.append(wt / wt.sum() if abs(wt.sum()) > 1e-12 else wt)
    return np.asarray(out)
