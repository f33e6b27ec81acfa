"""Soak: a bounded mixed load against one model replica for ``--duration`` seconds, reporting every answer by
class and the replica's memory after warm-up and at the end.

    python bench/soak.py --recipe tiny --duration 600 --concurrency 8      # the issue's 10 minutes
    python bench/soak.py --soup ~/.cache/soupkitchen/runs/demo-compare-bone_soup/bundles/bone_soup

It starts Ray, deploys the endpoint (``soupkitchen.serving.builder.build_app``) with one replica on
127.0.0.1:``--port`` and keeps ``--concurrency`` clients busy. Each request is drawn as:

  good        a completion or chat, its own random μ and mode, streamed or not, max_tokens in 4..32
  bad         a body from a corpus of hostile inputs (malformed, deep nesting, NaN, surrogates, wrong types)
  disconnect  a stream the client closes after its second chunk

Warm-up (``--warmup`` s of the same load) comes first; the replica's resident memory (RSS of its process) is
read after it and every 10 s of the soak. Reported: good requests by status (target: zero 5xx), bad ones by
status (target: all 4xx), disconnects, and RSS after warm-up, at the end and at most, with the end/warm-up
ratio against ``--rss-bound`` (exit status 1 when a target is missed). Without ``--soup`` the bundle is two
random LoRA adapters over the recipe's W0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import numpy as np
import psutil
import ray
import requests
from ray import serve
from ray.util.state import list_actors

from soupkitchen.benchmarks import random_soup
from soupkitchen.serving import ServeOptions
from soupkitchen.serving.builder import build_app

ROOT = Path(__file__).resolve().parents[1]  # the replicas' working_dir
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


def replica_pid() -> int:
    """The PID of the one live SoupModel replica (Ray's state API)."""
    alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
    (pid,) = [a.pid for a in alive if a.class_name.endswith("SoupModel")]
    return int(pid)


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


async def one(session, url: str, rng, objectives, modes, counts: Counter) -> None:
    kind = rng.choice(["good", "bad", "disconnect"], p=[0.6, 0.25, 0.15])
    if kind == "bad":
        raw, _ = BAD[int(rng.integers(len(BAD)))]
        headers = {"Content-Type": "application/json"}
        async with session.post(f"{url}/v1/completions", data=raw, headers=headers) as r:
            await r.read()
            counts[f"bad {r.status // 100}xx"] += 1
        return
    body = good_body(rng, objectives, modes)
    if kind == "disconnect":
        body = {**body, "prompt": "Keep talking.", "stream": True, "max_tokens": 32}
        body.pop("messages", None)
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    async with session.post(f"{url}{path}", json=body) as r:
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


async def load(url: str, seconds: float, concurrency: int, seed: int, objectives, modes, counts, on_tick):
    """``concurrency`` clients sending requests back to back for ``seconds``; ``on_tick`` every 10 s."""
    end = time.perf_counter() + seconds
    timeout = aiohttp.ClientTimeout(total=300)

    async def client(i: int, session) -> None:
        rng = np.random.default_rng([seed, i])
        while time.perf_counter() < end:
            try:
                await one(session, url, rng, objectives, modes, counts)
            except aiohttp.ClientError as e:  # a reset connection is an answer we did not get
                counts[f"client error {type(e).__name__}"] += 1

    async def ticks() -> None:
        while time.perf_counter() < end:
            await asyncio.sleep(min(10.0, max(end - time.perf_counter(), 0.0)))
            on_tick()

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(ticks(), *(client(i, session) for i in range(concurrency)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--soup", help="bundle URI or path (default: random adapters over --recipe's W0)")
    p.add_argument("--recipe", default="tiny", help="W0 for the random bundle (tiny | demo)")
    p.add_argument("--port", type=int, default=28410)
    p.add_argument("--duration", type=float, default=600.0, help="soak seconds (after the warm-up)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds of the same load before the baseline")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs of the model replica")
    p.add_argument("--rss-bound", type=float, default=1.10, help="allowed RSS end / after-warm-up ratio")
    a = p.parse_args(argv)
    if a.duration <= 0 or a.warmup < 0 or a.concurrency < 1 or a.rss_bound < 1:
        p.error("--duration > 0, --warmup >= 0, --concurrency >= 1 and --rss-bound >= 1")
    tmp = tempfile.TemporaryDirectory()
    soup = a.soup or str(random_soup(a.recipe, 2, Path(tmp.name)))
    runtime = {"working_dir": str(ROOT), "env_vars": {"PYTHONPATH": "platform"}}
    ray.init(runtime_env=runtime, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    options = ServeOptions(soup=soup, model_name="soak", num_cpus=a.num_cpus, min_replicas=1, max_replicas=1,
                           max_tokens_limit=64, max_body_bytes=8192, torch_threads=1)  # fmt: skip
    serve.run(build_app(options), name="soupkitchen", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{a.port}"
    info = requests.get(f"{url}/v1/models", timeout=300).json()["data"][0]
    objectives = info["objectives"]
    modes = [m for m in info["modes"] if m in ("bone_soup", "rewarded_soups", "mage_i_m", "mod")]
    proc = psutil.Process(replica_pid())
    warm = Counter()
    asyncio.run(load(url, a.warmup, a.concurrency, 0, objectives, modes, warm, lambda: None))
    base, samples, counts, t0 = _mib(proc), [], Counter(), time.perf_counter()

    def tick() -> None:
        samples.append(_mib(proc))
        t = time.perf_counter() - t0
        print(
            f"[soak] {t:5.0f}/{a.duration:.0f} s  {sum(counts.values())} answers  rss {samples[-1]:.0f} MiB"
        )

    asyncio.run(load(url, a.duration, a.concurrency, 1, objectives, modes, counts, tick))
    end = _mib(proc)
    print(
        f"soup {soup}: one replica, concurrency {a.concurrency}, {a.warmup:.0f} s warm-up + "
        f"{a.duration:.0f} s soak, modes {modes}"
    )
    print("answers: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    ratio = end / base
    top = max([*samples, end])
    print(
        f"replica RSS: after warm-up {base:.0f} MiB, end {end:.0f} MiB, max {top:.0f} MiB; "
        f"end / warm-up {ratio:.3f} (bound {a.rss_bound:.2f})"
    )
    good_5xx = sum(v for k, v in counts.items() if k.startswith("good 5"))
    bad_not_4xx = sum(v for k, v in counts.items() if k.startswith("bad") and not k.startswith("bad 4"))
    ok = good_5xx == 0 and bad_not_4xx == 0 and ratio <= a.rss_bound
    verdict = "PASS" if ok else "FAIL"
    print(f"good 5xx {good_5xx} (target 0), bad answered other than 4xx {bad_not_4xx} (target 0): {verdict}")
    serve.shutdown()
    ray.shutdown()
    tmp.cleanup()
    return 0 if ok else 1


def _mib(proc: psutil.Process) -> float:
    return proc.memory_info().rss / 2**20


if __name__ == "__main__":
    sys.exit(main())
