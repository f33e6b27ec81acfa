"""Train MOC: one LoRA policy that reads the preference p from its prompt, on a Ray cluster.

    ray job submit --working-dir . -- python jobs/train_moc.py --recipe tiny-moc --run-name tiny-moc
    python jobs/train_moc.py --recipe demo --moc.phi 0.1          # local Ray, same code path

The backbones' launcher with one policy: a Ray Train TorchTrainer (DeepSpeed ZeRO, ``distributed.num_workers``
split its batch) in the run's reward space, each row's prompt relabeled with a preference drawn from
``moc.preferences`` (Eq. 3) and its PPO loss scalarised by MOC's min-norm weights (``soupkitchen.moc``).
The same --run-name resumes. Output: ``<storage>/<run-name>/manifest.json`` (method ``moc``, with the
prompt format), the input of ``jobs/evaluate_front.py --moc``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from soupkitchen import cli  # noqa: E402
from soupkitchen.manifests import BackboneManifest  # noqa: E402
from soupkitchen.methods import Method  # noqa: E402
from soupkitchen.training.launcher import storage_root, train_backbones  # noqa: E402

parser = cli.recipe_parser(__doc__, "--ppo.steps 10 --moc.phi 0.05")
parser.add_argument("--run-name", default=None, help="default: <recipe>-moc; reuse it to resume")
parser.add_argument(
    "--storage", default=None, help="local path or s3:// URI (default: distributed.storage_path)"
)


@cli.entry
def main(argv: list[str] | None = None) -> int:
    args, recipe = cli.parse_recipe(parser, argv)
    run_name = args.run_name or f"{recipe.name}-moc"
    path = train_backbones(recipe, Method.MOC, run_name, storage_root(recipe, args.storage))
    doc = BackboneManifest.read(path)
    (policy,) = doc.backbones
    first, last = policy.rewards_first_steps, policy.rewards_last_steps
    print(f"\nmanifest: {path}")
    centre = [1.0 / len(doc.objectives)] * len(doc.objectives)
    print(f"prompt format: {doc.conditioning.prompt_for('{prompt}', centre)}")
    print("mean reward per objective over the first → last 4 PPO steps (all preferences):")
    print("  " + "  ".join(f"{o}: {first[o]:.3f} → {last[o]:.3f}" for o in doc.objectives))
    return 0


if __name__ == "__main__":
    sys.exit(main())
