"""The HTTP protocol, responses: OpenAI's ``text_completion`` / ``chat.completion`` bodies and SSE chunks for
a ``protocol.GenerationRequest``, each with soupkitchen's ``soup`` field (μ, mode, γ, α as decoded)."""

from __future__ import annotations

from soupkitchen.serving.protocol import GenerationRequest


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _soup_fields(req: GenerationRequest, experts: dict | None) -> dict:
    out = {
        "preference": list(req.preference.weights),
        "mode": req.mode.value,
        "gamma": req.gamma,
        "alpha": req.alpha,
    }
    return out | ({"experts": experts} if experts is not None else {})


def response(
    req: GenerationRequest,
    model: str,
    text: str,
    finish: str,
    use: dict,
    fingerprint: str,
    batch_size: int,
    experts: dict | None = None,
) -> dict:
    """The non-streaming body: ``text_completion`` or ``chat.completion``, plus ``soup``: μ, mode, γ, α, the
    size of the decoding batch the request shared and (mode hoe) the selected experts with their ω_r."""
    if req.kind == "completion":
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        obj, prefix = "text_completion", "cmpl"
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        obj, prefix = "chat.completion", "chatcmpl"
    return {
        "id": f"{prefix}-{req.id}",
        "object": obj,
        "created": req.created,
        "model": model,
        "choices": [choice],
        "usage": use,
        "system_fingerprint": fingerprint,
        "soup": {**_soup_fields(req, experts), "batch_size": batch_size},
    }


def chunk(
    req: GenerationRequest,
    model: str,
    text: str | None,
    finish: str | None,
    first: bool,
    use: dict | None,
    experts: dict | None = None,
) -> dict:
    """One SSE chunk (``text_completion`` / ``chat.completion.chunk``); ``use`` only in the usage chunk; the
    first carries ``soup`` (with ``experts`` for mode hoe)."""
    if req.kind == "completion":
        choices = (
            [] if text is None else [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]
        )
        obj, prefix = "text_completion", "cmpl"
    else:
        delta = {"role": "assistant", "content": text} if first else {"content": text}
        choices = [] if text is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        obj, prefix = "chat.completion.chunk", "chatcmpl"
    out = {
        "id": f"{prefix}-{req.id}",
        "object": obj,
        "created": req.created,
        "model": model,
        "choices": choices,
    }
    if use is not None:
        out["usage"] = use
    if first:
        out["soup"] = _soup_fields(req, experts)
    return out
