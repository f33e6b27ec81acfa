"""Serving without a Ray cluster: request validation (pydantic bodies; every bad input is a 400 naming its
field), μ normalisation, the text stream, the options parsed once when the app is built, and the batched
engine on the tiny soup (a mixed batch of μ / modes / sampling settings decodes exactly as each request
alone; γ = 0 guided modes equal unguided Bone Soup)."""

from __future__ import annotations

import copy
import json
import math
import pickle
import re
import shutil
import threading
import time
from typing import NamedTuple

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import jobs.train_value_models as train_value_models_job
import serve.app
from soupkitchen.errors import ConfigError
from soupkitchen.hoe.layer import hoe_layers
from soupkitchen.merging import load_bundle
from soupkitchen.methods import Mode
from soupkitchen.preferences import Preference
from soupkitchen.serving import (
    APIError,
    CompletionBody,
    GenerationRequest,
    Scheduler,
    ServeOptions,
    SoupEngine,
    SoupInfo,
    TextStream,
    parse_json,
    parse_preference,
    parse_request,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
INFO = SoupInfo(
    model="soup",
    objectives=["warm", "calm"],
    modes=[Mode.BONE_SOUP, Mode.REWARDED_SOUPS, Mode.MAGE_I_M, Mode.MOD],
    default_mode=Mode.BONE_SOUP,
    gamma=1.0,
    alpha=0.0,
    beta=0.7,
    context_length=128,
    default_max_tokens=16,
    max_tokens_limit=64,
    max_gamma=10.0,
    max_alpha=1.0,
)


def test_preference_lists_and_mappings_are_normalised():
    assert parse_preference([3, 1], INFO.objectives) == Preference((0.75, 0.25))
    assert parse_preference({"calm": 2}, INFO.objectives) == Preference((0.0, 1.0))
    assert parse_preference(None, INFO.objectives) == Preference((0.5, 0.5))
    req = parse_request({"prompt": "x", "preference": [3, 1]}, "completion", INFO)
    assert isinstance(req.preference, Preference) and req.preference.weights == (0.75, 0.25)


@pytest.mark.parametrize(
    "body, param, status",
    [
        ([1, 2], None, 400),
        ({}, "prompt", 400),
        ({"prompt": ""}, "prompt", 400),
        ({"prompt": "x", "preference": [1, 0, 0]}, "preference", 400),
        ({"prompt": "x", "preference": [-1, 2]}, "preference", 400),
        ({"prompt": "x", "preference": [math.nan, 1]}, "preference", 400),
        ({"prompt": "x", "preference": [0, 0]}, "preference", 400),
        ({"prompt": "x", "preference": {"funny": 1}}, "preference", 400),
        ({"prompt": "x", "preference": "warm"}, "preference", 400),
        ({"prompt": "x", "gamma": -0.1}, "gamma", 400),
        ({"prompt": "x", "gamma": 11}, "gamma", 400),
        ({"prompt": "x", "alpha": 2.0}, "alpha", 400),
        ({"prompt": "x", "max_tokens": 65}, "max_tokens", 400),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens", 400),
        ({"prompt": "x", "mode": "beam_me_up"}, "mode", 400),
        ({"prompt": "x", "mode": "mage_e_m"}, "mode", 400),  # this soup has no value models
        ({"prompt": "x", "mode": "rewarded_soup"}, "mode", 400),  # the old name: rewarded_soups
        ({"prompt": "x", "mode": None}, "mode", 400),
        ({"prompt": "x", "gamma": "1"}, "gamma", 400),
        ({"prompt": "x", "gamma": True}, "gamma", 400),
        ({"prompt": "x", "gamma": 10**400}, "gamma", 400),  # no float: a 400, not an OverflowError
        ({"prompt": "x", "max_tokens": 5.0}, "max_tokens", 400),
        ({"prompt": "x", "max_completion_tokens": 0, "max_tokens": 5}, "max_completion_tokens", 400),
        ({"prompt": "x", "stream": "yes"}, "stream", 400),
        ({"prompt": "x", "stream_options": "usage"}, "stream_options", 400),
        ({"prompt": "x", "top_k": -1}, "top_k", 400),
        ({"prompt": "x", "temperature": 3}, "temperature", 400),
        ({"prompt": "x", "top_p": 0}, "top_p", 400),
        ({"prompt": "x", "n": 2}, "n", 400),
        ({"prompt": "x", "logprobs": 3}, "logprobs", 400),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", 400),
        ({"prompt": "x", "seed": "s"}, "seed", 400),
        ({"prompt": "x", "model": "gpt-4"}, "model", 404),
        ({"prompt": [1, 2, 3]}, "prompt", 400),
        ({"prompt": [[1, 2, 3]]}, "prompt", 400),
        ({"prompt": ["a", "b"]}, "prompt", 400),
        ({"prompt": True}, "prompt", 400),
    ],
)
def test_bad_completion_bodies_name_the_field(body, param, status):
    with pytest.raises(APIError) as err:
        parse_request(body, "completion", INFO)
    assert err.value.status == status and err.value.param == param
    assert set(err.value.body()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    "messages, param",
    [
        (None, "messages"),
        ([], "messages"),
        ([{"role": "robot", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": 3}], "messages[0].content"),
        ([{"role": "user", "content": "x"}, "hi"], "messages[1].role"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content"),
    ],
)
def test_bad_chat_bodies_name_the_field(messages, param):
    with pytest.raises(APIError) as err:
        parse_request({"messages": messages}, "chat", INFO)
    assert err.value.param == param


@pytest.mark.parametrize(
    "raw, param, words",
    [
        (b"[" * 100_000 + b"]" * 100_000, None, ["nested too deeply"]),
        (
            b'{"prompt": "x", "preference": ' + b"[" * 33 + b"1" + b"]" * 33 + b"}",
            "preference",
            ["32 levels"],
        ),
        (
            b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud83d"}]}]}',
            "messages[0].content[0].text",
            ["surrogate at character 0"],
        ),
        (b'{"prompt": "ok", "\\udc00": 1}', None, ["a key holds a lone UTF-16 surrogate"]),
        (b'{"prompt": "x", "stop": ["a", "b"], "stop": "c"}', None, ["key 'stop' appears more than once"]),
        (b'{"prompt": "x", "top_p": -1e999}', "top_p", ["finite number"]),
        (b'{"prompt": "x", "temperature": Infinity}', "temperature", ["finite number"]),
        (b'{"prompt": "x", "seed": 1' + b"0" * 5000 + b"}", None, ["4300 digits"]),
        (b'{"prompt": "\xc3\x28"}', None, ["not valid UTF-8 (byte 12)"]),
        (b"\xef\xbb\xbf{}", None, ["not valid JSON"]),
    ],
)
def test_raw_bodies_are_refused_by_class_naming_the_path(raw, param, words):
    """``parse_json``: what json.loads accepts but no field could mean (or what makes it raise something
    other than JSONDecodeError) is a 400 naming where it is, before the fields are read."""
    with pytest.raises(APIError) as err:
        parse_json(raw)
    e = err.value
    assert (e.status, e.param) == (400, param) and all(w in e.message for w in words), e.message


def test_weights_that_overflow_when_summed_are_relative_weights():
    for weights, mu in [
        ([1e308, 1e308], (0.5, 0.5)),
        ([1.7e308, 0], (1.0, 0.0)),
        ([5e-324, 5e-324], (0.5, 0.5)),
    ]:
        assert (
            parse_request({"prompt": "x", "preference": weights}, "completion", INFO).preference.weights == mu
        )
    # escaped non-ASCII text and a surrogate *pair* are valid Unicode
    assert parse_json(rb'{"prompt": "caf\u00e9 \ud83d\ude00"}')["prompt"] == "caf\u00e9 \U0001f600"


def test_prompt_forms_openai_clients_send():
    """One string (or a list of one) works; a token-id list or several prompts get a 400 that says why."""
    assert parse_request({"prompt": ["hi"]}, "completion", INFO).prompt == "hi"
    for prompt, words in [([5, 6], "token-id prompts"), ([[5, 6]], "token-id"), (["a", "b"], "2 prompts")]:
        with pytest.raises(APIError, match=words):
            parse_request({"prompt": prompt}, "completion", INFO)
    chat = [
        {"role": "system", "content": "be calm"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    ]
    req = parse_request({"messages": chat, "stop": "\n", "user": "u1", "metadata": {}}, "chat", INFO)
    assert req.messages[1]["content"] == "hi" and req.stop == ("\n",)
    developer = [{"role": "developer", "content": "be calm"}, chat[1]]  # newer clients' name for system
    assert parse_request({"messages": developer}, "chat", INFO).messages == req.messages
    with pytest.raises(APIError, match='stream_options: only allowed with "stream": true'):
        parse_request({"prompt": "x", "stream_options": {"include_usage": True}}, "completion", INFO)


def test_defaults_and_greedy():
    req = parse_request({"prompt": ["hi"], "temperature": 0, "stop": "\n"}, "completion", INFO)
    assert (req.prompt, req.mode, req.gamma, req.max_tokens, req.stop, req.greedy) == (
        "hi",
        "bone_soup",
        1.0,
        16,
        ("\n",),
        True,
    )
    assert req.mode is Mode.BONE_SOUP and isinstance(req, GenerationRequest)


@pytest.mark.parametrize(
    "body, param, words",
    [
        ({"prompt": "x", "preference": [1, 0, 0]}, "preference", ["one weight per objective", "got 3"]),
        ({"prompt": "x", "gamma": -0.5}, "gamma", ["[0, 10]", "got -0.5"]),
        ({"prompt": "x", "alpha": 1.5}, "alpha", ["[0, 1]", "got 1.5"]),
        ({"prompt": "x", "mode": "rewarded_soup"}, "mode", ["did you mean 'rewarded_soups'?"]),
        ({"prompt": "x", "mode": "mage_e"}, "mode", ["not available", "no value models"]),
        ({"prompt": "x", "mode": "hoe"}, "mode", ["not available", "no HoE expert set", "build_hoe.py"]),
        ({"prompt": "x", "top_p": 0}, "top_p", ["(0, 1]", "got 0"]),
        (
            {"messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role",
            ["'system', 'developer', 'user'"],
        ),
    ],
)
def test_validation_errors_are_400s_that_name_the_path_and_the_fix(body, param, words):
    """A pydantic ValidationError becomes OpenAI's error: HTTP 400, ``param`` the field path, and a message
    that starts with the path and says what is allowed and what was given."""
    kind = "chat" if "messages" in body else "completion"
    with pytest.raises(APIError) as err:
        parse_request(body, kind, INFO)
    e = err.value
    assert (e.status, e.param, e.type) == (400, param, "invalid_request_error")
    assert e.message.startswith(f"{param}: ") and all(w in e.message for w in words), e.message
    assert e.body()["error"] == {"message": e.message, "type": e.type, "param": param, "code": None}


def test_bodies_are_pydantic_models_that_ignore_unknown_openai_fields():
    body = {"prompt": "x", "user": "u-1", "metadata": {"a": 1}, "logprobs": None, "n": 1, "echo": False}
    req = parse_request(body, "completion", INFO)
    assert req.prompt == "x" and req.mode is Mode.BONE_SOUP
    fields = CompletionBody.model_fields
    assert fields["gamma"].metadata and fields["top_p"].metadata  # ranges are Field(ge=, gt=, le=)
    assert CompletionBody.model_config["extra"] == "ignore"


# OpenAI's API reference, field by field ("Create completion", "Create chat completion" request bodies), and
# soupkitchen's extra fields: field (a path into the body) -> the JSON types the reference allows, values that
# are accepted, and meaningful values refused with a 400 because they are not implemented. "number" is int or
# float. Every other type is refused with a 400 naming the field; null, where allowed, is accepted.
class Spec(NamedTuple):
    types: str
    ok: tuple = ()
    refused: tuple = ()


SHARED = {
    "model": Spec("string", ok=("soup",)),
    "frequency_penalty": Spec("number null", ok=(0, 0.0), refused=(0.5,)),
    "logit_bias": Spec("object null", ok=({},), refused=({"50256": -100},)),
    "max_tokens": Spec("int null", ok=(8,)),
    "n": Spec("int null", ok=(1,), refused=(2,)),
    "presence_penalty": Spec("number null", ok=(0,), refused=(-1.5,)),
    "seed": Spec("int null", ok=(7,)),
    "stop": Spec("string list null", ok=("\n", ["a", "b"])),
    "stream": Spec("bool null", ok=(True, False)),
    "stream_options": Spec("object null", ok=({"include_usage": True},)),
    "stream_options.include_usage": Spec("bool", ok=(True,)),
    "stream_options.include_obfuscation": Spec("bool", ok=(False,)),
    "temperature": Spec("number null", ok=(0, 0.7)),
    "top_p": Spec("number null", ok=(1, 0.9)),
    "user": Spec("string", ok=("u-1",)),
    # soupkitchen's (extra_body=)
    "preference": Spec("list object null", ok=([3, 1], {"calm": 1})),
    "mode": Spec("string", ok=("rewarded_soups",)),
    "gamma": Spec("number null", ok=(2, 0.5)),
    "alpha": Spec("number null", ok=(0, 0.5)),
    "top_k": Spec("int null", ok=(40,)),
}
FIELDS = {
    "completion": SHARED
    | {
        # null (no prompt) is documented too: refused here, one prompt per request is required
        "prompt": Spec("string list", ok=("hi", ["hi"]), refused=([1, 2], ["a", "b"])),
        "best_of": Spec("int null", ok=(1,), refused=(3,)),
        "echo": Spec("bool null", ok=(False,), refused=(True,)),
        "logprobs": Spec("int null", refused=(0, 5)),
        "suffix": Spec("string null", refused=("!",)),
    },
    "chat": SHARED
    | {
        "messages": Spec("list", ok=([{"role": "user", "content": "hi"}],)),
        "messages[0]": Spec("object", ok=({"role": "user", "content": "hi"},)),
        "messages[0].role": Spec("string", ok=("user",)),
        "messages[0].content": Spec("string list", ok=("hi", [{"type": "text", "text": "hi"}])),
        "messages[0].name": Spec("string", ok=("ann",)),
        "audio": Spec("object null", refused=({"format": "wav", "voice": "alloy"},)),
        "function_call": Spec("string object", ok=("none",), refused=("auto", {"name": "f"})),
        "functions": Spec("list", refused=([{"name": "f"}],)),
        "logprobs": Spec("bool null", ok=(False,), refused=(True,)),
        "max_completion_tokens": Spec("int null", ok=(8,)),
        "metadata": Spec("object null", ok=({"k": "v"},)),
        "modalities": Spec("list null", ok=(["text"],), refused=(["text", "audio"],)),
        "parallel_tool_calls": Spec("bool", ok=(False,)),
        "prediction": Spec("object null", refused=({"type": "content", "content": "x"},)),
        "prompt_cache_key": Spec("string", ok=("k",)),
        "reasoning_effort": Spec("string null", ok=("low",)),
        "response_format": Spec("object", ok=({"type": "text"},), refused=({"type": "json_object"},)),
        "safety_identifier": Spec("string", ok=("u-1",)),
        "service_tier": Spec("string null", ok=("auto",)),
        "store": Spec("bool null", ok=(False, True)),
        "tool_choice": Spec("string object", ok=("none",), refused=("required", {"type": "function"})),
        "tools": Spec("list", refused=([{"type": "function", "function": {"name": "f"}}],)),
        "top_logprobs": Spec("int null", refused=(2,)),
        "verbosity": Spec("string null", ok=("low",)),
        "web_search_options": Spec("object", refused=({},)),
    },
}
# streamed, so that stream_options (only allowed with "stream": true) is probed on its own
BASE = {
    "completion": {"prompt": "hi", "stream": True},
    "chat": {"messages": [{"role": "user", "content": "hi"}], "stream": True},
}
PROBES = {  # JSON type -> values of it (a falsy one too: a check that reads `v or None` lets it through)
    "string": ("", "x"),
    "bool": (False, True),
    "null": (None,),
    "int": (0, 3),
    "float": (0.5, 2.5),
    "list": ([], ["x"]),
    "object": ({}, {"x": 1}),
}


def _corpus():
    for kind, fields in FIELDS.items():
        for path, spec in fields.items():
            allowed = set(spec.types.replace("number", "int float").split())
            for t, values in PROBES.items():
                if t not in allowed:
                    yield from ((kind, path, v, False) for v in values)
            yield from ((kind, path, v, True) for v in ((None,) if "null" in allowed else ()) + spec.ok)
            yield from ((kind, path, v, False) for v in spec.refused)


CORPUS = list(_corpus())


def _put(body: dict, path: str, value) -> dict:
    """``body`` (copied) with ``value`` at ``path`` (``messages[0].content``, ``stream_options.x``)."""
    body = copy.deepcopy(body)
    keys = [int(k) if k.isdigit() else k for k in re.findall(r"\w+", path)]
    at = body
    for k in keys[:-1]:
        at = at.setdefault(k, {}) if isinstance(k, str) else at[k]
    at[keys[-1]] = value
    return body


@pytest.mark.parametrize(
    "kind, path, value, accepted",
    CORPUS,
    ids=[f"{k}-{p}={json.dumps(v)[:40]}" for k, p, v, _ in CORPUS],
)
def test_every_openai_field_is_type_checked(kind, path, value, accepted):
    """Each documented field (``FIELDS``) given each JSON type the reference does not allow for it is a 400
    naming that field (or a path inside it), ignored fields included; its valid values are accepted, or
    refused with a 400 that names it where they are not implemented (n > 1, logprobs, tools, ...)."""
    body = _put(BASE[kind], path, value)
    if accepted:
        assert isinstance(parse_request(body, kind, INFO), GenerationRequest)
        return
    with pytest.raises(APIError) as err:
        parse_request(body, kind, INFO)
    e = err.value
    assert e.status == 400 and e.param is not None, e.message
    assert e.param == path or e.param.startswith((f"{path}.", f"{path}[")), (e.param, e.message)
    assert e.message.startswith(f"{e.param}: ") and len(e.message) > len(e.param) + 8, e.message


def test_text_stream_holds_back_what_may_change():
    ts = TextStream(("STOP",))
    parts = [
        ts.update(t, False) for t in (" Hello ", " Hello wor", " Hello world ST", " Hello world STOP and")
    ]
    parts.append(ts.update(" Hello world STOP and more", True))
    assert parts == ["Hello", " wor", "ld", "", ""] and "".join(parts) == "Hello world"


def test_serve_options_name_the_bad_arg(monkeypatch):
    monkeypatch.delenv("SOUPKITCHEN_SOUP_URI", raising=False)
    with pytest.raises(ConfigError, match="args.soup"):
        ServeOptions.from_args({})
    with pytest.raises(ConfigError, match="args.max_batch_rows"):
        ServeOptions.from_args({"soup": "x", "max_batch_rows": "0"})
    with pytest.raises(ConfigError, match="args.batching"):
        ServeOptions.from_args({"soup": "x", "batching": "dynamic"})
    with pytest.raises(ConfigError, match="args.max_replicas"):
        ServeOptions.from_args({"soup": "x", "min_replicas": 3, "max_replicas": 2})
    with pytest.raises(ConfigError, match="args.max_bach_rows: unknown key; did you mean 'max_batch_rows'"):
        ServeOptions.from_args({"soup": "x", "max_bach_rows": 4})
    with pytest.raises(ConfigError, match="args.num_gpus"):
        ServeOptions(soup="x", num_gpus=-1)  # built in code: the same checks
    opts = ServeOptions.from_args({"soup": "models:/soup-demo@production", "num_cpus": "0.5"})
    assert opts.num_cpus == 0.5 and opts.served_name == "soup-demo"


class _CountingValidator:
    """Stands in for ServeOptions' pydantic validator and counts the validations (parses) it runs."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def validate_python(self, *args, **kwargs):
        self.calls += 1
        return self.inner.validate_python(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_api_keys_from_the_environment_and_a_key_file(monkeypatch, tmp_path):
    """api_key_file is read when the options are built (a bad file is refused naming the arg, never
    echoing a key); the ingress accepts the environment's key and every key in the file."""
    monkeypatch.setenv("SK_TEST_KEY", "sk-env")
    keys = tmp_path / "keys"
    keys.write_text("# clients\nsk-a\n\n  sk-b  \n")
    opts = ServeOptions(soup="x", api_key_env="SK_TEST_KEY", api_key_file=str(keys))
    assert opts.read_api_keys() == (b"sk-env", b"sk-a", b"sk-b")
    monkeypatch.delenv("SK_TEST_KEY")
    assert ServeOptions(soup="x", api_key_env="SK_TEST_KEY").read_api_keys() == ()  # no key: no auth
    for text, words in [(None, "cannot read"), ("# none\n", "holds no key"), ("sk-é secret\n", "key 1")]:
        if text is not None:
            keys.write_text(text)
        with pytest.raises(ConfigError, match=f"args.api_key_file: .*{words}") as err:
            ServeOptions(soup="x", api_key_file=str(keys if text is not None else tmp_path / "missing"))
        assert "secret" not in str(err.value)


def test_serve_options_are_parsed_once_and_bound_to_both_deployments(monkeypatch):
    """``serve.app:app`` parses the args once; both deployments are bound to that one object, and what a
    replica receives (the pickled object) is not parsed again."""
    counter = _CountingValidator(ServeOptions.__pydantic_validator__)
    monkeypatch.setattr(ServeOptions, "__pydantic_validator__", counter)
    from_args = ServeOptions.from_args.__func__
    parses = []
    monkeypatch.setattr(
        ServeOptions, "from_args", classmethod(lambda c, a: parses.append(a) or from_args(c, a))
    )
    application = serve.app.app({"soup": "models:/soup-demo@production", "max_replicas": "3"})
    assert len(parses) == 1 and counter.calls == 1
    ingress = application._bound_deployment
    model = ingress.init_args[0]._bound_deployment
    options = ingress.init_args[1]
    assert isinstance(options, ServeOptions) and model.init_args == (options,)
    assert (ingress.name, model.name) == ("OpenAIIngress", "SoupModel")
    assert model._deployment_config.autoscaling_config.max_replicas == 3
    for replica_side in (pickle.loads(pickle.dumps(options)), pickle.loads(pickle.dumps(model.init_args))[0]):
        assert replica_side == options
    assert counter.calls == 1


@pytest.fixture(scope="module")
def engine(tiny_soup):
    return SoupEngine(ServeOptions(soup=str(tiny_soup), model_name="tiny"))


class Collector:
    """Each submitted request's text, finish reason and deltas as the scheduler's loop delivers them."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler, self.out, self.ended = scheduler, {}, threading.Semaphore(0)

    def submit(self, engine, key, request):
        self.out[key] = {"text": "", "finish": None, "deltas": [], "at": None}

        def sink(d):
            o = self.out[key]
            if isinstance(d, APIError):
                o["finish"] = d
            else:
                o["text"] += d.text
                o["deltas"].append(d)
                o["finish"] = d.finish
            if o["finish"] is not None:
                o["at"] = time.perf_counter()
                self.ended.release()

        return self.scheduler.submit(engine.prepare(request), sink)

    def wait(self, n: int) -> None:
        for _ in range(n):
            assert self.ended.acquire(timeout=120), "a request did not finish"


def _run(engine, requests, **options):
    """(texts, finish reasons) of ``requests`` submitted together to the engine's decode loop."""
    scheduler = Scheduler(engine, ServeOptions(**(engine.options.model_dump() | options)))
    try:
        got = Collector(scheduler)
        for i, r in enumerate(requests):
            got.submit(engine, i, r)
        got.wait(len(requests))
    finally:
        scheduler.close()
    return [got.out[i]["text"] for i in range(len(requests))], [
        got.out[i]["finish"] for i in range(len(requests))
    ]


def test_engine_mixed_batch_equals_each_request_alone(engine):
    info = engine.info
    assert info.objectives == ["warm", "calm"] and "mage_e_m" in info.modes and info.beta == 0.7
    bodies = [
        {"prompt": "hello there", "preference": [1, 0], "temperature": 0, "max_tokens": 8},
        {"prompt": "a b c", "preference": {"calm": 1}, "mode": "mage_e_m", "temperature": 0, "max_tokens": 5},
        {"prompt": "zz", "mode": "mod", "temperature": 0.9, "top_k": 5, "seed": 3, "max_tokens": 6},
        {"messages": [{"role": "user", "content": "hi"}], "mode": "mage_i_m", "temperature": 0, "gamma": 2},
        {"prompt": "hello there", "preference": [0.3, 0.7], "mode": "rewarded_soups", "temperature": 0},
    ]
    reqs = [parse_request(b, "chat" if "messages" in b else "completion", info) for b in bodies]
    together = _run(engine, reqs)
    alone = [_run(engine, [r]) for r in reqs]
    assert together[0] == [t[0][0] for t in alone] and together[1] == [t[1][0] for t in alone]
    assert together[1][:3] == ["length"] * 3 and all(together[0])


def test_engine_guided_modes_at_gamma_zero_are_bone_soup(engine):
    base = {"prompt": "tell me", "preference": [0.4, 0.6], "temperature": 0, "max_tokens": 8}
    reqs = [
        parse_request({**base, "mode": md, "gamma": 0}, "completion", engine.info) for md in engine.info.modes
    ]
    texts, _ = _run(engine, reqs)
    by_mode = dict(zip(engine.info.modes, texts, strict=True))
    for md in ("mage_i_m", "mage_i", "mage_e_m", "mage_e"):
        assert by_mode[md] == by_mode["bone_soup"], md


def test_engine_plans_rewarded_soups_at_c_mu_and_bone_soup_at_its_inverse(engine):
    """The request's validated μ and α reach the plan as they are: c = (1+α)μ for rewarded_soups, the Bone
    Soup merge (1+α)B⁻¹μ for bone_soup and as the base of the guided modes."""
    body = {"prompt": "hi", "preference": [0.4, 0.6], "alpha": 0.5}
    rs, bs, mage = (
        engine.plan(parse_request({**body, "mode": md}, "completion", engine.info))
        for md in ("rewarded_soups", "bone_soup", "mage_i_m")
    )
    assert rs.mode is Mode.REWARDED_SOUPS and rs.width == 1
    assert rs.components[0].c[:2] == pytest.approx((0.6, 0.9))
    want = Preference((0.4, 0.6)).coefficients(engine.bundle.beta, 0.5)
    assert bs.components[0].c[:2] == pytest.approx(tuple(want)) and mage.components[0].c == bs.components[0].c


def test_engine_serves_moc_on_the_relabeled_prompt_in_the_same_batch(engine):
    """mode moc: the bundle's MOC policy alone (c = e_moc) on the prompt relabeled for μ (Eq. 3), the last
    user message of a chat; decoded in one batch with soup rows, each row as it would be alone."""
    info = engine.info
    assert "moc" in info.modes and "ric" not in info.modes
    body = {
        "prompt": "hello there",
        "preference": [0.3, 0.7],
        "mode": "moc",
        "temperature": 0,
        "max_tokens": 6,
    }
    moc = parse_request(body, "completion", info)
    assert engine.format(moc) == "<R1> 0.30 <R2> 0.70 hello there"
    chat = parse_request(
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "mode": "moc"},
        "chat",
        info,
    )
    assert "user: a\nuser: <R1> 0.50 <R2> 0.50 b\n" in engine.format(chat)
    plan = engine.plan(moc)
    j = engine.bundle.conditioned_indices["moc"]
    assert plan.width == 1 and plan.components[0].c == tuple(float(i == j) for i in range(engine.m))
    soup = parse_request({**body, "mode": "bone_soup"}, "completion", info)
    together, _ = _run(engine, [moc, soup, moc])
    assert together == [_run(engine, [r])[0][0] for r in (moc, soup, moc)]
    with pytest.raises(APIError) as err:
        parse_request({"messages": [{"role": "system", "content": "x"}], "mode": "moc"}, "chat", info)
    assert err.value.status == 400 and err.value.param == "messages"
    with pytest.raises(APIError, match="carries no ric policy"):
        parse_request({**body, "mode": "ric"}, "completion", info)


def test_engine_refuses_prompts_over_the_context(engine):
    req = parse_request({"prompt": "word " * 200, "max_tokens": 8}, "completion", engine.info)
    with pytest.raises(APIError) as err:
        engine.prepare(req)
    assert err.value.status == 400 and err.value.code == "context_length_exceeded"


def test_bundle_ships_value_models_and_refuses_a_tampered_one(tiny_soup, tmp_path):
    b = load_bundle(tiny_soup)
    assert b.value_names == ["value-warm", "value-calm"] and b.value_indices == [2, 3]
    copy = tmp_path / "soup"
    shutil.copytree(tiny_soup, copy)
    f = copy / "adapters" / "value-warm.safetensors"
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(ConfigError, match=r"value_models.0.sha256"):
        load_bundle(copy)


def test_train_value_models_attach_names_the_flag(tmp_path, capsys):
    job = train_value_models_job
    assert job.main(["--recipe", "tiny", "--attach", str(tmp_path), "--out", str(tmp_path / "vm")]) == 2
    assert "--attach" in capsys.readouterr().err


def test_engine_serves_hoe_rows_batched_with_other_modes(engine):
    """mode hoe: one row whose coefficients are preference routing over the served experts (LoRA experts
    per row, the router per token); in one batch with soup, MOC and guided rows each row decodes as alone,
    greedy and seeded sampling; the card lists the experts and routing is reported per request."""
    info = engine.info
    assert "hoe" in info.modes
    assert [e["name"] for e in info.experts] == ["hoe-warm", "hoe-calm", "hoe-mo0", "hoe-router0"]
    base = {"prompt": "hello there", "max_tokens": 6, "mode": "hoe"}
    reqs = [
        parse_request({**base, "preference": [0.8, 0.2], "temperature": 0}, "completion", info),
        parse_request({**base, "preference": [0.8, 0.2], "temperature": 0.9, "seed": 5}, "completion", info),
        parse_request(
            {**base, "preference": [0.3, 0.7], "mode": "bone_soup", "temperature": 0}, "completion", info
        ),
        parse_request({**base, "preference": [0.0, 1.0], "temperature": 0}, "completion", info),
        parse_request({**base, "mode": "mage_i_m", "temperature": 0}, "completion", info),
    ]
    plan = engine.plan(reqs[0])
    b = engine.bundle
    row = np.zeros(engine.m)
    row[b.hoe_start] = 0.2  # λ = [.8, .2]: 0.2 · e_1 + 0.8 · router [.75, .25]
    row[b.stack_size] = 0.8
    assert plan.width == 1 and plan.components[0].c == pytest.approx(tuple(row))
    assert engine.prepare(reqs[0]).experts == pytest.approx({"hoe-router0": 0.8, "hoe-warm": 0.2})
    assert engine.prepare(reqs[2]).experts is None
    name, layer = next(iter(hoe_layers(engine.model)))  # the served router is the trained file, not its init
    trained = load_file(str(engine.bundle.directory / "hoe" / "hoe-router0.safetensors"))
    assert torch.equal(layer.router_weight.detach().cpu(), trained[f"{name}.weight"])
    together = _run(engine, reqs)
    assert together[0] == [_run(engine, [r])[0][0] for r in reqs]
    assert engine.plan(reqs[3]).components[0].c[b.hoe_start + 1] == 1.0  # e_2: the calm expert alone


@pytest.fixture(scope="module")
def long_engine(tiny_soup):
    """The tiny soup with EOS held back to max_tokens: every request decodes exactly max_tokens tokens."""
    return SoupEngine(
        ServeOptions(soup=str(tiny_soup), model_name="tiny", min_tokens=128, max_tokens_limit=100)
    )


def _bodies(info):
    bodies = [
        {"prompt": "hello there", "preference": [1, 0], "temperature": 0, "max_tokens": 3},
        {"prompt": "a b c", "mode": "mage_e_m", "temperature": 0, "max_tokens": 4},
        {"prompt": "zz", "mode": "mod", "temperature": 0.9, "top_k": 5, "seed": 3, "max_tokens": 5},
        {
            "messages": [{"role": "user", "content": "hi"}],
            "mode": "hoe",
            "preference": [0.6, 0.4],
            "max_tokens": 3,
        },
    ]
    return [parse_request(b, "chat" if "messages" in b else "completion", info) for b in bodies]


def _until(predicate, timeout=60.0):
    deadline = time.perf_counter() + timeout
    while not predicate():
        assert time.perf_counter() < deadline, "timed out"
        time.sleep(0.002)


def test_requests_join_a_running_batch_mid_decode_and_equal_each_alone(long_engine):
    """Continuous batching: short requests of several modes arrive while a long one decodes; they are
    admitted at once, finish first, and give exactly what each gives alone (greedy and seeded sampling)."""
    engine, info = long_engine, long_engine.info
    long = parse_request({"prompt": "once upon", "max_tokens": 60, "temperature": 0}, "completion", info)
    shorts = _bodies(info)
    scheduler = Scheduler(engine, engine.options)
    try:
        got = Collector(scheduler)
        got.submit(engine, "long", long)
        _until(lambda: len(got.out["long"]["deltas"]) >= 3)
        for i, r in enumerate(shorts):
            got.submit(engine, i, r)
        got.wait(len(shorts) + 1)
    finally:
        scheduler.close()
    out = got.out
    assert all(out[i]["at"] < out["long"]["at"] for i in range(len(shorts)))  # answered while it decoded
    sizes = [d.batch_size for d in out["long"]["deltas"]]
    assert sizes[0] == 1 and max(sizes) > 1 and out["long"]["finish"] == "length"
    assert all(out[i]["deltas"][-1].batch_size > 1 for i in range(len(shorts)))  # shared the batch
    alone = [_run(engine, [r]) for r in shorts]
    assert [out[i]["text"] for i in range(len(shorts))] == [a[0][0] for a in alone]
    assert [len(out[i]["deltas"]) for i in range(len(shorts))] == [r.max_tokens for r in shorts]


def test_static_batching_makes_late_requests_wait_for_the_batch(long_engine):
    engine, info = long_engine, long_engine.info
    long = parse_request({"prompt": "once upon", "max_tokens": 30, "temperature": 0}, "completion", info)
    options = ServeOptions(**(engine.options.model_dump() | {"batching": "static"}))
    scheduler = Scheduler(engine, options)
    try:
        got = Collector(scheduler)
        got.submit(engine, "long", long)
        _until(lambda: len(got.out["long"]["deltas"]) >= 3)
        got.submit(engine, "short", _bodies(info)[0])
        got.wait(2)
    finally:
        scheduler.close()
    assert got.out["short"]["at"] > got.out["long"]["at"]
    assert {d.batch_size for d in got.out["long"]["deltas"]} == {1}


def test_cancelled_request_leaves_at_the_next_step_and_budgets_cap_the_batch(long_engine):
    engine, info = long_engine, long_engine.info
    body = {"prompt": "once upon", "max_tokens": 40, "temperature": 0}
    options = ServeOptions(**(engine.options.model_dump() | {"max_batch_rows": 3}))
    scheduler = Scheduler(engine, options)
    try:
        got = Collector(scheduler)
        tickets = [got.submit(engine, i, parse_request(body, "completion", info)) for i in range(5)]
        _until(lambda: scheduler.stats()["running"] == 3)
        assert scheduler.stats()["waiting"] == 2  # FIFO within max_batch_rows: 3 run, 2 wait
        _until(lambda: len(got.out[0]["deltas"]) >= 3)
        scheduler.cancel(tickets[0])
        scheduler.cancel(tickets[4])  # still waiting: gone without ever running
        _until(lambda: scheduler.stats()["admitted"] == 4)  # request 3 took the freed row
        n0 = len(got.out[0]["deltas"])
        got.wait(3)
        stats = scheduler.stats()
    finally:
        scheduler.close()
    assert len(got.out[0]["deltas"]) <= n0 + 1 and got.out[0]["finish"] is None  # no row after its cancel
    assert got.out[4]["deltas"] == [] and stats["running"] == stats["waiting"] == 0
    assert max(d.batch_size for i in (1, 2, 3) for d in got.out[i]["deltas"]) <= 3
    assert got.out[1]["text"] == got.out[3]["text"]  # same request, admitted later: same answer


def test_a_failed_step_answers_its_requests_500_and_the_loop_goes_on(long_engine, monkeypatch):
    engine, info = long_engine, long_engine.info
    scheduler = Scheduler(engine, engine.options)
    try:
        batch = scheduler.batch
        real = batch.step
        monkeypatch.setattr(batch, "step", lambda: (_ for _ in ()).throw(RuntimeError("CUDA error: boom")))
        got = Collector(scheduler)
        got.submit(engine, "bad", _bodies(info)[0])
        got.wait(1)
        monkeypatch.setattr(batch, "step", real)
        got.submit(engine, "good", _bodies(info)[0])
        got.wait(1)
        stats = scheduler.stats()
    finally:
        scheduler.close()
    err = got.out["bad"]["finish"]
    assert isinstance(err, APIError) and err.status == 500 and "CUDA" not in err.message
    assert got.out["good"]["finish"] == "length" and stats["failed_steps"] == 1
