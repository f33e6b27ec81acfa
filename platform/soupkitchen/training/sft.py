"""Supervised fine-tuning: θ_sft = W0 + merged LoRA, via TRL's SFTTrainer (docs/methods/bone_soup.md).

    result = run_sft(recipe)  # train → merge_and_unload → sft.output_dir (safetensors, tokenizer, manifest)

Loss on the completion only, LoRA from ``recipe.lora``, ``recipe.sft`` optimiser settings (the paper: lr
1.41e-4 linear, weight decay 0.01). Sequences are tokenized here exactly as PPO rollouts see them: the
``format_prompt`` text without added special tokens, left-truncated to ``model.max_prompt_tokens``, then the
completion and EOS. TRL gets them pre-tokenized with a ``completion_mask`` (``completion_only_loss=True``):
its own prompt/completion path calls the tokenizer with special tokens on, which adds a BOS that PPO
prompts never carry (and a second one after a chat template that already has it).

The SFT adapter leaves out the output embedding (``lm_head``, a tiny-recipe target for PPO): TRL computes the
loss from ``lm_head.weight`` directly (fused LM head) and refuses an adapter there. That also keeps the merge
exact where ``lm_head`` is tied to the input embedding (merging into a shared weight would change both).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from soupkitchen.checkpoint import sha256_of
from soupkitchen.config import ConfigError, LoraConfig, ModelConfig, Recipe, replace, to_dict
from soupkitchen.data import SFTExample, load_sft_examples
from soupkitchen.models import attach_lora, format_prompt, load_base_model, resolve_device
from soupkitchen.paths import data_dir
from soupkitchen.tracking import RunLogger

MANIFEST = "sft_manifest.json"
log = logging.getLogger(__name__)


@dataclass
class SFTResult:
    output_dir: Path
    steps: int
    losses: list[tuple[int, float]]  # (step, training loss) at each logging step
    run_id: str

    @property
    def final_loss(self) -> float:
        return self.losses[-1][1]


def output_dir(recipe: Recipe) -> Path:
    """``sft.output_dir`` or ``$SOUPKITCHEN_CACHE/sft/<recipe name>``, absolute."""
    out = recipe.sft.output_dir or str(data_dir() / "sft" / recipe.name)
    return Path(out).expanduser().resolve()


def check_output_dir(out: Path) -> None:
    """The output may be new, empty or an earlier SFT output (replaced); anything else is refused."""
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / MANIFEST).is_file())):
        raise ConfigError(
            "sft.output_dir",
            f"{str(out)!r} exists and is not an SFT output (no {MANIFEST}); pick another --output",
        )


# --------------------------------------------------------------------------------------------- data


def tokenize_examples(examples: list[SFTExample], tokenizer, model_cfg: ModelConfig):
    """``datasets.Dataset`` of ``input_ids`` (prompt + completion + EOS tokens) and ``completion_mask``.

    The completion starts where the tokenized prompt and prompt + completion diverge (tokens may merge across
    the boundary), as in TRL; the prompt keeps its last ``model_cfg.max_prompt_tokens`` tokens, as in PPO.
    """
    import datasets

    rows: dict[str, list[list[int]]] = {"input_ids": [], "completion_mask": []}
    for ex in examples:
        prompt = format_prompt(tokenizer, ex.prompt, model_cfg.use_chat_template)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(prompt + ex.completion, add_special_tokens=False)["input_ids"]
        n = 0
        while n < min(len(p_ids), len(ids)) and p_ids[n] == ids[n]:
            n += 1
        prompt_ids = ids[:n][-model_cfg.max_prompt_tokens :]
        completion_ids = ids[n:] + [tokenizer.eos_token_id]
        rows["input_ids"].append(prompt_ids + completion_ids)
        rows["completion_mask"].append([0] * len(prompt_ids) + [1] * len(completion_ids))
    return datasets.Dataset.from_dict(rows)


# --------------------------------------------------------------------------------------------- train


def _loss_callback(logger: RunLogger | None, losses: list[tuple[int, float]]):
    from transformers import TrainerCallback

    class LossCallback(TrainerCallback):
        """Collects the loss of every logging step (the last step included) and sends logs to MLflow."""

        def on_step_end(self, args, state, control, **kw):
            if state.global_step >= state.max_steps:
                control.should_log = True

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            if "loss" in logs:
                losses.append((state.global_step, float(logs["loss"])))
            if logger is not None:
                nums = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
                logger.log_metrics(nums, state.global_step)

    return LossCallback()


def sft_lora(lora: LoraConfig, model: nn.Module) -> LoraConfig:
    """``lora`` without the targets that name the output embedding (TRL trains no adapter there)."""
    out = model.get_output_embeddings()
    name = next((n for n, m in model.named_modules() if m is out), None) if out is not None else None
    keep = [t for t in lora.target_modules if not (name and (name == t or name.endswith("." + t)))]
    if not keep:
        raise ConfigError(
            "lora.target_modules",
            f"only the output embedding {name!r} is targeted; TRL's SFTTrainer cannot train an adapter there "
            "(the loss reads its weight directly): add other modules, e.g. attention projections",
        )
    if len(keep) < len(lora.target_modules):
        log.warning("SFT adapter leaves out the output embedding %r (TRL cannot train it): %s", name, keep)
    return replace(lora, target_modules=keep)


def train_sft(recipe: Recipe, examples: list[SFTExample], logger: RunLogger | None = None):
    """``(policy, tokenizer, losses)``: base model + LoRA after ``sft.max_steps`` SFTTrainer steps."""
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    device = resolve_device(recipe.device)
    model, tokenizer = load_base_model(recipe.model, device=device)
    policy = attach_lora(model, sft_lora(recipe.lora, model), seed=recipe.seed)
    dataset = tokenize_examples(examples, tokenizer, recipe.model)
    s = recipe.sft
    positions = getattr(model.config.get_text_config(), "max_position_embeddings", None) or s.max_seq_length
    losses: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory(prefix="soupkitchen-sft-") as scratch:  # Trainer needs one; unused
        args = TRLConfig(
            output_dir=scratch,
            max_steps=s.max_steps,
            learning_rate=s.learning_rate,
            lr_scheduler_type=s.lr_scheduler,
            warmup_steps=0,
            weight_decay=s.weight_decay,
            per_device_train_batch_size=s.batch_size,
            gradient_accumulation_steps=1,
            gradient_checkpointing=s.gradient_checkpointing,
            max_length=min(s.max_seq_length, positions),  # longer sequences lose their completion's end
            completion_only_loss=True,
            bf16=False,  # TRL defaults to bf16 autocast; the model trains in model.dtype
            fp16=False,
            use_cpu=device == "cpu",
            seed=recipe.seed,
            data_seed=recipe.seed,
            logging_steps=s.logging_steps,
            logging_first_step=True,
            save_strategy="no",
            report_to="none",
            push_to_hub=False,
        )
        trainer = SFTTrainer(
            model=policy,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[_loss_callback(logger, losses)],
        )
        trainer.train()
    return policy.eval(), tokenizer, losses


# --------------------------------------------------------------------------------------------- merge, save


def merge_lora(policy):
    """The plain model W0 + ΔW (PEFT ``merge_and_unload``), eval mode, ready for generation."""
    merged = policy.merge_and_unload()
    merged.config.use_cache = True
    return merged.eval()


def save_merged(model, tokenizer, out: Path, manifest: dict) -> Path:
    """Write model (safetensors), tokenizer and ``sft_manifest.json`` into a temp dir, renamed to ``out``.

    An earlier SFT output at ``out`` is replaced; an interrupted save leaves ``out`` as it was.
    """
    check_output_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp, old = out.parent / f".{out.name}.tmp-{tag}", out.parent / f".{out.name}.old-{tag}"
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = sorted(tmp.glob("*.safetensors"))
        if not files:
            raise RuntimeError(f"save_pretrained wrote no safetensors file into {tmp}")
        manifest = {**manifest, "safetensors": {p.name: sha256_of(p) for p in files}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------- job


def run_sft(recipe: Recipe) -> SFTResult:
    """Load the SFT pairs, train, merge and save to :func:`output_dir`; the run is logged to MLflow."""
    examples = load_sft_examples(recipe.data)  # ConfigError before any model is loaded
    out = output_dir(recipe)
    check_output_dir(out)
    tags = {"soupkitchen.stage": "sft", "soupkitchen.output": str(out)}
    logger = RunLogger(recipe, f"sft:{recipe.name}", tags=tags)
    with logger:
        policy, tokenizer, losses = train_sft(recipe, examples, logger)
        targets = sorted(policy.peft_config["default"].target_modules)
        with torch.no_grad():
            merged = merge_lora(policy)
        steps = losses[-1][0] if losses else 0
        manifest = {
            "recipe": to_dict(recipe),
            "base_model": to_dict(recipe.model),
            "lora_target_modules": targets,
            "num_examples": len(examples),
            "steps": steps,
            "final_loss": losses[-1][1] if losses else None,
            "losses": losses,
            "mlflow_run_id": logger.run_id,  # None while MLflow has not answered yet; the key names it
            "mlflow_run_key": logger.key,
        }
        save_merged(merged, tokenizer, out, manifest)
    return SFTResult(out, steps, losses, logger.run_id)
