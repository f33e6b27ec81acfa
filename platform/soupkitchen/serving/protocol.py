"""The HTTP protocol: OpenAI-compatible request bodies in, validated ``GenerationRequest`` out; responses,
stream chunks and errors in OpenAI's shapes.

    req = parse_request(body, "chat", info)      # raises APIError(400, message, param) on bad input
    completion_response(req, text, finish, usage, ...)

soupkitchen's extra body fields (the openai client sends them with ``extra_body=``):

    preference  μ: a list with one weight per objective (bundle order), or a mapping objective -> weight
                (missing objectives get 0). Weights must be finite and >= 0, not all 0; they are divided by
                their sum, so [3, 1] means μ = (0.75, 0.25). Default: uniform.
    mode        bone_soup | rewarded_soup | mage_i_m | mage_i | mage_e_m | mage_e | mod (``SoupInfo.modes``)
    gamma       guidance strength γ of the guided modes, in [0, max_gamma]; default: the bundle's γ
    alpha       extrapolation α of the merge c = (1 + α)B⁻¹μ, in [0, max_alpha]; default: the bundle's α
    top_k       sample from the k most likely tokens (0: off)

``temperature: 0`` is greedy decoding (as OpenAI). Parameters that would change what a response means and
are not implemented (n > 1, logprobs, echo, best_of > 1, suffix, tools, logit_bias, penalties) are refused
with a 400 naming them rather than silently ignored.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

MODES = ("bone_soup", "rewarded_soup", "mage_i_m", "mage_i", "mage_e_m", "mage_e", "mod")
ROLES = ("system", "user", "assistant")
# body field -> the value that means "not used"; anything else is refused (not implemented).
UNSUPPORTED = {
    "n": 1,
    "best_of": 1,
    "logprobs": None,
    "top_logprobs": None,
    "echo": False,
    "suffix": None,
    "tools": None,
    "functions": None,
    "tool_choice": None,
    "logit_bias": None,
    "presence_penalty": 0,
    "frequency_penalty": 0,
}


class APIError(Exception):
    """A client-visible error: HTTP ``status`` and OpenAI's ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        type: str = "invalid_request_error",
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def __reduce__(self):  # crosses Ray's object store intact
        return APIError, (self.status, self.message, self.param, self.type, self.code)


@dataclass(frozen=True)
class SoupInfo:
    """What the endpoint serves, as the engine reports it: used to validate requests before they queue."""

    model: str
    objectives: list[str]
    modes: list[str]
    default_mode: str
    gamma: float
    alpha: float
    beta: float | None
    context_length: int
    default_max_tokens: int
    max_tokens_limit: int
    max_gamma: float
    max_alpha: float

    def card(self) -> dict:
        """The ``/v1/models`` entry."""
        return {
            "id": self.model,
            "object": "model",
            "created": 0,
            "owned_by": "soupkitchen",
            "objectives": self.objectives,
            "modes": self.modes,
            "default_mode": self.default_mode,
            "beta": self.beta,
            "alpha": self.alpha,
            "gamma": self.gamma,
            "context_length": self.context_length,
            "max_tokens_limit": self.max_tokens_limit,
        }


@dataclass
class GenerationRequest:
    """One validated request (``parse_request``); ``prompt`` for completions, ``messages`` for chat."""

    kind: str  # "completion" | "chat"
    preference: list[float]
    mode: str
    gamma: float
    alpha: float
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stop: tuple[str, ...]
    seed: int
    stream: bool
    include_usage: bool
    prompt: str | None = None
    messages: list[dict] | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _bad(message: str, param: str | None) -> APIError:
    return APIError(400, message, param)


def _number(body: dict, key: str, default, lo: float, hi: float, integer: bool = False, lo_open=False):
    v = body.get(key, default)
    if v is None:
        v = default
    kind = "an integer" if integer else "a number"
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
        raise _bad(f"'{key}' must be {kind}, got {v!r}", key)
    if not math.isfinite(v) or (v <= lo if lo_open else v < lo) or v > hi:
        raise _bad(f"'{key}' must be {kind} in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}", key)
    return v


def parse_preference(value: Any, objectives: list[str]) -> list[float]:
    """μ from a list (bundle order) or a mapping objective -> weight; non-negative, normalised to sum 1."""
    n = len(objectives)
    if value is None:
        return [1.0 / n] * n
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(objectives))
        if unknown:
            raise _bad(
                f"unknown objective(s) {unknown} in 'preference'; this soup has {objectives}", "preference"
            )
        value = [value.get(o, 0.0) for o in objectives]
    if not isinstance(value, list) or len(value) != n:
        got = f"{len(value)} weights" if isinstance(value, list) else repr(value)
        raise _bad(
            f"'preference' needs one weight per objective {objectives} (a list of {n}, or a mapping "
            f"objective -> weight), got {got}",
            "preference",
        )
    w = []
    for o, x in zip(objectives, value, strict=True):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise _bad(f"'preference' weight for {o!r} must be a finite number, got {x!r}", "preference")
        if x < 0:
            raise _bad(f"'preference' weight for {o!r} is {x}; weights must be >= 0", "preference")
        w.append(float(x))
    total = sum(w)
    if total <= 0:
        raise _bad("'preference' weights are all 0; give at least one positive weight", "preference")
    return [x / total for x in w]


def _stop(value) -> tuple[str, ...]:
    if value is None:
        return ()
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or len(value) > 4 or not all(isinstance(s, str) and s for s in value):
        raise _bad("'stop' must be a non-empty string or a list of at most 4 of them", "stop")
    return tuple(value)


def _messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _bad("'messages' must be a non-empty list of {role, content}", "messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise _bad(f"messages[{i}].role must be one of {list(ROLES)}", f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI's content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise _bad(f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise _bad(f"messages[{i}].content must be a string", f"messages[{i}].content")
        out.append({"role": m["role"], "content": content})
    return out


def parse_request(body: Any, kind: str, info: SoupInfo) -> GenerationRequest:
    """Validate an OpenAI completions (``kind="completion"``) or chat body against ``info``; APIError(400)."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None)
    model = body.get("model")
    if model is not None and model != info.model:
        raise APIError(
            404, f"model {model!r} is not served here; use {info.model!r}", "model", code="model_not_found"
        )
    for key, unused in UNSUPPORTED.items():
        if key in body and body[key] not in (unused, None) and not (key == "logprobs" and body[key] is False):
            raise _bad(f"'{key}' is not supported by this endpoint; remove it", key)
    prompt = messages = None
    if kind == "completion":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise _bad("'prompt' is required: a non-empty string (one prompt per request)", "prompt")
    else:
        messages = _messages(body.get("messages"))
    mode = body.get("mode", info.default_mode)
    if mode not in info.modes:
        raise _bad(f"unknown or unavailable 'mode' {mode!r}; this soup serves {info.modes}", "mode")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = _number({key: max_tokens}, key, info.default_max_tokens, 1, info.max_tokens_limit, True)
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("'stream' must be true or false", "stream")
    seed = body.get("seed")
    if seed is None:
        seed = uuid.uuid4().int % (2**31)
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise _bad(f"'seed' must be an integer, got {seed!r}", "seed")
    return GenerationRequest(
        kind=kind,
        prompt=prompt,
        messages=messages,
        preference=parse_preference(body.get("preference"), info.objectives),
        mode=mode,
        gamma=float(_number(body, "gamma", info.gamma, 0.0, info.max_gamma)),
        alpha=float(_number(body, "alpha", info.alpha, 0.0, info.max_alpha)),
        max_tokens=max_tokens,
        temperature=float(_number(body, "temperature", 1.0, 0.0, 2.0)),
        top_p=float(_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)),
        top_k=_number(body, "top_k", 0, 0, 1_000_000, True),
        stop=_stop(body.get("stop")),
        seed=seed % (2**63),
        stream=stream,
        include_usage=bool(stream_options.get("include_usage", False)),
    )


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _soup_fields(req: GenerationRequest) -> dict:
    return {"preference": req.preference, "mode": req.mode, "gamma": req.gamma, "alpha": req.alpha}


def response(
    req: GenerationRequest, model: str, text: str, finish: str, use: dict, fingerprint: str, batch_size: int
) -> dict:
    """The non-streaming body: ``text_completion`` or ``chat.completion``, plus ``soup``: μ, mode, γ, α and
    the size of the decoding batch the request shared."""
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
        "soup": {**_soup_fields(req), "batch_size": batch_size},
    }


def chunk(
    req: GenerationRequest, model: str, text: str | None, finish: str | None, first: bool, use: dict | None
) -> dict:
    """One SSE chunk (``text_completion`` / ``chat.completion.chunk``); ``use`` only in the usage chunk."""
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
        out["soup"] = _soup_fields(req)
    return out
