"""Train the RiC baseline: one policy conditioned on desired rewards in its prompt (Rewards-in-Context).

    python jobs/train_ric.py --recipe tiny --model.tiny.preference_tokens true
    python jobs/train_ric.py --recipe demo --ric.online_rounds 1 --reward-space <run dir>/reward_space.json

W0 rollouts on the training prompts, scored and relabeled with their rewards in the run's reward space, then
LoRA SFT (TRL SFTTrainer); optional online rounds. See ``soupkitchen.training.ric`` and docs/methods/ric.md.
Output: ``<storage>/<run-name>/manifest.json`` (method ric: one backbone and its conditioning block), the
input of evaluation; the adapter stays unmerged at ``<storage>/<run-name>-ric-0/checkpoint``.
"""

from __future__ import annotations

import sys

from soupkitchen import cli
from soupkitchen.manifests import BackboneManifest
from soupkitchen.training.launcher import storage_root
from soupkitchen.training.ric import train_ric

parser = cli.recipe_parser(__doc__, "--ric.max_steps 100 --ric.samples_per_prompt 4")
parser.add_argument(
    "--run-name", default=None, help="default: <recipe>-ric; its directory holds the manifest"
)
parser.add_argument(
    "--storage", default=None, help="local path (default: distributed.storage_path); s3:// writes outputs/"
)
parser.add_argument(
    "--reward-space",
    default=None,
    help="another run's reward_space.json to train in, so RiC is comparable with it "
    "(default: <storage>/<run-name>/reward_space.json, calibrated from W0 if missing)",
)


@cli.entry
def main(argv: list[str] | None = None) -> int:
    args, recipe = cli.parse_recipe(parser, argv)
    path = train_ric(
        recipe, args.run_name or f"{recipe.name}-ric", storage_root(recipe, args.storage), args.reward_space
    )
    doc = BackboneManifest.read(path)
    cond = doc.conditioning
    print(f"\nmanifest: {path}")
    print(f"conditioning ({cond.prompt.tag} tags, z units): desired reward range per objective")
    for o, lo, hi in zip(doc.objectives, cond.low, cond.high, strict=True):
        print(f"  {o:<20} [{lo:.{cond.prompt.decimals}f}, {hi:.{cond.prompt.decimals}f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
