"""Train the backbones a soup method needs, all in parallel, on a Ray cluster.

    ray job submit --working-dir . -- python jobs/train_backbones.py --recipe tiny --run-name tiny-bs
    python jobs/train_backbones.py --recipe demo                # local Ray, same code path
    python jobs/train_backbones.py --recipe tiny --method rewarded_soups --ppo.steps 10

One Ray Train TorchTrainer (DeepSpeed ZeRO) per backbone, launched as Ray Tune trials so they run
concurrently; the same --run-name resumes. See ``soupkitchen.training.launcher``.
Output: ``<storage>/<run-name>/manifest.json``, the input of the merging/evaluation job.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # show every backbone's progress lines, not "repeated 2x"

from soupkitchen import cli  # noqa: E402
from soupkitchen.manifests import BackboneManifest  # noqa: E402
from soupkitchen.methods import Method, names  # noqa: E402
from soupkitchen.training.launcher import storage_root, train_backbones  # noqa: E402

parser = cli.recipe_parser(__doc__, "--ppo.steps 10 --soup.beta 0.8")
parser.add_argument(
    "--method",
    choices=[m.value for m in Method if m not in (Method.RIC, Method.HOE)],
    help=f"{names(Method)} (default: soup.method; ric: jobs/train_ric.py; hoe: jobs/build_hoe.py)",
)
parser.add_argument("--run-name", default=None, help="default: <recipe>-<method>; reuse it to resume")
parser.add_argument(
    "--storage", default=None, help="local path or s3:// URI (default: distributed.storage_path)"
)


@cli.entry
def main(argv: list[str] | None = None) -> int:
    args, recipe = cli.parse_recipe(parser, argv)
    method = Method(args.method or recipe.soup.method)
    run_name = args.run_name or f"{recipe.name}-{method}"
    path = train_backbones(recipe, method, run_name, storage_root(recipe, args.storage))
    doc = BackboneManifest.read(path)
    print(f"\nmanifest: {path}")
    print("mean reward per objective over the first → last 4 PPO steps:")
    print(f"{'backbone':<20} {'weights w':<14} " + " ".join(f"{o:>22}" for o in doc.objectives))
    for b in doc.backbones:
        first, last = b.rewards_first_steps, b.rewards_last_steps
        cells = " ".join(f"{f'{first[o]:.3f} → {last[o]:.3f}':>22}" for o in doc.objectives)
        print(f"{b.name:<20} {str(b.weights):<14} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
