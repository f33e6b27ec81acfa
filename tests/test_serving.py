"""Serving without Ray: request validation (every bad input names its field), μ normalisation, the text
stream, and the batched engine on the tiny soup (a mixed batch of μ / modes / sampling settings decodes
exactly as each request alone; γ = 0 guided modes equal plain Bone Soup)."""

from __future__ import annotations

import math

import pytest

from soupkitchen.config import ConfigError
from soupkitchen.serving import (
    APIError,
    ServeOptions,
    SoupEngine,
    SoupInfo,
    TextStream,
    parse_preference,
    parse_request,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
INFO = SoupInfo(
    model="soup",
    objectives=["warm", "calm"],
    modes=["bone_soup", "rewarded_soup", "mage_i_m", "mod"],
    default_mode="bone_soup",
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
    assert parse_preference([3, 1], INFO.objectives) == [0.75, 0.25]
    assert parse_preference({"calm": 2}, INFO.objectives) == [0.0, 1.0]
    assert parse_preference(None, INFO.objectives) == [0.5, 0.5]


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
        ({"prompt": "x", "temperature": 3}, "temperature", 400),
        ({"prompt": "x", "top_p": 0}, "top_p", 400),
        ({"prompt": "x", "n": 2}, "n", 400),
        ({"prompt": "x", "logprobs": 3}, "logprobs", 400),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", 400),
        ({"prompt": "x", "seed": "s"}, "seed", 400),
        ({"prompt": "x", "model": "gpt-4"}, "model", 404),
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
    ],
)
def test_bad_chat_bodies_name_the_field(messages, param):
    with pytest.raises(APIError) as err:
        parse_request({"messages": messages}, "chat", INFO)
    assert err.value.param == param


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
    with pytest.raises(ConfigError, match="args.max_batch_size"):
        ServeOptions.from_args({"soup": "x", "max_batch_size": "0"})
    with pytest.raises(ConfigError, match="args.max_replicas"):
        ServeOptions.from_args({"soup": "x", "min_replicas": 3, "max_replicas": 2})
    opts = ServeOptions.from_args({"soup": "models:/soup-demo@production", "num_cpus": "0.5"})
    assert opts.num_cpus == 0.5 and opts.served_name == "soup-demo"


@pytest.fixture(scope="module")
def engine(tiny_soup):
    return SoupEngine(ServeOptions(soup=str(tiny_soup), model_name="tiny"))


def _run(engine, requests):
    run = engine.start([engine.prepare(r) for r in requests])
    texts, finish = [""] * len(requests), [None] * len(requests)
    while not run.finished:
        for i, d in enumerate(run.step()):
            if d is not None:
                texts[i] += d.text
                finish[i] = d.finish
    return texts, finish


def test_engine_mixed_batch_equals_each_request_alone(engine):
    info = engine.info
    assert info.objectives == ["warm", "calm"] and "mage_e_m" in info.modes and info.beta == 0.7
    bodies = [
        {"prompt": "hello there", "preference": [1, 0], "temperature": 0, "max_tokens": 8},
        {"prompt": "a b c", "preference": {"calm": 1}, "mode": "mage_e_m", "temperature": 0, "max_tokens": 5},
        {"prompt": "zz", "mode": "mod", "temperature": 0.9, "top_k": 5, "seed": 3, "max_tokens": 6},
        {"messages": [{"role": "user", "content": "hi"}], "mode": "mage_i_m", "temperature": 0, "gamma": 2},
        {"prompt": "hello there", "preference": [0.3, 0.7], "mode": "rewarded_soup", "temperature": 0},
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


def test_engine_refuses_prompts_over_the_context(engine):
    req = parse_request({"prompt": "word " * 200, "max_tokens": 8}, "completion", engine.info)
    with pytest.raises(APIError) as err:
        engine.prepare(req)
    assert err.value.status == 400 and err.value.code == "context_length_exceeded"


def test_bundle_ships_value_models_and_refuses_a_tampered_one(tiny_soup, tmp_path):
    import shutil

    from soupkitchen.merging import load_bundle

    b = load_bundle(tiny_soup)
    assert b.value_names == ["value-warm", "value-calm"] and b.value_indices == [2, 3]
    copy = tmp_path / "soup"
    shutil.copytree(tiny_soup, copy)
    f = copy / "adapters" / "value-warm.safetensors"
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(ConfigError, match=r"value_models\[0\]\.sha256"):
        load_bundle(copy)


def test_train_value_models_attach_names_the_flag(tmp_path, capsys):
    import jobs.train_value_models as job

    assert job.main(["--recipe", "tiny", "--attach", str(tmp_path), "--out", str(tmp_path / "vm")]) == 2
    assert "--attach" in capsys.readouterr().err
