"""Explicit value models for MAGE-E (docs/methods/mage.md): one LoRA adapter per objective over W0.

The adapter's LM-head logits are read as Q-values through a *residual head*: for candidate token v,

    V_i(x, y<t)[v] = logits_{W0+ΔV_i}(x, y<t)[v] − logits_{W0}(x, y<t)[v]

so one forward pass (plus the W0 pass) scores every candidate (the "multi-head value model"), an untrained
adapter (B = 0) is V ≡ 0 and adds no guidance, and tokens never supervised keep V ≈ 0 instead of W0's
logit scale (read raw, γ·V would sharpen toward W0's distribution). Training regresses the value of every
taken token to the final reward of objective i (Eq. 16, Monte-Carlo target):

    L_V(x, y) = ½ Σ_{t=1}^{|y|} ( V(x, y<t)[y_t] − r_i(x, y) )²

on rollouts of the SFT policy (π_ref of Eq. 15, c = 0) and/or the Stage-1 backbones (c = e_j), sampled with
the recipe's generation settings and scored by the recipe's rewards (raw, unnormalised). Every value model
starts from the same W0 with the recipe's LoRA targets, so the adapters stack with the backbones in one
mixed model and merge linearly (Eq. 24: c = Σ_i μ_i e_{V_i}; the residual of the merge is then read
against the c = 0 row, ``decoding.plans``).

``value_models.json`` records ``"head": "residual"``; files without it were trained on raw logits (before
the residual head) and are refused with an error naming ``--value-models``: retrain them.

    rollouts = collect_rollouts(recipe, policies)              # (prompt, response, reward vector)
    state, metrics = train_value_model(recipe, rollouts, i)   # adapter of objective i + val MSE / accuracy
    write_value_models(out, recipe, {obj: state}, metrics)    # value_models.json + adapters/*.safetensors
    vm = load_value_models(out)                                # checked; vm.adapters for build_mixed_model
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from soupkitchen.checkpoint import sha256_of
from soupkitchen.config import ConfigError, LoraConfig, Recipe, from_dict, read_format, replace, to_dict
from soupkitchen.data import load_prompt_records
from soupkitchen.generation import generate_batch
from soupkitchen.merging import load_adapter_state, parse_adapter, use_coefficients
from soupkitchen.models import attach_lora, format_prompt, left_pad_position_ids, load_base_model
from soupkitchen.rewards import build_rewards

VALUE_FORMAT = "soupkitchen.value_models/v1"
VALUE_HEAD = "residual"  # Q = logits(W0 + ΔV) − logits(W0)


@dataclass
class Rollout:
    prompt_ids: list[int]
    response_ids: list[int]  # up to and including EOS when emitted
    rewards: np.ndarray  # [n] raw reward per objective
    policy: str
    prompt: str


def value_lora(recipe: Recipe) -> LoraConfig:
    """The recipe's LoRA (same targets, so value adapters stack with backbones), r / α overridable."""
    vm = recipe.value_model
    return replace(
        recipe.lora,
        r=vm.lora_r or recipe.lora.r,
        alpha=vm.lora_alpha or recipe.lora.alpha,
        dropout=0.0,
    )


@torch.no_grad()
def collect_rollouts(
    recipe: Recipe,
    policies: Sequence[tuple[str, np.ndarray]],
    model,
    tokenizer,
    *,
    rewards=None,
    device: str = "cpu",
    progress: bool = False,
) -> list[Rollout]:
    """Sample ``value_model.samples_per_prompt`` responses per training prompt from every (name, c) policy of
    ``model`` (a mixed model over the backbones, or W0 when every c is empty) and score all objectives."""
    from tqdm.auto import tqdm


    vm = recipe.value_model
    rewards = rewards or build_rewards(recipe.rewards, device=device)
    records = load_prompt_records(recipe.data, "train")[: vm.num_prompts]
    if not records:
        raise ConfigError("data.source", "no training prompts for value-model rollouts")
    rows = [(name, c, r) for name, c in policies for r in records for _ in range(vm.samples_per_prompt)]
    fmt = lambda p: format_prompt(tokenizer, p, recipe.model.use_chat_template)  # noqa: E731
    out: list[Rollout] = []
    bs = recipe.eval.batch_size
    torch.manual_seed(vm.seed)
    for start in tqdm(range(0, len(rows), bs), desc="value-model rollouts", disable=not progress):
        chunk = rows[start : start + bs]
        c = np.stack([np.asarray(c, dtype=np.float64) for _, c, _ in chunk])
        ctx = use_coefficients(model, c) if c.shape[1] else contextlib.nullcontext()
        with ctx:
            g = generate_batch(
                model,
                tokenizer,
                [r.prompt for _, _, r in chunk],
                recipe.generation,
                format_prompt=fmt,
                max_prompt_tokens=recipe.model.max_prompt_tokens,
                device=device,
                do_sample=True,
            )
        scores = rewards.score([r.context for _, _, r in chunk], g.texts)
        P = g.prompt_len
        for i, (name, _, rec) in enumerate(chunk):
            pm = g.attention_mask[i, :P].bool()
            rm = g.response_mask[i].bool()
            out.append(
                Rollout(
                    g.sequences[i, :P][pm].tolist(),
                    g.sequences[i, P:][rm].tolist(),
                    np.asarray(scores[i], dtype=np.float64),
                    name,
                    rec.prompt,
                )
            )
    return out


def collate(rollouts: Sequence[Rollout], pad_id: int, device="cpu"):
    """Left-padded prompts + right-padded responses: (ids [B, L], mask [B, L], response mask [B, L])."""
    P = max(len(r.prompt_ids) for r in rollouts)
    T = max(max(len(r.response_ids) for r in rollouts), 1)
    ids = torch.full((len(rollouts), P + T), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    resp = torch.zeros_like(ids, dtype=torch.bool)
    for i, r in enumerate(rollouts):
        p, y = r.prompt_ids, r.response_ids
        ids[i, P - len(p) : P] = torch.tensor(p, dtype=torch.long)
        ids[i, P : P + len(y)] = torch.tensor(y, dtype=torch.long)
        mask[i, P - len(p) : P + len(y)] = 1
        resp[i, P : P + len(y)] = True
    return ids.to(device), mask.to(device), resp.to(device)


def _taken_logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """logits[t−1][y_t] of every position t ≥ 1: [B, L−1]."""

    logits = model(input_ids=ids, attention_mask=mask, position_ids=left_pad_position_ids(mask)).logits
    return logits[:, :-1].float().gather(-1, ids[:, 1:, None]).squeeze(-1)


def token_values(model, ids: torch.Tensor, mask: torch.Tensor, resp: torch.Tensor) -> torch.Tensor:
    """Residual Q(x, y<t)[y_t] = (logits_{W0+ΔV} − logits_{W0})[t−1, y_t] for every response position (0
    elsewhere): [B, L]. ``model`` is the PEFT value model; the W0 pass (adapter disabled) has no gradient."""
    with torch.no_grad(), model.disable_adapter():
        q0 = _taken_logits(model, ids, mask)
    return torch.nn.functional.pad(_taken_logits(model, ids, mask) - q0, (1, 0)) * resp


def eq16_loss(q: torch.Tensor, resp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 16: ½ Σ_t (V(x, y<t)[y_t] − r)² per sequence, averaged over the batch (q: residual Q-values of
    ``token_values``, so an untrained adapter starts at ½ Σ_t r²)."""
    err = (q - target[:, None]) * resp
    return 0.5 * err.pow(2).sum(-1).mean()


@torch.no_grad()
def validation_metrics(model, rollouts: Sequence[Rollout], objective: int, pad_id: int, device="cpu") -> dict:
    """Per-token MSE of the residual V(x, y<t)[y_t] against r, and pairwise accuracy: for responses to the
    same prompt with different rewards, does the value of the last token V(x, y<T)[y_T] order them as r
    does? (``val_pairwise_accuracy``, absent when no such pair exists.)"""
    if not rollouts:
        return {}
    sq, count, last = 0.0, 0, []
    for start in range(0, len(rollouts), 16):
        chunk = rollouts[start : start + 16]
        ids, mask, resp = collate(chunk, pad_id, device)
        q = token_values(model, ids, mask, resp)
        r = torch.tensor([x.rewards[objective] for x in chunk], dtype=torch.float32, device=q.device)
        sq += float((((q - r[:, None]) * resp) ** 2).sum())
        count += int(resp.sum())
        ends = resp.long().cumsum(-1).argmax(-1)
        last += q.gather(1, ends[:, None]).squeeze(1).tolist()
    by_prompt: dict[str, list[int]] = {}
    for i, x in enumerate(rollouts):
        by_prompt.setdefault(x.prompt, []).append(i)
    right = pairs = 0
    for idx in by_prompt.values():
        for a in idx:
            for b in idx:
                ra, rb = rollouts[a].rewards[objective], rollouts[b].rewards[objective]
                if a < b and ra != rb:
                    pairs += 1
                    right += (last[a] - last[b]) * (ra - rb) > 0
    out = {"val_mse": sq / max(count, 1), "val_pairs": float(pairs)}
    if pairs:
        out["val_pairwise_accuracy"] = right / pairs
    return out


def _split_metrics(model, train, val, objective: int, pad_id: int, device, prefix: str = "") -> dict:
    """``validation_metrics`` of the validation split (``val_*``) and of the training split (``train_*``),
    keys prefixed with ``prefix``."""
    out = validation_metrics(model, val, objective, pad_id, device)
    fit = validation_metrics(model, train, objective, pad_id, device)
    out |= {k.replace("val_", "train_", 1): v for k, v in fit.items()}
    return {prefix + k: v for k, v in out.items()}


def split_rollouts(rollouts: Sequence[Rollout], fraction: float, seed: int):
    """(train, val) by prompt, so responses to one prompt stay together (pairwise accuracy needs them)."""
    prompts = sorted({r.prompt for r in rollouts})
    rng = np.random.default_rng(seed)
    rng.shuffle(prompts)
    k = int(round(len(prompts) * fraction)) if len(prompts) > 1 else 0
    val = set(prompts[:k])
    return [r for r in rollouts if r.prompt not in val], [r for r in rollouts if r.prompt in val]


def train_value_model(
    recipe: Recipe,
    rollouts: Sequence[Rollout],
    objective: int,
    *,
    device: str = "cpu",
    on_step: Callable[[int, dict], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Fit the value adapter of ``objective`` (Eq. 16, Adam) on ``rollouts``: (A/B state dict, metrics).

    ``value_model.epochs`` passes over the training split in shuffled batches of ``value_model.batch_size``
    (at most ``max_steps`` steps); validation (``val_fraction`` of the prompts) before and after: MSE and
    pairwise accuracy of the residual head (``validation_metrics``) on the validation and training splits.
    The model stays in eval mode (no dropout), so the W0 pass of the residual sees the same network.
    """
    from peft import get_peft_model_state_dict


    vm = recipe.value_model
    if not 0 <= objective < len(recipe.objectives):
        raise ConfigError("objective", f"must index one of {recipe.objectives}, got {objective}")
    train, val = split_rollouts(rollouts, vm.val_fraction, vm.seed)
    if not train:
        raise ConfigError("value_model.val_fraction", "leaves no training rollouts; lower it")
    base, tokenizer = load_base_model(recipe.model, device=device)
    model = attach_lora(base, value_lora(recipe), seed=vm.seed + objective).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=vm.learning_rate)
    pad = tokenizer.pad_token_id
    metrics = _split_metrics(model, train, val, objective, pad, device, "before_")
    gen = torch.Generator().manual_seed(vm.seed + objective)
    step, losses = 0, []
    total = vm.epochs * math.ceil(len(train) / vm.batch_size)
    total = min(total, vm.max_steps) if vm.max_steps else total
    while step < total:
        order = torch.randperm(len(train), generator=gen).tolist()
        for start in range(0, len(order), vm.batch_size):
            chunk = [train[i] for i in order[start : start + vm.batch_size]]
            ids, mask, resp = collate(chunk, pad, device)
            target = torch.tensor([r.rewards[objective] for r in chunk], dtype=torch.float32, device=device)
            loss = eq16_loss(token_values(model, ids, mask, resp), resp, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if on_step is not None:
                on_step(step, {"loss": losses[-1]})
            if step >= total:
                break
    metrics |= _split_metrics(model, train, val, objective, pad, device)
    metrics |= {"steps": float(step), "first_loss": losses[0], "last_loss": losses[-1]}
    metrics |= {"train_rollouts": float(len(train)), "val_rollouts": float(len(val))}
    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    return state, metrics


@dataclass
class ValueModels:
    """A validated value-model directory: adapter i is the value model of ``objectives[i]``."""

    directory: Path
    objectives: list[str]
    names: list[str]
    files: list[Path]
    lora: list[LoraConfig]
    model: dict
    metrics: dict

    @property
    def adapters(self) -> list[dict[str, torch.Tensor]]:

        return [load_adapter_state(f) for f in self.files]


def write_value_models(
    directory: str | Path,
    recipe: Recipe,
    states: dict[str, dict[str, torch.Tensor]],
    metrics: dict[str, dict] | None = None,
    overwrite: bool = False,
) -> Path:
    """``value_models.json`` + ``adapters/<objective>.safetensors`` (LoRA A/B in PEFT keys, no W0 copies),
    written to a temp dir and renamed into place; ``states`` maps every objective to its adapter."""
    from safetensors.torch import save_file


    directory = Path(directory)
    if set(states) != set(recipe.objectives):
        raise ConfigError(
            "objectives", f"need one value model per objective {recipe.objectives}, got {sorted(states)}"
        )
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory} exists and is not empty; pass overwrite=True to replace it")
    lora = value_lora(recipe)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    (tmp / "adapters").mkdir(parents=True)
    try:
        entries = []
        for obj in recipe.objectives:
            pairs, _ = parse_adapter(states[obj], f"value model {obj}")
            tensors = {}
            for m, (A, B) in pairs.items():
                tensors[f"base_model.model.{m}.lora_A.weight"] = A.contiguous()
                tensors[f"base_model.model.{m}.lora_B.weight"] = B.contiguous()
            rel = f"adapters/value-{obj}.safetensors"
            save_file(tensors, str(tmp / rel))
            entries.append(
                {"name": f"value-{obj}", "objective": obj, "file": rel, "sha256": sha256_of(tmp / rel)}
            )
        doc = {
            "format": VALUE_FORMAT,
            "head": VALUE_HEAD,
            "objectives": list(recipe.objectives),
            "adapters": entries,
            "lora": to_dict(lora),
            "model": to_dict(recipe.model),
            "value_model": to_dict(recipe.value_model),
            "metrics": metrics or {},
        }
        (tmp / "value_models.json").write_text(json.dumps(doc, indent=1))
        load_value_models(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory / "value_models.json"


def load_value_models(directory: str | Path, flag: str = "--value-models") -> ValueModels:
    """Read and check a value-model directory (format, head, one adapter per objective, files, sha256);
    a manifest without ``"head": "residual"`` (raw-logit value models) is refused: retrain it."""

    directory = Path(directory)
    path = directory / "value_models.json" if directory.is_dir() else directory
    if not path.is_file():
        raise ConfigError(flag, f"{path} not found; train value models with jobs/train_value_models.py")
    doc = read_format(path, flag, VALUE_FORMAT, "value-model manifest")
    head = doc.get("head")
    if head != VALUE_HEAD:
        found = 'no "head" (raw logits read as Q-values)' if head is None else f"head {head!r}"
        raise ConfigError(
            flag,
            f"{path} has {found}; decoding reads the {VALUE_HEAD!r} head Q = logits(W0 + ΔV) − logits(W0): "
            "retrain the value models with jobs/train_value_models.py",
        )
    objectives = doc.get("objectives") or []
    entries = doc.get("adapters") or []
    if [e.get("objective") for e in entries] != objectives:
        raise ConfigError(
            flag, f"{path}: adapters must list one value model per objective {objectives}, in order"
        )
    files = []
    for e in entries:
        f = path.parent / e["file"]
        if not f.is_file():
            raise ConfigError(flag, f"value model {e['name']}: {f} is missing")
        if sha256_of(f) != e["sha256"]:
            raise ConfigError(flag, f"value model {e['name']}: {f} does not match its sha256 (modified?)")
        files.append(f)
    lora = from_dict(LoraConfig, doc.get("lora", {}), "lora")
    return ValueModels(
        path.parent,
        objectives,
        [e["name"] for e in entries],
        files,
        [lora] * len(files),
        doc.get("model", {}),
        doc.get("metrics", {}),
    )
