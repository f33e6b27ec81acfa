"""Train MAGE's explicit value models: one LoRA adapter per objective over W0 (Eq. 16, docs/methods/mage.md).

    python jobs/train_value_models.py --recipe tiny --backbones runs/tiny-bone_soup/manifest.json
    python jobs/train_value_models.py --recipe demo --value_model.policies sft --value_model.epochs 1
    python jobs/train_value_models.py --recipe demo --backbones <bundle> --attach <bundle>   # serve MAGE-E
    ray job submit --working-dir . -- python jobs/train_value_models.py --recipe demo --backbones <bundle>

Rollouts come from the SFT model (c = 0, the π_ref of Eq. 15) and/or each backbone of --backbones (a
backbones manifest or a soup bundle), per ``value_model.policies``; every response is scored by all
rewards, and objective i's value model regresses V(x, y<t)[y_t] to r_i (Eq. 16), with V read as a residual
head, V = logits(W0 + ΔV_i) − logits(W0) (0 before training). Output in --out:
value_models.json + adapters/value-<objective>.safetensors (stackable with the backbones: same W0 and
LoRA targets), loss per step and validation MSE / pairwise accuracy logged to MLflow. Runs in-process
(on a Ray cluster, submit it as a job).
"""

from __future__ import annotations

import sys
from pathlib import Path

from soupkitchen import cli
from soupkitchen.config import ConfigError
from soupkitchen.merging import attach_value_models, load_bundle
from soupkitchen.paths import cache_dir
from soupkitchen.training.values import train_value_models
from soupkitchen.value_models import load_value_models

parser = cli.recipe_parser(__doc__, "--value_model.epochs 1")
parser.add_argument("--backbones", metavar="PATH", help="backbones manifest.json or soup bundle dir")
parser.add_argument("--out", default=None, help="output dir (default: <cache>/value-models/<recipe>)")
parser.add_argument(
    "--attach",
    metavar="BUNDLE",
    help="also ship the value models inside this soup bundle dir (rewritten atomically), for serving",
)


@cli.entry
def main(argv: list[str] | None = None) -> int:
    args, recipe = cli.parse_recipe(parser, argv)
    out = Path(args.out) if args.out else cache_dir("value-models") / recipe.name
    if args.attach:
        try:  # refuse a bad --attach before hours of training
            load_bundle(args.attach)
        except ConfigError as e:
            raise ConfigError("--attach", f"not a valid soup bundle: {e}") from e
    manifest, _ = train_value_models(recipe, args.backbones, out)
    if args.attach:
        attach_value_models(args.attach, load_value_models(out))
        print(f"value models attached to the bundle {args.attach}")
    print(f"value models: {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
