"""RiC (Rewards-in-Context, Yang et al. ICML 2024; docs/methods/ric.md): one LoRA policy that reads desired
rewards from its prompt, trained by supervised fine-tuning (``jobs/train_ric.py``).

    manifest = train_ric(recipe, "tiny-ric", storage)            # → <storage>/tiny-ric/manifest.json

Offline stage: W0 samples ``ric.samples_per_prompt`` responses y per training prompt x; each is scored by
every objective and put in the run's reward space, z = (r − m) / s (``reward_space``: the space every method
of the run trains in). Each example is

    relabel(x, z) → y        e.g. "<R1> 0.31 <R2> -1.20 x" → y    (``moc.prompt.relabel``, the one formatter)

and a fresh LoRA on W0 (``recipe.lora`` minus the output embedding, ``training.sft``; saved with a zero pair
there) minimises −log π(y | relabel(x, z)) over the tokens of y (TRL SFTTrainer, completion-only loss).

Inference (``conditioning.Conditioning``, kind ``rewards``) asks, for μ ∈ Δ_n, for the desired rewards

    f_i(μ) = high_i                              if μ_i ≥ 1/n
             low_i + n μ_i (high_i − low_i)      otherwise

with [low_i, high_i] the (``ric.low_quantile``, ``ric.high_quantile``) quantiles of the training set's z_i.

Online stage (``ric.online_rounds``): the policy generates at f(μ), μ cycling through a simplex grid; a sample
is kept if some z_i reaches its round's ``online_keep_quantile`` (MORS), labelled with the z it obtained; a
fresh LoRA is trained on the MORS-filtered offline set plus every kept sample.

The adapter is not merged: ``<storage>/<run>-ric-0/checkpoint/trainable.safetensors`` (``adapter.<peft key>``,
the layout of every backbone) is evaluated on top of W0. The manifest holds that one backbone, the
conditioning block and the run's recipe (its LoRA: the zero pairs make the adapter match it);
``dataset.jsonl`` beside it is the final relabeled training set.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from soupkitchen.checkpoint import save_training_checkpoint
from soupkitchen.conditioning import Conditioning
from soupkitchen.config import ConfigError, Recipe, RiCConfig, replace
from soupkitchen.data import PromptRecord, SFTExample, load_prompt_records
from soupkitchen.generation import generate_batch
from soupkitchen.manifests import BackboneEntry, write_manifest
from soupkitchen.methods import Method
from soupkitchen.moc.prompt import relabel
from soupkitchen.models import format_prompt, load_base_model, resolve_device, seeded
from soupkitchen.ppo.policy import adapter_state_dict
from soupkitchen.preferences import preference_grid
from soupkitchen.reward_space import RewardSpace, calibrate, load_or_calibrate
from soupkitchen.rewards import build_rewards
from soupkitchen.tracking import RunLogger
from soupkitchen.training.launcher import run_dir
from soupkitchen.training.sft import train_sft

BACKBONE = f"{Method.RIC}-0"
DATASET = "dataset.jsonl"  # in the run directory: the final relabeled training set


@dataclass
class Sample:
    """One scored response: the training prompt x (not relabeled), its reward context, y and z [n]."""

    record: PromptRecord
    completion: str
    z: np.ndarray


def training_records(recipe: Recipe) -> list[PromptRecord]:
    """The training prompts, or a ``ric.seed``-seeded sample of ``ric.num_prompts`` of them."""
    records = load_prompt_records(recipe.data, "train")
    k = recipe.ric.num_prompts
    return records if k is None or k >= len(records) else random.Random(recipe.ric.seed).sample(records, k)


def relabeled_examples(samples: list[Sample], cfg: RiCConfig) -> list[SFTExample]:
    """relabel(x, z) → y for every sample: the obtained z, written by the shared formatter."""
    return [SFTExample(relabel(s.record.prompt, s.z, cfg.prompt), s.completion) for s in samples]


def conditioning_of(samples: list[Sample], cfg: RiCConfig) -> Conditioning:
    """[low, high]: the configured quantiles of the samples' z per objective, rounded as prompts print."""
    z = np.stack([s.z for s in samples])
    lo, hi = (
        np.quantile(z, q, axis=0).round(cfg.prompt.decimals) for q in (cfg.low_quantile, cfg.high_quantile)
    )
    return Conditioning(kind="rewards", prompt=cfg.prompt, low=lo.tolist(), high=hi.tolist())


def mors(samples: list[Sample], q: float) -> list[Sample]:
    """Multi-objective rejection sampling: keep a sample if z_i ≥ the q-quantile of z_i for some i."""
    if not samples:
        return []
    thresholds = np.quantile(np.stack([s.z for s in samples]), q, axis=0)
    return [s for s in samples if np.any(s.z >= thresholds)]


def rollouts(
    model, tokenizer, records, shown, recipe: Recipe, space: RewardSpace, rewards, device
) -> list[Sample]:
    """Sample one response per record from ``model`` reading ``shown`` (the prompts as the policy sees them),
    score raw rewards on the record's context and map them into ``space``."""
    fmt = lambda p: format_prompt(tokenizer, p, recipe.model.use_chat_template)  # noqa: E731
    out, bs = [], recipe.eval.batch_size
    for i in range(0, len(records), bs):
        chunk = records[i : i + bs]
        with torch.no_grad():
            g = generate_batch(
                model,
                tokenizer,
                shown[i : i + bs],
                recipe.generation,
                format_prompt=fmt,
                max_prompt_tokens=recipe.model.max_prompt_tokens,
                device=device,
                do_sample=True,
            )
        z = space.normalize(rewards.score([r.context for r in chunk], g.texts))
        for b, r in enumerate(chunk):
            raw = tokenizer.decode(
                g.sequences[b, g.prompt_len :][g.response_mask[b].bool()], skip_special_tokens=True
            )
            lead = raw[: len(raw) - len(raw.lstrip())]  # y as generated: keep its leading space, cut at stop
            out.append(Sample(r, lead + g.texts[b], z[b]))
    return out


def offline_samples(recipe: Recipe, space_path: Path, records: list[PromptRecord]):
    """``(space, rewards, samples)``: the run's space (calibrated with this W0 if ``space_path`` is new) and
    ``ric.samples_per_prompt`` W0 rollouts per record."""
    device = resolve_device(recipe.device)
    model, tokenizer = load_base_model(recipe.model, device=device)
    rewards = build_rewards(recipe.rewards, device=device)
    space = load_or_calibrate(recipe, space_path, lambda r: calibrate(r, model, tokenizer, rewards, device))
    rows = [r for r in records for _ in range(recipe.ric.samples_per_prompt)]
    with seeded(recipe.ric.seed):
        samples = rollouts(model, tokenizer, rows, [r.prompt for r in rows], recipe, space, rewards, device)
    return space, rewards, samples


def online_samples(
    policy, tokenizer, cond: Conditioning, records, recipe, space, rewards, k: int
) -> list[Sample]:
    """Round ``k``: the policy's rollouts at f(μ), μ cycling through the simplex grid, MORS-filtered."""
    cfg, n = recipe.ric, len(recipe.objectives)
    grid = preference_grid(n, cfg.online_preference_step)
    rows = [r for r in records for _ in range(cfg.samples_per_prompt)]
    shown = [cond.prompt_for(r.prompt, grid[(j + k) % len(grid)]) for j, r in enumerate(rows)]
    policy.config.use_cache = True  # the trainer turns the KV cache off
    with seeded(cfg.seed + 1 + k):
        got = rollouts(policy, tokenizer, rows, shown, recipe, space, rewards, policy.device)
    return mors(got, cfg.online_keep_quantile)


def write_dataset(path: Path, data: list[Sample], cfg: RiCConfig) -> Path:
    """The final training set as JSON lines: x, its z, the relabeled prompt the policy read, and y."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"prompt": s.record.prompt, "z": s.z.tolist(), "relabeled": e.prompt, "completion": e.completion}
        for s, e in zip(data, relabeled_examples(data, cfg), strict=True)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_recipe(recipe: Recipe) -> Recipe:
    """The recipe ``training.sft.train_sft`` runs: ``sft`` with RiC's steps, learning rate and batch size."""
    c = recipe.ric
    return replace(
        recipe,
        sft=replace(
            recipe.sft, max_steps=c.max_steps, learning_rate=c.learning_rate, batch_size=c.batch_size
        ),
    )


def sft_stage(recipe: Recipe, data: list[Sample], logger: RunLogger, k: int):
    """``(policy, tokenizer, summary)``: a fresh LoRA SFT'd on relabel(x, z) → y for ``data`` (stage k: 0 is
    offline, k ≥ 1 online round k), its losses and the training set's mean z logged at step k."""
    policy, tokenizer, losses = train_sft(sft_recipe(recipe), relabeled_examples(data, recipe.ric), logger)
    z = np.stack([s.z for s in data]).mean(0)
    summary = {
        "stage": k,
        "examples": len(data),
        "first_loss": losses[0][1],
        "final_loss": losses[-1][1],
        "z_mean": dict(zip(recipe.objectives, z.tolist(), strict=True)),
    }
    metrics = {"ric/examples": len(data), "ric/final_loss": summary["final_loss"]}
    logger.log_metrics(metrics | {f"ric/z_mean/{o}": v for o, v in summary["z_mean"].items()}, k)
    return policy, tokenizer, summary


def save_ric(
    recipe: Recipe, policy, cond: Conditioning, space: RewardSpace, ckpt: Path, manifest: Path, stages
):
    """The unmerged adapter (``adapter.<peft key>`` in ``ckpt``/trainable.safetensors) and the manifest: one
    backbone (w = 1/n, the space's frozen normaliser), the conditioning block, and the recipe with the LoRA
    the adapter has (no output embedding: evaluation builds the LoRA from it)."""
    n = len(recipe.objectives)
    weights = [round(1.0 / n, 12)] * n
    state = {
        "backbone": {"name": BACKBONE, "weights": weights},
        "stages": stages,
        "conditioning": cond.model_dump(),
    }
    save_training_checkpoint(
        ckpt, pad_missing_targets(adapter_state_dict(policy), policy, recipe), None, state
    )
    entry = BackboneEntry(
        name=BACKBONE,
        weights=weights,
        checkpoint=str(ckpt),
        reward_normalizer=space.normalizer().state_dict(),
    )
    return write_manifest(manifest, recipe, Method.RIC, [entry], space, cond)


def pad_missing_targets(state: dict, policy, recipe: Recipe) -> dict:
    """The adapter with a zero LoRA pair (B A = 0: the same function) on each ``recipe.lora`` target SFT left
    out (the output embedding: TRL's fused LM head refuses an adapter there), so it stacks with the PPO
    backbones, which target them all (one adapter stack shares its modules)."""
    done = {k.rsplit(".lora_A.", 1)[0] for k in state if ".lora_A." in k}
    prefix = next(iter(done)).split("base_model.model.")[0] + "base_model.model."
    out = dict(state)
    for name, module in policy.base_model.model.named_modules():
        key = f"{prefix}{name}"
        if key in done or not isinstance(module, torch.nn.Linear):
            continue
        if any(name == t or name.endswith(f".{t}") for t in recipe.lora.target_modules):
            out[f"{key}.lora_A.weight"] = torch.zeros(recipe.lora.r, module.in_features)
            out[f"{key}.lora_B.weight"] = torch.zeros(module.out_features, recipe.lora.r)
    return out


def train_ric(recipe: Recipe, run_name: str, storage: str, reward_space: str | Path | None = None) -> Path:
    """Offline (+ online) RiC; returns ``<run_dir>/manifest.json``. ``reward_space``: another run's
    ``reward_space.json`` to train in (default: this run's, calibrated from W0 when missing)."""
    cfg, out = recipe.ric, run_dir(storage, run_name)
    ckpt = run_dir(storage, f"{run_name}-{BACKBONE}") / "checkpoint"
    if reward_space is not None and not Path(reward_space).is_file():
        raise ConfigError(
            "--reward-space", f"{reward_space} does not exist: pass the reward_space.json of a run"
        )
    records = training_records(recipe)  # ConfigErrors before any model loads
    tags = {"soupkitchen.method": str(Method.RIC), "soupkitchen.output": str(out)}
    with RunLogger(recipe, f"train_ric:{run_name}", tags=tags) as logger:
        space_path = Path(reward_space or out / "reward_space.json")
        space, rewards, offline = offline_samples(recipe, space_path, records)
        data, kept = offline, []
        policy, tokenizer, summary = sft_stage(recipe, data, logger, 0)
        stages = [summary]
        for k in range(cfg.online_rounds):
            cond = conditioning_of(data, cfg)
            kept += online_samples(policy, tokenizer, cond, records, recipe, space, rewards, k)
            data = mors(offline, cfg.online_keep_quantile) + kept
            policy, tokenizer, summary = sft_stage(recipe, data, logger, k + 1)
            stages.append(summary | {"kept_online": len(kept)})
        cond = conditioning_of(data, cfg)
        logger.log_file(write_dataset(out / DATASET, data, cfg))
        manifest = save_ric(recipe, policy, cond, space, ckpt, out / "manifest.json", stages)
        logger.log_checkpoint(ckpt, "adapter", "backbone_adapter", ["trainable.safetensors", "state.json"])
        logger.log_file(manifest)
    return manifest
