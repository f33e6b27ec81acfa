"""Wall time of n backbones trained in parallel vs one backbone alone, same recipe, same machine, one run.

    python bench/parallel_backbones.py                       # tiny recipe, 2 backbones
    python bench/parallel_backbones.py --recipe demo --ppo.steps 4

Both runs go through the real launcher (Ray Tune trials → Ray Train TorchTrainer → DeepSpeed), on a local
Ray instance with as many CPUs as the machine has. Perfect parallelism gives a ratio of 1.0; running the
backbones one after another gives n.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from soupkitchen.config import load_recipe, parse_cli_overrides
from soupkitchen.training.launcher import train_backbones


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="tiny")
    args, rest = p.parse_known_args()
    overrides = parse_cli_overrides(rest)
    recipe = load_recipe(args.recipe, overrides)
    n = len(recipe.objectives)
    one = load_recipe(args.recipe, {**overrides, "soup.morlhf_preferences": [[1.0 / n] * n]})
    import ray

    ray.init()  # started outside the timed region so neither run pays for it
    with tempfile.TemporaryDirectory() as tmp:
        # Untimed warm-up: the first trainer on a fresh Ray instance pays for worker start-up, imports and
        # DeepSpeed's op build; without this the first timed run looks slower than it is.
        train_backbones(
            load_recipe(args.recipe, {**overrides, "ppo.steps": 1}),
            "morlhf",
            "bench-warmup",
            str(Path(tmp) / "w"),
        )
        timings = {}
        for label, rec, method in (("1 backbone", one, "morlhf"), (f"{n} backbones", recipe, "bone_soup")):
            t0 = time.perf_counter()
            train_backbones(rec, method, f"bench-{method}", str(Path(tmp) / "runs"))
            timings[label] = time.perf_counter() - t0
    (l1, t1), (ln, tn) = timings.items()
    print(f"\nrecipe {recipe.name}, {recipe.ppo.steps} PPO steps per backbone, batch {recipe.ppo.batch_size}")
    print(f"{l1:>14}: {t1:8.1f} s wall")
    print(f"{ln:>14}: {tn:8.1f} s wall")
    print(f"ratio {ln} / {l1} = {tn / t1:.2f}  (1.0 = perfectly parallel, {n}.0 = sequential)")


if __name__ == "__main__":
    main()
