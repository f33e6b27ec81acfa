"""Train the backbones a method needs, all in parallel, on a Ray cluster (``jobs/train_backbones.py``).

Each backbone is a Ray Train ``TorchTrainer`` (DeepSpeed ZeRO inside its workers, ``training.worker``); Ray
Tune launches one trial per backbone so they run concurrently within the cluster's resources and show up in
the dashboard. Re-running with the same run name resumes every backbone from its last checkpoint. Everything
in the recipe is checked (and the prompts and reward settings loaded) before any worker starts. Before any
backbone trains, one Ray task calibrates the run's reward space from SFT rollouts (``reward_space``): every
backbone trains in it, and it is kept in ``<storage>/<run-name>/reward_space.json`` so a resumed run keeps
it. Output: ``<storage>/<run-name>/manifest.json`` (``manifests``), the input of merging and evaluation.

The recipe, the backbone specs and the reward space travel to the trials and workers as the validated
objects (they pickle); nothing is re-parsed on the way.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import ray
import ray.tune
from ray import tune
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from soupkitchen.conditioning import Conditioning
from soupkitchen.config import ConfigError, Recipe
from soupkitchen.data import load_prompt_records
from soupkitchen.manifests import BackboneEntry, write_manifest
from soupkitchen.methods import Method
from soupkitchen.models import gguf_path
from soupkitchen.reward_space import (
    RewardSpace,
    calibrate_recipe,
    check_shared_space,
    effective_weights,
    load_or_calibrate,
)
from soupkitchen.rewards.registry import validate_reward_params
from soupkitchen.tracking import RunLogger
from soupkitchen.training.grpo import grpo_plan
from soupkitchen.training.specs import BackboneSpec, backbone_specs
from soupkitchen.training.worker import train_loop_per_worker


def storage_root(recipe: Recipe, override: str | None = None) -> str:
    """Where Ray Train keeps checkpoints: ``override`` or ``distributed.storage_path`` (local: absolute)."""
    path = override or recipe.distributed.storage_path
    return path if "://" in path else str(Path(path).expanduser().resolve())


def run_dir(storage: str, run_name: str) -> Path:
    """The run's local output directory (manifest, reward space): under the storage, or ``outputs/`` for a
    remote (``s3://``) storage."""
    return Path(f"{storage}/{run_name}" if "://" not in storage else Path("outputs") / run_name)


def preflight(recipe: Recipe, method: Method, specs: list[BackboneSpec] | None = None) -> list[BackboneSpec]:
    """Fail before any worker starts: reward params, prompts, model source, backbone weights (``specs``: the
    caller's policies, else the method's)."""
    for i, r in enumerate(recipe.rewards):
        validate_reward_params(r, f"rewards.{i}")
    if len(load_prompt_records(recipe.data, "train")) < 1:
        raise ConfigError("data.source", "no training prompts")
    if recipe.model.source == "gguf":
        gguf_path(recipe.model)
    if recipe.ppo.algorithm == "grpo":
        if method in (Method.MOC, Method.HOE):
            raise ConfigError(
                "ppo.algorithm", f"{method} trains with its own PPO objective: use ppo.algorithm ppo"
            )
        grpo_plan(recipe)
    if (
        recipe.model.source == "hf"
        and recipe.model.name.startswith((".", "/"))
        and not Path(recipe.model.name).exists()
    ):
        raise ConfigError("model.name", f"local model directory {recipe.model.name} does not exist")
    if specs:
        check_shared_space(recipe, [s.weights for s in specs])
        return specs
    return backbone_specs(recipe, method)


def backbone_trial(config: dict) -> None:
    """Tune trial: fit one backbone's TorchTrainer (resuming by name) and report where its weights are."""
    recipe: Recipe = config["recipe"]
    spec: BackboneSpec = config["backbone"]
    d = recipe.distributed
    name = f"{config['run_name']}-{spec.name}"
    resources = {"CPU": d.cpus_per_worker} | ({"GPU": d.gpus_per_worker} if d.use_gpu else {})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "recipe": recipe,
            "backbone": spec,
            "parent_run": config["parent_run"],
            "reward_space": config["reward_space"],
            "checkpoint_root": f"{config['storage']}/{name}",
        },
        scaling_config=ScalingConfig(
            num_workers=d.num_workers, use_gpu=d.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=name,
            storage_path=config["storage"],
            failure_config=FailureConfig(max_failures=d.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    start = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - start
    if result.checkpoint is None:
        raise RuntimeError(f"backbone {spec.name} finished without a checkpoint")
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    with result.checkpoint.as_directory() as ckpt:  # downloads when the storage is remote
        normalizer = json.loads((Path(ckpt) / "state.json").read_text())["trainer"]["normalizer"]
    ray.tune.report(
        {
            **metrics,
            "checkpoint_uri": _uri(result.checkpoint),
            "backbone": spec.name,
            "normalizer_json": json.dumps(normalizer),
            "train_seconds": seconds,
        }
    )


def _uri(checkpoint) -> str:
    fs = checkpoint.filesystem
    scheme = "" if fs is None or fs.type_name == "local" else f"{fs.type_name}://"
    return f"{scheme}{checkpoint.path}"


def train_backbones(
    recipe: Recipe,
    method: Method | str,
    run_name: str,
    storage: str,
    specs: list[BackboneSpec] | None = None,
) -> Path:
    """Train ``specs`` (default: the backbones ``method`` needs) in parallel; returns the manifest path."""
    method = Method(method)
    specs = preflight(recipe, method, specs)
    ray.init(ignore_reinit_error=True, log_to_driver=True)
    reward_space = load_or_calibrate(
        recipe, run_dir(storage, run_name) / "reward_space.json", calibrate_on_cluster
    )
    print(reward_space.describe(), flush=True)
    with RunLogger(recipe, f"train_backbones:{run_name}", tags={"soupkitchen.method": method}) as parent:
        space = {
            "recipe": recipe,
            "reward_space": reward_space,
            "run_name": run_name,
            "storage": storage,
            "parent_run": parent.key,
            "backbone": tune.grid_search(specs),
        }
        tuner = tune.Tuner(
            tune.with_resources(backbone_trial, {"CPU": 0, "memory": 1}),  # trial waits on its trainer
            param_space=space,
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrent_backbones(recipe, len(specs))),
            run_config=tune.RunConfig(name=f"{run_name}-launcher", storage_path=storage),
        )
        manifest = collect_manifest(tuner.fit(), recipe, method, specs, storage, run_name, reward_space)
        parent.log_file(manifest)
    return manifest


def concurrent_backbones(recipe: Recipe, n: int) -> int:
    """How many of ``n`` backbones train at once: all, or at most ``distributed.max_concurrent_backbones``.

    Measured on 2 CPUs (1 CPU per worker group): capping at what fits is faster for the tiny β search
    (4 backbones: 270 s vs 349 s) but slower for compare (5 policies: 434 s vs 366 s), where the queued
    trials' start-up overlaps the running ones' training; so all at once stays the default."""
    cap = recipe.distributed.max_concurrent_backbones
    return min(n, cap) if cap else n


def calibrate_on_cluster(recipe: Recipe) -> RewardSpace:
    """``reward_space.calibrate_recipe`` as one Ray task with a backbone worker's resources (its GPU too)."""
    d = recipe.distributed
    task = ray.remote(num_cpus=d.cpus_per_worker, num_gpus=d.gpus_per_worker if d.use_gpu else 0)(
        calibrate_recipe
    )
    return ray.get(task.remote(recipe, "cuda" if d.use_gpu else "cpu"))


def collect_manifest(
    results,
    recipe: Recipe,
    method: Method,
    specs: list[BackboneSpec],
    storage: str,
    run_name: str,
    reward_space: RewardSpace,
) -> Path:
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
            BackboneEntry(
                name=s.name,
                weights=s.weights,
                checkpoint=m["checkpoint_uri"],
                reward_normalizer=normalizer,
                effective_weights=effective_weights(reward_space, [s.weights], [normalizer])[0].tolist(),
                reward_scale=reward_space.reward_scale(recipe, s.weights),
                resumed_from_step=int(m.get("resumed_from_step", 0)),
                train_seconds=m.get("train_seconds"),
                rewards_first_steps={o: m.get(f"start/reward/{o}") for o in recipe.objectives},
                rewards_last_steps={o: m.get(f"end/reward/{o}") for o in recipe.objectives},
            )
        )
    conditioning = Conditioning(kind="preference", prompt=recipe.moc.prompt) if method is Method.MOC else None
    return write_manifest(
        run_dir(storage, run_name) / "manifest.json", recipe, method, backbones, reward_space, conditioning
    )
