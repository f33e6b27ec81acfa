"""Guided decoding cost: tokens/s of MAGE-I-M and MOD relative to plain decoding, side by side in one run.

    python bench/decoding_throughput.py                        # demo model (SmolLM2-135M), CPU
    python bench/decoding_throughput.py --recipe tiny --batch 1,16 --tokens 32

Every case runs through ``soupkitchen.decoding.decode`` on one mixed model (n random LoRA backbones over W0,
the recipe's rank and targets), greedy, every row forced to ``--tokens`` new tokens, each row its own μ:
  plain        log π_base(μ), mode bone_soup (unguided)          1 forward row per request row
  mage_i_m     (1+γ) log π_base − γ log π_ref (π*_merge ≡ base)  2 forward rows  (target ≤ 2× plain)
  mage_i_m-3   log π_base + γ(log π*_merge − log π_ref), shortcut off: 3 forward rows
  mod          Σ_i μ_i log π_i over the n backbones               n forward rows (expected ≈ n×)
  hf-plain     HF ``generate`` on the same model and rows: the loop's own overhead vs transformers
Cases are interleaved ``--repeats`` times (so they see the same machine load) and the median is reported.
"""

from __future__ import annotations

import statistics
import sys

import numpy as np
import torch

from soupkitchen.benchmarks import bench_parser, bench_setup, interleaved, random_adapters
from soupkitchen.data import load_prompt_records
from soupkitchen.decoding import AdapterRoles, DecodeSettings, decode
from soupkitchen.merging import build_mixed_model, use_coefficients
from soupkitchen.methods import Mode
from soupkitchen.models import format_prompt, load_base_model


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__)
    p.add_argument("--gamma", type=float, default=1.0)
    args, recipe, device, sync = bench_setup(p, argv)
    n = len(recipe.objectives)
    torch.manual_seed(0)
    model, tok = load_base_model(recipe.model, device=device)
    model = build_mixed_model(model, random_adapters(recipe, n, device), recipe.lora)
    roles = AdapterRoles(n, list(range(n)), recipe.soup.beta if n > 1 else None)
    prompts = [
        format_prompt(tok, r.prompt, recipe.model.use_chat_template)
        for r in load_prompt_records(recipe.data, "train")
    ]
    st = DecodeSettings(
        max_new_tokens=args.tokens, min_new_tokens=args.tokens
    )  # EOS never chosen: fixed length
    print(
        f"recipe {recipe.name}, device {device}, n={n} backbones, LoRA r={recipe.lora.r} on "
        f"{list(recipe.lora.target_modules)}, γ={args.gamma}, {args.tokens} new tokens per row, greedy, "
        f"median of {args.repeats} interleaved runs"
    )
    for b in args.batch:
        batch = (prompts * (b // len(prompts) + 1))[:b]
        mus = torch.distributions.Dirichlet(torch.ones(n)).sample((b,)).double().numpy()
        mus /= mus.sum(1, keepdims=True)
        cases = {
            "plain": [roles.plan(Mode.BONE_SOUP, mu, 0.0) for mu in mus],
            "mage_i_m": [roles.plan(Mode.MAGE_I_M, mu, args.gamma) for mu in mus],
            "mage_i_m-3": [roles.plan(Mode.MAGE_I_M, mu, args.gamma, shortcut=False) for mu in mus],
            "mod": [roles.plan(Mode.MOD, mu, 1.0) for mu in mus],
        }
        base_c = np.stack([roles.base(mu) for mu in mus])

        def guided(plans, batch=batch):
            return decode(model, tok, batch, plans, st, device=device)

        def hf(batch=batch, c=base_c):
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with use_coefficients(model, c), torch.no_grad():
                model.generate(
                    **enc,
                    max_new_tokens=args.tokens,
                    min_new_tokens=args.tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )

        runs = {k: (lambda plans=v: guided(plans)) for k, v in cases.items()}
        runs["hf-plain"] = hf
        times = interleaved(runs, args.repeats, sync)
        tps = {k: b * args.tokens / statistics.median(v) for k, v in times.items()}
        rows = {k: sum(pl.width for pl in v) / b for k, v in cases.items()}
        print(f"\nbatch {b}:")
        for k, v in tps.items():
            width = f"{rows[k]:.1f} rows" if k in rows else "HF generate"
            print(f"  {k:<11} {v:9.1f} tok/s   cost per token {tps['plain'] / v:5.2f}x plain   ({width})")
        print(
            f"  MAGE-I-M / plain cost: {tps['plain'] / tps['mage_i_m']:.2f}x (target ≤ 2.0); "
            f"MOD / plain: {tps['plain'] / tps['mod']:.2f}x (n = {n})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
