"""Serving under load: mixed-μ traffic vs single-μ traffic through the Ray Serve app, side by side in one run,
and the autoscaler adding replicas under load and removing them after.

    python bench/serve_load.py --recipe tiny                           # seconds; random adapters over W0
    python bench/serve_load.py --soup ~/.cache/soupkitchen/runs/demo-compare-bone_soup/bundles/bone_soup
    python bench/serve_load.py --address 127.0.0.1:6379 --soup models:/soup-demo@production --requests 400

It starts Ray (or joins ``--address``), deploys the endpoint (``soupkitchen.serving.builder.build_app``, what
``serve.app:app`` builds) on 127.0.0.1:``--port`` and drives it with
an asyncio + aiohttp client: ``--concurrency`` requests in flight, each ``--tokens`` new tokens exactly
(the server's ``min_tokens`` = max_tokens, so every request costs the same), greedy. Phases, interleaved
``--rounds`` times so they see the same machine load:

  single   every request μ = (1/n, ..., 1/n), mode bone_soup
  mixed    every request its own random μ (Dirichlet), mode bone_soup     target: ≥ 0.8× single's throughput
  modes    random μ and a random mode among --modes (cost of guided rows; reported, no target)

Reported: requests/s, completion tokens/s, p50/p99 latency, errors, the mean decoding-batch size, and the
SoupModel replica count over time (``serve.status()``). Without ``--soup`` the bundle is n random LoRA
adapters (the recipe's rank and targets) over the recipe's W0, written to a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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


async def drive(url: str, bodies: list[dict], concurrency: int) -> dict:
    """Send ``bodies`` with at most ``concurrency`` in flight; throughput, latency percentiles, errors."""
    sem = asyncio.Semaphore(concurrency)
    lat, tokens, batch, errors = [], 0, [], 0

    async def one(session, body):
        nonlocal tokens, errors
        async with sem:
            t = time.perf_counter()
            async with session.post(f"{url}/v1/completions", json=body) as r:
                data = await r.json()
            if r.status != 200:
                errors += 1
                return
            lat.append(time.perf_counter() - t)
            tokens += data["usage"]["completion_tokens"]
            batch.append(data["soup"]["batch_size"])

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(session, b) for b in bodies))
        wall = time.perf_counter() - t0
    q = np.percentile(lat, [50, 99]) if lat else [float("nan")] * 2
    return {
        "req_s": len(lat) / wall,
        "tok_s": tokens / wall,
        "p50": float(q[0]),
        "p99": float(q[1]),
        "errors": errors,
        "batch": statistics.fmean(batch) if batch else 0.0,
    }


def bodies_for(phase: str, n_obj: int, k: int, tokens: int, modes: list[str], rng) -> list[dict]:
    out = []
    for i in range(k):
        mu = [1.0 / n_obj] * n_obj if phase == "single" else rng.dirichlet(np.ones(n_obj)).tolist()
        mode = rng.choice(modes) if phase == "modes" else Mode.BONE_SOUP.value
        out.append(
            {
                "prompt": f"Write one sentence about topic {i}.",
                "preference": mu,
                "mode": str(mode),
                "max_tokens": tokens,
                "temperature": 0,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--soup", help="bundle URI or path (default: random adapters over --recipe's W0)")
    p.add_argument("--recipe", default="tiny", help="W0 for the random bundle (tiny | demo)")
    p.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    p.add_argument("--port", type=int, default=28400)
    p.add_argument("--requests", type=int, default=320, help="requests per phase and round")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--modes", default="bone_soup,mage_i_m,mod")
    p.add_argument("--max-replicas", type=int, default=2)
    p.add_argument("--num-cpus", type=float, default=0.5, help="CPUs per model replica")
    p.add_argument("--max-batch-rows", type=int, default=32, help="forward rows in a replica's running batch")
    p.add_argument("--batching", choices=["continuous", "static"], default="continuous")
    p.add_argument("--batch-wait", type=float, default=0.05, help="batch_wait_timeout_s")
    p.add_argument("--torch-threads", type=int, default=1)
    a = p.parse_args(argv)
    tmp = tempfile.TemporaryDirectory()
    soup = a.soup or str(random_soup(a.recipe, 2, Path(tmp.name)))
    runtime = {"working_dir": str(ROOT), "env_vars": {"PYTHONPATH": "platform"}}
    ray.init(address=a.address, runtime_env=runtime, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    options = ServeOptions(
        soup=soup,
        model_name="bench",
        num_cpus=a.num_cpus,
        min_replicas=1,
        max_replicas=a.max_replicas,
        target_ongoing_requests=max(a.max_batch_rows // 8, 1),
        upscale_delay_s=2.0,
        downscale_delay_s=10.0,
        metrics_interval_s=1.0,
        look_back_period_s=5.0,
        max_batch_rows=a.max_batch_rows,
        batching=a.batching,
        batch_wait_timeout_s=a.batch_wait,
        min_tokens=a.tokens,
        max_tokens_limit=max(a.tokens, 16),
        default_max_tokens=a.tokens,
        torch_threads=a.torch_threads,
    )
    serve.run(build_app(options), name="soupkitchen", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{a.port}"
    info = requests.get(f"{url}/v1/models", timeout=30).json()["data"][0]
    n_obj, modes = len(info["objectives"]), [m for m in a.modes.split(",") if m in info["modes"]]
    rng = np.random.default_rng(0)
    watch = ReplicaWatch()
    watch.start()
    asyncio.run(
        drive(url, bodies_for("mixed", n_obj, a.concurrency, a.tokens, modes, rng), a.concurrency)
    )  # warm
    results: dict[str, list[dict]] = {"single": [], "mixed": [], "modes": []}
    for _ in range(a.rounds):
        for phase in results:
            bodies = bodies_for(phase, n_obj, a.requests, a.tokens, modes, rng)
            results[phase].append(asyncio.run(drive(url, bodies, a.concurrency)))
    t_load_end = watch.samples[-1][0] if watch.samples else 0.0
    time.sleep(25)  # idle: the autoscaler should remove the extra replica after downscale_delay_s
    watch.stop.set()
    watch.join()

    print(
        f"soup {soup}: objectives {info['objectives']}, {a.requests} requests × {a.rounds} rounds per phase, "
        f"concurrency {a.concurrency}, {a.tokens} tokens each, greedy; modes phase: {modes}"
    )
    print(f"{'phase':<8} {'req/s':>7} {'tok/s':>8} {'p50 s':>7} {'p99 s':>7} {'errors':>6} {'batch':>6}")
    med = {}
    for phase, rs in results.items():
        med[phase] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        m = med[phase]
        print(
            f"{phase:<8} {m['req_s']:7.2f} {m['tok_s']:8.1f} {m['p50']:7.3f} {m['p99']:7.3f} "
            f"{sum(r['errors'] for r in rs):6d} {m['batch']:6.1f}"
        )
    ratio = med["mixed"]["tok_s"] / med["single"]["tok_s"]
    print(f"mixed-μ / single-μ throughput: {ratio:.2f}× (target ≥ 0.8×)")
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
