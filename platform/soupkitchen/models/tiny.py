"""The ``tiny`` base model for tests: a word-level tokenizer and a random GPT-2, both built in code.

Nothing is downloaded and everything is deterministic: the vocabulary is a fixed list, and the weights
come from ``torch.manual_seed(cfg.seed)`` inside a forked RNG, so two builds give identical state dicts
and building does not disturb the caller's random state.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from soupkitchen.config import TinyModelConfig

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
TINY_SPECIAL_TOKENS: list[str] = [PAD, EOS, BOS, UNK]  # ids 0..3, in this order

# Reward keywords of recipes/tiny.yaml (two competing objectives).
TINY_WARM_WORDS: list[str] = ["happy", "kind", "warm", "love", "joy", "bright"]
TINY_CALM_WORDS: list[str] = ["safe", "calm", "quiet", "rest", "slow", "still"]

# Common English words (lower case, unique). Prompts for the builtin tiny data set are drawn from these.
_COMMON_WORDS = """
the a an and or but so if then than because when where what who how why which that this these
i you he she it we they me him her us them my your his its our their
is are was were be do did have has had can will would should could may
not no yes very more most less some any all every each many much few one two three
go went come came see saw look find make made take give get know think feel want
need like say said tell ask help try play run walk sit stand sleep eat read write talk
listen wait stay keep hold open close start stop live work learn
good bad big small little old new young long short high low hot cold soft hard fast gentle
sad angry tired busy dark free nice sweet fine best better
day night morning time year today now here there home house room door
garden tree flower sun moon star sky rain wind sea water light road town city world
friend mother father child children family people man woman dog cat bird book song story
food bread bed heart mind life name way place
in on at to from with for of about under over into out up down near after before
again only just too well together away back
"""
TINY_VOCAB: list[str] = TINY_WARM_WORDS + TINY_CALM_WORDS + _COMMON_WORDS.split()

TINY_PUNCTUATION: list[str] = [".", ",", "?", "!"]
# ``tiny.preference_tokens``: what a relabeled prompt (``<R1> 0.30 <R2> 0.70 ...``) splits into
TINY_PREFERENCE_TOKENS: list[str] = ["<", ">", "r", "-", *map(str, range(10))]


def build_tiny_tokenizer(preference_tokens: bool = False) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over ``TINY_SPECIAL_TOKENS + TINY_VOCAB + TINY_PUNCTUATION`` (+
    ``TINY_PREFERENCE_TOKENS``, with numbers split into single digits, when ``preference_tokens``).

    Text is lower-cased and split on whitespace and punctuation; unknown words map to ``<unk>``. No BOS/EOS
    is added on encode. ``<pad>`` is distinct from ``<eos>``; padding (and truncation) is on the left so a
    batch of prompts ends where generation starts.
    """
    tokens = TINY_SPECIAL_TOKENS + TINY_VOCAB + TINY_PUNCTUATION
    split = pre_tokenizers.Whitespace()
    if preference_tokens:
        tokens = tokens + TINY_PREFERENCE_TOKENS
        split = pre_tokenizers.Sequence([split, pre_tokenizers.Digits(individual_digits=True)])
    tok = Tokenizer(WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = split
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        bos_token=BOS,
        unk_token=UNK,
        padding_side="left",
        truncation_side="left",
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(
    cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast | None = None
) -> GPT2LMHeadModel:
    """Random GPT-2 seeded by ``cfg.seed``: c_attn/c_fc/c_proj modules, tied embeddings, no dropout."""
    tokenizer = tokenizer or build_tiny_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model.eval()


def build_tiny(cfg: TinyModelConfig) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """``(model, tokenizer)`` for ``model.source: tiny``."""
    tokenizer = build_tiny_tokenizer(cfg.preference_tokens)
    tokenizer.model_max_length = cfg.n_positions
    return build_tiny_model(cfg, tokenizer), tokenizer
