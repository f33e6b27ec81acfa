"""Per-row merging vs one plain adapter vs a dense merge per μ, side by side in one run.

    python bench/merging_throughput.py                       # demo model (SmolLM2-135M), CPU, ~2 minutes
    python bench/merging_throughput.py --recipe tiny --batch 16 --tokens 32
    python bench/merging_throughput.py --device cuda --batch 1,16,64

Throughput (generated tokens/s, greedy, every row forced to ``--tokens`` new tokens):
  plain     W0 alone (no adapter) — the floor;
  peft-1    W0 + one PEFT LoRA adapter, the same for every row (what serving one fixed soup costs);
  mixed-n   W0 + n stacked adapters through the per-row coefficient layer, every row a different μ
            (what serving a batch of requests with different preferences costs). Target: ≥ 0.8 × peft-1.
peft-1 / plain is printed against an outside anchor: vLLM's LoRA path loses ~34% of base throughput (0.66×).
Time to first token for a μ never seen before (batch 1, one prompt):
  mixed     set the row's coefficients, prefill, first token;
  dense     ``materialize`` W0 + Σ c_i ΔW_i for that μ (the per-request merge), prefill, first token.
Adapters are random LoRA weights with the recipe's rank/targets (speed does not depend on their values).
Each case is timed ``--repeats`` times, interleaved, and the median is reported.
"""

from __future__ import annotations

import statistics
import sys

import torch

from soupkitchen.benchmarks import bench_parser, bench_setup, random_adapters, timed
from soupkitchen.data import load_prompt_records
from soupkitchen.merging import build_mixed_model, materialize, set_coefficients
from soupkitchen.models import attach_lora, format_prompt, load_base_model

VLLM_LORA_LOSS = 0.34  # share of base tokens/s vLLM's LoRA path loses: the outside anchor for peft-1 / plain


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__, batch="16")
    p.add_argument("--n", type=int, default=None, help="adapters in the mix (default: number of objectives)")
    args, recipe, device, sync = bench_setup(p, argv)
    n = args.n or len(recipe.objectives)
    torch.manual_seed(0)
    adapters = random_adapters(recipe, n, device)

    plain, tok = load_base_model(recipe.model, device=device)
    peft, _ = load_base_model(recipe.model, device=device)
    peft = attach_lora(peft, recipe.lora, seed=0).eval()
    mixed, _ = load_base_model(recipe.model, device=device)
    mixed = build_mixed_model(mixed, adapters, recipe.lora)
    prompts = [r.prompt for r in load_prompt_records(recipe.data, "train")]
    fmt = [format_prompt(tok, q, recipe.model.use_chat_template) for q in prompts]

    def gen(model, batch, tokens):
        enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.no_grad():
            model.generate(
                **enc,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )

    print(
        f"recipe {recipe.name}, device {device}, n={n} adapters, LoRA r={recipe.lora.r} "
        f"on {list(recipe.lora.target_modules)}, {args.tokens} new tokens per row, median of {args.repeats}"
    )
    for b in args.batch:
        batch = (fmt * (b // len(fmt) + 1))[:b]
        mu = torch.distributions.Dirichlet(torch.ones(n)).sample((b,))  # a different μ for every row
        set_coefficients(mixed, mu)
        cases = {"plain": plain, "peft-1": peft, f"mixed-{n}": mixed}
        for model in cases.values():
            gen(model, batch, 2)  # warm-up
        times = {k: [] for k in cases}
        for _ in range(args.repeats):
            for k, model in cases.items():
                times[k].append(timed(lambda m=model, x=batch: gen(m, x, args.tokens), sync))
        tps = {k: b * args.tokens / statistics.median(v) for k, v in times.items()}
        print(f"\nbatch {b}: " + "  ".join(f"{k} {v:.1f} tok/s" for k, v in tps.items()))
        print(
            f"  mixed-{n} (every row its own μ) / peft-1 (one adapter): "
            f"{tps[f'mixed-{n}'] / tps['peft-1']:.2f}x   (target ≥ 0.80)"
        )
        print(f"  mixed-{n} / plain W0: {tps[f'mixed-{n}'] / tps['plain']:.2f}x")
        print(
            f"  peft-1 (one adapter) / plain W0: {tps['peft-1'] / tps['plain']:.2f}x   (anchor: vLLM's LoRA "
            f"path loses ~{VLLM_LORA_LOSS:.0%} of base throughput, {1 - VLLM_LORA_LOSS:.2f}x)"
        )

    # Time to first token for a new μ, batch 1.
    one = fmt[:1]
    ttft = {"mixed": [], "dense": []}
    for _ in range(args.repeats):
        mu = torch.distributions.Dirichlet(torch.ones(n)).sample()

        def mixed_first(mu=mu):
            set_coefficients(mixed, mu[None])
            gen(mixed, one, 1)

        def dense_first(mu=mu):
            gen(materialize(plain, adapters, mu, recipe.lora), one, 1)

        ttft["mixed"].append(timed(mixed_first, sync))
        ttft["dense"].append(timed(dense_first, sync))
    t = {k: statistics.median(v) for k, v in ttft.items()}
    print(
        f"\ntime to first token for a new μ (batch 1): mixed {t['mixed'] * 1e3:.1f} ms, "
        f"dense merge per μ {t['dense'] * 1e3:.1f} ms -> dense/mixed {t['dense'] / t['mixed']:.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
