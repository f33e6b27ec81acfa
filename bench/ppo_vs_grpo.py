"""Generated tokens per second: our PPO engine (MOPPOTrainer) vs TRL's GRPOTrainer, side by side in one run.

    python bench/ppo_vs_grpo.py                          # tiny recipe, seconds
    python bench/ppo_vs_grpo.py --recipe demo            # SmolLM2-135M on CPU, a few minutes on 2 cores
    python bench/ppo_vs_grpo.py --recipe demo --steps 3 --generation.max_new_tokens 32

Both engines get the same W0 + LoRA targets, the same rows (P prompts, each repeated G = num_generations
times, so both generate ppo.batch_size completions per rollout), the same sampling settings and
max_new_tokens, the same minibatch size, passes per rollout (ppo_epochs = GRPO num_iterations), optimiser,
device and threads. Each runs 1 warm-up rollout, then ``--steps`` timed rollouts, interleaved (TRL rollout
k, then ours) so that both see the same machine load; the metric is generated (completion) tokens, EOS
included, per second of wall time summed over the timed rollouts (generation, scoring and all updates),
and per process CPU-second as a load-robust check. Other ``--section.key value`` flags override the recipe.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch
from transformers.trainer_callback import ProgressCallback, TrainerCallback

from soupkitchen.config import Recipe, load_recipe, parse_cli_overrides
from soupkitchen.data import PromptRecord, load_prompt_records
from soupkitchen.models import resolve_device
from soupkitchen.training.grpo import build_grpo_trainer, grpo_plan
from soupkitchen.training.specs import backbone_specs
from soupkitchen.training.worker import build_trainer, prompt_schedule

DEFAULT_STEPS = {"tiny": 20, "demo": 2}

DIFFERENCES = """\
What differs (per rollout), by design of the two algorithms:
  PPO  forward passes over the rollout: policy + critic (one value head per objective on the last hidden
       state) and reference (adapter off), then per-objective GAE; every minibatch update also runs the value
       heads and value loss; KL: adaptive penalty in the per-token reward.
  GRPO no critic: group-normalised wᵀr advantages; reference forward (adapter off, beta > 0) and, since
       num_iterations > 1, an extra 'old log-prob' forward over the rollout; KL: fixed k3 term in the loss;
       runs inside HF Trainer/accelerate (dataloader, per-step logging, fused lm_head log-probs).
  Sampling is stochastic in both, so completion lengths differ; a batch decodes until its longest row ends."""


def step_rows(recipe: Recipe, records: list[PromptRecord], prompts_per_step: int, n: int) -> list[list]:
    """The prompts of rollouts 0..n-1 (warm-up included), ``prompts_per_step`` each, seeded epochs."""
    return [
        [records[i] for i in prompt_schedule(len(records), prompts_per_step, s, recipe.data.seed)]
        for s in range(n)
    ]


class PPORollouts:
    """Our engine, one timed rollout at a time on the bench's rows (each prompt repeated ``g`` times)."""

    def __init__(self, recipe: Recipe, weights, rows: list[list[PromptRecord]], g: int, device: str):
        self.trainer = build_trainer(recipe, weights, device=device)
        self.rows, self.g = rows, g
        self.results: list[dict] = []

    def run(self, k: int) -> None:
        recs = self.rows[k]
        prompts = [r.prompt for r in recs for _ in range(self.g)]
        contexts = [r.context for r in recs for _ in range(self.g)]
        t0, c0 = time.perf_counter(), time.process_time()
        stats = self.trainer.step(prompts, contexts)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        tokens = stats["response_length"] * len(prompts)
        self.results.append({"tokens": tokens, "wall": wall, "cpu": cpu, "length": stats["response_length"]})
        note = " (warm-up)" if k == 0 else ""
        print(f"  rollout {k}  ours: {tokens:4.0f} tokens {wall:7.2f} s{note}")


def bench(recipe: Recipe, spec, rows: list[list[PromptRecord]], g: int, device: str) -> dict[str, list[dict]]:
    """Interleaved: TRL rollout k, then our rollout k (so both see the same machine load), k = 0..n-1."""
    ppo = PPORollouts(recipe, spec.weights, rows, g, device)
    records = [r for recs in rows for r in recs]
    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as scratch:
        run = build_grpo_trainer(
            recipe, spec, scratch, device=device, num_generations=g, records=records, shuffle_dataset=False
        )
        per_rollout = run.plan.optimizer_steps_per_rollout

        class Interleave(TrainerCallback):
            """After TRL's rollout k has finished (and been timed by the meter), run our rollout k."""

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step % per_rollout == 0:
                    k = state.global_step // per_rollout - 1
                    tokens, wall = run.funcs[0].completion_tokens[k], run.meter.rollout_wall[k]
                    note = " (warm-up)" if k == 0 else ""
                    print(f"  rollout {k}  TRL:  {tokens:4d} tokens {wall:7.2f} s{note}")
                    ppo.run(k)

        run.trainer.pop_callback(ProgressCallback)  # no progress bar in the bench output
        run.trainer.add_callback(Interleave())  # after the meter's callback: TRL's time excludes ours
        run.trainer.train()
    m = run.meter
    trl = [
        {"tokens": run.funcs[0].completion_tokens[k], "wall": m.rollout_wall[k], "cpu": m.rollout_cpu[k]}
        | {"length": m.history[k]["response_length"]}
        for k in range(len(rows))
    ]
    return {"ours (MOPPOTrainer, PPO)": ppo.results, "TRL GRPOTrainer": trl}


def summarise(results: list[dict]) -> dict[str, float]:
    """Totals over the timed rollouts (rollout 0 is the warm-up)."""
    timed = results[1:]
    out = {k: sum(r[k] for r in timed) for k in ("tokens", "wall", "cpu")}
    out["length"] = sum(r["length"] for r in timed) / len(timed)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="tiny", help="recipe name or YAML path (default: tiny)")
    p.add_argument(
        "--steps", type=int, default=None, help="timed rollouts per engine (default: tiny 20, demo 2)"
    )
    p.add_argument(
        "--num-generations", type=int, default=None, help="GRPO group size G (default: 4 if it fits)"
    )
    p.add_argument("--device", default=None, help="cpu | cuda (default: the recipe's device)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args, rest = p.parse_known_args(argv)
    overrides = parse_cli_overrides(rest)
    raw = load_recipe(args.recipe, overrides)
    # TRL cannot train a LoRA on lm_head (fused log-probs); both engines get the same targets.
    targets = [t for t in raw.lora.target_modules if t.rsplit(".", 1)[-1] != "lm_head"]
    dropped = targets != raw.lora.target_modules
    steps = args.steps or DEFAULT_STEPS.get(raw.name, 2)
    fixed = {"lora.target_modules": targets, "ppo.algorithm": "grpo", "ppo.steps": steps + 1}
    recipe = load_recipe(args.recipe, {**overrides, **fixed})
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or resolve_device(recipe.device)
    plan = grpo_plan(recipe, args.num_generations)
    g, prompts_per_step = plan.num_generations, plan.prompts_per_step
    spec = backbone_specs(recipe)[0]
    rows = step_rows(recipe, load_prompt_records(recipe.data, "train"), prompts_per_step, steps + 1)
    ppo, gen = recipe.ppo, recipe.generation

    print(f"recipe {recipe.name}: model {recipe.model.name}, LoRA r={recipe.lora.r} on {targets}")
    if dropped:
        print("  (lm_head dropped from lora.target_modules for both engines: TRL refuses LoRA on lm_head)")
    print(
        f"  device {device}, {torch.get_num_threads()} threads; backbone {spec.name} w={spec.weights}\n"
        f"  per rollout: {prompts_per_step} prompts × {g} = {ppo.batch_size} completions, max_new_tokens "
        f"{gen.max_new_tokens}, T={gen.temperature}, top_p={gen.top_p}, top_k={gen.top_k}\n"
        f"  updates per rollout: {ppo.ppo_epochs} passes × {ppo.batch_size // ppo.mini_batch_size} "
        f"minibatches of {ppo.mini_batch_size} = {plan.optimizer_steps_per_rollout} optimizer steps "
        f"(PPO ppo_epochs = GRPO num_iterations), lr {ppo.learning_rate}, kl {ppo.kl_coef}\n"
        f"  1 warm-up + {steps} timed rollouts per engine, interleaved (TRL rollout k, then ours)"
    )
    by_engine = {name: summarise(rs) for name, rs in bench(recipe, spec, rows, g, device).items()}

    cols = ("rollouts", "gen tokens", "mean len", "wall s", "s/rollout", "tokens/s", "tok/CPU-s")
    header = f"{'engine':<26} " + " ".join(f"{c:>10}" for c in cols)
    print("\n" + header + "\n" + "-" * len(header))
    for name, r in by_engine.items():
        print(
            f"{name:<26} {steps:>10} {r['tokens']:>10.0f} {r['length']:>10.2f} {r['wall']:>10.2f} "
            f"{r['wall'] / steps:>10.2f} {r['tokens'] / r['wall']:>10.1f} {r['tokens'] / r['cpu']:>10.1f}"
        )
    ours, trl = by_engine.values()
    ratio = (ours["tokens"] / ours["wall"]) / (trl["tokens"] / trl["wall"])
    ratio_cpu = (ours["tokens"] / ours["cpu"]) / (trl["tokens"] / trl["cpu"])
    print(f"\nratio ours/TRL: {ratio:.2f}x tokens/s (wall), {ratio_cpu:.2f}x tokens per CPU-second")
    print(DIFFERENCES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
