"""Vector-reward PPO trainer: rollout → score objectives → per-objective GAE → scalarise → clipped PPO.

TRL removed its PPOTrainer (1.13), so this is the engine. One ``step`` is the classic loop of
Ziegler et al. / TRL ≤ 0.11 (the seeds' implementation) with the reward kept as a vector end to end:

1. sample responses from π (W0 + LoRA) for the step's prompts;
2. score every objective → R_raw [B, K]; normalise into the run's reward space → R [B, K];
3. log π, log π_ref (adapter off) and V^k on the sampled tokens; KL_t = log π − log π_ref;
4. r^k_t = −η KL_t + 1[t=T] R^k / s (s = ``reward_scale``⁻¹: the SFT spread of wᵀR, so the KL penalty
   weighs alike for every w); GAE per objective → Â^k, returns^k;
5. ω = scalariser(R) [B, K]; Â = Σ_k ω_k Â^k, whitened (linear ω with Σω = 1 makes this the GAE of the
   scalarised reward h = ωᵀR under the scalarised critic ωᵀV);
6. ``ppo_epochs`` passes over shuffled minibatches: clipped policy loss + vf_coef · clipped value loss,
   stopped early once the mean approx-KL of the old and new policy exceeds 1.5 ``target_kl`` (TRL's
   ``early_stopping``; off when None);
7. adaptive KL update with the batch's mean summed KL.

Dropout is switched off in the whole model (TRL's ``disable_dropout_in_model``): rollout log-probs are
taken in eval mode and updates in train mode, and with LoRA dropout > 0 the first ratio would not be 1.

The optimiser is pluggable (``TorchOptimizer`` or a DeepSpeed engine) and collectives go through ``comm``,
so the same loop runs in-process (tests, notebooks) and inside each Ray Train worker.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from trl.trainer.utils import disable_dropout_in_model

from soupkitchen.checkpoint import flatten_optimizer_state, unflatten_optimizer_state
from soupkitchen.config import GenerationConfig, PPOConfig
from soupkitchen.generation import generate_batch
from soupkitchen.ppo import core
from soupkitchen.ppo.comm import LocalComm
from soupkitchen.ppo.kl import make_kl_controller
from soupkitchen.ppo.objectives import LinearObjective
from soupkitchen.ppo.policy import PolicyWithValue


@dataclass
class Rollout:
    """One batch of sampled responses and everything PPO needs about them (local rows only)."""

    input_ids: torch.Tensor  # [B, P + T] prompt (left-padded) + response
    attention_mask: torch.Tensor  # [B, P + T]
    response_mask: torch.Tensor  # [B, T] 1 up to and including the first EOS
    prompt_len: int
    texts: list[str]
    has_eos: torch.Tensor  # [B] bool
    raw_rewards: np.ndarray | None = None  # [B, K]
    rewards: torch.Tensor | None = None  # [B, K] normalised (+ missing-EOS penalty)
    weights: torch.Tensor | None = None  # [B, K] scalarisation ω
    logprobs: torch.Tensor | None = None  # [B, T]
    ref_logprobs: torch.Tensor | None = None  # [B, T]
    values: torch.Tensor | None = None  # [B, T, K]
    advantages: torch.Tensor | None = None  # [B, T] scalarised, whitened ([B, T, K] for MOC: the objective's)
    returns: torch.Tensor | None = None  # [B, T, K]
    extras: dict = field(default_factory=dict)  # per-row tensors of the policy objective (MOC: R̄ − p, ...)


def reward_window(history: list[dict[str, float]], where: str, k: int = 4) -> dict[str, float]:
    """Mean of each ``reward*`` statistic over the first or last ``k`` steps (single steps are noisy)."""
    rows = history[:k] if where == "start" else history[-k:]
    keys = [key for key in (rows[0] if rows else {}) if key.startswith("reward")]
    return {f"{where}/{key}": float(np.mean([r[key] for r in rows])) for key in keys}


class TorchOptimizer:
    """AdamW with gradient clipping on the trainable parameters (LoRA + value heads)."""

    def __init__(self, model: torch.nn.Module, lr: float, max_grad_norm: float):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self.max_grad_norm = max_grad_norm

    def step(self, loss: torch.Tensor) -> float:
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def gathered_parameters(self):
        return contextlib.nullcontext()

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON meta) for a safetensors checkpoint."""
        return flatten_optimizer_state(self.optimizer.state_dict())

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.optimizer.load_state_dict(unflatten_optimizer_state(tensors, meta))


class DeepSpeedOptimizer:
    """A DeepSpeed engine: it reduces gradients across workers (ZeRO), clips and steps.

    Its checkpoint state is this rank's Adam moments for each ZeRO fp32 partition, keyed by group index; the
    partitions themselves are rebuilt from the model weights, which are restored before ``initialize``.
    """

    def __init__(self, engine):
        self.engine = engine
        self.zero_stage = engine.zero_optimization_stage()

    def step(self, loss: torch.Tensor) -> float:
        self.engine.backward(loss)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def gathered_parameters(self):
        """Full (un-partitioned) trainable weights inside the context under ZeRO-3; a no-op below."""
        import deepspeed

        params = [p for p in self.engine.module.parameters() if p.requires_grad]
        return deepspeed.zero.GatheredParameters(params) if self.zero_stage == 3 else contextlib.nullcontext()

    def _partitions(self) -> list[torch.Tensor]:
        zero = self.engine.optimizer
        flats = getattr(zero, "fp32_partitioned_groups_flat", None)  # stage 3
        return list(flats if flats is not None else zero.single_partition_of_fp32_groups)  # stages 1-2

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        inner = self.engine.optimizer.optimizer
        tensors, scalars = {}, {}
        for g, flat in enumerate(self._partitions()):
            for name, value in inner.state.get(flat, {}).items():
                if torch.is_tensor(value):
                    tensors[f"state.{g}.{name}"] = value.detach().cpu().clone()
                else:
                    scalars[f"state.{g}.{name}"] = value
        return tensors, {"zero_partitions": True, "scalars": scalars}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        inner = self.engine.optimizer.optimizer
        flats = self._partitions()
        for key, value in list(tensors.items()) + list(meta["scalars"].items()):
            _, g, name = key.split(".", 2)
            flat = flats[int(g)]
            inner.state[flat][name] = value.to(flat.device) if torch.is_tensor(value) else value


class MOPPOTrainer:
    """Multi-objective PPO on one policy. ``step(prompts, contexts)`` runs one PPO iteration."""

    def __init__(
        self,
        model: PolicyWithValue,
        tokenizer,
        rewards,
        scalarizer,
        ppo: PPOConfig,
        generation: GenerationConfig,
        *,
        format_prompt=None,
        max_prompt_tokens: int = 256,
        optimizer=None,
        comm=None,
        device: str | torch.device = "cpu",
        reward_scale: float = 1.0,
        objective=None,
    ):
        disable_dropout_in_model(model)
        self.model = model
        self.reward_scale = float(reward_scale)
        self.tokenizer = tokenizer
        self.rewards = rewards
        self.normalizer = rewards.normalizer
        self.scalarizer = scalarizer
        self.objective = objective or LinearObjective(ppo.whiten_advantages)  # ``ppo.objectives``
        self.cfg = ppo
        self.gen = generation
        self.format_prompt = format_prompt or (lambda p: p)
        self.max_prompt_tokens = max_prompt_tokens
        self.optimizer = optimizer or TorchOptimizer(model, ppo.learning_rate, ppo.max_grad_norm)
        self.comm = comm or LocalComm()
        self.device = torch.device(device)
        self.kl = make_kl_controller(ppo.kl_coef, ppo.adaptive_kl, ppo.kl_target, ppo.kl_horizon)
        self.global_step = 0
        self.reward_history: list[dict[str, float]] = []  # per-step mean rewards (kept in checkpoints)
        self.generator = torch.Generator(device="cpu").manual_seed(ppo.seed + 1000 * self.comm.rank)

    # ------------------------------------------------------------------------------------------ rollout

    @torch.no_grad()
    def generate(self, prompts: list[str]) -> Rollout:
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator)))
        self.model.eval()
        g = generate_batch(
            self.model.policy,
            self.tokenizer,
            prompts,
            self.gen,
            format_prompt=self.format_prompt,
            max_prompt_tokens=self.max_prompt_tokens,
            device=self.device,
            # ZeRO-3 gathers weights in every forward: all ranks keep stepping until the last one is done.
            synced_gpus=getattr(self.optimizer, "zero_stage", 0) == 3 and self.comm.world_size > 1,
        )
        return Rollout(g.sequences, g.attention_mask, g.response_mask, g.prompt_len, g.texts, g.has_eos)

    def score(self, rollout: Rollout, contexts: list[str], preferences=None) -> Rollout:
        """R_raw from every objective; the normaliser sees all workers' rows so all normalise alike."""
        raw = np.asarray(self.rewards.score(contexts, rollout.texts), dtype=np.float64)
        self.normalizer.update(self.comm.gather_rows(raw))
        rewards = torch.as_tensor(self.normalizer.normalize(raw), dtype=torch.float32, device=self.device)
        if self.cfg.missing_eos == "penalize":
            rewards[~rollout.has_eos] = self.cfg.missing_eos_penalty
        rollout.raw_rewards = raw
        rollout.rewards = rewards
        prefs = None if preferences is None else torch.as_tensor(np.asarray(preferences), dtype=torch.float32)
        rollout.weights = self.scalarizer.weights(rewards, prefs).to(self.device)
        return rollout

    def _forward(self, ids, attn, P, T, with_values=True):
        logits, values = self.model(ids, attn, with_values=with_values)
        logits = logits[:, P - 1 : P + T - 1]
        logp = core.logprobs_of(logits, ids[:, P : P + T], self.gen.temperature)
        values = values[:, P - 1 : P + T - 1].float() if with_values else None
        return logits, logp, values

    @torch.no_grad()
    def evaluate_rollout(self, rollout: Rollout) -> Rollout:
        """log π, log π_ref, V on the sampled tokens; token rewards; per-objective GAE; scalarised Â."""
        P, T = rollout.prompt_len, rollout.response_mask.shape[1]
        mb = max(1, self.cfg.mini_batch_size // self.comm.world_size)
        logps, refs, vals = [], [], []
        self.model.eval()
        for i in range(0, rollout.input_ids.shape[0], mb):
            ids, attn = rollout.input_ids[i : i + mb], rollout.attention_mask[i : i + mb]
            _, logp, v = self._forward(ids, attn, P, T)
            with self.model.reference():
                _, ref, _ = self._forward(ids, attn, P, T, with_values=False)
            logps.append(logp)
            refs.append(ref)
            vals.append(v)
        mask = rollout.response_mask.float()
        rollout.logprobs, rollout.ref_logprobs = torch.cat(logps) * mask, torch.cat(refs) * mask
        rollout.values = torch.cat(vals) * mask.unsqueeze(-1)
        kl = rollout.logprobs - rollout.ref_logprobs
        token_r = core.token_rewards(rollout.rewards * self.reward_scale, kl, mask, self.kl.value)
        adv_k, rollout.returns = core.gae(token_r, rollout.values, mask, self.cfg.gamma, self.cfg.lam)
        rollout.advantages = self.objective.advantages(rollout, adv_k, mask, self.comm)
        return rollout

    # ------------------------------------------------------------------------------------------ update

    def optimize(self, rollout: Rollout) -> dict[str, float]:
        P, T = rollout.prompt_len, rollout.response_mask.shape[1]
        B = rollout.input_ids.shape[0]
        n_mb = max(1, self.cfg.batch_size // self.cfg.mini_batch_size)
        mb = max(1, B // n_mb)
        sums = {
            "policy_loss": 0.0,
            "value_loss": 0.0,
            "clipfrac": 0.0,
            "entropy": 0.0,
            "approx_kl": 0.0,
            "grad_norm": 0.0,
        }
        n, stopped = 0, False
        self.model.train()
        for _ in range(self.cfg.ppo_epochs):
            if stopped:
                break
            order = torch.randperm(B, generator=self.generator)
            for start in range(0, n_mb * mb, mb):
                idx = order[start : start + mb].to(self.device)
                mask = rollout.response_mask[idx].float()
                logits, logp, values = self._forward(
                    rollout.input_ids[idx], rollout.attention_mask[idx], P, T
                )
                pg, clipfrac, extra = self.objective.loss(logp, rollout, idx, mask, self.cfg.cliprange)
                vf = core.value_loss(
                    values, rollout.values[idx], rollout.returns[idx], mask, self.cfg.cliprange_value
                )
                grad_norm = self.optimizer.step(pg + self.cfg.vf_coef * vf)
                with torch.no_grad():
                    approx_kl = float(core.masked_mean(0.5 * (logp - rollout.logprobs[idx]) ** 2, mask))
                    sums["policy_loss"] += float(pg)
                    sums["value_loss"] += float(vf)
                    sums["clipfrac"] += float(clipfrac)
                    sums["entropy"] += float(core.masked_mean(core.entropy_of(logits), mask))
                    sums["approx_kl"] += approx_kl
                    sums["grad_norm"] += grad_norm
                    for k, v in extra.items():
                        sums[k] = sums.get(k, 0.0) + v
                n += 1
                if self.cfg.target_kl is not None:
                    # Every rank decides on the same mean, so all leave the loop together (collectives).
                    mean_kl = float(self.comm.mean(torch.tensor(approx_kl)))
                    if mean_kl > 1.5 * self.cfg.target_kl:
                        stopped = True
                        break
        out = {k: v / max(n, 1) for k, v in sums.items()}
        out["ppo_minibatches"] = float(n)
        return out

    def step(
        self, prompts: list[str], contexts: list[str] | None = None, preferences=None
    ) -> dict[str, float]:
        """One PPO iteration on this worker's prompts (``preferences`` [B, K]: each row's p, for a per-sample
        scalariser); returns metrics averaged over all workers."""
        t0 = time.perf_counter()
        rollout = self.generate(prompts)
        rollout = self.score(rollout, contexts if contexts is not None else prompts, preferences)
        rollout = self.evaluate_rollout(rollout)
        stats = self.optimize(rollout)
        mask = rollout.response_mask.float()
        kl_per_seq = ((rollout.logprobs - rollout.ref_logprobs) * mask).sum(-1)
        mean_kl = float(self.comm.mean(kl_per_seq.mean()))
        stats.update(self._reward_stats(rollout))
        stats.update(getattr(self.scalarizer, "stats", dict)())  # e.g. OMD-STCH's current w
        stats.update(
            kl=mean_kl,
            kl_coef=self.kl.value,
            response_length=float(self.comm.mean(mask.sum(-1).mean())),
            eos_fraction=float(self.comm.mean(rollout.has_eos.float().mean())),
        )
        tokens = float(self.comm.sum(mask.sum()))
        stats = {
            k: (float(self.comm.mean(torch.tensor(v))) if k in _LOCAL_STATS or k.startswith("moc/") else v)
            for k, v in stats.items()
        }
        self.kl.update(mean_kl, self.cfg.batch_size)
        self.global_step += 1
        elapsed = time.perf_counter() - t0
        stats.update(tokens_per_s=tokens / elapsed, step_time_s=elapsed, step=self.global_step)
        self.reward_history.append({k: v for k, v in stats.items() if k.startswith("reward")})
        return stats

    def reward_window(self, where: str, k: int = 4) -> dict[str, float]:
        return reward_window(self.reward_history, where, k)

    def _reward_stats(self, rollout: Rollout) -> dict[str, float]:
        names = getattr(self.rewards, "names", [f"obj{k}" for k in range(rollout.rewards.shape[1])])
        raw = torch.as_tensor(rollout.raw_rewards, dtype=torch.float32).mean(0)
        norm = rollout.rewards.mean(0).cpu()
        out = {}
        for k, name in enumerate(names):
            out[f"reward/{name}"] = float(self.comm.mean(raw[k]))
            out[f"reward_norm/{name}"] = float(self.comm.mean(norm[k]))
        scalar = (rollout.weights * rollout.rewards).sum(-1).mean()
        out["reward/scalarized"] = float(self.comm.mean(scalar))
        return out

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Scalars only (JSON): KL controller, step, normaliser; tensors are saved by ``checkpoint``."""
        return {
            "global_step": self.global_step,
            "kl": self.kl.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "generator": self.generator.get_state().tolist(),
            "reward_history": self.reward_history,
            "objective": self.objective.state_dict(),
            "scalarizer": getattr(self.scalarizer, "state_dict", dict)(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state["global_step"])
        self.kl.load_state_dict(state["kl"])
        self.normalizer.load_state_dict(state["normalizer"])
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
        self.reward_history = list(state.get("reward_history", []))
        self.objective.load_state_dict(state.get("objective", {}))
        if hasattr(self.scalarizer, "load_state_dict"):
            self.scalarizer.load_state_dict(state.get("scalarizer", {}))


_LOCAL_STATS = {"policy_loss", "value_loss", "clipfrac", "entropy", "approx_kl"}
