"""Guided decoding cost: tokens/s of MAGE-I-M and MOD relative to plain decoding, side by side in one run.

    python bench/decoding_throughput.py                        # demo model (SmolLM2-135M), CPU
    python bench/decoding_throughput.py --recipe tiny --batch 1,16 --tokens 32

Every case runs through ``soupkitchen.decoding.decode`` on one mixed model (n random LoRA backbones over W0,
the recipe's rank and targets), greedy, every row forced to ``--tokens`` new tokens, each row its own μ:
  plain        log π_base(μ), mode bone_soup (unguided)          1 forward row per request row
  mage_i_m     (1+γ) log π_base − γ log π_ref (π*_merge ≡ base)  2 forward rows  (target ≤ 2× plain)
  mage_i_m-3   log π_base + γ(log π*_merge − log π_ref), shortcut off: 3 forward rows
  mod          Σ_i μ_i log π_i over the n backbones               n forward rows (expected ≈ n×)
  plain-ragged plain, but every other row stops after a quarter of the tokens: the running batch evicts a
               finished row at once, so its time should track its share of tokens (5/8), not the
               longest row's (HF ``generate`` keeps a finished row in the batch to the end: 1.0)
  hf-plain     HF ``generate`` on the same model and rows: the loop's own overhead vs transformers
Cases are interleaved ``--repeats`` times (so they see the same machine load); tokens/s are medians, and the
ratios are medians over repeats with 95 % bootstrap intervals paired by repeat.
"""

from __future__ import annotations

import functools
import statistics
import sys

import numpy as np
import torch

from soupkitchen.benchmarks import (
    bench_parser,
    bench_setup,
    format_ratio,
    interleaved,
    paired_ratio,
    random_adapters,
)
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

        short = max(args.tokens // 4, 1)
        ragged = [
            st if i % 2 == 0 else DecodeSettings(max_new_tokens=short, min_new_tokens=short) for i in range(b)
        ]
        runs = {k: (lambda plans=v: guided(plans)) for k, v in cases.items()}
        runs["plain-ragged"] = lambda batch=batch, plans=cases["plain"], r=ragged: decode(
            model, tok, batch, plans, r, device=device
        )
        runs["hf-plain"] = hf
        times = interleaved(runs, args.repeats, sync)
        decoded_rows = {k: rows_forwarded(model, runs[k]) for k in ("plain", "plain-ragged", "hf-plain")}
        made = {k: b * args.tokens for k in times} | {"plain-ragged": sum(x.max_new_tokens for x in ragged)}
        tps = {k: made[k] / statistics.median(v) for k, v in times.items()}
        rows = {k: sum(pl.width for pl in v) / b for k, v in cases.items()} | {"plain-ragged": 1.0}

        cost = functools.partial(per_token_cost, times, made)
        print(f"\nbatch {b}:")
        for k, v in tps.items():
            width = f"{rows[k]:.1f} rows" if k in rows else "HF generate"
            print(f"  {k:<12} {v:9.1f} tok/s   cost per token {cost(k)} plain   ({width})")
        time_ragged = paired_ratio(times["plain-ragged"], times["plain"], np.median)
        print(
            f"  MAGE-I-M / plain cost: {cost('mage_i_m')} (target ≤ 2.0); "
            f"MOD / plain: {cost('mod')} (n = {n})\n"
            f"  loop / HF generate throughput (plain): {cost('hf-plain')} (target ≥ 1.0)\n"
            f"  ragged / plain time: {format_ratio(time_ragged)} for "
            f"{made['plain-ragged'] / made['plain']:.3f} of the tokens; decode-step rows forwarded: ragged "
            f"{decoded_rows['plain-ragged']}, plain {decoded_rows['plain']}, HF generate "
            f"{decoded_rows['hf-plain']} (a finished row is forwarded no more: ragged / plain "
            f"{decoded_rows['plain-ragged'] / decoded_rows['plain']:.3f})"
        )
    return 0


def rows_forwarded(model, fn) -> int:
    """Σ over the model's one-token (decode) forwards of the rows in them, for one untimed call of ``fn``:
    the compute a loop spends on rows, finished or not (prefills are not counted)."""
    seen = [0]

    def count(_module, _args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] == 1:
            seen[0] += ids.shape[0]

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        fn()
    finally:
        hook.remove()
    return seen[0]


def per_token_cost(times: dict, made: dict, k: str, den: str = "plain") -> str:
    """Seconds per generated token of case k relative to den's, median over repeats (paired by repeat)."""
    per = np.asarray(times[k]) / made[k]
    return format_ratio(paired_ratio(per, np.asarray(times[den]) / made[den], np.median))


if __name__ == "__main__":
    sys.exit(main())
