"""Evaluate and compare the Pareto fronts of trained soups on the same prompts and decoding settings.

    python jobs/evaluate_front.py --recipe demo --bone-soup runs/demo-bone_soup/manifest.json \\
        --rewarded-soups runs/demo-rewarded_soups/manifest.json --morlhf runs/demo-morlhf/manifest.json
    ray job submit --working-dir . -- python jobs/evaluate_front.py --recipe tiny --bone-soup <bundle dir>

Each of --bone-soup / --rewarded-soups / --morlhf takes a backbones manifest (from train_backbones.py) or
a soup bundle directory. Bone Soup is evaluated at every α of ``eval.alphas`` (with and without
extrapolation), the soups on the ``eval.grid_step`` simplex grid (11 points for 2 objectives, 66 for 3),
MORLHF at its trained preferences, and the SFT model (W0) as one point. Output in --out: points.csv,
metrics.csv, front.png, samples.jsonl; the table is printed and everything is logged to MLflow.

HoE (--hoe): its full expert set and the expert-count ablation the set supports (``hoe.configurations``),
on the same grid, prompts and decoding, in the same reward space as the other sources.

Guided decoding (MAGE, MOD) over the Bone Soup base, with the cost per generated token of each mode
relative to plain decoding measured in the same run (costs.csv):

    python jobs/evaluate_front.py --recipe demo --bone-soup <bs> --rewarded-soups <rs> \\
        --modes mage_i_m,mage_e_m,mod --gamma 1.0 --value-models <train_value_models.py output>
"""

from __future__ import annotations

import sys
from pathlib import Path

from soupkitchen import cli
from soupkitchen.config import ConfigError
from soupkitchen.decoding import check_gamma
from soupkitchen.evaluation import evaluate_front, format_table
from soupkitchen.methods import GUIDED_MODES, Method, parse_guided_modes

parser = cli.recipe_parser(__doc__, "--eval.num_prompts 32")
for m in Method:
    what = (
        "HoE directory (build_hoe.py) or a bundle carrying one"
        if m is Method.HOE
        else "manifest.json or bundle dir"
    )
    parser.add_argument(f"--{m.replace('_', '-')}", metavar="PATH", help=f"{m} {what}")
parser.add_argument("--no-sft", action="store_true", help="leave out the SFT model (W0) point")
parser.add_argument(
    "--modes",
    default="",
    help=f"guided decoding fronts, comma-separated: {', '.join(GUIDED_MODES)} "
    "(bone_soup / rewarded_soups are the sources' own fronts and are skipped here)",
)
parser.add_argument("--gamma", type=float, default=None, help="guidance strength γ (default: decoding.gamma)")
parser.add_argument("--value-models", metavar="DIR", help="explicit value models (train_value_models.py)")
parser.add_argument("--split", choices=("eval", "train"), default="eval", help="prompt split (default: eval)")
parser.add_argument("--out", default=None, help="output directory (default: outputs/eval-<recipe>)")


@cli.entry
def main(argv: list[str] | None = None) -> int:
    args, recipe = cli.parse_recipe(parser, argv)
    paths = {m: getattr(args, m) for m in Method}
    if not any(paths.values()):
        raise ConfigError("--bone-soup", "give at least one of --bone-soup, --rewarded-soups, --morlhf")
    result, files = evaluate_front(
        recipe,
        paths,
        Path(args.out or f"outputs/eval-{recipe.name}"),
        include_sft=not args.no_sft,
        split=args.split,
        modes=parse_guided_modes(args.modes, "--modes"),
        gamma=None if args.gamma is None else check_gamma(args.gamma, "--gamma"),
        value_models=args.value_models,
    )
    print(format_table(result))
    print(
        f"{result.generated_tokens} tokens in {result.seconds:.1f} s; outputs: "
        + ", ".join(map(str, files.values()))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
