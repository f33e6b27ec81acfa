"""Supervised fine-tuning of the base model W0 into θ_sft: LoRA trained with TRL's SFTTrainer, then merged.

    python jobs/train_sft.py --recipe hh-helpful-harmless        # → $SOUPKITCHEN_CACHE/sft/<recipe name>
    python jobs/train_sft.py --recipe tiny --sft.enabled true --data.sft_source pairs.jsonl --output /tmp/sft
    ray job submit --working-dir . -- python jobs/train_sft.py --recipe summary-faithful --output /shared/sft

SFT pairs come from ``data.sft_source`` (a .jsonl with prompt/completion fields, or an hh_rlhf / tldr dataset)
or the train side of ``data.source``. Output: a Hugging Face model directory (merged safetensors, tokenizer,
``sft_manifest.json``); the downstream recipe uses it with ``model.source: hf`` and ``model.name: <dir>``.
"""

from __future__ import annotations

import sys

from soupkitchen import cli
from soupkitchen.config import load_recipe
from soupkitchen.training.sft import run_sft

parser = cli.recipe_parser(__doc__, "--sft.max_steps 100")
parser.add_argument("--output", default=None, help="output directory (default: sft.output_dir)")


@cli.entry
def main(argv: list[str] | None = None) -> int:
    args, overrides = cli.parse_args(parser, argv)
    if args.output is not None:
        overrides["sft.output_dir"] = args.output
    recipe = load_recipe(args.recipe, overrides)
    if not recipe.sft.enabled:
        print(
            f"sft.enabled is false in recipe {recipe.name!r}: this recipe starts from an "
            f"instruction-tuned model ({recipe.model.source}: {recipe.model.name}) and needs no SFT. "
            "Pass --sft.enabled true to fine-tune it anyway."
        )
        return 0
    result = run_sft(recipe)
    print(f"\nSFT model ({result.steps} steps, final loss {result.final_loss:.4f}): {result.output_dir}")
    print(f"use it downstream with:\n  model:\n    source: hf\n    name: {result.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
