"""Batched generation shared by PPO rollouts and front evaluation.

    gen = generate_batch(model, tokenizer, prompts, recipe.generation, format_prompt=fmt)
    gen.texts            # decoded responses, cut at the first EOS and at any stop string, stripped
    gen.response_mask    # [B, T] 1 up to and including the first EOS or the token completing a stop

Prompts are left-padded (the tokenizer pads left, see ``models.prepare_tokenizer``), so every row's
response starts at column P. ``do_sample=None`` uses the config's setting; ``False`` forces greedy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from soupkitchen.config import GenerationConfig


@dataclass
class Generation:
    sequences: torch.Tensor  # [B, P + T] prompt (left-padded) + response
    attention_mask: torch.Tensor  # [B, P + T] prompt mask + response mask
    response_mask: torch.Tensor  # [B, T]
    prompt_len: int
    texts: list[str]
    has_eos: torch.Tensor  # [B] bool


def clean_text(text: str, stop: list[str]) -> str:
    """Cut at the first occurrence of any stop string, then strip whitespace."""
    for s in stop:
        text = text.split(s, 1)[0]
    return text.strip()


def stop_index(tokenizer, tokens: torch.Tensor, stop: list[str]) -> int | None:
    """Index of the token whose decoding first completes a stop string in ``tokens``, or None.

    Binary search over prefix lengths: "the decoded prefix contains a stop string" only turns true once."""

    def hit(k: int) -> bool:
        text = tokenizer.decode(tokens[:k], skip_special_tokens=True)
        return any(s in text for s in stop)

    if not stop or not hit(len(tokens)):
        return None
    lo, hi = 1, len(tokens)  # hit(hi) holds; find the smallest such k
    while lo < hi:
        mid = (lo + hi) // 2
        if hit(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo - 1


def encode_prompts(tokenizer, prompts, format_prompt=None, max_prompt_tokens: int = 256, device="cpu"):
    """Formatted prompts, left-padded and left-truncated to ``max_prompt_tokens``, no special tokens added."""
    fmt = format_prompt or (lambda p: p)
    return tokenizer(
        [fmt(p) for p in prompts],
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=max_prompt_tokens,
        add_special_tokens=False,
    ).to(device)


@torch.no_grad()
def generate_batch(
    model,
    tokenizer,
    prompts: list[str],
    gen: GenerationConfig,
    *,
    format_prompt: Callable[[str], str] | None = None,
    max_prompt_tokens: int = 256,
    device: str | torch.device = "cpu",
    do_sample: bool | None = None,
    synced_gpus: bool = False,
) -> Generation:
    """Tokenise, ``model.generate`` (KV cache) and decode one batch; see the module docstring."""
    enc = encode_prompts(tokenizer, prompts, format_prompt, max_prompt_tokens, device)
    sample = gen.do_sample if do_sample is None else do_sample
    out = model.generate(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        max_new_tokens=gen.max_new_tokens,
        min_new_tokens=1,
        do_sample=sample,
        temperature=gen.temperature if sample else None,
        top_p=gen.top_p if sample else None,
        top_k=gen.top_k if sample else None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        synced_gpus=synced_gpus,
    )
    P = enc["input_ids"].shape[1]
    response = out[:, P:]
    is_eos = response == tokenizer.eos_token_id
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    response_mask = (~after_eos).long()
    ended = is_eos.any(-1)
    for b, (r, m) in enumerate(zip(response, response_mask, strict=True)):
        # A stop string ends the response like EOS: no credit (or blame) for the tokens after it.
        t = stop_index(tokenizer, r[m.bool()], gen.stop)
        if t is not None:
            response_mask[b, t + 1 :] = 0
            ended[b] = True
    texts = [
        clean_text(tokenizer.decode(r[m.bool()], skip_special_tokens=True), gen.stop)
        for r, m in zip(response, response_mask, strict=True)
    ]
    return Generation(
        sequences=out,
        attention_mask=torch.cat([enc["attention_mask"], response_mask], dim=1),
        response_mask=response_mask,
        prompt_len=P,
        texts=texts,
        has_eos=ended,
    )
