"""RiC: the preference-to-reward mapping, relabeling by the shared formatter, MORS, and tiny end-to-end runs
(W0 rollouts in a given reward space → relabeled SFT → an online round → unmerged adapter + manifest)."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from jobs.train_ric import main
from soupkitchen.conditioning import Conditioning
from soupkitchen.config import ConfigError, PreferencePromptConfig, RiCConfig
from soupkitchen.data import PromptRecord, SFTExample
from soupkitchen.manifests import BackboneManifest
from soupkitchen.merging import build_mixed_model, load_adapter_state, set_coefficients
from soupkitchen.moc.prompt import relabel
from soupkitchen.models import load_base_model
from soupkitchen.reward_space import RewardSpace
from soupkitchen.training import ric
from tests.test_sft import completion_logprob

# 8 prompts × 2 W0 samples; digits and <R1>/<R2> readable by the tiny tokenizer
TINY = {
    "model.tiny.preference_tokens": True,
    "ric.num_prompts": 8,
    "ric.samples_per_prompt": 2,
    "ric.learning_rate": 0.02,
    "sft.logging_steps": 5,
    "reward_space.num_prompts": 8,
    "sft.gradient_checkpointing": False,  # a tiny model: recomputing activations only costs time
}
# another run's calibrated space with an offset: keyword rewards r ≥ 0 give z = (r − 0.05) / 0.1 ≥ −0.5
CALIBRATED = {f"rewards.{j}.normalization.kind": "calibrated" for j in range(2)}
SPACE = RewardSpace(
    ["warm", "calm"], ["calibrated"] * 2, [0.05] * 2, [0.1] * 2, np.eye(2).tolist(), 16, "test"
)


def samples(z) -> list[ric.Sample]:
    return [ric.Sample(PromptRecord(f"p{i}"), f" y{i}", np.asarray(v, dtype=float)) for i, v in enumerate(z)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """On 2 shared cores one intra-op thread trains the tiny model ~20× faster than two contending ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("ric")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.setenv("SOUPKITCHEN_CACHE", str(root / "cache"))
        mp.chdir(root)
        yield root


def test_preference_to_reward_mapping():
    """f_i(μ) = high_i if μ_i ≥ 1/n, else low_i + n μ_i (high_i − low_i) (RiC Sec. 3)."""
    c = Conditioning(kind="rewards", low=[-1.0, -2.0], high=[1.0, 2.0])
    np.testing.assert_allclose(c.values([1.0, 0.0]), [1.0, -2.0])
    np.testing.assert_allclose(c.values([0.5, 0.5]), [1.0, 2.0])
    np.testing.assert_allclose(c.values([0.2, 0.8]), [-1.0 + 2 * 0.2 * 2.0, 2.0])
    assert c.prompt_for("x", [0.2, 0.8]) == "<R1> -0.20 <R2> 2.00 x"


def test_conditioning_range_is_the_quantiles_of_the_data():
    z = np.array([[-3.0, 0.0], [0.0, 1.0], [1.0, 2.0], [2.0, 10.0]])
    cond = ric.conditioning_of(samples(z), RiCConfig())
    assert (cond.kind, cond.low, cond.high) == ("rewards", [-3.0, 0.0], [2.0, 10.0])  # RiC: min and max
    trimmed = ric.conditioning_of(samples(z), RiCConfig(low_quantile=0.25, high_quantile=0.75))
    np.testing.assert_allclose(trimmed.low, np.quantile(z, 0.25, axis=0).round(2))
    np.testing.assert_allclose(trimmed.high, np.quantile(z, 0.75, axis=0).round(2))
    with pytest.raises(ConfigError, match="high_quantile"):
        RiCConfig(low_quantile=0.5, high_quantile=0.5)
    with pytest.raises(ConfigError, match="online_preference_step"):
        RiCConfig(online_preference_step=0.3)


def test_examples_are_relabeled_by_the_shared_formatter():
    z = [[0.314, -1.2], [2.0, 0.0]]
    assert ric.relabeled_examples(samples(z), RiCConfig())[0] == SFTExample("<R1> 0.31 <R2> -1.20 p0", " y0")
    for fmt in (
        PreferencePromptConfig(),
        PreferencePromptConfig(tag="[r{i}]", decimals=1, position="suffix"),
    ):
        ex = ric.relabeled_examples(samples(z), RiCConfig(prompt=fmt))
        assert [e.prompt for e in ex] == [relabel(f"p{i}", v, fmt) for i, v in enumerate(z)]
        assert [e.completion for e in ex] == [" y0", " y1"]


def test_mors_keeps_the_samples_at_the_top_of_some_objective():
    z = [[0, 0], [1, 0], [0, 1], [0.5, 0.5], [2, 2]]  # 0.7-quantile per objective: 0.9
    assert [s.record.prompt for s in ric.mors(samples(z), 0.7)] == ["p1", "p2", "p4"]
    assert ric.mors([], 0.7) == []


@pytest.fixture(scope="module")
def trained(env):
    """One CLI run: offline stage + one online round, in the reward space of another run (SPACE)."""
    space_file = env / "other-run" / "reward_space.json"
    space_file.parent.mkdir()
    space_file.write_text(json.dumps(SPACE.to_dict()))
    overrides = TINY | CALIBRATED | {"ric.max_steps": 50, "ric.online_rounds": 1}
    args = ["--recipe", "tiny", "--storage", str(env / "runs"), "--reward-space", str(space_file)]
    for k, v in overrides.items():
        args += [f"--{k}", str(v).lower()]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        rc = main(args)
    return rc, env / "runs", printed.getvalue()


def test_cli_writes_a_ric_manifest_in_the_given_space(trained):
    rc, storage, printed = trained
    assert rc == 0
    path = storage / "tiny-ric" / "manifest.json"
    doc = BackboneManifest.read(path)
    lines = printed.splitlines()
    assert f"manifest: {path}" in lines
    assert f"  {'warm':<20} [{doc.conditioning.low[0]:.2f}, {doc.conditioning.high[0]:.2f}]" in lines
    assert doc.method == "ric" and doc.names == ["ric-0"] and doc.weights == [[0.5, 0.5]]
    assert doc.space.same_as(SPACE) and not (storage / "tiny-ric" / "reward_space.json").exists()
    assert doc.backbones[0].reward_normalizer == SPACE.normalizer().state_dict()
    cond = doc.conditioning
    assert cond.kind == "rewards" and cond.prompt == PreferencePromptConfig()
    assert cond.low == [-0.5, -0.5]  # r = 0 in the given space: the labels are z, not raw rewards
    assert all(-0.5 <= lo <= hi for lo, hi in zip(cond.low, cond.high, strict=True))
    assert doc.lora().target_modules == ["c_attn", "c_fc", "lm_head"]  # the recipe's: it stacks with PPO's
    ckpt = storage / "tiny-ric-ric-0" / "checkpoint"
    assert doc.backbones[0].checkpoint == str(ckpt)
    assert sorted(p.name for p in ckpt.iterdir()) == ["state.json", "trainable.safetensors"]  # not merged
    stages = json.loads((ckpt / "state.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == [0, 1] and stages[1]["kept_online"] > 0
    assert all(s["final_loss"] < s["first_loss"] for s in stages)  # SFT fits the relabeled data


def test_adapter_loads_on_w0_and_reads_the_desired_rewards(trained):
    """As evaluation does: W0 + the manifest's LoRA at c = 1; the log-probability of a fixed response
    depends on the desired rewards in the prompt, and the adapter moves the model off W0."""
    doc = BackboneManifest.read(trained[1] / "tiny-ric")
    recipe = doc.recipe_config()
    state = load_adapter_state(doc.adapters()[0][1])
    assert state and all(k.startswith("adapter.") for k in state)
    head = [v for k, v in state.items() if "lm_head.lora_" in k]  # SFT left it out (TRL): zero pair, ΔW = 0
    assert len(head) == 2 and all(not v.any() for v in head)
    w0, tok = load_base_model(recipe.model)
    model = build_mixed_model(w0, [state], doc.lora(), doc.names)  # checks targets and rank
    cond = doc.conditioning

    def logp(mu, c):
        set_coefficients(model, [c])
        return completion_logprob(
            model, tok, [SFTExample(cond.prompt_for("the cat", mu), " happy")], recipe.model
        )

    assert abs(logp([1.0, 0.0], 1.0) - logp([0.0, 1.0], 1.0)) > 1e-4
    assert abs(logp([1.0, 0.0], 1.0) - logp([1.0, 0.0], 0.0)) > 1e-4


def test_sft_learns_to_read_the_labels(trained):
    """Each prompt has several responses, each with its own z: after SFT a response is likelier under its
    own label than under another response's (the labels, not only the prompt, select the response)."""
    doc = BackboneManifest.read(trained[1] / "tiny-ric")
    recipe = doc.recipe_config()
    w0, tok = load_base_model(recipe.model)
    model = build_mixed_model(w0, [load_adapter_state(doc.adapters()[0][1])], doc.lora(), doc.names)
    set_coefficients(model, [1.0])
    rows = [json.loads(line) for line in (trained[1] / "tiny-ric" / ric.DATASET).read_text().splitlines()]
    gaps = []
    for row in rows:
        other = next(
            (r for r in rows if r["prompt"] == row["prompt"] and r["relabeled"] != row["relabeled"]), None
        )
        if other is not None:
            assert row["relabeled"] == relabel(row["prompt"], row["z"], doc.conditioning.prompt)
            own, swapped = (SFTExample(r["relabeled"], row["completion"]) for r in (row, other))
            gaps.append(
                completion_logprob(model, tok, [own], recipe.model)
                - completion_logprob(model, tok, [swapped], recipe.model)
            )
    gaps = np.asarray(gaps)
    assert len(gaps) >= 8 and gaps.mean() > 0 and (gaps > 0).mean() >= 0.75, gaps


def test_cli_refuses_bad_inputs_before_any_model_loads(env, capsys):
    assert main(["--recipe", "tiny", "--ric.low_quantile", "0.9", "--ric.high_quantile", "0.1"]) == 2
    assert "ric.high_quantile" in capsys.readouterr().err
    assert main(["--recipe", "tiny", "--reward-space", str(env / "missing.json")]) == 2
    assert "--reward-space" in capsys.readouterr().err
