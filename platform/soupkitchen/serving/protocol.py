"""The HTTP protocol, requests: OpenAI-compatible bodies in (pydantic models), a validated
``GenerationRequest`` out, errors in OpenAI's shape. Responses and stream chunks: ``serving.responses``.

    body = parse_json(raw)                        # bytes -> JSON value; APIError(400) naming the path
    req = parse_request(body, "chat", info)      # raises APIError(400, message, param) on bad input

``CompletionBody`` / ``ChatBody`` are the bodies' schemas. What a field allows may depend on the soup
(its objectives, modes, γ / α / max_tokens limits): they validate with the endpoint's ``SoupInfo`` as
pydantic's validation context. A ``ValidationError`` becomes one ``APIError``: HTTP 400 (404 for an unknown
``model``) naming the field path (``gamma``, ``messages[0].role``), what it allows and what was given.
Validation happens here once: μ leaves as a ``preferences.Preference``, the mode as a ``methods.Mode``, γ and
α as checked floats, and the engine and the decoding layers only assert them.

soupkitchen's extra body fields (the openai client sends them with ``extra_body=``):

    preference  μ: a list with one weight per objective (bundle order), or a mapping objective -> weight
                (missing objectives get 0). Weights must be finite and >= 0, not all 0; they are divided by
                their sum, so [3, 1] means μ = (0.75, 0.25). Default: uniform.
    mode        bone_soup | rewarded_soups | mage_i_m | mage_i | mage_e_m | mage_e | mod | moc | ric
                (``SoupInfo.modes``: moc / ric when the bundle carries that policy)
    gamma       guidance strength γ of the guided modes, in [0, max_gamma]; default: the bundle's γ
    alpha       extrapolation α of the merge c = (1 + α)B⁻¹μ, in [0, max_alpha]; default: the bundle's α
    top_k       sample from the k most likely tokens (0: off)

``temperature: 0`` is greedy decoding (as OpenAI). Every field of OpenAI's request bodies is type-checked
as its API reference documents it (null only where the reference allows null), even the ones that are
ignored. Parameters that would change what a response means and are not implemented (n > 1, logprobs, echo,
best_of > 1, suffix, tools, functions, logit_bias, penalties, response_format other than text, audio,
modalities other than ["text"], prediction, web_search_options) are refused with a 400 naming them rather
than silently ignored; the rest (``user``, ``metadata``, ``store``, ``service_tier``, ``reasoning_effort``,
``messages[].name``, ...) are ignored. Fields that are not OpenAI's (nor ours) are ignored.
"""

from __future__ import annotations

import difflib
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    InstanceOf,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from soupkitchen.methods import Mode
from soupkitchen.preferences import Preference

ROLES = ("system", "developer", "user", "assistant")  # developer: OpenAI's newer name for system
# body field -> the values that mean "not used" (besides null, where its type allows null); any other value
# (of the field's type, which is checked first) is refused: it would change what the response means, and it
# is not implemented.
UNSUPPORTED: dict[str, tuple] = {
    "n": (1,),
    "best_of": (1,),
    "logprobs": (False,),  # chat: a boolean; completions: an integer (the log probabilities of that many)
    "top_logprobs": (),
    "echo": (False,),
    "suffix": (),
    "tools": (),
    "functions": (),
    "tool_choice": ("none",),
    "function_call": ("none",),
    "logit_bias": ({},),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "response_format": ({"type": "text"},),
    "modalities": (["text"],),
    "audio": (),
    "prediction": (),
    "web_search_options": (),
}
# OpenAI fields that are type-checked and otherwise ignored (they change nothing in what is generated here).
IGNORED = (
    "user",
    "metadata",
    "store",
    "service_tier",
    "parallel_tool_calls",
    "reasoning_effort",
    "verbosity",
    "safety_identifier",
    "prompt_cache_key",
)
# The order fields are reported in when a body has several problems (the first one is answered).
FIELD_ORDER = (
    "model",
    *UNSUPPORTED,
    "prompt",
    "messages",
    "mode",
    "max_completion_tokens",
    "max_tokens",
    "stream_options",
    "stream",
    "seed",
    "preference",
    "gamma",
    "alpha",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    *IGNORED,
)


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
    """What the endpoint serves, as the engine reports it: the context requests are validated against
    before they queue."""

    model: str
    objectives: list[str]
    modes: list[Mode]
    default_mode: Mode
    gamma: float
    alpha: float
    beta: float | None
    context_length: int
    default_max_tokens: int
    max_tokens_limit: int
    max_gamma: float
    max_alpha: float
    experts: tuple[dict, ...] = ()  # HoE: the served experts ({name, kind, preference, votes}), mode hoe

    def card(self) -> dict:
        """The ``/v1/models`` entry."""
        return {
            "id": self.model,
            "object": "model",
            "created": 0,
            "owned_by": "soupkitchen",
            "objectives": self.objectives,
            "modes": [m.value for m in self.modes],
            "default_mode": self.default_mode.value,
            "beta": self.beta,
            "alpha": self.alpha,
            "gamma": self.gamma,
            "context_length": self.context_length,
            "max_tokens_limit": self.max_tokens_limit,
        } | ({"experts": list(self.experts)} if self.experts else {})


@dataclass(frozen=True)
class GenerationRequest:
    """One validated request (``parse_request``); ``prompt`` for completions, ``messages`` for chat. Its μ,
    mode, γ and α are typed and valid: the layers below assert, they do not re-validate."""

    kind: str  # "completion" | "chat"
    preference: Preference
    mode: Mode
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


# --------------------------------------------------------------------------------------------- bodies


def _fail(message: str, kind: str = "soup") -> PydanticCustomError:
    """A validator's own error: ``message`` says what is wrong and what is allowed (``api_error`` puts the
    field path in front)."""
    return PydanticCustomError(kind, "{message}", {"message": message})


def _show(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (error messages echo what was given, not a whole body)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _info(vi: ValidationInfo) -> SoupInfo:
    assert vi.context and isinstance(vi.context.get("info"), SoupInfo), "validate with context={'info': ...}"
    return vi.context["info"]


def _preference(value: Any, objectives: list[str]) -> Preference:
    """μ from a list (bundle order) or a mapping objective -> weight; non-negative, normalised to sum 1."""
    n = len(objectives)
    if value is None:
        return Preference(tuple([1.0 / n] * n))
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(objectives), key=str)
        if unknown:
            raise _fail(f"unknown objective(s) {unknown}; this soup has {objectives}")
        value = [value.get(o, 0.0) for o in objectives]
    if not isinstance(value, list) or len(value) != n:
        got = f"{len(value)} weights" if isinstance(value, list) else _show(value)
        raise _fail(
            f"needs one weight per objective {objectives} (a list of {n}, or a mapping objective -> weight), "
            f"got {got}"
        )
    w = []
    for o, x in zip(objectives, value, strict=True):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise _fail(f"the weight for {o!r} must be a finite number, got {_show(x)}")
        if x < 0:
            raise _fail(f"the weight for {o!r} is {x}; weights must be >= 0")
        w.append(float(x))
    top = max(w)
    if top <= 0:
        raise _fail("the weights are all 0; give at least one positive weight")
    w = [x / top for x in w]  # relative weights: [1e308, 1e308] is [1, 1], whose sum does not overflow
    total = sum(w)
    return Preference(tuple(x / total for x in w))


def _limit(value, hi: float):
    """A soup-dependent upper bound (γ, α, max_tokens): the converter says what the field allows."""
    if value is not None and value > hi:
        raise PydanticCustomError("out_of_range", "out of range")
    return value


class ChatMessage(BaseModel):
    """One chat message: a role and text content (OpenAI's text parts are joined); ``name`` is type-checked
    and ignored, other keys are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    role: Literal["system", "user", "assistant"]  # "developer" arrives as "system" (``_object``)
    content: str = Field(strict=True)
    name: str = Field(None, strict=True)  # absent: none; null is not a documented value (refused)

    @model_validator(mode="before")
    @classmethod
    def _object(cls, data):
        # not an object: report it on its role, as for an object with a bad role
        if not isinstance(data, dict):
            return {"role": None if data in ROLES else data}
        return data | {"role": "system"} if data.get("role") == "developer" else data

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, v):
        if isinstance(v, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in v):
                raise _fail('only text parts are supported: [{"type": "text", "text": "..."}]')
            if not all(isinstance(p.get("text"), str) for p in v):
                raise _fail('each text part needs "text": a string')
            return "".join(p["text"] for p in v)
        return v


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    include_usage: bool = Field(False, strict=True)
    include_obfuscation: bool = Field(True, strict=True)  # ignored: no obfuscation field is sent


def _same(v, x) -> bool:
    """``v == x`` where false is not 0 and true is not 1."""
    return v == x and isinstance(v, bool) == isinstance(x, bool)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _nullable(ok, allowed: str):
    """A before-validator: null passes; a value ``ok`` rejects is refused, saying what is ``allowed``."""

    def check(cls, v):
        if v is not None and not ok(v):
            raise _fail(f"must be {allowed}, got {_show(v)}")
        return v

    return classmethod(check)


class _Body(BaseModel):
    """The fields both endpoints share. Every OpenAI field is type-checked as the API reference documents it,
    even where it is ignored; those in ``UNSUPPORTED`` are refused unless they hold a "not used" value.
    Fields that are not OpenAI's (nor soupkitchen's) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    # absent: the served model (null, like any non-string, is refused: not a model id)
    model: str = Field(None, strict=True)
    user: str = Field(None, strict=True)
    n: int | None = Field(None, strict=True)
    best_of: int | None = Field(None, strict=True)
    top_logprobs: int | None = Field(None, strict=True)
    echo: bool | None = Field(None, strict=True)
    suffix: str | None = Field(None, strict=True)
    tools: list = Field(None, strict=True)
    functions: list = Field(None, strict=True)
    tool_choice: Any = None  # "none" | "auto" | "required" | an object naming a tool (``_choice``)
    logit_bias: Any = None  # an object: token id -> an integer in [-100, 100], or null (``_logit_bias``)
    presence_penalty: float | None = Field(None, strict=True, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, strict=True, allow_inf_nan=False)
    mode: InstanceOf[Mode] | None = None  # absent: the soup's default_mode (an explicit null is refused)
    max_completion_tokens: int | None = Field(None, ge=1, strict=True)
    max_tokens: int | None = Field(None, ge=1, strict=True)
    stream: bool | None = Field(None, strict=True)
    stream_options: StreamOptions | None = None  # only with stream: true (after ``stream``: it reads it)
    seed: int | None = Field(None, strict=True)
    preference: InstanceOf[Preference] = Field(None, validate_default=True)
    gamma: float | None = Field(None, ge=0.0, strict=True, allow_inf_nan=False)
    alpha: float | None = Field(None, ge=0.0, strict=True, allow_inf_nan=False)
    temperature: float | None = Field(None, ge=0.0, le=2.0, strict=True, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, strict=True, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0, le=1_000_000, strict=True)
    stop: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _max_tokens_alias(cls, data):
        if isinstance(data, dict) and "max_completion_tokens" in data:  # the newer name wins
            data = {k: v for k, v in data.items() if k != "max_tokens"}
        return data

    @field_validator("model")
    @classmethod
    def _served_model(cls, v, vi: ValidationInfo):
        served = _info(vi).model
        if v is not None and v != served:
            raise _fail(f"model {v!r} is not served here; use {served!r}", "model_not_found")
        return v

    @field_validator("tool_choice", "function_call", mode="before", check_fields=False)
    @classmethod
    def _choice(cls, v, vi: ValidationInfo):
        words = ["none", "auto", "required"] if vi.field_name == "tool_choice" else ["none", "auto"]
        if not (isinstance(v, dict) or isinstance(v, str) and v in words):
            raise _fail(f"must be one of {words} or an object naming a function, got {_show(v)}")
        return v

    _logit_bias = field_validator("logit_bias", mode="before")(
        _nullable(
            lambda v: isinstance(v, dict) and all(_int(x) and -100 <= x <= 100 for x in v.values()),
            "an object mapping token ids to integers in [-100, 100]",
        )
    )

    @field_validator(*UNSUPPORTED, check_fields=False)
    @classmethod
    def _unsupported(cls, v, vi: ValidationInfo):
        unused = UNSUPPORTED[vi.field_name]
        if v is not None and not any(_same(v, x) for x in unused):
            alt = " or send " + " or ".join(json.dumps(x) for x in unused) if unused else ""
            raise _fail(
                f"not supported by this endpoint (it would change what the response means); remove it{alt}"
            )
        return v

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, v, vi: ValidationInfo):
        modes = _info(vi).modes
        if isinstance(v, str) and v in modes:
            return Mode(v)
        served = ", ".join(m.value for m in modes)
        if isinstance(v, str) and v in set(Mode):
            md = Mode(v)
            why = (
                "it has no value models"
                if md.explicit
                else f"it carries no {v} policy"
                if md.conditioned
                else "it carries no HoE expert set (jobs/build_hoe.py)"
                if md is Mode.HOE
                else "it is not a Bone Soup bundle"
            )
            raise _fail(f"mode {v!r} is not available for this soup ({why}); it serves {served}")
        close = difflib.get_close_matches(v, [m.value for m in modes], n=1) if isinstance(v, str) else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise _fail(f"unknown mode {_show(v)}; this soup serves {served}{hint}")

    @field_validator("max_completion_tokens", "max_tokens")
    @classmethod
    def _max_tokens(cls, v, vi: ValidationInfo):
        return _limit(v, _info(vi).max_tokens_limit)

    @field_validator("stream_options")
    @classmethod
    def _only_streaming(cls, v, vi: ValidationInfo):
        if v is not None and not vi.data.get("stream"):
            raise _fail('only allowed with "stream": true (as OpenAI); remove it or stream')
        return v

    @field_validator("preference", mode="before")
    @classmethod
    def _preference(cls, v, vi: ValidationInfo):
        return _preference(v, _info(vi).objectives)

    @field_validator("gamma")
    @classmethod
    def _gamma(cls, v, vi: ValidationInfo):
        return _limit(v, _info(vi).max_gamma)

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v, vi: ValidationInfo):
        return _limit(v, _info(vi).max_alpha)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v):
        if v is None:
            return ()
        v = [v] if isinstance(v, str) else v
        if not isinstance(v, list) or len(v) > 4 or not all(isinstance(s, str) and s for s in v):
            raise _fail("must be a non-empty string or a list of at most 4 of them")
        return tuple(v)


class CompletionBody(_Body):
    """``POST /v1/completions``: one prompt per request."""

    prompt: str = Field(None, validate_default=True)
    logprobs: int | None = Field(None, strict=True)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, v):
        if isinstance(v, list) and len(v) == 1:
            v = v[0]
        if isinstance(v, list) and v and all(_int(x) for x in v):
            raise _fail("token-id prompts are not supported: send the prompt as text")
        if isinstance(v, list) and all(isinstance(x, (str, list)) for x in v) and len(v) > 1:
            raise _fail(f"a list of {len(v)} prompts: send one prompt per request (as a string)")
        if not isinstance(v, str) or not v:
            raise _fail("required: a non-empty string (one prompt per request)")
        return v


class ChatBody(_Body):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = Field(None, strict=True)
    function_call: Any = None  # "none" | "auto" | an object naming a function (``_choice``)
    response_format: Any = None  # an object {"type": "text" | "json_object" | "json_schema", ...}
    modalities: Any = None  # a list of "text" / "audio", or null
    audio: dict | None = Field(None, strict=True)
    prediction: dict | None = Field(None, strict=True)
    web_search_options: dict = Field(None, strict=True)
    # type-checked, otherwise ignored
    metadata: Any = None  # at most 16 pairs: a key of <= 64 characters -> a string of <= 512, or null
    store: bool | None = Field(None, strict=True)
    parallel_tool_calls: bool = Field(None, strict=True)
    service_tier: str | None = Field(None, strict=True)
    reasoning_effort: str | None = Field(None, strict=True)
    verbosity: str | None = Field(None, strict=True)
    safety_identifier: str = Field(None, strict=True)
    prompt_cache_key: str = Field(None, strict=True)

    @field_validator("response_format", mode="before")
    @classmethod
    def _response_format(cls, v):
        kinds = ["text", "json_object", "json_schema"]
        if not (isinstance(v, dict) and v.get("type") in kinds):
            raise _fail(f'must be an object {{"type": one of {kinds}, ...}}, got {_show(v)}')
        return v

    _modalities = field_validator("modalities", mode="before")(
        _nullable(
            lambda v: isinstance(v, list) and all(m in ("text", "audio") for m in v),
            'a list of "text" / "audio" (or null)',
        )
    )
    _metadata = field_validator("metadata", mode="before")(
        _nullable(
            lambda v: (
                isinstance(v, dict)
                and len(v) <= 16
                and all(len(k) <= 64 and isinstance(x, str) and len(x) <= 512 for k, x in v.items())
            ),
            "an object of at most 16 pairs, each a key of at most 64 characters -> a string of at most 512 "
            "(or null)",
        )
    )


BODIES: dict[str, type[_Body]] = {"completion": CompletionBody, "chat": ChatBody}


# ------------------------------------------------------------------------------------------ raw bodies

MAX_DEPTH = 32  # the deepest body field (messages[i].content[j].text) is 5 levels down


class _Keys(dict):
    """A JSON object as parsed, remembering the keys it had twice (the last one wins in ``json``)."""

    repeated: tuple = ()


def _object_pairs(pairs: list) -> dict:
    out = _Keys(pairs)
    if len(out) < len(pairs):
        seen: set = set()
        out.repeated = tuple(k for k, _ in pairs if k in seen or seen.add(k))
    return out


def _bad_text(s: str) -> int:
    """The index of the first lone UTF-16 surrogate in ``s`` (text no tokenizer can encode), else -1."""
    try:
        s.encode("utf-8")
        return -1
    except UnicodeEncodeError as e:
        return e.start


def parse_json(raw: bytes) -> Any:
    """A request body as a JSON value, or APIError(400) naming where it is broken, before any field is read.

    Refused, each by its class rather than by case: bytes that are not UTF-8; text that is not JSON; nesting
    deeper than ``MAX_DEPTH`` (the parser's own recursion limit included); NaN, Infinity and numbers beyond
    a double's range (``1e400``), which are not JSON numbers; an object with a repeated key (its value would
    be ambiguous); strings or keys holding a lone UTF-16 surrogate (``"\\ud800"``: valid JSON, but not
    Unicode text, so no tokenizer can encode it). The value is walked iteratively, so no depth can overflow
    a Python stack here.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(
            400, f"the body is not valid UTF-8 (byte {e.start}): send UTF-8 encoded JSON", None
        ) from None
    try:
        value = json.loads(text, object_pairs_hook=_object_pairs)
    except ValueError as e:  # JSONDecodeError, or an integer of over 4300 digits
        raise APIError(400, f"the body is not valid JSON: {e}", None) from None
    except RecursionError:
        raise APIError(400, f"the body is nested too deeply: at most {MAX_DEPTH} levels", None) from None
    stack: list[tuple[Any, tuple, int]] = [(value, (), 0)]
    while stack:
        v, loc, depth = stack.pop()
        where = _param(loc)
        at = f"{where}: " if where else "the body: "
        if depth > MAX_DEPTH:  # named by its field, not by a path of MAX_DEPTH indices
            field = _param(loc[:1])
            raise APIError(400, f"{field}: nested more than {MAX_DEPTH} levels deep", field)
        if isinstance(v, float) and not math.isfinite(v):
            raise APIError(
                400, f"{at}must be a finite number (NaN, Infinity and 1e400 are not JSON numbers)", where
            )
        if isinstance(v, str) and (i := _bad_text(v)) >= 0:
            raise APIError(
                400, f"{at}holds a lone UTF-16 surrogate at character {i}: send valid Unicode text", where
            )
        if isinstance(v, dict):
            if repeated := getattr(v, "repeated", ()):
                raise APIError(400, f"{at}key {_show(repeated[0])} appears more than once", where)
            for k, x in v.items():
                if (i := _bad_text(k)) >= 0:
                    raise APIError(400, f"{at}a key holds a lone UTF-16 surrogate at character {i}", where)
                stack.append((x, (*loc, k), depth + 1))
        elif isinstance(v, list):
            stack.extend((x, (*loc, i), depth + 1) for i, x in enumerate(v))
    return value


# --------------------------------------------------------------------------------------------- errors


def _param(loc: tuple) -> str | None:
    """``("messages", 0, "role")`` → ``messages[0].role``; the body itself → None."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def _allowed(name: str, info: SoupInfo, kind: str = "completion") -> str:
    """What a field allows, in words (for the fields whose checks are pydantic's own)."""
    limits = {
        "gamma": f"a number in [0, {info.max_gamma:g}] (guidance strength γ; default {info.gamma:g})",
        "alpha": f"a number in [0, {info.max_alpha:g}] (extrapolation α; default {info.alpha:g})",
        "max_tokens": f"an integer in [1, {info.max_tokens_limit}] (default {info.default_max_tokens})",
        "temperature": "a number in [0, 2] (0: greedy)",
        "top_p": "a number in (0, 1]",
        "top_k": "an integer in [0, 1000000] (0: off)",
        "seed": "an integer",
        "stream": "true, false or null",
        "stream_options": 'an object such as {"include_usage": true}, or null',
        "include_usage": "true or false",
        "include_obfuscation": "true or false",
        "messages": "a non-empty list of {role, content}",
        "role": f"one of {list(ROLES)}",
        "content": "a string (or a list of text parts)",
        "name": "a string",
        "model": f"a string: the served model, {info.model!r}",
        "n": "an integer (only 1 is supported)",
        "best_of": "an integer (only 1 is supported)",
        "logprobs": (
            "true, false or null (only false is supported)"
            if kind == "chat"
            else "an integer or null (not supported: leave it out)"
        ),
        "top_logprobs": "an integer or null (not supported: leave it out)",
        "echo": "true, false or null (only false is supported)",
        "suffix": "a string or null (not supported: leave it out)",
        "tools": "a list (not supported: leave it out)",
        "functions": "a list (not supported: leave it out)",
        "presence_penalty": "a number or null (only 0 is supported)",
        "audio": "an object or null (audio output is not supported: leave it out)",
        "prediction": "an object or null (not supported: leave it out)",
        "web_search_options": "an object (web search is not supported: leave it out)",
        "store": "true, false or null",
        "parallel_tool_calls": "true or false",
    }
    limits["max_completion_tokens"] = limits["max_tokens"]
    limits["frequency_penalty"] = limits["presence_penalty"]
    for k in ("user", "safety_identifier", "prompt_cache_key"):
        limits[k] = "a string"
    for k in ("service_tier", "reasoning_effort", "verbosity"):
        limits[k] = "a string or null"
    return limits.get(name, "valid")


def api_error(e: ValidationError, info: SoupInfo, kind: str = "completion") -> APIError:
    """The first problem of a body (in ``FIELD_ORDER``) as OpenAI's error: 400 naming the field, what it
    allows and what was given (404 for a model not served here)."""
    errors = e.errors(include_url=False)
    order = {k: i for i, k in enumerate(FIELD_ORDER)}
    err = min(errors, key=lambda x: order.get(x["loc"][0], len(order)) if x["loc"] else -1)
    loc, kind = tuple(err["loc"]), err["type"]
    param = _param(loc)
    if not loc:
        return APIError(400, "the request body must be a JSON object", None)
    if kind == "model_not_found":
        return APIError(404, err["msg"], "model", code="model_not_found")
    if kind == "soup":
        return APIError(400, f"{param}: {err['msg']}", param)
    name = next(str(p) for p in reversed(loc) if isinstance(p, str))
    if kind == "missing":
        return APIError(400, f"{param}: required: {_allowed(name, info, kind)}", param)
    return APIError(
        400, f"{param}: must be {_allowed(name, info, kind)}, got {_show(err.get('input'))}", param
    )


def parse_preference(value: Any, objectives: list[str]) -> Preference:
    """μ from a body's ``preference`` value (``_Body``'s rule); APIError(400) naming ``preference``."""
    try:
        return _preference(value, objectives)
    except PydanticCustomError as e:
        raise APIError(400, f"preference: {e.message()}", "preference") from None


def parse_request(body: Any, kind: str, info: SoupInfo) -> GenerationRequest:
    """Validate an OpenAI completions (``kind="completion"``) or chat body against ``info``; APIError(4xx)."""
    try:
        b = BODIES[kind].model_validate(body, context={"info": info})
    except ValidationError as e:
        raise api_error(e, info, kind) from None
    given = b.model_fields_set
    max_tokens = b.max_completion_tokens if "max_completion_tokens" in given else b.max_tokens
    messages = [{"role": m.role, "content": m.content} for m in b.messages] if kind == "chat" else None
    mode = b.mode if "mode" in given else info.default_mode
    if mode.conditioned and messages is not None and not any(m["role"] == "user" for m in messages):
        raise APIError(400, f"mode {mode.value!r} writes μ into the last user message: send one", "messages")

    def default(v, d):
        return d if v is None else v

    return GenerationRequest(
        kind=kind,
        prompt=b.prompt if kind == "completion" else None,
        messages=messages,
        preference=b.preference,
        mode=mode,
        gamma=float(default(b.gamma, info.gamma)),
        alpha=float(default(b.alpha, info.alpha)),
        max_tokens=default(max_tokens, info.default_max_tokens),
        temperature=float(default(b.temperature, 1.0)),
        top_p=float(default(b.top_p, 1.0)),
        top_k=default(b.top_k, 0),
        stop=b.stop,
        seed=default(b.seed, uuid.uuid4().int % (2**31)) % (2**63),
        stream=bool(b.stream),
        include_usage=bool(b.stream_options.include_usage) if b.stream_options else False,
    )
