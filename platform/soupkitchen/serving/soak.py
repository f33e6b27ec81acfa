"""A bounded mixed load against the endpoint, for the soak (``bench/soak.py``, and a short one in
``tests/test_serve_http.py``): ``concurrency`` clients send requests back to back, each drawn as

  good        a completion or chat, its own random μ and mode, streamed or not, max_tokens in 4..32
  bad         a body from a corpus of hostile inputs (malformed, deep nesting, NaN, surrogates, wrong types)
  disconnect  a stream the client closes after its second chunk

and every answer is counted by class (``good 2xx``, ``bad 4xx``, ``disconnects``...). ``verdict`` states the
targets: zero 5xx for good requests, every bad one a 4xx, the replica's memory at the end within a bound of
its memory after the warm-up.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import aiohttp
import numpy as np

BAD = [  # (raw body, what it is); every one must be answered 4xx
    (b'{"prompt": "x",', "malformed"),
    (b"[" * 1500 + b"]" * 1500, "deep body"),
    (b'{"prompt": "x", "preference": ' + b"[" * 40 + b"]" * 40 + b"}", "deep preference"),
    (b'{"prompt": "x", "preference": [NaN, 1]}', "NaN weight"),
    (b'{"prompt": "caf\\ud800"}', "lone surrogate"),
    (b'{"prompt": "x", "prompt": "y"}', "repeated key"),
    (b'{"prompt": "x", "gamma": 1e400}', "overflowing number"),
    (b'{"prompt": "\xff\xfe"}', "invalid UTF-8"),
    (b'{"prompt": "x", "max_tokens": "many"}', "string for an int"),
    (b'{"prompt": "x", "stream": null, "temperature": [1]}', "list for a number"),
    (b'{"messages": [{"role": "user", "content": {"a": 1}}]}', "object for content"),
    (b'{"prompt": [1, 2, 3]}', "token ids"),
    (b'"just a string"', "not an object"),
    (b'{"prompt": "x", "preference": [-1, 2]}', "negative weight"),
    (b'{"prompt": "x", "mode": "telepathy"}', "unknown mode"),
]


def good_body(rng, objectives: list[str], modes: list[str]) -> dict:
    mu = rng.dirichlet(np.ones(len(objectives))).tolist()
    body = {
        "preference": mu,
        "mode": str(rng.choice(modes)),
        "max_tokens": int(rng.integers(4, 33)),
        "temperature": float(rng.choice([0.0, 0.8])),
        "seed": int(rng.integers(0, 2**31)),
        "stream": bool(rng.random() < 0.5),
    }
    if rng.random() < 0.5:
        return body | {"prompt": f"Tell me about item {rng.integers(1000)}."}
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    return body | {"messages": chat}


async def one(session, url: str, rng, objectives, modes, counts: Counter, headers: dict) -> None:
    kind = rng.choice(["good", "bad", "disconnect"], p=[0.6, 0.25, 0.15])
    if kind == "bad":
        raw, _ = BAD[int(rng.integers(len(BAD)))]
        bad_headers = {**headers, "Content-Type": "application/json"}
        async with session.post(f"{url}/v1/completions", data=raw, headers=bad_headers) as r:
            await r.read()
            counts[f"bad {r.status // 100}xx"] += 1
        return
    body = good_body(rng, objectives, modes)
    if kind == "disconnect":
        body = {**body, "prompt": "Keep talking.", "stream": True, "max_tokens": 32}
        body.pop("messages", None)
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    async with session.post(f"{url}{path}", json=body, headers=headers) as r:
        if not body["stream"]:
            await r.read()
            counts[f"good {r.status // 100}xx"] += 1
            return
        chunks, failed = 0, r.status != 200
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("data: {"):
                chunks += 1
                failed |= "error" in json.loads(line[6:])
                if kind == "disconnect" and chunks >= 2:
                    counts["disconnects"] += 1
                    return  # leaving the block drops the connection mid-stream
        counts[f"good {5 if failed and r.status == 200 else r.status // 100}xx"] += 1


async def load(
    url: str,
    seconds: float,
    concurrency: int,
    seed: int,
    objectives: list[str],
    modes: list[str],
    counts: Counter,
    on_tick=lambda: None,
    headers: dict | None = None,
    request_timeout_s: float = 120.0,
) -> None:
    """``concurrency`` clients sending requests back to back for ``seconds`` (with ``headers``, e.g. the API
    key); ``on_tick`` every 10 s. A request with no answer within ``request_timeout_s`` (a hang) or a reset
    connection counts as ``client error <kind>``, a failure."""
    end = time.perf_counter() + seconds
    timeout = aiohttp.ClientTimeout(total=request_timeout_s)

    async def client(i: int, session) -> None:
        rng = np.random.default_rng([seed, i])
        while time.perf_counter() < end:
            try:
                await one(session, url, rng, objectives, modes, counts, headers or {})
            except (aiohttp.ClientError, TimeoutError) as e:  # an answer we did not get
                counts[f"client error {type(e).__name__}"] += 1

    async def ticks() -> None:
        while time.perf_counter() < end:
            await asyncio.sleep(min(10.0, max(end - time.perf_counter(), 0.0)))
            on_tick()

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(ticks(), *(client(i, session) for i in range(concurrency)))


def verdict(counts: Counter, rss_ratio: float, rss_bound: float) -> tuple[bool, str]:
    """Whether the soak met its targets, and the line that says so."""
    good_5xx = sum(v for k, v in counts.items() if k.startswith("good 5"))
    bad_not_4xx = sum(v for k, v in counts.items() if k.startswith("bad") and not k.startswith("bad 4"))
    lost = sum(v for k, v in counts.items() if k.startswith("client error"))
    ok = good_5xx == 0 and bad_not_4xx == 0 and lost == 0 and rss_ratio <= rss_bound
    return ok, (
        f"good 5xx {good_5xx} (target 0), bad answered other than 4xx {bad_not_4xx} (target 0), no answer "
        f"{lost} (target 0), RSS end / warm-up {rss_ratio:.3f} (bound {rss_bound:.2f}): "
        + ("PASS" if ok else "FAIL")
    )
