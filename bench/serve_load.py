"""Serving under load, side by side in one run on the same replica count: static vs continuous batching,
mixed-μ vs single-μ traffic, and the autoscaler adding replicas under load and removing them after.

    python bench/serve_load.py --recipe tiny                           # seconds; random adapters over W0
    python bench/serve_load.py --compare-batching --arrival poisson --rate 20 --max-tokens 8,128
    python bench/serve_load.py --soup ~/.cache/soupkitchen/runs/demo-compare-bone_soup/bundles/bone_soup
    python bench/serve_load.py --address 127.0.0.1:6379 --soup models:/soup-demo@production --requests 400

It starts Ray (or joins ``--address``), deploys the endpoint (``soupkitchen.serving.builder.build_app``, what
``serve.app:app`` builds) on 127.0.0.1:``--port`` and drives it with an asyncio + aiohttp client that
streams: at most ``--concurrency`` requests in flight, released all at once (``--arrival closed``) or at
Poisson arrival times (``--arrival poisson --rate R``); each request's max_tokens is drawn in
``--max-tokens LO,HI`` and decoded exactly (the server holds EOS back), greedy. Phases, interleaved
``--rounds`` times so they see the same machine load (``--compare-batching`` first runs ``mixed`` under
``batching: static``, then redeploys with continuous batching; both see the same requests):

  single   every request μ = (1/n, ..., 1/n), mode bone_soup
  mixed    every request its own random μ (Dirichlet), mode bone_soup     target: ≥ 0.9× single's throughput
  modes    random μ and a random mode among --modes (cost of guided rows; reported, no target)

Reported: requests/s, completion tokens/s, p50/p99 latency and time to first token, errors, the mean
decoding-batch size (requests per step, from the ingress's ``soupkitchen_batch_size`` histogram), the
continuous/static and mixed/single ratios with 95 % bootstrap intervals paired over the same requests
(target ≥ 1.5× throughput and a lower p99 at concurrency 16; throughput as Σ tokens / Σ latency, which
is throughput / concurrency while the concurrency stays saturated, so it resamples per request) and the
SoupModel replica count over time (``serve.status()``). Without ``--soup`` the bundle is n random LoRA
adapters (the recipe's rank and targets) over the recipe's W0, written to a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import aiohttp
import numpy as np
import ray
import requests
from ray import serve

from soupkitchen.benchmarks import format_ratio, paired_ratio, random_soup
from soupkitchen.methods import Mode
from soupkitchen.serving import ServeOptions
from soupkitchen.serving.builder import build_app

ROOT = Path(__file__).resolve().parents[1]  # the replicas' working_dir


class ReplicaWatch(threading.Thread):
    """Samples the number of RUNNING SoupModel replicas every ``period`` seconds."""

    def __init__(self, period: float = 0.5):
        super().__init__(daemon=True)
        self.period, self.samples, self.stop = period, [], threading.Event()

    def count(self) -> int:
        """Replicas the autoscaler has asked for: RUNNING + STARTING (a new one loads the model first)."""
        dep = serve.status().applications["soupkitchen"].deployments["SoupModel"]
        return sum(int(dep.replica_states.get(k, 0)) for k in ("RUNNING", "STARTING"))

    def run(self):
        t0 = time.perf_counter()
        while not self.stop.is_set():
            with contextlib.suppress(Exception):  # status can be briefly unavailable while scaling
                self.samples.append((time.perf_counter() - t0, self.count()))
            time.sleep(self.period)


def mean_batch(url: str) -> tuple[float, float]:
    """(sum, count) of the ingress's ``soupkitchen_batch_size`` histogram: occupancy = Δsum / Δcount."""
    text = requests.get(f"{url}/metrics", timeout=30).text
    got = {}
    for line in text.splitlines():
        for key in ("soupkitchen_batch_size_sum", "soupkitchen_batch_size_count"):
            if line.startswith(key):
                got[key] = float(line.split()[-1])
    return got.get("soupkitchen_batch_size_sum", 0.0), got.get("soupkitchen_batch_size_count", 0.0)


async def drive(url: str, bodies: list[dict], arrivals: np.ndarray, concurrency: int) -> dict:
    """Stream ``bodies`` with at most ``concurrency`` in flight, body i released at ``arrivals[i]`` seconds;
    throughput, latency and TTFT percentiles, errors, and per request [tokens, latency, TTFT] (NaN when it
    failed) in body order, so two runs over the same bodies pair request by request."""
    sem = asyncio.Semaphore(concurrency)
    per = np.full((len(bodies), 3), np.nan)
    errors: list[str] = []

    async def one(session, i, body, at):
        await asyncio.sleep(max(at - (time.perf_counter() - t0), 0.0))
        async with sem:
            t, first, used = time.perf_counter(), None, None
            async with session.post(f"{url}/v1/completions", json=body) as r:
                if r.status != 200:
                    errors.append(f"HTTP {r.status}: {(await r.text())[:160]}")
                    return
                async for raw in r.content:
                    line = raw.decode().strip()
                    if not line.startswith("data: {"):
                        continue
                    data = json.loads(line[6:])
                    if "error" in data:
                        errors.append(f"stream: {str(data['error'])[:160]}")
                        return
                    if first is None and data["choices"]:
                        first = time.perf_counter() - t
                    used = data.get("usage") or used
            lat = time.perf_counter() - t
            per[i] = (used["completion_tokens"] if used else 0, lat, first if first is not None else lat)

    timeout = aiohttp.ClientTimeout(total=600)
    before = mean_batch(url)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        t0 = time.perf_counter()
        await asyncio.gather(
            *(one(session, i, b, at) for i, (b, at) in enumerate(zip(bodies, arrivals, strict=True)))
        )
        wall = time.perf_counter() - t0
    after = mean_batch(url)
    ok = per[~np.isnan(per[:, 1])]
    q = np.percentile(ok[:, 1], [50, 99]) if len(ok) else [float("nan")] * 2
    f = np.percentile(ok[:, 2], [50, 99]) if len(ok) else [float("nan")] * 2
    served = after[1] - before[1]
    return {
        "req_s": len(ok) / wall,
        "tok_s": float(ok[:, 0].sum()) / wall,
        "p50": float(q[0]),
        "p99": float(q[1]),
        "ttft50": float(f[0]),
        "ttft99": float(f[1]),
        "errors": errors,
        "batch": (after[0] - before[0]) / served if served else 0.0,
        "per_request": per,
    }


PHASES = ("single", "mixed", "modes")
SCALARS = ("req_s", "tok_s", "p50", "p99", "ttft50", "ttft99", "batch")  # drive()'s per-run figures


def bodies_for(
    phase: str, n_obj: int, k: int, tokens: tuple[int, int], modes: list[str], rate: float, seed: int
) -> tuple[list[dict], np.ndarray]:
    """k streamed greedy completions and their arrival times (Poisson at ``rate`` req/s, all at 0 when
    ``rate`` is 0). Prompts, max_tokens (uniform in ``tokens``; the server holds EOS back to it) and arrivals
    depend only on ``seed``, so every phase and every batching of one round sends the same requests and
    differs only in μ and mode (drawn from ``seed`` and the phase)."""
    shape = np.random.default_rng([seed, 0])
    draw = np.random.default_rng([seed, 1 + PHASES.index(phase)])
    lengths = shape.integers(tokens[0], tokens[1] + 1, k)
    arrivals = np.cumsum(shape.exponential(1.0 / rate, k)) if rate > 0 else np.zeros(k)
    out = []
    for i in range(k):
        mu = [1.0 / n_obj] * n_obj if phase == "single" else draw.dirichlet(np.ones(n_obj)).tolist()
        mode = draw.choice(modes) if phase == "modes" else Mode.BONE_SOUP.value
        out.append(
            {
                "prompt": f"Write one sentence about topic {seed}-{i}.",
                "preference": mu,
                "mode": str(mode),
                "max_tokens": int(lengths[i]),
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        )
    return out, arrivals


def token_rate(per: np.ndarray) -> float:
    """Σ tokens / Σ latency over requests: at a concurrency that stays saturated, C × this is the
    throughput (Little's law), so its ratio between two runs of the same requests is their throughput
    ratio, and it resamples per request."""
    return per[:, 0].sum() / per[:, 1].sum()


def compare(num: list[dict], den: list[dict]) -> dict[str, tuple[float, float, float]]:
    """num/den ratios of the token rate and of p50/p99 latency and p99 TTFT, paired over the requests both
    answered (same bodies, all rounds), with 95 % bootstrap intervals."""
    a = np.concatenate([r["per_request"] for r in num])
    b = np.concatenate([r["per_request"] for r in den])
    both = ~(np.isnan(a[:, 1]) | np.isnan(b[:, 1]))
    a, b = a[both], b[both]
    return {
        "requests": (float(both.sum()),) * 3,
        "rate": paired_ratio(a, b, token_rate),
        "p50": paired_ratio(a[:, 1], b[:, 1], lambda x: np.percentile(x, 50)),
        "p99": paired_ratio(a[:, 1], b[:, 1], lambda x: np.percentile(x, 99)),
        "ttft99": paired_ratio(a[:, 2], b[:, 2], lambda x: np.percentile(x, 99)),
    }


def tokens_range(text: str) -> tuple[int, int]:
    """``16`` or ``8,128`` (each request's max_tokens drawn uniformly in the range)."""
    lo, _, hi = text.partition(",")
    lo_i, hi_i = int(lo), int(hi or lo)
    if not 1 <= lo_i <= hi_i:
        raise argparse.ArgumentTypeError(f"--max-tokens {text!r}: want N or LO,HI with 1 <= LO <= HI")
    return lo_i, hi_i


def deploy(a, soup: str, batching: str, tokens: tuple[int, int]) -> str:
    """(Re)deploy the app with ``batching``; returns its URL once /v1/models answers."""
    options = ServeOptions(
        soup=soup,
        model_name="bench",
        num_cpus=a.num_cpus,
        num_gpus=1.0 if a.device == "cuda" else 0.0,
        device=a.device,
        min_replicas=1,
        max_replicas=a.max_replicas,
        target_ongoing_requests=max(a.concurrency // 2, 1),
        upscale_delay_s=2.0,
        downscale_delay_s=10.0,
        metrics_interval_s=1.0,
        look_back_period_s=5.0,
        max_batch_rows=a.max_batch_rows,
        batching=batching,
        batch_wait_timeout_s=a.batch_wait,
        min_tokens=tokens[1],
        max_tokens_limit=max(tokens[1], 16),
        default_max_tokens=tokens[1],
        torch_threads=a.torch_threads,
    )
    serve.run(build_app(options), name="soupkitchen", route_prefix="/", blocking=False)
    return f"http://127.0.0.1:{a.port}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--soup", help="bundle URI or path (default: random adapters over --recipe's W0)")
    p.add_argument("--recipe", default="tiny", help="W0 for the random bundle (tiny | demo)")
    p.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    p.add_argument("--port", type=int, default=28400)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="the model replicas' device")
    p.add_argument("--requests", type=int, default=320, help="requests per phase and round")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=tokens_range, default=(16, 16), help="N, or LO,HI per request")
    p.add_argument("--arrival", choices=["closed", "poisson"], default="closed")
    p.add_argument("--rate", type=float, default=20.0, help="mean arrivals/s for --arrival poisson")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--modes", default="bone_soup,mage_i_m,mod")
    p.add_argument("--max-replicas", type=int, default=2)
    p.add_argument("--num-cpus", type=float, default=0.5, help="CPUs per model replica")
    p.add_argument("--max-batch-rows", type=int, default=32, help="forward rows in a replica's running batch")
    p.add_argument("--batching", choices=["continuous", "static"], default="continuous")
    p.add_argument("--compare-batching", action="store_true", help="static, then continuous, in one run")
    p.add_argument("--batch-wait", type=float, default=0.05, help="batch_wait_timeout_s")
    p.add_argument("--torch-threads", type=int, default=1)
    a = p.parse_args(argv)
    tmp = tempfile.TemporaryDirectory()
    soup = a.soup or str(random_soup(a.recipe, 2, Path(tmp.name)))
    runtime = {"working_dir": str(ROOT), "env_vars": {"PYTHONPATH": "platform"}}
    ray.init(address=a.address, runtime_env=runtime, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    rate = a.rate if a.arrival == "poisson" else 0.0
    lo, hi = a.max_tokens
    results: dict[str, list[dict]] = {}
    watch = ReplicaWatch()
    for batching in ["static", "continuous"] if a.compare_batching else [a.batching]:
        url = deploy(a, soup, batching, a.max_tokens)
        info = requests.get(f"{url}/v1/models", timeout=300).json()["data"][0]
        n_obj, modes = len(info["objectives"]), [m for m in a.modes.split(",") if m in info["modes"]]
        if not watch.is_alive():
            watch.start()
        # warm-up requests: seed a.rounds, unlike any measured round's
        warm, at = bodies_for("mixed", n_obj, a.concurrency, a.max_tokens, modes, 0.0, seed=a.rounds)
        asyncio.run(drive(url, warm, at, a.concurrency))
        phases = PHASES if batching == "continuous" else ("mixed",)
        for name in phases:
            results.setdefault(f"{batching[:4]}/{name}", [])
        for r in range(a.rounds):
            for name in phases:
                bodies, at = bodies_for(name, n_obj, a.requests, a.max_tokens, modes, rate, seed=r)
                results[f"{batching[:4]}/{name}"].append(asyncio.run(drive(url, bodies, at, a.concurrency)))
    t_load_end = watch.samples[-1][0] if watch.samples else 0.0
    time.sleep(25)  # idle: the autoscaler should remove the extra replica after downscale_delay_s
    watch.stop.set()
    watch.join()

    arrival = f"Poisson {a.rate:g} req/s" if rate else "closed loop"
    print(
        f"soup {soup}: objectives {info['objectives']}, {a.requests} requests × {a.rounds} rounds per phase, "
        f"concurrency {a.concurrency}, {arrival}, max_tokens {lo}..{hi} (EOS held back), greedy, streamed; "
        f"modes phase: {modes}; device {a.device}, max_replicas {a.max_replicas}"
    )
    head = f"{'phase':<16} {'req/s':>7} {'tok/s':>8} {'p50 s':>7} {'p99 s':>7} {'ttft50':>7} {'ttft99':>7}"
    print(f"{head} {'errors':>6} {'batch':>6}")
    med = {}
    for phase, rs in results.items():
        m = med[phase] = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k in SCALARS}
        print(
            f"{phase:<16} {m['req_s']:7.2f} {m['tok_s']:8.1f} {m['p50']:7.3f} {m['p99']:7.3f} "
            f"{m['ttft50']:7.3f} {m['ttft99']:7.3f} {sum(len(r['errors']) for r in rs):6d} {m['batch']:6.1f}"
        )
    if seen := Counter(e for rs in results.values() for r in rs for e in r["errors"]):
        print("errors: " + "; ".join(f"{n}× {e}" for e, n in seen.most_common(3)))
    paired = "paired over the same requests of all rounds, 95 % bootstrap; rate = Σ tokens / Σ latency"
    if "cont/mixed" in med and "cont/single" in med:
        r = compare(results["cont/mixed"], results["cont/single"])
        wall = med["cont/mixed"]["tok_s"] / med["cont/single"]["tok_s"]
        print(
            f"mixed-μ / single-μ (continuous, {r['requests'][0]:.0f} requests {paired}): token rate "
            f"{format_ratio(r['rate'])} (target ≥ 0.9×; wall tok/s {wall:.2f}×), p99 {format_ratio(r['p99'])}"
        )
    if "stat/mixed" in med and "cont/mixed" in med:
        r = compare(results["cont/mixed"], results["stat/mixed"])
        wall = med["cont/mixed"]["tok_s"] / med["stat/mixed"]["tok_s"]
        print(
            f"continuous / static (mixed μ, {r['requests'][0]:.0f} requests {paired}): token rate "
            f"{format_ratio(r['rate'])} (target ≥ 1.5×; wall tok/s {wall:.2f}×), p50 latency "
            f"{format_ratio(r['p50'])}, p99 {format_ratio(r['p99'])} (target < 1), TTFT p99 "
            f"{format_ratio(r['ttft99'])}"
        )
    during = [c for t, c in watch.samples if t <= t_load_end]
    after = [c for t, c in watch.samples if t > t_load_end]
    print(
        f"SoupModel replicas (running + starting): start {during[0] if during else '?'}, max under load "
        f"{max(during, default=0)}, at the end of the idle period {after[-1] if after else '?'} "
        f"(max_replicas {a.max_replicas})"
    )
    changes = [(t, c) for i, (t, c) in enumerate(watch.samples) if i == 0 or c != watch.samples[i - 1][1]]
    timeline = ", ".join(f"{t:.0f} s: {c}" for t, c in changes)
    print(f"replica timeline: {timeline}; load ended at {t_load_end:.0f} s")
    serve.shutdown()
    ray.shutdown()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
