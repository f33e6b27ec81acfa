"""Rewards: every kind on hand-built examples, the HF reward-model path on tiny local models, the
registry's config errors, RewardSet and the per-objective normaliser. CPU only, no network."""

from __future__ import annotations

import json
import os
import typing
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from soupkitchen.config import ConfigError, NormalizationConfig, RewardConfig, load_recipe  # noqa: E402
from soupkitchen.rewards import (  # noqa: E402
    PRESETS,
    REWARD_KINDS,
    Reward,
    RewardNormalizer,
    build_reward,
    build_rewards,
    validate_reward_params,
    words,
)
from soupkitchen.rewards.presets import PRESET_ALIASES  # noqa: E402


def reward(kind: str, name: str = "r", **params):
    return build_reward(RewardConfig(name=name, kind=kind, params=params))


# ---------------------------------------------------------------------------------------- rule based


def test_words_split_on_non_alphanumerics():
    assert words("Don't stop-now, 2 times!") == ["Don", "t", "stop", "now", "2", "times"]
    assert words("  ...  ") == []


def test_keyword_fraction_count_and_case():
    kw = ["happy", "kind", "warm"]
    text = "Happy, kind words make a warm day!"  # 7 words, 3 keywords
    assert reward("keyword", keywords=kw).score(["p"], [text]) == [3 / 7]
    assert reward("keyword", keywords=kw, mode="count").score(["p"], [text]) == [3.0]
    assert reward("keyword", keywords=kw, case_sensitive=True).score(["p"], [text]) == [2 / 7]
    assert reward("keyword", keywords=kw).score(["p", "p"], ["", "?!"]) == [0.0, 0.0]
    assert reward("keyword", keywords=kw).score([], []) == []


def test_disjoint_keyword_sets_conflict():
    warm = reward("keyword", keywords=["happy", "warm"])
    calm = reward("keyword", keywords=["calm", "quiet"])
    responses = ["happy warm happy", "calm quiet", "happy calm", "warm quiet day"]
    w, c = np.array(warm.score([""] * 4, responses)), np.array(calm.score([""] * 4, responses))
    assert np.all(w + c <= 1.0 + 1e-12)
    assert w[0] == 1.0 and c[0] == 0.0 and w[1] == 0.0 and c[1] == 1.0


def test_length_units_and_modes():
    text = "One two, three"  # 3 words, 14 chars, 4 tokens ("One", "two", ",", "three")
    assert reward("length", max_len=10).score(["p"], [text]) == [0.3]
    assert reward("length", unit="chars", max_len=28).score(["p"], [text]) == [0.5]
    assert reward("length", unit="tokens", max_len=8).score(["p"], [text]) == [0.5]
    assert reward("length", target=5).score(["p", "p"], [text, ""]) == [-0.4, -1.0]
    assert reward("length", max_len=2).score(["p"], [text]) == [1.0]
    assert reward("length", max_len=2, clip=False).score(["p"], [text]) == [1.5]


def test_vader_sign_and_fields():
    good = "I love this, it is wonderful and makes me very happy!"
    bad = "This is terrible, I hate it and it makes me sad and angry."
    compound = reward("vader").score(["", ""], [good, bad])
    assert compound[0] > 0.5 and compound[1] < -0.5
    pos = reward("vader", field="pos").score(["", ""], [good, bad])
    assert 0.0 <= pos[1] < pos[0] <= 1.0


def test_rewards_follow_protocol_and_check_inputs():
    r = reward("keyword", keywords=["a"])
    assert isinstance(r, Reward) and r.name == "r"
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        r.score(["a", "b"], ["a"])
    with pytest.raises(TypeError):
        r.score("a", "b")


# ---------------------------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm():
    return build_reward({"name": "relevance", "kind": "minilm_relevance", "params": {"batch_size": 4}})


def test_minilm_on_topic_beats_off_topic(minilm):
    prompt = "How do I bake a loaf of bread at home?"
    on = "Mix flour, water, salt and yeast, let the dough rise, then bake it in a hot oven."
    off = "The stock market fell sharply today after the central bank raised interest rates."
    s = minilm.score([prompt, prompt, prompt], [on, off, "   "])
    assert s[0] > s[1] + 0.2
    assert -1.0 <= s[1] <= 1.0
    assert s[2] == 0.0  # blank response → empty_value
    assert minilm.score([prompt], [on]) == pytest.approx([s[0]], abs=1e-5)


# ---------------------------------------------------------------------------------------- HF classifiers

VOCAB = [  # word-level vocabulary of the tiny tokenizers (anything else is [UNK])
    "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "good", "bad", "post", "summary", "says",
    "hello", "world", "is", "very", "nice", "story", "about", "day", "long", "short", "text", "of", "and",
    "it", "was",
]  # fmt: skip


def _tokenizer(bert_style: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<eos>"]
    vocab = {w: i for i, w in enumerate(specials + VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bert_style:  # [CLS] a [SEP] b [SEP], with a pad token
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
        )
    # GPT-2 style: no pad token, bos = eos, pairs are plain concatenation
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", bos_token="<eos>", eos_token="<eos>"
    )


@pytest.fixture(scope="module")
def tiny_rms(tmp_path_factory):
    """Two tiny reward models saved to disk: GPT-2 (1 label, no pad token) and BERT (2 labels)."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2ForSequenceClassification,
    )

    root = tmp_path_factory.mktemp("rms")
    torch.manual_seed(0)
    gpt2_tok = _tokenizer(bert_style=False)
    n_vocab = len(gpt2_tok)
    gpt2 = GPT2ForSequenceClassification(
        GPT2Config(
            vocab_size=n_vocab,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=64,
            num_labels=1,
            bos_token_id=4,
            eos_token_id=4,
        )
    )
    bert = BertForSequenceClassification(
        BertConfig(
            vocab_size=n_vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=64, num_labels=2, pad_token_id=0,
        )
    )  # fmt: skip
    for module in (gpt2, bert):  # random heads give tiny logits: scale them up so differences are visible
        with torch.no_grad():
            for p in module.parameters():
                p.mul_(3.0)
    dirs = {"gpt2": root / "gpt2", "bert": root / "bert"}
    gpt2.save_pretrained(dirs["gpt2"])
    gpt2_tok.save_pretrained(dirs["gpt2"])
    bert.save_pretrained(dirs["bert"])
    _tokenizer(bert_style=True).save_pretrained(dirs["bert"])
    return {k: str(v) for k, v in dirs.items()}


PROMPTS = [
    "hello world",
    "### Instruction: summary of post ### Input: the cat sat on the mat and it was a very nice day "
    "### Response:",
    "a dog ran far",
    "the story is about a long day",
    "good or bad",
]
RESPONSES = ["the cat sat", "a cat on a mat", "it was very nice and good", "short", ""]


def _manual(model_dir: str, text, pair, index: int, max_length: int = 64) -> float:
    """Reference score: one unpadded forward of the model loaded independently."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    kw = {"truncation": True, "max_length": max_length, "return_tensors": "pt"}
    enc = tok(text, pair, **kw) if pair is not None else tok(text, **kw)
    if enc["input_ids"].shape[1] == 0:
        enc = {"input_ids": torch.tensor([[tok.eos_token_id]]), "attention_mask": torch.tensor([[1]])}
    with torch.no_grad():
        return float(model(**enc).logits[0, index])


def _post(prompt: str) -> str:
    return (
        prompt.split("### Input:")[1].split("### Response:")[0].strip() if "### Input:" in prompt else prompt
    )


CASES = [  # (model, params, text-pair builder, logit index)
    ("gpt2", {"input": "pair"}, lambda p, r: (p, r), 0),
    ("gpt2", {"input": "response"}, lambda p, r: (r, None), 0),
    (
        "gpt2",
        {
            "input": "template",
            "template": "{response} {bos} {prompt}",
            "prompt_extract": r"### Input:(.*)### Response:",
        },
        lambda p, r: (f"{r} <eos> {_post(p)}", None),
        0,
    ),
    ("bert", {"input": "pair", "output_index": 1}, lambda p, r: (p, r), 1),
    ("bert", {"input": "pair", "output_index": 0}, lambda p, r: (p, r), 0),
    ("bert", {"input": "response", "output_index": 1}, lambda p, r: (r, None), 1),
    ("bert", {"input": "response_pair_prompt", "output_index": 1}, lambda p, r: (r, p), 1),
]


@pytest.mark.parametrize(
    "model_key,params,build,index", CASES, ids=[f"{c[0]}-{c[1]['input']}-{c[3]}" for c in CASES]
)
def test_hf_classifier_matches_manual_forward(tiny_rms, model_key, params, build, index):
    rm = reward("hf_classifier", model=tiny_rms[model_key], batch_size=2, **params)
    got = rm.score(PROMPTS, RESPONSES)
    want = [
        _manual(tiny_rms[model_key], *build(p, r), index) for p, r in zip(PROMPTS, RESPONSES, strict=True)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert len(set(np.round(got, 6))) > 2  # the rows really differ


@pytest.mark.parametrize("model_key,extra", [("gpt2", {}), ("bert", {"output_index": 1})])
def test_hf_classifier_batching_invariance(tiny_rms, model_key, extra):
    batched = reward("hf_classifier", model=tiny_rms[model_key], batch_size=2, **extra)
    single = reward("hf_classifier", model=tiny_rms[model_key], batch_size=1, **extra)
    one_at_a_time = [single.score([p], [r])[0] for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    np.testing.assert_allclose(batched.score(PROMPTS, RESPONSES), one_at_a_time, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(batched.score(PROMPTS, RESPONSES), batched.score(PROMPTS, RESPONSES))
    assert batched.tokenizer.pad_token is not None and batched.tokenizer.padding_side == "right"


def test_hf_classifier_truncation_and_rounding(tiny_rms):
    rm = reward("hf_classifier", model=tiny_rms["bert"], output_index=1, max_length=6)
    long = " ".join(["the cat sat on the mat"] * 4)
    assert rm.max_length == 6
    assert rm.score([long], [long]) == pytest.approx(
        [_manual(tiny_rms["bert"], long, long, 1, max_length=6)], abs=1e-5
    )
    rounded = reward("hf_classifier", model=tiny_rms["bert"], output_index=1, round_decimals=1)
    assert all(round(v, 1) == v for v in rounded.score(PROMPTS, RESPONSES))


def test_hf_presets_table_and_resolution(tiny_rms):
    for name, preset in PRESETS.items():
        assert preset.model and preset.input in ("pair", "response", "response_pair_prompt", "template"), name
    assert PRESETS["ray2333-helpful"].params() == {
        "model": "Ray2333/gpt2-large-helpful-reward_model",
        "input": "pair",
        "max_length": 1024,
    }
    assert PRESETS["humor-no-humor"].input == "response" and PRESETS["humor-no-humor"].output_index == 1
    assert PRESETS["cogcomp-faithful"].output_index == 1
    assert PRESETS["tristan-summary"].template == "{response} {bos} {prompt}"
    assert all(v in PRESETS for v in PRESET_ALIASES.values())
    # a known model id alone picks up the preset's format; explicit keys still win
    humor = validate_reward_params(
        {"kind": "hf_classifier", "params": {"model": "mohameddhiab/humor-no-humor"}}
    )
    assert (humor.input, humor.output_index) == ("response", 1)
    summary_as_pair = validate_reward_params(
        {"kind": "hf_classifier", "params": {"preset": "summary", "input": "pair"}}
    )
    assert (summary_as_pair.model, summary_as_pair.template) == ("Tristan/gpt2_reward_summarization", None)
    # a preset with a local model override: the faithful format on the tiny BERT
    rm = reward("hf_classifier", preset="faithful", model=tiny_rms["bert"])
    assert (rm.params.input, rm.output_index) == ("response_pair_prompt", 1)
    want = [_manual(tiny_rms["bert"], r, _post(p), 1) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    np.testing.assert_allclose(rm.score(PROMPTS, RESPONSES), want, rtol=1e-5, atol=1e-5)


def test_hf_output_index_errors(tiny_rms):
    with pytest.raises(ConfigError, match=r"rewards\.0\.params\.output_index.*num_labels=2"):
        reward("hf_classifier", model=tiny_rms["bert"], output_index=2)
    with pytest.raises(ConfigError, match=r"rewards\.0\.params\.output_index.*2 labels"):
        reward("hf_classifier", model=tiny_rms["bert"])
    with pytest.raises(ConfigError, match=r"rewards\.0\.params\.output_index.*num_labels=1"):
        reward("hf_classifier", model=tiny_rms["gpt2"], output_index=1)


def test_hf_pickle_weights_need_the_explicit_opt_in(tiny_rms, tmp_path):
    """A checkpoint with only pickle weights (pytorch_model.bin) is refused by default, naming the key that
    allows it; with the key it loads and scores exactly as the safetensors copy of the same weights."""
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification

    pickled = tmp_path / "bert-bin"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_rms["bert"])
    model.save_pretrained(pickled)  # config + safetensors; the weights then go to a pickle instead
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    for f in pickled.glob("*.safetensors"):
        f.unlink()
    for f in Path(tiny_rms["bert"]).iterdir():
        if "token" in f.name or f.name == "vocab.txt":
            shutil.copy(f, pickled / f.name)
    assert (pickled / "pytorch_model.bin").exists() and not list(pickled.glob("*.safetensors"))
    with pytest.raises(ConfigError, match=r"rewards\.0\.params\.allow_pickle_weights: true"):
        reward("hf_classifier", model=str(pickled), output_index=1)
    opted = reward("hf_classifier", model=str(pickled), output_index=1, allow_pickle_weights=True)
    safe = reward("hf_classifier", model=tiny_rms["bert"], output_index=1)
    assert opted.score(PROMPTS[:2], RESPONSES[:2]) == pytest.approx(safe.score(PROMPTS[:2], RESPONSES[:2]))


def test_hf_unloadable_model_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"rewards\.0\.params\.model"):
        reward("hf_classifier", model=str(tmp_path / "missing-model"))


# ---------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    "kind,params,path,message",
    [
        ("keyword", {"keywords": ["a"], "foo": 1}, "rewards.0.params.foo", "unknown key"),
        ("keyword", {"keywords": []}, "rewards.0.params.keywords", "at least one"),
        ("keyword", {}, "rewards.0.params.keywords", "at least one"),
        ("keyword", {"keywords": "happy"}, "rewards.0.params.keywords", "expected a list"),
        ("keyword", {"keywords": ["ok", "two words"]}, "rewards.0.params.keywords.1", "one word"),
        ("length", {"target": 0}, "rewards.0.params.target", "must lie in"),
        ("length", {"unit": "lines"}, "rewards.0.params.unit", "must be one of"),
        ("vader", {"field": "joy"}, "rewards.0.params.field", "must be one of"),
        (
            "minilm_relevance",
            {"model_path": "/no/such/dir"},
            "rewards.0.params.model_path",
            "local directory",
        ),
        ("hf_classifier", {}, "rewards.0.params.model", "required"),
        ("hf_classifier", {"input": "pair"}, "rewards.0.params.model", "required"),
        ("hf_classifier", {"preset": "nope"}, "rewards.0.params.preset", "unknown preset"),
        (
            "hf_classifier",
            {"model": "m", "input": "template"},
            "rewards.0.params.template",
            "needs a template",
        ),
        (
            "hf_classifier",
            {"model": "m", "input": "template", "template": "{post}"},
            "rewards.0.params.template",
            "post",
        ),
        ("hf_classifier", {"model": "m", "template": "{response}"}, "rewards.0.params.template", "only used"),
        (
            "hf_classifier",
            {"model": "m", "prompt_extract": "no group"},
            "rewards.0.params.prompt_extract",
            "group",
        ),
        ("hf_classifier", {"model": "m", "output_index": -1}, "rewards.0.params.output_index", "must lie in"),
        ("hf_classifier", {"model": "m", "device": "gpu"}, "rewards.0.params.device", "cuda"),
        ("hf_classifier", {"model": "m", "dtype": "int8"}, "rewards.0.params.dtype", "must be one of"),
    ],
)
def test_bad_params_are_config_errors_with_path(kind, params, path, message):
    with pytest.raises(ConfigError) as err:
        build_reward(RewardConfig(name="x", kind=kind, params=params), path="rewards.0")
    assert err.value.path == path
    assert message in str(err.value) and path in str(err.value)


def test_unknown_kind_lists_allowed_kinds():
    with pytest.raises(ConfigError, match=r"rewards\.2\.kind: must be one of 'length', 'keyword'") as err:
        build_reward({"name": "x", "kind": "sentiment"}, path="rewards.2")
    assert all(repr(k) in str(err.value) for k in REWARD_KINDS)
    with pytest.raises(ConfigError, match="^kind: must be one of"):  # refused when built, in code too
        RewardConfig(name="x", kind="sentiment")
    assert typing.get_args(RewardConfig.model_fields["kind"].annotation) == tuple(REWARD_KINDS)


def test_every_shipped_recipe_has_valid_reward_params():
    from soupkitchen.config import available_recipes

    for name in available_recipes():
        for i, cfg in enumerate(load_recipe(name).rewards):
            validate_reward_params(cfg, f"rewards.{i}")  # no model is loaded


# ---------------------------------------------------------------------------------------- RewardSet


def test_tiny_recipe_builds_conflicting_reward_set():
    rs = build_rewards(load_recipe("tiny").rewards)
    assert rs.names == ["warm", "calm"] and len(rs) == 2
    m = rs.score(["p"] * 3, ["happy warm joy", "calm quiet rest", "happy calm day words"])
    assert m.dtype == np.float64 and m.shape == (3, 2)
    np.testing.assert_array_equal(m, [[1.0, 0.0], [0.0, 1.0], [0.25, 0.25]])


def test_reward_set_matrix_order_and_normalisation():
    cfgs = [
        {"name": "kw", "kind": "keyword", "params": {"keywords": ["good"]}},
        {
            "name": "len",
            "kind": "length",
            "params": {"max_len": 4},
            "normalization": {"kind": "fixed", "mean": 0.5, "std": 0.25},
        },
        {"name": "sent", "kind": "vader", "normalization": {"kind": "running"}},
    ]
    rs = build_rewards(cfgs)
    assert rs.names == ["kw", "len", "sent"] and rs["len"].name == "len"
    prompts, responses = ["q"] * 4, ["good good", "bad day", "a good and great day", "terrible awful"]
    raw = rs.score(prompts, responses)
    assert raw.shape == (4, 3) and raw.dtype == np.float64
    np.testing.assert_allclose(raw[:, 0], [1.0, 0.0, 0.2, 0.0])
    np.testing.assert_allclose(raw[:, 1], [0.5, 0.5, 1.0, 0.5])
    normed = rs.score_normalized(prompts, responses, update=True)
    np.testing.assert_allclose(normed[:, 0], raw[:, 0])  # kind none
    np.testing.assert_allclose(normed[:, 1], (raw[:, 1] - 0.5) / 0.25)
    np.testing.assert_allclose(normed[:, 2], (raw[:, 2] - raw[:, 2].mean()) / raw[:, 2].std())
    assert rs.score([], []).shape == (0, 3)
    with pytest.raises(ConfigError, match="unique"):
        build_rewards([cfgs[0], cfgs[0]])


# ---------------------------------------------------------------------------------------- normaliser


def _running(n: int) -> RewardNormalizer:
    return RewardNormalizer(
        [NormalizationConfig(kind="running") for _ in range(n)], [f"o{i}" for i in range(n)]
    )


def test_running_stats_match_numpy_and_merge():
    rng = np.random.default_rng(0)
    data = rng.normal([1e6, -3.0, 0.0], [1e-2, 5.0, 1.0], size=(1000, 3))  # large offset: stability check
    cuts = [0, 1, 1, 37, 400, 401, 1000]  # includes an empty and a one-row batch
    whole = _running(3)
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        whole.update(data[a:b])
    assert whole.count == 1000
    np.testing.assert_allclose(whole.mean, data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(whole.std, data.std(axis=0), rtol=1e-8)
    np.testing.assert_allclose(
        whole.normalize(data), (data - data.mean(0)) / data.std(0), rtol=1e-6, atol=1e-6
    )

    left, right = _running(3).update(data[:300]), _running(3).update(data[300:])
    merged = left.merge(right)
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.std, whole.std, rtol=1e-8)
    assert merged.count == 1000


def test_normalizer_state_dict_is_json_and_round_trips():
    norm = RewardNormalizer(
        [
            NormalizationConfig(kind="running"),
            NormalizationConfig(kind="fixed", mean=2.0, std=4.0),
            NormalizationConfig(),
        ],
        ["a", "b", "c"],
    )
    x = np.arange(12, dtype=float).reshape(4, 3)
    norm.update(x)
    state = json.loads(json.dumps(norm.state_dict()))
    back = RewardNormalizer.from_state_dict(state)
    np.testing.assert_array_equal(back.normalize(x), norm.normalize(x))
    np.testing.assert_allclose(norm.normalize(x)[:, 1], (x[:, 1] - 2.0) / 4.0)
    np.testing.assert_array_equal(norm.normalize(x)[:, 2], x[:, 2])
    frozen = norm.frozen_configs()
    assert [c.kind for c in frozen] == ["fixed", "fixed", "none"]
    assert frozen[0].mean == pytest.approx(x[:, 0].mean()) and frozen[0].std == pytest.approx(x[:, 0].std())
    with pytest.raises(ValueError, match="objectives"):
        _running(2).load_state_dict(state)


def test_normalizer_edge_cases():
    norm = _running(2)
    np.testing.assert_array_equal(norm.normalize([[3.0, 4.0]]), [[3.0, 4.0]])  # nothing seen: identity
    norm.update([5.0, 5.0])  # one row (1-D accepted): centre only, std 1
    np.testing.assert_array_equal(norm.normalize([6.0, 4.0]), [1.0, -1.0])
    norm.update([[5.0, 5.0]] * 3)  # constant column: std floored at eps, finite output
    assert np.isfinite(norm.normalize([[5.0, 6.0]])).all()
    with pytest.raises(ValueError, match="NaN"):
        norm.update([[np.nan, 1.0]])
    with pytest.raises(ValueError, match="shape"):
        norm.update([[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="kinds"):
        norm.merge(RewardNormalizer.identity(2))
