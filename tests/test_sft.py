"""SFT job: TRL SFTTrainer + LoRA on the tiny model, exact merge, atomic safetensors output, CLI exits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jobs.train_sft import main
from soupkitchen.checkpoint import sha256_of
from soupkitchen.config import ModelConfig, load_recipe
from soupkitchen.data import SFTExample, load_sft_examples, tiny_prompts
from soupkitchen.models import load_base_model
from soupkitchen.training.sft import MANIFEST, merge_lora, save_merged, tokenize_examples, train_sft

COMPLETION = " happy happy joy"  # leading space: the training text is prompt + completion


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("SOUPKITCHEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def pairs(env) -> Path:
    path = env / "pairs.jsonl"
    rows = [{"prompt": p, "completion": COMPLETION} for p in tiny_prompts(32)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_overrides(pairs: Path, steps: int = 30) -> dict:
    return {
        "sft.enabled": True,
        "data.sft_source": str(pairs),
        "sft.max_steps": steps,
        "sft.learning_rate": 0.02,
        "sft.batch_size": 8,
        "sft.logging_steps": 1,
    }


def completion_logprob(model, tokenizer, examples: list[SFTExample], model_cfg: ModelConfig) -> float:
    """Mean log-probability per completion token (EOS included)."""
    ds = tokenize_examples(examples, tokenizer, model_cfg)
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, mask in zip(ds["input_ids"], ds["completion_mask"], strict=True):
            x = torch.tensor([ids])
            logp = model(x).logits[0, :-1].log_softmax(-1).gather(-1, x[0, 1:, None])[:, 0]
            keep = torch.tensor(mask[1:], dtype=torch.bool)
            total, count = total + logp[keep].sum().item(), count + int(keep.sum())
    return total / count


def test_tokenize_examples_masks_the_prompt_and_appends_eos(env):
    recipe = load_recipe("tiny", {"model.max_prompt_tokens": 8})
    _, tok = load_base_model(recipe.model)
    ds = tokenize_examples([SFTExample("tell me about the cat", COMPLETION)], tok, recipe.model)
    p, c = tok("tell me about the cat")["input_ids"], tok(COMPLETION)["input_ids"]
    assert ds["input_ids"][0] == p + c + [tok.eos_token_id]
    assert ds["completion_mask"][0] == [0] * len(p) + [1] * (len(c) + 1)
    long = "tell me about the old cat and the new dog in the house"
    ds = tokenize_examples([SFTExample(long, COMPLETION)], tok, recipe.model)
    assert ds["input_ids"][0][:8] == tok(long)["input_ids"][-8:]  # left-truncated like PPO prompts


def test_sft_job_trains_and_writes_a_loadable_model(pairs, capsys):
    out = pairs.parent / "sft-out"
    args = ["--recipe", "tiny", "--output", str(out)]
    for k, v in sft_overrides(pairs).items():
        args += [f"--{k}", str(v).lower() if isinstance(v, bool) else str(v)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "source: hf" in printed and f"name: {out}" in printed

    manifest = json.loads((out / MANIFEST).read_text())
    losses = [loss for _, loss in manifest["losses"]]
    assert manifest["steps"] == 30 and len(losses) == 30
    assert losses[-1] < losses[0] - 0.5, losses
    assert manifest["final_loss"] == losses[-1]
    assert manifest["lora_target_modules"] == ["c_attn", "c_fc"]  # lm_head left out for TRL
    assert manifest["safetensors"] == {p.name: sha256_of(p) for p in out.glob("*.safetensors")}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dir left behind

    import mlflow

    history = mlflow.MlflowClient().get_metric_history(manifest["mlflow_run_id"], "loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(losses)

    recipe = load_recipe("tiny")
    base, tok = load_base_model(recipe.model)
    sft, sft_tok = load_base_model(ModelConfig(source="hf", name=str(out)))
    assert sft_tok.get_vocab() == tok.get_vocab()
    held_out = [SFTExample(p, COMPLETION) for p in tiny_prompts(48)[32:]]  # prompts not seen in training
    before = completion_logprob(base, tok, held_out, recipe.model)
    after = completion_logprob(sft, sft_tok, held_out, recipe.model)
    # ~ -5.4 → -4.5: the tiny model's tied lm_head gives near-flat logits and is not adapted in SFT
    assert after > before + 0.5, (before, after)


def test_merged_model_equals_base_plus_lora(pairs):
    recipe = load_recipe("tiny", sft_overrides(pairs, steps=5))
    policy, tok, losses = train_sft(recipe, load_sft_examples(recipe.data))
    assert [s for s, _ in losses] == [1, 2, 3, 4, 5]
    x = torch.tensor([tok("tell me about the cat happy happy joy")["input_ids"]])
    with torch.no_grad():
        lora_logits = policy(x).logits
        with policy.disable_adapter():
            base_logits = policy(x).logits
    assert (lora_logits - base_logits).abs().max() > 1e-3  # the adapter moved the model

    out = pairs.parent / "merged"
    out.mkdir()  # an empty directory may be written into
    merged = merge_lora(policy)
    save_merged(merged, tok, out, {"run": 1})
    save_merged(merged, tok, out, {"run": 2})  # an earlier SFT output is replaced
    assert json.loads((out / MANIFEST).read_text())["run"] == 2
    loaded, _ = load_base_model(ModelConfig(source="hf", name=str(out)))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, lora_logits, atol=1e-5, rtol=0)


def test_sft_disabled_exits_zero_without_training(env, capsys):
    assert main(["--recipe", "tiny", "--output", str(env / "never")]) == 0
    assert "instruction-tuned" in capsys.readouterr().out
    assert not (env / "never").exists()


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["--data.sft_source", "missing.jsonl"], "data.sft_source"),
        ([], "data.source"),  # builtin:tiny has prompts only
    ],
)
def test_no_sft_examples_is_a_config_error(env, capsys, overrides, key):
    assert main(["--recipe", "tiny", "--sft.enabled", "true", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {key}:") and "Traceback" not in err


def test_refuses_to_replace_a_foreign_directory(pairs, capsys):
    foreign = pairs.parent / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    args = ["--recipe", "tiny", "--output", str(foreign), "--sft.enabled", "true"]
    args += ["--data.sft_source", str(pairs)]
    assert main(args) == 2
    assert "is not an SFT output" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"
