"""Soak: a bounded mixed load against one model replica for ``--duration`` seconds, reporting every answer by
class and the replica's memory after warm-up and at the end.

    python bench/soak.py --recipe tiny --duration 600 --concurrency 8      # the issue's 10 minutes
    python bench/soak.py --soup ~/.cache/soupkitchen/runs/demo-compare-bone_soup/bundles/bone_soup

It starts Ray, deploys the endpoint (``soupkitchen.serving.builder.build_app``) with one replica on
127.0.0.1:``--port`` and keeps ``--concurrency`` clients busy with the mixed load of
``soupkitchen.serving.soak`` (good, hostile and abandoned requests).

Warm-up (``--warmup`` s of the same load) comes first; the replica's resident memory (RSS of its process) is
read after it and every 10 s of the soak. Reported: good requests by status (target: zero 5xx), bad ones by
status (target: all 4xx), disconnects, and RSS after warm-up, at the end and at most, with the end/warm-up
ratio against ``--rss-bound`` (exit status 1 when a target is missed). Without ``--soup`` the bundle is two
random LoRA adapters over the recipe's W0.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil
import ray
import requests
from ray import serve
from ray.util.state import list_actors

from soupkitchen.benchmarks import random_soup
from soupkitchen.serving import ServeOptions
from soupkitchen.serving.builder import build_app
from soupkitchen.serving.soak import load, verdict

ROOT = Path(__file__).resolve().parents[1]  # the replicas' working_dir


def replica_pid() -> int:
    """The PID of the one live SoupModel replica (Ray's state API)."""
    alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
    (pid,) = [a.pid for a in alive if a.class_name.endswith("SoupModel")]
    return int(pid)


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
    asyncio.run(load(url, a.warmup, a.concurrency, 0, objectives, modes, warm))
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
    top = max([*samples, end])
    print(f"replica RSS: after warm-up {base:.0f} MiB, end {end:.0f} MiB, max {top:.0f} MiB")
    ok, line = verdict(counts, end / base, a.rss_bound)
    print(line)
    serve.shutdown()
    ray.shutdown()
    tmp.cleanup()
    return 0 if ok else 1


def _mib(proc: psutil.Process) -> float:
    return proc.memory_info().rss / 2**20


if __name__ == "__main__":
    sys.exit(main())
