"""HoE's cost: stored and trainable parameters, and decoding latency against plain W0, Rewarded Soups and MOD,
side by side in one run (HoE Table 3: 1.23× RS with three active experts).

    python bench/hoe_latency.py                                 # demo model (SmolLM2-135M), CPU
    python bench/hoe_latency.py --recipe tiny --batch 1,16 --tokens 16 --repeats 7

Every case decodes the same prompts and μ through ``soupkitchen.decoding.decode``, greedy, every row forced
to ``--tokens`` new tokens. The experts are random LoRAs of the recipe's rank and targets over W0 (timing does
not depend on what they learned), and the HoE set has the App. D.2 shape: n single-objective experts, the
centre as the MO expert, and one router with random weights.
  plain        W0 alone (no adapter layer)                          1 forward row
  rs           Rewarded Soups: c = μ over the n specialists          1 forward row
  hoe-router   HoE at μ whose routing selects the router: 3 LoRA experts mixed per token (the paper's case)
  hoe-mixed    HoE at Dirichlet μ: rows with and without a router in one batch
  mod          MOD: Σ μ_i log π_i over the n specialists             n forward rows
Cases are interleaved ``--repeats`` times (so they see the same machine load). Ratios are the median over
the repeats of each repeat's time ratio, with a 95% bootstrap interval over the repeats.
"""

from __future__ import annotations

import statistics
import sys

import numpy as np
import torch

from soupkitchen.benchmarks import bench_parser, bench_setup, interleaved, random_adapters
from soupkitchen.bootstrap import percentile_interval
from soupkitchen.data import load_prompt_records
from soupkitchen.decoding import AdapterRoles, Component, DecodeSettings, RowPlan, decode
from soupkitchen.hoe import ExpertStack, Router, build_hoe_model
from soupkitchen.hoe.layer import hoe_layers
from soupkitchen.merging import build_mixed_model
from soupkitchen.methods import Mode
from soupkitchen.models import format_prompt, load_base_model


def main(argv: list[str] | None = None) -> int:
    args, recipe, device, sync = bench_setup(bench_parser(__doc__, repeats=5), argv)
    n = len(recipe.objectives)
    if n != 2:
        print(
            "error: --recipe: this bench builds the two-objective configuration of App. D.2", file=sys.stderr
        )
        return 2
    torch.manual_seed(0)
    specialists = random_adapters(recipe, n, device)
    mo = random_adapters(recipe, n + 1, device)[n:]  # the centre expert: another LoRA of the same shape
    plain, tok = load_base_model(recipe.model, device=device)
    rs = build_mixed_model(load_base_model(recipe.model, device=device)[0], specialists, recipe.lora)
    names = [f"e{i}" for i in range(n)] + ["mo"]
    router = Router("router", [0, n], [0.5, 0.5])  # λ = [.75, .25] votes over e_1 and the centre
    hoe = build_hoe_model(
        load_base_model(recipe.model, device=device)[0], specialists + mo, recipe.lora, names, [router]
    )
    with torch.no_grad():
        for _, layer in hoe_layers(hoe):
            layer.router_weight.normal_(0, 0.02)
    prefs = {"e0": np.array([1.0, 0.0]), "e1": np.array([0.0, 1.0]), "mo": np.array([0.5, 0.5])}
    prefs["router"] = np.array([0.75, 0.25])
    stack = ExpertStack({"e0": 0, "e1": 1, "mo": 2, "router": 3}, prefs, 4)
    experts = list(prefs)
    roles = AdapterRoles(n, list(range(n)), None)
    prompts = [
        format_prompt(tok, r.prompt, recipe.model.use_chat_template)
        for r in load_prompt_records(recipe.data, "train")
    ]
    st = DecodeSettings(max_new_tokens=args.tokens, min_new_tokens=args.tokens)  # EOS never chosen
    stored = {
        "plain": _params(plain.parameters()),
        "rs": _params(plain.parameters()) + _params(v for a in specialists for v in a.values()),
        "hoe": _params(plain.parameters()) + _params(v for a in specialists + mo for v in a.values()),
    }
    routers = _params(q for _, layer in hoe_layers(hoe) for q in (layer.router_weight, layer.router_bias))
    stored["hoe"] += routers
    lora = f"LoRA r={recipe.lora.r} on {list(recipe.lora.target_modules)}"
    print(
        f"recipe {recipe.name}, device {device}, {lora}, {args.tokens} new tokens per row, greedy, "
        f"{args.repeats} interleaved repeats"
    )
    print("parameters (stored: W0 + adapters + routers; trainable beyond the single-objective policies):")
    print(f"  plain {stored['plain']:>12,}   trainable 0")
    print(
        f"  rs    {stored['rs']:>12,}   trainable 0 (the n specialists are the inputs of every method here)"
    )
    print(f"  mod   {stored['rs']:>12,}   trainable 0 (the same specialists, n forward rows)")
    print(
        f"  hoe   {stored['hoe']:>12,}   trainable {routers:,} (one router; its LoRA experts are extracted)"
    )
    rng = np.random.default_rng(0)
    for b in args.batch:
        batch = (prompts * (b // len(prompts) + 1))[:b]
        routed = np.stack([[w, 1 - w] for w in rng.uniform(0.55, 0.95, b)])  # selects the router
        mixed = rng.dirichlet(np.ones(n), b)

        def hoe_plans(mus):
            return [
                RowPlan((Component(tuple(stack.coefficients(mu, experts)), 1.0),), 0, Mode.HOE) for mu in mus
            ]

        active = np.mean([len(stack.route(mu, experts)) for mu in routed])
        cases = {
            "plain": (plain, [RowPlan((Component((), 1.0),), 0)] * b),
            "rs": (rs, [roles.plan(Mode.REWARDED_SOUPS, mu, 0.0) for mu in routed]),
            "hoe-router": (hoe, hoe_plans(routed)),
            "hoe-mixed": (hoe, hoe_plans(mixed)),
            "mod": (rs, [roles.plan(Mode.MOD, mu, 1.0) for mu in routed]),
        }
        runs = {
            k: (lambda m=m, pl=pl, batch=batch: decode(m, tok, batch, pl, st, device=device))
            for k, (m, pl) in cases.items()
        }
        times = interleaved(runs, args.repeats, sync)
        print(f"\nbatch {b} (hoe-router: {active:.1f} experts selected per row, 3 LoRA experts per token):")
        for k, v in times.items():
            tps = b * args.tokens / statistics.median(v)
            vs = {den: _ratio(v, times[den]) for den in ("plain", "rs")}
            print(f"  {k:<11} {tps:9.1f} tok/s   time vs plain {_fmt(vs['plain'])}   vs rs {_fmt(vs['rs'])}")
        hoe_rs = _fmt(_ratio(times["hoe-router"], times["rs"]))
        print(f"  HoE (router selected) / RS latency: {hoe_rs} (paper: 1.23)")
    return 0


def _params(tensors) -> int:
    return int(sum(t.numel() for t in tensors))


def _ratio(num: list[float], den: list[float], samples: int = 2000) -> tuple[float, float, float]:
    """Median of the per-repeat time ratios, with a percentile interval of bootstrap medians."""
    r = np.asarray(num) / np.asarray(den)
    idx = np.random.default_rng(0).integers(0, len(r), (samples, len(r)))
    lo, hi = percentile_interval(np.median(r[idx], axis=1), 0.95)
    return float(np.median(r)), float(lo), float(hi)


def _fmt(x: tuple[float, float, float]) -> str:
    return f"{x[0]:.2f}x [{x[1]:.2f}, {x[2]:.2f}]"


if __name__ == "__main__":
    sys.exit(main())
