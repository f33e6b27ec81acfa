"""What the bench/ scripts share: random LoRA adapters over a recipe's base, and a synchronised timer.

Benchmarks measure ratios side by side in one run (e.g. mixed-n vs plain W0 tokens/s); these helpers make
the inputs of both sides the same.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import save_file

from soupkitchen.bootstrap import percentile_interval
from soupkitchen.config import Recipe, load_recipe, parse_cli_overrides
from soupkitchen.merging import write_bundle
from soupkitchen.models import attach_lora, load_base_model, resolve_device


def random_adapters(recipe: Recipe, n: int, device: str) -> list[dict[str, torch.Tensor]]:
    """n PEFT LoRA state dicts over the recipe's base and targets, with non-zero random A and B."""
    out = []
    for i in range(n):
        base, _ = load_base_model(recipe.model, device=device)
        peft = attach_lora(base, recipe.lora, seed=i)
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
        out.append({k: v.detach().clone() for k, v in get_peft_model_state_dict(peft).items()})
    return out


def random_soup(recipe_name: str, n: int, out: Path) -> Path:
    """A Bone Soup bundle of n random LoRA adapters over the recipe's W0 (β = recipe's soup.beta), written
    under ``out``: what the serving benches deploy when no trained bundle is given."""
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


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    """Seconds ``fn()`` takes, with ``sync()`` (e.g. ``torch.cuda.synchronize``) before and after."""
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def bench_parser(doc: str, batch: str = "1,16", repeats: int = 3) -> argparse.ArgumentParser:
    """The decoding benches' flags: --recipe, --device, --batch, --tokens (forced), --repeats; any other
    --section.key VALUE overrides the recipe (``bench_setup``)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--recipe", default="demo")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", default=batch, help=f"comma-separated batch sizes (default {batch})")
    p.add_argument("--tokens", type=int, default=32, help="new tokens per row (forced, default 32)")
    p.add_argument("--repeats", type=int, default=repeats, help=f"interleaved repeats (default {repeats})")
    return p


def bench_setup(parser: argparse.ArgumentParser, argv: list[str] | None):
    """``(args, recipe, device, sync)``: the parsed flags (``args.batch`` a list of ints), the recipe with
    the overrides, the resolved device and the synchronisation ``timed`` needs on it."""
    args, rest = parser.parse_known_args(argv)
    try:
        args.batch = [int(x) for x in str(args.batch).split(",")]
    except ValueError:
        parser.error(f"--batch: comma-separated batch sizes, got {args.batch!r}")
    if min(args.batch) < 1 or args.tokens < 1 or args.repeats < 1:
        parser.error("--batch, --tokens and --repeats must be >= 1")
    recipe = load_recipe(args.recipe, parse_cli_overrides(rest))
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    return args, recipe, device, sync


def interleaved(
    runs: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None]
) -> dict[str, list]:
    """Seconds of each run, ``repeats`` times, the runs interleaved (so they see the same machine load),
    after one warm-up call each."""
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            times[k].append(timed(fn, sync))
    return times


def paired_ratio(
    num, den, stat: Callable[[np.ndarray], float], samples: int = 2000, confidence: float = 0.95
) -> tuple[float, float, float]:
    """(stat(num) / stat(den), lo, hi): row i of ``num`` and ``den`` is one unit (a request, a repeat)
    measured under both sides; the interval is the percentile interval of the ratio over paired bootstrap
    resamples of the units (the same rows drawn for both sides, seed 0)."""
    a, b = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"paired_ratio needs equally many units on both sides, got {len(a)} and {len(b)}")
    idx = np.random.default_rng(0).integers(0, len(a), (samples, len(a)))
    reps = np.array([stat(a[i]) / stat(b[i]) for i in idx])
    lo, hi = percentile_interval(reps, confidence)
    return float(stat(a) / stat(b)), float(lo), float(hi)


def format_ratio(r: tuple[float, float, float]) -> str:
    """``1.62× [1.41, 1.85]``."""
    return f"{r[0]:.2f}× [{r[1]:.2f}, {r[2]:.2f}]"
