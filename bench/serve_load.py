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
continuous/static ratios (target ≥ 1.5× throughput and a lower p99 at concurrency 16) and the SoupModel
replica count over time (``serve.status()``). Without ``--soup`` the bundle is n random LoRA adapters (the
recipe's rank and targets) over the recipe's W0, written to a temporary directory.
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
from pathlib import Path

import aiohttp
import numpy as np
import ray
import requests
from ray import serve
from safetensors.torch import save_file

from soupkitchen.benchmarks import random_adapters
from soupkitchen.config import load_recipe
from soupkitchen.merging import write_bundle
from soupkitchen.methods import Mode
from soupkitchen.serving import ServeOptions
from soupkitchen.serving.builder import build_app

ROOT = Path(__file__).resolve().parents[1]  # the replicas' working_dir


def random_soup(recipe_name: str, n: int, out: Path) -> Path:
    """A Bone Soup bundle of n random LoRA adapters over the recipe's W0 (β = recipe's soup.beta)."""
    recipe = load_recipe(recipe_name)
    files = []
    for i, state in enumerate(random_adapters(recipe, n, "cpu")):
        files.append((f"backbone-{i}", out / f"random-{i}.safetensors"))
        save_file({k: v.contiguous() for k, v in state.items()}, str(files[-1][1]))
    objectives = recipe.objectives[:n]
    write_bundle(
        out / "bundle",
        recipe.model,
        files,
        beta=recipe.soup.beta,
        alpha=0.0,
        objectives=objectives,
        normalization={o: {"mean": 0.0, "std": 1.0} for o in objectives},
        ref_point=[0.0] * n,
        lora_config=recipe.lora,
        overwrite=True,
    )
    return out / "bundle"


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


async def drive(url: str, bodies: list[dict], concurrency: int, rate: float, rng) -> dict:
    """Stream ``bodies`` with at most ``concurrency`` in flight, each released at its arrival time (Poisson at
    ``rate`` req/s, or all at once when ``rate`` is 0); throughput, latency and TTFT percentiles, errors."""
    sem = asyncio.Semaphore(concurrency)
    lat, ttft, tokens, errors = [], [], 0, 0
    gaps = rng.exponential(1.0 / rate, len(bodies)) if rate > 0 else np.zeros(len(bodies))
    arrivals = np.cumsum(gaps)

    async def one(session, body, at):
        nonlocal tokens, errors
        await asyncio.sleep(max(at - (time.perf_counter() - t0), 0.0))
        async with sem:
            t, first, used = time.perf_counter(), None, None
            async with session.post(f"{url}/v1/completions", json=body) as r:
                if r.status != 200:
                    errors += 1
                    await r.read()
                    return
                async for raw in r.content:
                    line = raw.decode().strip()
                    if not line.startswith("data: {"):
                        continue
                    data = json.loads(line[6:])
                    if "error" in data:
                        errors += 1
                        return
                    if first is None and data["choices"]:
                        first = time.perf_counter() - t
                    used = data.get("usage") or used
            lat.append(time.perf_counter() - t)
            ttft.append(first if first is not None else lat[-1])
            tokens += used["completion_tokens"] if used else 0

    timeout = aiohttp.ClientTimeout(total=600)
    before = mean_batch(url)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(session, b, at) for b, at in zip(bodies, arrivals, strict=True)))
        wall = time.perf_counter() - t0
    after = mean_batch(url)
    q = np.percentile(lat, [50, 99]) if lat else [float("nan")] * 2
    f = np.percentile(ttft, [50, 99]) if ttft else [float("nan")] * 2
    served = after[1] - before[1]
    return {
        "req_s": len(lat) / wall,
        "tok_s": tokens / wall,
        "p50": float(q[0]),
        "p99": float(q[1]),
        "ttft50": float(f[0]),
        "ttft99": float(f[1]),
        "errors": errors,
        "batch": (after[0] - before[0]) / served if served else 0.0,
    }


def bodies_for(phase: str, n_obj: int, k: int, tokens: tuple[int, int], modes: list[str], rng) -> list[dict]:
    """k streamed greedy completions; max_tokens uniform in ``tokens`` (the server holds EOS back to it)."""
    out = []
    for i in range(k):
        mu = [1.0 / n_obj] * n_obj if phase == "single" else rng.dirichlet(np.ones(n_obj)).tolist()
        mode = rng.choice(modes) if phase == "modes" else Mode.BONE_SOUP.value
        out.append(
            {
                "prompt": f"Write one sentence about topic {i}.",
                "preference": mu,
                "mode": str(mode),
                "max_tokens": int(rng.integers(tokens[0], tokens[1] + 1)),
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        )
    return out


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
        rng = np.random.default_rng(0)  # every batching sees the same requests and arrivals
        if not watch.is_alive():
            watch.start()
        warm = bodies_for("mixed", n_obj, a.concurrency, a.max_tokens, modes, rng)
        asyncio.run(drive(url, warm, a.concurrency, 0.0, rng))
        phases = ["single", "mixed", "modes"] if batching == "continuous" else ["mixed"]
        for name in phases:
            results.setdefault(f"{batching[:4]}/{name}", [])
        for _ in range(a.rounds):
            for name in phases:
                bodies = bodies_for(name, n_obj, a.requests, a.max_tokens, modes, rng)
                results[f"{batching[:4]}/{name}"].append(
                    asyncio.run(drive(url, bodies, a.concurrency, rate, rng))
                )
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
        med[phase] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        m = med[phase]
        print(
            f"{phase:<16} {m['req_s']:7.2f} {m['tok_s']:8.1f} {m['p50']:7.3f} {m['p99']:7.3f} "
            f"{m['ttft50']:7.3f} {m['ttft99']:7.3f} {sum(r['errors'] for r in rs):6d} {m['batch']:6.1f}"
        )
    if "cont/mixed" in med and "cont/single" in med:
        ratio = med["cont/mixed"]["tok_s"] / med["cont/single"]["tok_s"]
        print(f"mixed-μ / single-μ throughput (continuous): {ratio:.2f}× (target ≥ 0.9×)")
    if "stat/mixed" in med and "cont/mixed" in med:
        c, st = med["cont/mixed"], med["stat/mixed"]
        print(
            f"continuous / static (mixed μ): throughput {c['tok_s'] / st['tok_s']:.2f}× (target ≥ 1.5×), "
            f"p99 {c['p99']:.3f} s vs {st['p99']:.3f} s, TTFT p99 {c['ttft99']:.3f} s vs {st['ttft99']:.3f} s"
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
