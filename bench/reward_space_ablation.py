"""Ablation of the reward space (docs/evaluation.md): normaliser kind × KL share, side by side in one run.

    python bench/reward_space_ablation.py                     # tiny recipe, in-process, a few minutes on CPU
    python bench/reward_space_ablation.py --steps 20 --recipe tiny

For each variant the Bone Soup backbones (w = columns of B(β)) and the Rewarded Soups specialists (w = e_i)
are trained with the same budget, both soups are evaluated on the same prompts in one space, and the table
shows: the largest |effective B − B(β)| (how far each backbone's own normaliser bent its w), the backbones'
mean KL to W0 over the last steps (mixed vs specialist: the KL share), and HV(BS), HV(RS) and HV(BS)/HV(RS)
with paired-bootstrap intervals. The first objective is made a count and the second a fraction, so the two
rewards live on very different scales. Variants:

    calibrated + unit_spread   the default: one frozen space, h scaled to unit SFT spread
    calibrated + none          one frozen space, h as is
    running + unit_spread      each policy z-scores with its own running statistics (refused for soups in
                               real jobs; trained here by bypassing that check to measure what it costs)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from soupkitchen.config import Recipe, from_dict, load_recipe, parse_cli_overrides, to_dict
from soupkitchen.data import load_prompt_records
from soupkitchen.evaluation import build_plan, evaluate, read_source
from soupkitchen.manifests import write_manifest
from soupkitchen.preferences import backbone_weights
from soupkitchen.reward_space import effective_weights
from soupkitchen.training.worker import build_trainer, prompt_schedule, save_checkpoint

VARIANTS = (("calibrated", "unit_spread"), ("calibrated", "none"), ("running", "unit_spread"))


def variant(recipe: Recipe, kind: str, scale: str) -> Recipe:
    tree = to_dict(recipe)
    tree["rewards"][0]["params"]["mode"] = "count"  # very different scales: a count vs a fraction
    for entry in tree["rewards"]:
        entry["normalization"] = {"kind": kind}
    tree["ppo"]["scale_rewards"] = scale
    return from_dict(Recipe, tree).validate()


def train(recipe: Recipe, weights: list[float], space, out: Path):
    """(trainer, per-step stats) after ``ppo.steps`` PPO steps on the training prompts, checkpointed."""
    records = load_prompt_records(recipe.data, "train")
    trainer = build_trainer(recipe, weights, space=space)
    history = []
    while trainer.global_step < recipe.ppo.steps:
        idx = prompt_schedule(len(records), recipe.ppo.batch_size, trainer.global_step, recipe.data.seed)
        history.append(trainer.step([records[i].prompt for i in idx]))
    save_checkpoint(trainer, out, {"backbone": {"name": out.name, "weights": weights}})
    return trainer, history


def run_variant(recipe: Recipe, root: Path) -> dict:
    n = len(recipe.objectives)
    soups = {
        "bone_soup": backbone_weights(n, recipe.soup.beta).tolist(),
        "rewarded_soups": np.eye(n).tolist(),
    }
    space, entries, kl, eff_err = None, {}, {}, 0.0
    for method, W in soups.items():
        entries[method], states = [], []
        for i, w in enumerate(W):
            trainer, history = train(recipe, w, space, root / f"{method}-{i}")
            space = trainer.space  # one calibration for every policy of the variant
            states.append(trainer.normalizer.state_dict())
            kl.setdefault(method, []).append(np.mean([h["kl"] for h in history[-4:]]))
            entries[method].append(
                {"name": f"{method}-{i}", "weights": w, "checkpoint": str(root / f"{method}-{i}"),
                 "adapter_file": "trainable.safetensors", "reward_normalizer": states[-1]}
            )  # fmt: skip
        eff_err = max(eff_err, float(np.abs(effective_weights(space, W, states) - np.asarray(W)).max()))
    sources = {}
    for method in soups:
        path = write_manifest(root / method / "manifest.json", recipe, method, entries[method], space)
        sources[method] = read_source(path, method)
    plan = build_plan(recipe, sources, include_sft=False)
    plan.fronts = [f for f in plan.fronts if f.label in soups]
    result = evaluate(plan, recipe, progress=False)
    return {"effective_B_error": eff_err, "kl": kl, "metrics": result.metrics, "ref": result.ref_point}


def fmt(m: dict, key: str) -> str:
    return f"{m[key]:.3f} [{m[key + '_lo']:.3f}, {m[key + '_hi']:.3f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="tiny")
    p.add_argument("--steps", type=int, default=16)
    args, rest = p.parse_known_args()
    base = load_recipe(args.recipe, {"ppo.steps": args.steps, **parse_cli_overrides(rest)})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, scale in VARIANTS:
            r = run_variant(variant(base, kind, scale), Path(tmp) / f"{kind}-{scale}")
            rows.append((f"{kind} + {scale}", r))
            print(f"done: {kind} + {scale}", flush=True)
    print(f"\n{args.recipe}, {args.steps} PPO steps per policy; HV against {rows[0][1]['ref']} (z units)")
    head = f"{'variant':<26}{'max|B_eff−B|':>13}{'KL BS':>8}{'KL RS':>8}"
    print(head + f"{'HV BS':>26}{'HV RS':>26}{'HV BS / HV RS':>26}{'ctrl BS':>26}")
    for name, r in rows:
        bs, rs = r["metrics"]["bone_soup"], r["metrics"]["rewarded_soups"]
        print(
            f"{name:<26}{r['effective_B_error']:>13.3f}{np.mean(r['kl']['bone_soup']):>8.2f}"
            f"{np.mean(r['kl']['rewarded_soups']):>8.2f}"
            f"{fmt(bs, 'hypervolume'):>26}{fmt(rs, 'hypervolume'):>26}"
            f"{fmt(bs, 'hv_ratio_vs_rewarded_soups'):>26}{fmt(bs, 'controllability'):>26}"
        )


if __name__ == "__main__":
    main()
