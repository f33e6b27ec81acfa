"""GRPO backbones: ``ppo.algorithm: grpo`` trains one backbone with TRL's ``GRPOTrainer``.

The backbone's scalarised reward h = wᵀr̃ is TRL's weighted sum: one reward function per objective
(``reward_funcs``, each wrapping our :class:`~soupkitchen.rewards.Reward` and its normaliser) and
``reward_weights`` = the backbone's w. TRL then normalises h within each group of ``num_generations``
completions of one prompt (no critic).

Recipe → GRPOConfig (one recipe *step* = one rollout of ``ppo.batch_size`` completions, as in PPO):

    ppo.batch_size          generation_batch_size (= prompts_per_step × num_generations completions)
    ppo.mini_batch_size     per_device_train_batch_size (gradient_accumulation_steps 1)
    ppo.ppo_epochs          num_iterations (passes over each rollout)
    ppo.steps               max_steps = steps × ppo_epochs × batch_size / mini_batch_size optimizer steps
    ppo.learning_rate       learning_rate, constant schedule, AdamW without weight decay (as our engine)
    ppo.kl_coef             beta: fixed k3 KL term in the loss (PPO: adaptive KL penalty in the reward)
    ppo.cliprange           epsilon;  ppo.max_grad_norm → max_grad_norm;  ppo.seed → seed
    generation.*            max_completion_length, temperature, top_p, top_k (+ min_new_tokens 1, as ours)
    lora.*                  peft_config (the exact config ``attach_lora`` builds; reference = adapter off)

Prompts are passed conversational (TRL applies the chat template) when ``model.use_chat_template`` and the
tokenizer has a template, else as plain text; either way the reward functions receive the raw prompt's
reward ``context`` column, and completions are cleaned like the PPO engine (``generation.stop``, strip).
The result is saved like a PPO checkpoint (``trainable.safetensors`` with ``adapter.*`` keys + ``state.json``,
via :func:`soupkitchen.checkpoint.save_training_checkpoint`), without value heads or optimiser state.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from soupkitchen.checkpoint import save_training_checkpoint
from soupkitchen.config import ConfigError, NormalizationConfig, Recipe, to_dict
from soupkitchen.data import PromptRecord, load_prompt_records
from soupkitchen.models import attach_lora, load_base_model, resolve_device
from soupkitchen.ppo.policy import adapter_state_dict as peft_adapter_state_dict
from soupkitchen.rewards import build_rewards
from soupkitchen.rewards.normalization import RewardNormalizer
from soupkitchen.training.specs import BackboneSpec

StepCallback = Callable[[dict[str, float]], None]
OUTPUT_LAYER_NAMES = ("lm_head", "embed_out")  # checked by name up front, and on the built model
_OUTPUT_LAYER_ERROR = (
    "{targets} puts LoRA on the output layer, which TRL's GRPOTrainer never trains (it computes log-probs "
    "from lm_head.weight directly); drop it for ppo.algorithm 'grpo', e.g. --lora.target_modules "
    "'[c_attn, c_fc]' for the tiny recipe"
)


# --------------------------------------------------------------------------------------------- plan


def default_num_generations(batch_size: int) -> int:
    """Completions per prompt: the largest of 4, 3, 2 that divides ``batch_size``, else ``batch_size``."""
    if batch_size < 2:
        raise ConfigError("ppo.batch_size", f"GRPO needs at least 2 completions per step, got {batch_size}")
    return next((g for g in (4, 3, 2) if batch_size % g == 0), batch_size)


@dataclass(frozen=True)
class GRPOPlan:
    """How one recipe maps onto TRL's batching: ``steps`` rollouts of ``batch_size`` completions."""

    steps: int
    batch_size: int
    mini_batch_size: int
    num_generations: int
    num_iterations: int

    @property
    def prompts_per_step(self) -> int:
        return self.batch_size // self.num_generations

    @property
    def optimizer_steps_per_rollout(self) -> int:
        return self.num_iterations * (self.batch_size // self.mini_batch_size)

    @property
    def max_steps(self) -> int:
        return self.steps * self.optimizer_steps_per_rollout


def grpo_plan(recipe: Recipe, num_generations: int | None = None) -> GRPOPlan:
    """The batching plan for ``recipe``, checking what GRPO cannot do without loading anything (usable in a
    job's preflight): ConfigError for a group size that does not divide the batch, several workers per
    backbone, or LoRA on the output layer."""
    ppo = recipe.ppo
    g = num_generations or default_num_generations(ppo.batch_size)
    if g < 2 or ppo.batch_size % g:
        raise ConfigError(
            "ppo.batch_size",
            f"must be a multiple of num_generations ({g} ≥ 2) for GRPO, got {ppo.batch_size}",
        )
    if recipe.distributed.num_workers != 1:
        raise ConfigError(
            "distributed.num_workers", "ppo.algorithm 'grpo' trains each backbone in one worker; set it to 1"
        )
    heads = [t for t in recipe.lora.target_modules if t.rsplit(".", 1)[-1] in OUTPUT_LAYER_NAMES]
    if heads:
        raise ConfigError(
            "lora.target_modules", _OUTPUT_LAYER_ERROR.format(targets=recipe.lora.target_modules)
        )
    return GRPOPlan(ppo.steps, ppo.batch_size, ppo.mini_batch_size, g, ppo.ppo_epochs)


# --------------------------------------------------------------------------------------------- rewards


def _text(item: Any) -> str:
    """A plain string, or the content of the last message of a conversation (TRL's conversational format)."""
    if isinstance(item, str):
        return item
    if isinstance(item, list) and item and isinstance(item[-1], dict):
        content = item[-1].get("content", "")
        if isinstance(content, list):  # typed content blocks
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content)
    raise TypeError(f"expected a string or a list of chat messages, got {type(item).__name__}")


class ObjectiveReward:
    """One objective as a TRL reward function, normalised like the PPO engine normalises it.

    TRL calls ``f(prompts=..., completions=..., completion_ids=..., **dataset_columns, trainer_state=...,
    log_extra=..., log_metric=...)`` with one row per completion (prompts repeated ``num_generations`` times);
    prompts and completions are strings, or lists of ``{"role", "content"}`` messages for conversational data.
    The reward scores (``context`` column or prompt text, cleaned completion text), folds the raw scores into
    its running statistics, returns the normalised scores, and logs the raw mean as ``reward_raw/<name>``.
    """

    def __init__(
        self,
        reward: Any,
        normalization: NormalizationConfig,
        *,
        stop: Sequence[str] = (),
        eos_token_ids: Sequence[int] = (),
        missing_eos_penalty: float | None = None,
    ):
        self.reward = reward
        self.__name__ = reward.name  # TRL names the reward function (and its metrics) by __name__
        self.normalizer = RewardNormalizer([normalization], [reward.name])
        self.stop = list(stop)
        self.eos_token_ids = set(eos_token_ids)
        self.missing_eos_penalty = missing_eos_penalty
        self.completion_tokens: list[int] = []  # per call: generated tokens of the batch (EOS included)
        self.raw_means: list[float] = []

    def clean(self, text: str) -> str:
        for s in self.stop:
            text = text.split(s, 1)[0]
        return text.strip()

    def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]] | None = None,
        context: list[str] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **_: Any,
    ) -> list[float]:
        contexts = list(context) if context is not None else [_text(p) for p in prompts]
        responses = [self.clean(_text(c)) for c in completions]
        raw = np.asarray(self.reward.score(contexts, responses), dtype=np.float64).reshape(-1, 1)
        self.normalizer.update(raw)
        out = self.normalizer.normalize(raw)[:, 0]
        if completion_ids is not None:
            self.completion_tokens.append(sum(len(ids) for ids in completion_ids))
            if self.missing_eos_penalty is not None:
                ended = np.array([bool(ids) and ids[-1] in self.eos_token_ids for ids in completion_ids])
                out = np.where(ended, out, self.missing_eos_penalty)
        self.raw_means.append(float(raw.mean()))
        if log_metric is not None:
            log_metric(f"reward_raw/{self.__name__}", self.raw_means[-1])
        return [float(x) for x in out]


def objective_rewards(recipe: Recipe, rewards: Any, tokenizer: Any, eos_token_ids: Sequence[int] = ()):
    """One :class:`ObjectiveReward` per objective of ``rewards`` (a RewardSet), in objective order."""
    penalize = recipe.ppo.missing_eos == "penalize"
    eos = list(eos_token_ids) or [tokenizer.eos_token_id]
    return [
        ObjectiveReward(
            r,
            cfg.normalization,
            stop=recipe.generation.stop,
            eos_token_ids=eos,
            missing_eos_penalty=recipe.ppo.missing_eos_penalty if penalize else None,
        )
        for r, cfg in zip(rewards.rewards, recipe.rewards, strict=True)
    ]


def combined_normalizer(recipe: Recipe, funcs: Sequence[ObjectiveReward]) -> RewardNormalizer:
    """The per-objective statistics as one RewardNormalizer (the same state the PPO engine saves)."""
    out = RewardNormalizer([r.normalization for r in recipe.rewards], recipe.objectives)
    out.count = max(f.normalizer.count for f in funcs)
    out.mean = np.array([f.normalizer.mean[0] for f in funcs])
    out.m2 = np.array([f.normalizer.m2[0] for f in funcs])
    return out


# --------------------------------------------------------------------------------------------- data


def grpo_prompt(tokenizer: Any, prompt: str, use_chat_template: bool, max_tokens: int) -> str | list[dict]:
    """What TRL gets as ``prompt``: one user turn (conversational) or plain text, at most ``max_tokens``.

    Too-long prompts lose tokens from the left of the user text (the chat template itself is kept).
    """
    chat = use_chat_template and bool(getattr(tokenizer, "chat_template", None))

    def length(text: str) -> int:
        if not chat:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])
        msgs = [{"role": "user", "content": text}]
        return len(
            tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=True)[
                "input_ids"
            ]
        )

    total = length(prompt)
    if total > max_tokens:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        keep = max(1, len(ids) - (total - max_tokens))
        prompt = tokenizer.decode(ids[-keep:], skip_special_tokens=False)
    return [{"role": "user", "content": prompt}] if chat else prompt


def prompt_dataset(recipe: Recipe, tokenizer: Any, records: Sequence[PromptRecord]):
    """A ``datasets.Dataset``: ``prompt`` (TRL input) and ``context`` (what the rewards compare against)."""
    from datasets import Dataset

    m = recipe.model
    return Dataset.from_list(
        [
            {
                "prompt": grpo_prompt(tokenizer, r.prompt, m.use_chat_template, m.max_prompt_tokens),
                "context": r.context,
            }
            for r in records
        ]
    )


# --------------------------------------------------------------------------------------------- model


def base_and_lora_config(recipe: Recipe, device: str):
    """``(W0, tokenizer, peft LoraConfig)``: the config is the one ``attach_lora`` builds (targets checked,
    GPT-2 Conv1D handled), taken from a probe adapter that is then unloaded, so TRL adds the adapter itself
    and computes the reference policy with the adapter disabled (as our engine does)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    model, tokenizer = load_base_model(recipe.model, device=device)
    probe = attach_lora(model, recipe.lora, seed=recipe.seed)
    if isinstance(probe.get_output_embeddings(), BaseTunerLayer):
        raise ConfigError(
            "lora.target_modules", _OUTPUT_LAYER_ERROR.format(targets=recipe.lora.target_modules)
        )
    peft_config = copy.deepcopy(probe.peft_config["default"])
    return probe.unload(), tokenizer, peft_config


# --------------------------------------------------------------------------------------------- trainer


@dataclass
class GRPORun:
    """A built GRPOTrainer and what is needed to read its progress."""

    trainer: Any
    funcs: list[ObjectiveReward]
    plan: GRPOPlan
    meter: RolloutMeter


def grpo_config(
    recipe: Recipe, spec: BackboneSpec, plan: GRPOPlan, output_dir: str, device: str, **overrides
):
    """The ``trl.GRPOConfig`` for one backbone (see the module docstring for the mapping)."""
    from trl import GRPOConfig

    ppo, gen = recipe.ppo, recipe.generation
    bf16 = device.startswith("cuda") and recipe.model.dtype == "bfloat16"
    kwargs = dict(
        output_dir=output_dir,
        learning_rate=ppo.learning_rate,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_steps=plan.max_steps,
        per_device_train_batch_size=plan.mini_batch_size,
        gradient_accumulation_steps=1,
        generation_batch_size=plan.batch_size,
        num_generations=plan.num_generations,
        num_iterations=plan.num_iterations,
        max_completion_length=gen.max_new_tokens,
        temperature=gen.temperature,
        top_p=gen.top_p,
        top_k=gen.top_k,
        generation_kwargs={"min_new_tokens": 1},
        beta=ppo.kl_coef,
        epsilon=ppo.cliprange,
        max_grad_norm=ppo.max_grad_norm,
        reward_weights=[float(w) for w in spec.weights],
        loss_type="dapo",  # token-level mean over the minibatch, as the PPO engine's masked mean
        scale_rewards="group",
        seed=ppo.seed,
        data_seed=recipe.data.seed,
        activation_checkpointing=False,  # TRL defaults to on; our engine does not checkpoint
        use_cpu=not device.startswith("cuda"),
        bf16=bf16,
        fp16=False,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        push_to_hub=False,
        remove_unused_columns=False,
        log_completions=False,
    )
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


def build_grpo_trainer(
    recipe: Recipe,
    spec: BackboneSpec,
    output_dir: str | os.PathLike,
    *,
    device: str | None = None,
    num_generations: int | None = None,
    records: Sequence[PromptRecord] | None = None,
    on_step: StepCallback | None = None,
    **config_overrides: Any,
) -> GRPORun:
    """A ``trl.GRPOTrainer`` for backbone ``spec`` (TRL writes its scratch files under ``output_dir``).

    ``records`` defaults to the recipe's train prompts; ``config_overrides`` go to ``GRPOConfig``
    (e.g. ``shuffle_dataset=False``). ``on_step`` receives each rollout's stats (see :class:`RolloutMeter`).
    """
    from trl import GRPOTrainer

    if len(spec.weights) != len(recipe.objectives):
        raise ValueError(f"backbone {spec.name} has {len(spec.weights)} weights for {recipe.objectives}")
    plan = grpo_plan(recipe, num_generations)
    device = device or resolve_device(recipe.device)
    model, tokenizer, peft_config = base_and_lora_config(recipe, device)
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    funcs = objective_rewards(recipe, build_rewards(recipe.rewards, device=device), tokenizer, eos)
    records = list(records) if records is not None else load_prompt_records(recipe.data, "train")
    args = grpo_config(recipe, spec, plan, str(output_dir), device, **config_overrides)
    meter = RolloutMeter(recipe, plan, funcs, on_step)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=list(funcs),
        args=args,
        train_dataset=prompt_dataset(recipe, tokenizer, records),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[meter.callback()],
    )
    _quiet_progress(trainer)
    return GRPORun(trainer, funcs, plan, meter)


def _quiet_progress(trainer: Any) -> None:
    """Keep TRL's progress bar but stop it printing every step's log dict (stats go to ``on_step``)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            return None

    trainer.pop_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgress())


@dataclass
class RolloutMeter:
    """Turns TRL's per-optimizer-step logs into one stats dict per rollout, keyed like ``MOPPOTrainer.step``.

    Keys: ``reward/<obj>`` (raw mean), ``reward_norm/<obj>``, ``reward/scalarized`` (wᵀr̃), ``kl_per_token``
    (TRL's mean per-token KL, not PPO's per-sequence sum), ``entropy``, ``policy_loss``, ``grad_norm``,
    ``clipfrac``, ``response_length``, ``eos_fraction``, ``tokens_per_s`` (generated tokens / rollout wall
    time), ``step_time_s``, ``step`` (rollouts done).
    """

    recipe: Recipe
    plan: GRPOPlan
    funcs: list[ObjectiveReward]
    on_step: StepCallback | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    rollout_wall: list[float] = field(default_factory=list)  # s per rollout: generation, scoring, updates
    rollout_cpu: list[float] = field(default_factory=list)  # process CPU s per rollout (all threads)
    _start: tuple[float, float] = (0.0, 0.0)
    _logs: list[dict[str, float]] = field(default_factory=list)

    def callback(self):
        from transformers import TrainerCallback

        meter = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if state.global_step % meter.plan.optimizer_steps_per_rollout == 0:
                    meter._start, meter._logs = (time.perf_counter(), time.process_time()), []

            def on_step_end(self, args, state, control, **kw):
                if state.global_step % meter.plan.optimizer_steps_per_rollout == 0:
                    meter.rollout_wall.append(time.perf_counter() - meter._start[0])
                    meter.rollout_cpu.append(time.process_time() - meter._start[1])

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    meter._logs.append(dict(logs))
                    if state.global_step % meter.plan.optimizer_steps_per_rollout == 0:
                        meter._finish()

        return _Callback()

    def _finish(self) -> None:
        first = next((lg for lg in self._logs if "reward" in lg), self._logs[0])
        names = self.recipe.objectives

        def avg(key: str) -> float:
            vals = [float(lg[key]) for lg in self._logs if lg.get(key) is not None]
            return float(np.mean(vals)) if vals else math.nan

        elapsed = self.rollout_wall[-1]
        tokens = self.funcs[0].completion_tokens[-1] if self.funcs[0].completion_tokens else 0
        stats: dict[str, float] = {}
        for name in names:
            stats[f"reward/{name}"] = float(first.get(f"reward_raw/{name}", math.nan))
            stats[f"reward_norm/{name}"] = float(first.get(f"rewards/{name}/mean", math.nan))
        stats["reward/scalarized"] = float(first.get("reward", math.nan))
        stats["kl_per_token"] = avg("kl")
        stats["entropy"] = avg("entropy")
        stats["policy_loss"] = avg("loss")
        stats["grad_norm"] = avg("grad_norm")
        stats["clipfrac"] = avg("clip_ratio/region_mean")
        stats["response_length"] = float(first.get("completions/mean_length", math.nan))
        stats["eos_fraction"] = 1.0 - float(first.get("completions/clipped_ratio", math.nan))
        stats["tokens_per_s"] = tokens / elapsed if elapsed > 0 else math.nan
        stats["step_time_s"] = elapsed
        stats["step"] = len(self.history) + 1
        self.history.append(stats)
        if self.on_step is not None:
            self.on_step(stats)


def adapter_state_dict(trainer: Any) -> dict:
    """The trained LoRA weights as ``adapter.<peft key>`` tensors, keyed like ``PolicyWithValue``'s."""

    return peft_adapter_state_dict(trainer.accelerator.unwrap_model(trainer.model))


def train_grpo_backbone(
    recipe: Recipe,
    spec: BackboneSpec,
    output_dir: str | os.PathLike,
    *,
    device: str | None = None,
    num_generations: int | None = None,
    on_step: StepCallback | None = None,
) -> dict[str, Any]:
    """Train backbone ``spec`` with GRPO for ``ppo.steps`` rollouts; write the checkpoint to ``output_dir``.

    ``output_dir`` gets ``trainable.safetensors`` (``adapter.*`` keys) and ``state.json`` (the format of
    :func:`soupkitchen.checkpoint.save_training_checkpoint`; no value heads, no optimiser state). Returns the
    last rollout's stats (``reward/<obj>`` raw means, ``reward/scalarized`` ...) plus ``history`` (every
    rollout), ``normalizer`` (state dict), ``reward_weights``, ``num_generations``, ``checkpoint_dir``.
    """

    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="grpo-trl-") as scratch:
        run = build_grpo_trainer(
            recipe, spec, scratch, device=device, num_generations=num_generations, on_step=on_step
        )
        run.trainer.train()
        trainable = adapter_state_dict(run.trainer)
        reward_weights = list(run.trainer.args.reward_weights)
    normalizer = combined_normalizer(recipe, run.funcs).state_dict()
    history = run.meter.history
    state = {
        "algorithm": "grpo",
        "backbone": to_dict(spec),
        "objectives": recipe.objectives,
        "data_position": len(history),
        "trainer": {"global_step": len(history), "normalizer": normalizer},
        "grpo": {
            "num_generations": run.plan.num_generations,
            "num_iterations": run.plan.num_iterations,
            "optimizer_steps": run.trainer.state.global_step,
            "reward_weights": reward_weights,
        },
    }
    save_training_checkpoint(output_dir, trainable, None, state)
    final = dict(history[-1]) if history else {}
    final.update(
        history=history,
        normalizer=normalizer,
        reward_weights=reward_weights,
        num_generations=run.plan.num_generations,
        checkpoint_dir=str(output_dir),
    )
    return final
