"""Train the backbones a soup method needs, all in parallel, on a Ray cluster.

    ray job submit --working-dir . -- python jobs/train_backbones.py --recipe tiny --run-name tiny-bs
    python jobs/train_backbones.py --recipe demo                # local Ray, same code path
    python jobs/train_backbones.py --recipe tiny --method rewarded_soups --ppo.steps 10

Each backbone is a Ray Train ``TorchTrainer`` (DeepSpeed ZeRO inside its workers); Ray Tune launches one
trial per backbone so they run concurrently within the cluster's resources and show up in the dashboard.
Re-running with the same ``--run-name`` resumes every backbone from its last checkpoint. Everything in the
recipe is validated (and the prompts and reward settings loaded) before any worker starts. Before any
backbone trains, one Ray task calibrates the run's reward space from SFT rollouts
(``soupkitchen.reward_space``): every backbone trains in it, and it is kept in
``<storage>/<run-name>/reward_space.json`` so a resumed run keeps it.
Output: ``<storage>/<run-name>/manifest.json``, the input of the merging/evaluation job.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # show every backbone's progress lines, not "repeated 2x"

from soupkitchen.backbones import METHODS, BackboneSpec, backbone_specs, train_loop_per_worker, write_manifest
from soupkitchen.config import ConfigError, Recipe, from_dict, load_recipe, parse_cli_overrides, to_dict
from soupkitchen.reward_space import RewardSpace, calibrate_recipe, effective_weights, load_or_calibrate


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Any other --section.key VALUE "
        "overrides that recipe key, e.g. --ppo.steps 10 --soup.beta 0.8.",
    )
    p.add_argument("--recipe", default="demo", help="recipe name in recipes/ or a YAML path (default: demo)")
    p.add_argument("--method", choices=METHODS, default=None, help="default: the recipe's soup.method")
    p.add_argument("--run-name", default=None, help="default: <recipe>-<method>; reuse it to resume")
    p.add_argument(
        "--storage", default=None, help="local path or s3:// URI (default: distributed.storage_path)"
    )
    args, rest = p.parse_known_args(argv)
    return args, parse_cli_overrides(rest)


def preflight(recipe: Recipe, method: str) -> list[BackboneSpec]:
    """Fail before any worker starts: reward params, prompts, model source, backbone weights."""
    from soupkitchen.data import load_prompt_records
    from soupkitchen.models import gguf_path
    from soupkitchen.rewards.registry import validate_reward_params

    for i, r in enumerate(recipe.rewards):
        validate_reward_params(r, f"rewards.{i}")
    if len(load_prompt_records(recipe.data, "train")) < 1:
        raise ConfigError("data.source", "no training prompts")
    if recipe.model.source == "gguf":
        gguf_path(recipe.model)
    if recipe.ppo.algorithm == "grpo":
        from soupkitchen.grpo import grpo_plan

        grpo_plan(recipe)
    if (
        recipe.model.source == "hf"
        and recipe.model.name.startswith((".", "/"))
        and not Path(recipe.model.name).exists()
    ):
        raise ConfigError("model.name", f"local model directory {recipe.model.name} does not exist")
    return backbone_specs(recipe, method)


def _storage(recipe: Recipe, override: str | None) -> str:
    path = override or recipe.distributed.storage_path
    return path if "://" in path else str(Path(path).expanduser().resolve())


def backbone_trial(config: dict) -> None:
    """Tune trial: fit one backbone's TorchTrainer (resuming by name) and report where its weights are."""
    import ray.tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    recipe = from_dict(Recipe, config["recipe"])
    d = recipe.distributed
    spec = config["backbone"]
    resources = {"CPU": d.cpus_per_worker} | ({"GPU": d.gpus_per_worker} if d.use_gpu else {})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "recipe": config["recipe"],
            "backbone": spec,
            "parent_run_id": config["parent_run_id"],
            "reward_space": config["reward_space"],
            "checkpoint_root": f"{config['storage']}/{config['run_name']}-{spec['name']}",
        },
        scaling_config=ScalingConfig(
            num_workers=d.num_workers, use_gpu=d.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=f"{config['run_name']}-{spec['name']}",
            storage_path=config["storage"],
            failure_config=FailureConfig(max_failures=d.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"backbone {spec['name']} finished without a checkpoint")
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    with result.checkpoint.as_directory() as d:  # downloads when the storage is remote
        normalizer = json.loads((Path(d) / "state.json").read_text())["trainer"]["normalizer"]
    ray.tune.report(
        {
            **metrics,
            "checkpoint_uri": _uri(result.checkpoint),
            "backbone": spec["name"],
            "normalizer_json": json.dumps(normalizer),
        }
    )


def _uri(checkpoint) -> str:
    fs = checkpoint.filesystem
    scheme = "" if fs is None or fs.type_name == "local" else f"{fs.type_name}://"
    return f"{scheme}{checkpoint.path}"


def run(
    recipe: Recipe, method: str, run_name: str, storage: str, specs: list[BackboneSpec] | None = None
) -> Path:
    """Train ``specs`` (default: the backbones ``method`` needs) in parallel; returns the manifest path."""
    import ray
    from ray import tune

    from soupkitchen.tracking import RunLogger

    checked = preflight(recipe, method)  # validates the recipe even when the caller names the specs
    specs = specs or checked
    ray.init(ignore_reinit_error=True, log_to_driver=True)
    reward_space = load_or_calibrate(
        recipe, Path(_local_out(storage, run_name)) / "reward_space.json", calibrate_on_cluster
    )
    print(reward_space.describe(), flush=True)
    parent = RunLogger(recipe, f"train_backbones:{run_name}", tags={"soupkitchen.method": method})
    space = {
        "recipe": to_dict(recipe),
        "reward_space": reward_space.to_dict(),
        "run_name": run_name,
        "storage": storage,
        "parent_run_id": parent.run_id,
        "backbone": tune.grid_search([asdict(s) for s in specs]),
    }
    tuner = tune.Tuner(
        tune.with_resources(backbone_trial, {"CPU": 0, "memory": 1}),  # the trial only waits on its trainer
        param_space=space,
        tune_config=tune.TuneConfig(max_concurrent_trials=len(specs)),
        run_config=tune.RunConfig(name=f"{run_name}-launcher", storage_path=storage),
    )
    try:
        manifest = collect_manifest(tuner.fit(), recipe, method, specs, storage, run_name, reward_space)
    except BaseException:
        parent.finish("FAILED")  # never leave the parent run RUNNING
        raise
    parent.client.log_artifact(parent.run_id, str(manifest))
    parent.finish()
    return manifest


def calibrate_on_cluster(recipe: Recipe) -> RewardSpace:
    """``reward_space.calibrate_recipe`` as one Ray task with a backbone worker's resources (its GPU too)."""
    import ray

    d = recipe.distributed
    task = ray.remote(num_cpus=d.cpus_per_worker, num_gpus=d.gpus_per_worker if d.use_gpu else 0)(
        calibrate_recipe
    )
    return ray.get(task.remote(recipe, "cuda" if d.use_gpu else "cpu"))


def collect_manifest(
    results,
    recipe: Recipe,
    method: str,
    specs: list[BackboneSpec],
    storage: str,
    run_name: str,
    reward_space: RewardSpace,
):
    """The trials' results → ``manifest.json`` (raises if any backbone failed)."""
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} backbone(s) failed; first error: {errors[0]}")
    by_name = {r.metrics["backbone"]: r.metrics for r in results}
    backbones = []
    for s in specs:
        m = by_name[s.name]
        normalizer = json.loads(m["normalizer_json"])
        backbones.append(
            {
                "name": s.name,
                "weights": s.weights,
                "checkpoint": m["checkpoint_uri"],
                "adapter_file": "trainable.safetensors",
                "reward_normalizer": normalizer,
                "effective_weights": effective_weights(reward_space, [s.weights], [normalizer])[0].tolist(),
                "reward_scale": reward_space.reward_scale(recipe, s.weights),
                "resumed_from_step": int(m.get("resumed_from_step", 0)),
                "rewards_first_steps": {o: m.get(f"start/reward/{o}") for o in recipe.objectives},
                "rewards_last_steps": {o: m.get(f"end/reward/{o}") for o in recipe.objectives},
            }
        )
    path = Path(_local_out(storage, run_name)) / "manifest.json"
    return write_manifest(path, recipe, method, backbones, reward_space)


def _local_out(storage: str, run_name: str) -> str:
    return f"{storage}/{run_name}" if "://" not in storage else str(Path("outputs") / run_name)


def main(argv: list[str] | None = None) -> int:
    try:
        args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
        recipe = load_recipe(args.recipe, overrides)
        method = args.method or recipe.soup.method
        run_name = args.run_name or f"{recipe.name}-{method}"
        manifest = run(recipe, method, run_name, _storage(recipe, args.storage))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    doc = json.loads(Path(manifest).read_text())
    print(f"\nmanifest: {manifest}")
    print("mean reward per objective over the first → last 4 PPO steps:")
    print(f"{'backbone':<20} {'weights w':<14} " + " ".join(f"{o:>22}" for o in doc["objectives"]))
    for b in doc["backbones"]:
        first, last = b["rewards_first_steps"], b["rewards_last_steps"]
        cells = " ".join(f"{f'{first[o]:.3f} → {last[o]:.3f}':>22}" for o in doc["objectives"])
        print(f"{b['name']:<20} {str(b['weights']):<14} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
