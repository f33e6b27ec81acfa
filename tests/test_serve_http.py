"""The Ray Serve app over real HTTP on loopback: `serve start` + `serve run serve.app:app` against a real
`ray start --head`, the tiny soup bundle (with value models), API-key auth on. Every mode answers, the
official openai client works (extra_body for μ), streaming equals the non-streamed text, bad inputs get
their 4xx in OpenAI's error shape while the server keeps answering, and concurrent requests with
different μ / modes share a batch yet give exactly what each gives alone (greedy). Continuous batching:
short requests sent while a long one streams are admitted into its running batch and answered before it
ends, a client that disconnects frees its row, and a burst beyond the queue is answered 503. Faults and
hostile clients: a killed replica fails its requests cleanly, half-open sockets and stalled bodies hold no
capacity (408), a request past request_timeout_s gets 504, a short soak, and the keys never leak."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests

from soupkitchen.serving import soak
from tests.conftest import RAY_DASHBOARD_PORT, RAY_PORT, REPO

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]
PORT, KEY, KEY2 = 28311, "sk-test-soupkitchen", "sk-second-client-7f3a"
URL = f"http://127.0.0.1:{PORT}"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _serve_cli(*args, env, timeout=300):
    exe = Path(sys.executable).with_name("serve")
    return subprocess.run(
        [str(exe), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def endpoint(ray_head, tiny_soup, tmp_path_factory):
    env = ray_head["env"]
    keys = tmp_path_factory.mktemp("keys") / "api-keys.txt"
    keys.write_text(f"# one key per client\n{KEY}\n\n{KEY2}\n")
    out = _serve_cli(
        "start",
        "--address",
        f"127.0.0.1:{RAY_PORT}",
        "--http-host",
        "127.0.0.1",
        "--http-port",
        str(PORT),
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    args = {
        "soup": str(tiny_soup),
        "model_name": "tiny",
        "num_cpus": 0.25,
        "max_replicas": 1,  # one replica: the batching tests see every request in one decode loop
        "max_batch_rows": 32,
        "batch_wait_timeout_s": 0.05,
        "min_tokens": 128,  # EOS held back: every request decodes exactly max_tokens (timing tests)
        "max_ongoing_requests": 12,
        "max_queued_requests": 4,
        "max_tokens_limit": 100,
        "max_body_bytes": 4096,
        "body_timeout_s": 4,  # a stalled body is answered 408 after this
        "torch_threads": 1,
        "api_key_file": str(keys),  # two clients' keys, as a mounted secret would hold them
    }
    _deploy(env, args)
    yield requests.get(f"{URL}/v1/models", headers=AUTH, timeout=10).json()["data"][0]
    _serve_cli("shutdown", "-y", "--address", f"http://127.0.0.1:{RAY_DASHBOARD_PORT}", env=env)


def _deploy(env: dict, args: dict, name: str = "default") -> str:
    """``serve run --non-blocking`` of ``serve.app:app`` with ``args`` as application ``name`` (routes under
    ``/<name>`` unless it is the default); returns its URL once it answers /healthz."""
    url = URL if name == "default" else f"{URL}/{name}"
    cmd = ["run", "--non-blocking", "--address", f"127.0.0.1:{RAY_PORT}", "--working-dir", str(REPO)]
    cmd += ["--runtime-env-json", json.dumps({"env_vars": {"PYTHONPATH": "platform"}})]
    if name != "default":
        cmd += ["--name", name, "--route-prefix", f"/{name}"]
    out = _serve_cli(*cmd, "serve.app:app", *[f"{k}={v}" for k, v in args.items()], env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    deadline = time.time() + 240
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                return url
        except requests.RequestException:
            pass
        assert time.time() < deadline, f"the app {name} did not become healthy"
        time.sleep(2)


def post(path: str, body, headers=AUTH, raw: bytes | None = None, url: str = URL, timeout: float = 120):
    data = raw if raw is not None else json.dumps(body)
    return requests.post(
        f"{url}{path}", data=data, headers={**headers, "Content-Type": "application/json"}, timeout=timeout
    )


def good(prompt="hello there", **kw):
    return {"model": "tiny", "prompt": prompt, "max_tokens": 6, "temperature": 0, **kw}


def test_models_lists_the_soup_and_every_mode_answers(endpoint):
    assert endpoint["id"] == "tiny" and endpoint["objectives"] == ["warm", "calm"]
    assert set(endpoint["modes"]) == {
        "bone_soup",
        "rewarded_soups",
        "mage_i_m",
        "mage_i",
        "mage_e_m",
        "mage_e",
        "mod",
        "moc",
        "hoe",
    }
    assert [e["name"] for e in endpoint["experts"]] == ["hoe-warm", "hoe-calm", "hoe-mo0", "hoe-router0"]
    assert endpoint["experts"][3]["votes"] == ["hoe-warm", "hoe-mo0"]
    for mode in endpoint["modes"]:
        r = post("/v1/completions", good(mode=mode, preference=[0.3, 0.7]))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "text_completion" and body["soup"]["mode"] == mode
        assert (
            body["choices"][0]["finish_reason"] in ("stop", "length")
            and body["usage"]["completion_tokens"] >= 1
        )


def test_openai_client_completions_chat_and_streaming(endpoint):
    from openai import OpenAI

    client = OpenAI(base_url=f"{URL}/v1", api_key=KEY)
    assert [m.id for m in client.models.list()] == ["tiny"]
    extra = {"preference": {"warm": 1}, "mode": "mage_i_m", "gamma": 1.5}
    c = client.completions.create(model="tiny", prompt="hi", max_tokens=5, temperature=0, extra_body=extra)
    assert c.choices[0].text and c.usage.completion_tokens >= 1
    msgs = [{"role": "user", "content": "say something calm"}]
    kw = dict(model="tiny", messages=msgs, max_tokens=8, temperature=0, extra_body={"preference": [0.2, 0.8]})
    whole = client.chat.completions.create(**kw)
    assert whole.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    parts, usage = [], None
    for ch in stream:
        if ch.choices:
            parts.append(ch.choices[0].delta.content or "")
        if ch.usage:
            usage = ch.usage
    assert "".join(parts) == whole.choices[0].message.content
    assert usage.completion_tokens == whole.usage.completion_tokens
    streamed = client.completions.create(
        model="tiny", prompt="hi", max_tokens=5, temperature=0, extra_body=extra, stream=True
    )
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == c.choices[0].text


BAD = [
    ("malformed JSON", None, b'{"prompt": "x",', 400, None),
    ("missing prompt", {"max_tokens": 3}, None, 400, "prompt"),
    ("μ of the wrong length", good(preference=[1, 0, 0]), None, 400, "preference"),
    ("negative μ", good(preference=[-1, 2]), None, 400, "preference"),
    ("NaN μ", None, b'{"prompt": "x", "preference": [NaN, 1]}', 400, "preference[0]"),
    ("a body nested 1500 deep", None, b"[" * 1500 + b"]" * 1500, 400, None),
    (
        "μ nested 40 deep",
        None,
        b'{"prompt": "x", "preference": ' + b"[" * 40 + b"]" * 40 + b"}",
        400,
        "preference",
    ),
    ("a lone surrogate in the prompt", None, b'{"prompt": "caf\\ud800"}', 400, "prompt"),
    ("a repeated key", None, b'{"prompt": "x", "prompt": "y"}', 400, None),
    ("γ beyond a double", None, b'{"prompt": "x", "gamma": 1e400}', 400, "gamma"),
    ("not UTF-8", None, b'{"prompt": "\xff\xfe"}', 400, None),
    ("all-zero μ", good(preference=[0, 0]), None, 400, "preference"),
    ("unknown objective", good(preference={"funny": 1}), None, 400, "preference"),
    ("γ out of range", good(mode="mage_i_m", gamma=1e9), None, 400, "gamma"),
    ("α out of range", good(alpha=-1), None, 400, "alpha"),
    ("max_tokens over the limit", good(max_tokens=10_000), None, 400, "max_tokens"),
    ("prompt over the context", good(prompt="word " * 300), None, 400, "prompt"),
    ("unknown mode", good(mode="telepathy"), None, 400, "mode"),
    ("the old mode name", good(mode="rewarded_soup"), None, 400, "mode"),
    ("negative γ", good(mode="mage_i_m", gamma=-0.5), None, 400, "gamma"),
    ("γ not a number", good(gamma="high"), None, 400, "gamma"),
    ("not an object", [1, 2], None, 400, None),
    ("unknown model", good(model="gpt-9"), None, 404, "model"),
    ("body over the limit", good(prompt="x" * 5000), None, 413, None),
]


@pytest.mark.parametrize("what, body, raw, status, param", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_4xx_and_the_server_keeps_answering(endpoint, what, body, raw, status, param):
    r = post("/v1/completions", body, raw=raw)
    assert r.status_code == status, (what, r.text)
    err = r.json()["error"]
    assert err["param"] == param and err["message"], what
    assert post("/v1/completions", good()).status_code == 200


def test_hostile_text_and_numbers_that_are_valid_json(endpoint):
    """Weights that overflow when summed are relative weights (μ = their ratio); a surrogate in a chat
    message is refused naming the message, by the ingress, before any model replica sees it."""
    r = post("/v1/completions", good(preference=[1e308, 1e308]))
    assert r.status_code == 200 and r.json()["soup"]["preference"] == [0.5, 0.5], r.text
    r = post("/v1/chat/completions", None, raw=b'{"messages": [{"role": "user", "content": "\\udfff"}]}')
    assert (r.status_code, r.json()["error"]["param"]) == (400, "messages[0].content"), r.text


def test_validation_errors_say_what_is_allowed(endpoint):
    r = post("/v1/completions", good(mode="rewarded_soup"))
    assert r.status_code == 400 and "did you mean 'rewarded_soups'?" in r.json()["error"]["message"]
    r = post("/v1/completions", good(preference=[0.2, 0.3, 0.5]))
    err = r.json()["error"]
    assert (r.status_code, err["param"]) == (400, "preference")
    assert "one weight per objective" in err["message"]
    r = post("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]})
    assert (r.status_code, r.json()["error"]["param"]) == (400, "messages[0].role")
    r = post("/v1/completions", good(gamma=-1))
    err = r.json()["error"]
    assert (r.status_code, err["param"], err["type"]) == (400, "gamma", "invalid_request_error")
    assert "[0, 10]" in err["message"] and "got -1" in err["message"]


def test_auth_and_unknown_routes(endpoint):
    r = post("/v1/completions", good(), headers={})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert post("/v1/completions", good(), headers={"Authorization": "Bearer nope"}).status_code == 401
    assert post("/v1/completions", good(), headers={"Authorization": f"Bearer {KEY2}"}).status_code == 200
    # a header no str comparison accepts (latin-1 bytes) is a 401, not a 500
    r = post("/v1/completions", good(), headers={"Authorization": "Bearer sk-\xe9\xff"})
    assert r.status_code == 401, r.text
    r = requests.get(f"{URL}/v1/nothing", timeout=10)
    assert r.status_code == 404 and "error" in r.json()


def test_mixed_batch_equals_each_request_alone(endpoint):
    bodies = [
        good(prompt=f"prompt {i}", preference=[i / 7, 1 - i / 7], mode=m, max_tokens=8)
        for i, m in enumerate(
            ["bone_soup", "mage_i_m", "mod", "moc", "hoe", "rewarded_soups", "mage_e", "hoe"]
        )
    ]
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: post("/v1/completions", b).json(), bodies))
    alone = [post("/v1/completions", b).json() for b in bodies]
    assert all("soup" in t for t in together), together
    assert max(t["soup"]["batch_size"] for t in together) > 1  # they did share a batch
    assert [t["choices"][0]["text"] for t in together] == [a["choices"][0]["text"] for a in alone]
    # mode hoe reports what preference routing selected (Eqs. 9-10): μ = [4/7, 3/7] lies between the centre
    # expert [.5, .5] and the router [.75, .25], with 5/7 · .5 + 2/7 · .75 = 4/7; μ = [1, 0] is e_1 alone
    assert together[4]["soup"]["experts"] == pytest.approx({"hoe-mo0": 5 / 7, "hoe-router0": 2 / 7}, abs=1e-5)
    assert together[7]["soup"]["experts"] == {"hoe-warm": 1.0}
    assert "experts" not in together[0]["soup"]


def test_metrics_are_prometheus_text(endpoint):
    post("/v1/completions", good())
    post("/v1/completions", good(mode="telepathy"))
    text = requests.get(f"{URL}/metrics", timeout=10).text
    assert 'soupkitchen_requests_total{endpoint="/v1/completions",mode="bone_soup",status="200"}' in text
    assert 'status="400"' in text and "soupkitchen_batch_size_bucket" in text
    assert (
        "soupkitchen_request_latency_seconds_bucket" in text
        and 'soupkitchen_tokens_total{kind="completion"}' in text
    )


def _sse(body: dict, url: str = URL):
    """Yield ``(time, event)`` of an SSE completion, each event its JSON or "[DONE]"; closing the generator
    closes the socket mid-stream."""
    with requests.post(
        f"{url}/v1/completions", json={**body, "stream": True}, headers=AUTH, stream=True, timeout=120
    ) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines():
            if line.startswith(b"data: "):
                yield time.perf_counter(), "[DONE]" if line == b"data: [DONE]" else json.loads(line[6:])


def _stream(body: dict, chunks: list, stop_after: int | None = None) -> None:
    """Read an SSE completion, appending (time, text) per chunk; close the connection after ``stop_after``."""
    with contextlib.closing(_sse(body)) as events:
        for at, event in events:
            if event != "[DONE]":
                chunks.append((at, "".join(c["text"] for c in event["choices"])))
                if stop_after is not None and len(chunks) >= stop_after:
                    return  # closing the generator closes the socket mid-stream


def _stream_events(body: dict, events: list) -> None:
    """Read an SSE completion to its end, appending each event (its JSON, or "[DONE]")."""
    for _, event in _sse(body):
        events.append(event)


def _until(predicate, timeout=60.0):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def test_short_requests_join_a_long_ones_batch_and_finish_first(endpoint):
    long_chunks: list = []
    long = good(prompt="once upon a time", max_tokens=100)
    shorts = [
        good(prompt=f"short {i}", max_tokens=3 + i % 3, mode=m, preference=[i / 5, 1 - i / 5])
        for i, m in enumerate(["bone_soup", "mage_i_m", "mod", "hoe", "moc"])
    ]
    shorts.append(good(prompt="sampled", max_tokens=4, temperature=0.9, top_k=8, seed=11))
    with ThreadPoolExecutor(len(shorts) + 1) as pool:
        streaming = pool.submit(_stream, long, long_chunks)
        _until(lambda: len(long_chunks) >= 3)

        def timed(b):
            r = post("/v1/completions", b)
            return r.json(), time.perf_counter()

        together = list(pool.map(timed, shorts))
        streaming.result()
    ended = long_chunks[-1][0]
    assert len(long_chunks) >= 100 and all(at < ended for _, at in together)  # answered mid-decode
    assert all(body["soup"]["batch_size"] > 1 for body, _ in together)  # in the long one's batch
    alone = [post("/v1/completions", b).json()["choices"][0]["text"] for b in shorts]
    assert [body["choices"][0]["text"] for body, _ in together] == alone
    streamed = "".join(t for _, t in long_chunks)
    assert streamed == post("/v1/completions", long).json()["choices"][0]["text"]


def test_a_client_that_leaves_frees_its_row(endpoint):
    chunks: list = []
    _stream(good(prompt="leave early", max_tokens=100), chunks, stop_after=3)  # disconnects mid-stream
    with pytest.raises(requests.Timeout):  # a non-streaming client that gives up
        requests.post(f"{URL}/v1/completions", json=good(max_tokens=100), headers=AUTH, timeout=0.05)
    time.sleep(0.1)
    # both would still be decoding (100 tokens take longer than this); a request now shares its batch
    # with no one
    r = post("/v1/completions", good(max_tokens=4))
    assert r.status_code == 200 and r.json()["soup"]["batch_size"] == 1


def test_a_burst_beyond_the_queue_gets_503_and_the_server_keeps_answering(endpoint):
    body = good(max_tokens=60)
    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(lambda _: post("/v1/completions", body), range(40)))
    codes = [r.status_code for r in answers]
    assert set(codes) == {200, 503} and codes.count(200) >= 12, [
        r.text for r in answers if r.status_code != 200
    ]
    busy = next(r for r in answers if r.status_code == 503)
    err = busy.json()["error"]
    assert (err["type"], err["code"]) == ("server_error", "overloaded") and busy.headers["Retry-After"]
    texts = {r.json()["choices"][0]["text"] for r in answers if r.status_code == 200}
    assert len(texts) == 1  # the same greedy request, whichever batch it joined
    assert post("/v1/completions", good()).status_code == 200


def test_a_killed_model_replica_fails_its_requests_cleanly_and_is_replaced(endpoint, ray_head):
    """SIGKILL of the model replica's process while requests decode: each in-flight request ends with one
    answer (a 503 ``replica_failed`` with Retry-After in OpenAI's shape, a stream's error event, or its
    completion if it beat the kill), none hangs; Serve starts a new replica and new requests succeed."""
    (pid,) = ray_head["actor_pids"](":default:SoupModel")
    streamed: list = []
    body = good(prompt="killed mid-stream", max_tokens=100)
    with ThreadPoolExecutor(8) as pool:
        stream = pool.submit(_stream_events, body, streamed)
        plain = [pool.submit(post, "/v1/completions", good(prompt=f"k{i}", max_tokens=100)) for i in range(6)]
        _until(lambda: len(streamed) >= 2)  # decoding now
        os.kill(pid, signal.SIGKILL)
        answers = [f.result(timeout=90) for f in plain]
        stream.result(timeout=90)
    for r in answers:  # in flight when the process died: 503 replica_failed (retry), never a hang
        assert r.status_code == 200 or (r.status_code, r.json()["error"]["code"]) == (503, "replica_failed")
        assert r.status_code == 200 or r.headers["Retry-After"], r.text
    assert streamed[-1] == "[DONE]" or streamed[-1]["error"]["code"] == "replica_failed", streamed[-3:]
    deadline = time.time() + 180
    while post("/v1/completions", good()).status_code != 200:
        assert time.time() < deadline, "no replica came back"
        time.sleep(2)
    assert ray_head["actor_pids"](":default:SoupModel") not in ([], [pid])


def test_half_open_sockets_and_slow_bodies_hold_no_capacity(endpoint):
    """Clients that connect and send nothing, or send their headers and then stall in the body, take no
    ingress or model capacity: while 12 of each hang on, good requests are answered (before any stalled one
    has an answer); each stalled body then gets a 408 after ``body_timeout_s``."""
    idle = [socket.create_connection(("127.0.0.1", PORT), timeout=30) for _ in range(12)]
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    stalled = []
    for _ in range(12):
        sock = socket.create_connection(("127.0.0.1", PORT), timeout=30)
        sock.sendall(head.encode() + b'{"model": "tiny", "prompt": "')  # then nothing more
        stalled.append(sock)
    try:
        time.sleep(0.5)  # every stalled request has reached the proxy and its ingress
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda i: post("/v1/completions", good(f"p{i}"), timeout=30), range(4)))
        assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
        for sock in stalled:  # still waiting for their bodies: no answer yet
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
            sock.setblocking(True)
        for sock in stalled:
            status = sock.recv(4096).split(b"\r\n", 1)[0]
            assert status.startswith(b"HTTP/1.1 408"), status
    finally:
        for sock in idle + stalled:
            sock.close()
    assert post("/v1/completions", good()).status_code == 200


def test_a_request_past_request_timeout_s_gets_504_and_leaves_the_queue(
    endpoint, ray_head, tiny_soup, tmp_path
):
    """A second application whose requests cannot finish in time: an idle replica gathers for 6 s
    (``batch_wait_timeout_s``) before it prefills a lone request, and ``request_timeout_s`` is 2 s. A lone
    request gets a 504 in OpenAI's shape after ~2 s. A stream is accepted (200) before it queues, so its
    timeout is its only event (``timeout_error``), as any error after acceptance is. Both leave the queue:
    a pair sent next fills the two-row batch by itself and is answered in time."""
    keys = tmp_path / "keys.txt"
    keys.write_text(KEY)
    args = {"soup": str(tiny_soup), "model_name": "tiny", "num_cpus": 0.25, "max_replicas": 1}
    args |= {"torch_threads": 1, "api_key_file": str(keys), "max_batch_rows": 2}
    slow = _deploy(ray_head["env"], args | {"request_timeout_s": 2, "batch_wait_timeout_s": 6}, "slow")
    for stream in (False, True):
        t0 = time.perf_counter()
        r = requests.post(
            f"{slow}/v1/completions", json=good(max_tokens=2, stream=stream), headers=AUTH, timeout=30
        )
        waited = time.perf_counter() - t0
        # a stream is accepted (200) before it queues, so its timeout is its one event, as for later errors
        events = [json.loads(x[6:]) for x in r.text.splitlines() if x.startswith("data: ")] if stream else []
        (err,) = [e["error"] for e in events] if stream else [r.json()["error"]]
        assert r.status_code == (200 if stream else 504) and 2 <= waited < 6, (r.status_code, r.text, waited)
        assert err["type"] == "timeout_error" and "within 2 s" in err["message"], err
    with ThreadPoolExecutor(2) as pool:
        pair = list(pool.map(lambda p: post("/v1/completions", good(p, max_tokens=2), url=slow), "ab"))
    assert [r.status_code for r in pair] == [200, 200], [r.text for r in pair]
    assert [r.json()["soup"]["batch_size"] for r in pair] == [2, 2]  # the timed-out ones are not in it
    assert (
        'soupkitchen_errors_total{type="timeout_error"} 2.0'
        in requests.get(f"{slow}/metrics", timeout=10).text
    )


def test_a_short_soak_answers_every_good_request_and_holds_memory(endpoint, ray_head):
    """30 s of the soak's mixed load (``soupkitchen.serving.soak``: good requests of every mode, streamed or
    not, hostile bodies, abandoned streams) at concurrency 4 after a 10 s warm-up, against the one replica:
    no good request gets a 5xx, every bad one a 4xx, and the replica's RSS ends within 1.10× of its RSS
    after the warm-up; the abandoned streams leave no traceback in the ingress log. ``bench/soak.py`` runs
    the same load for 10 minutes."""
    (pid,) = ray_head["actor_pids"](":default:SoupModel")
    proc, objectives, modes = psutil.Process(pid), endpoint["objectives"], endpoint["modes"]
    warm, counts, limit = Counter(), Counter(), {"headers": AUTH, "request_timeout_s": 30}
    asyncio.run(soak.load(URL, 10, 4, 0, objectives, modes, warm, **limit))
    base = proc.memory_info().rss
    asyncio.run(soak.load(URL, 30, 4, 1, objectives, modes, counts, **limit))
    ok, line = soak.verdict(counts, proc.memory_info().rss / base, 1.10)
    assert ok and not any(k.startswith("client error") for k in warm), (line, counts, warm)
    assert counts["good 2xx"] > 20 and counts["bad 4xx"] > 5 and counts["disconnects"] > 0, counts
    serve_logs = Path(ray_head["temp"]).glob("session_*/logs/serve/replica_default_OpenAIIngress_*.log")
    logs = [f.read_text(errors="replace") for f in serve_logs]
    assert logs and not any("TaskCancelledError" in t for t in logs)  # a stream dropped is not a failure


def test_api_keys_never_reach_logs_errors_or_metrics(endpoint, ray_head):
    """After every test above (wrong keys, right keys, errors of every kind), neither key appears in any
    response body, in /metrics or in any file of the Ray session (Serve, replica, proxy and GCS logs)."""
    r = post("/v1/completions", good(prompt=KEY), headers={"Authorization": f"Bearer {KEY}x"})
    assert r.status_code == 401 and KEY not in r.text
    assert KEY not in requests.get(f"{URL}/metrics", timeout=10).text
    leaks = []
    for f in Path(ray_head["temp"]).rglob("*"):
        if "runtime_resources" in f.parts or f.suffix == ".zip":  # copies of this repository (its tests)
            continue
        if f.is_file() and f.stat().st_size < 50_000_000 and not f.is_symlink():
            data = f.read_bytes()
            leaks += [f"{f.name}: {k}" for k in (KEY, KEY2) if k.encode() in data]
    assert not leaks, leaks
