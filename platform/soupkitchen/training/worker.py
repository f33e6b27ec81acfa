"""The PPO loop each Ray Train worker runs for one backbone, and its resume.

``train_loop_per_worker`` is the Ray Train entry point (``training.launcher`` starts it): it builds W0 + LoRA
+ value heads, restores the last checkpoint if Ray Train has one (or finds a complete one on disk that Ray
Train never registered), wraps the model in DeepSpeed ZeRO when ``distributed.zero_stage`` > 0, and runs
``ppo.steps`` PPO iterations on its shard of every batch. ``build_trainer`` is the same trainer without Ray
(tests, benches). The backbones each method trains are ``training.specs.backbone_specs``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import ray.train
import torch

from soupkitchen.checkpoint import checkpoint_problem, load_training_checkpoint, save_training_checkpoint
from soupkitchen.config import ConfigError, Recipe
from soupkitchen.data import load_prompt_records
from soupkitchen.hoe.routers import RouterJob, router_policy
from soupkitchen.moc import MOCObjective, relabeled_rows, training_preferences
from soupkitchen.models import format_prompt, load_policy, resolve_device
from soupkitchen.ppo.comm import LocalComm, TorchDistComm
from soupkitchen.ppo.policy import PolicyWithValue
from soupkitchen.ppo.scalarization import FixedWeights, OMDTchebycheff, PerSamplePreference
from soupkitchen.ppo.trainer import DeepSpeedOptimizer, MOPPOTrainer, TorchOptimizer, reward_window
from soupkitchen.reward_space import RewardSpace, calibrate
from soupkitchen.rewards import build_rewards
from soupkitchen.tracking import BackboneLogger
from soupkitchen.training.grpo import train_grpo_backbone
from soupkitchen.training.specs import BackboneSpec


def prompt_schedule(n_prompts: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of step ``step``'s global batch: epochs of seeded shuffles, so a resume at ``step`` continues
    exactly where the killed run stopped (the data position is just the step counter)."""
    out: list[int] = []
    start = step * batch_size
    epoch = start // n_prompts
    offset = start % n_prompts
    while len(out) < batch_size:
        order = list(range(n_prompts))
        random.Random(seed * 100003 + epoch).shuffle(order)
        out.extend(order[offset:])
        epoch, offset = epoch + 1, 0
    return out[:batch_size]


def deepspeed_config(recipe: Recipe, world_size: int) -> dict:
    """ZeRO config for the trainable LoRA + value-head parameters (fp32 on CPU, bf16 on GPU if asked)."""
    ppo = recipe.ppo
    cfg = {
        "train_micro_batch_size_per_gpu": max(1, ppo.mini_batch_size // world_size),
        "gradient_accumulation_steps": 1,
        "gradient_clipping": ppo.max_grad_norm,
        "zero_optimization": {"stage": recipe.distributed.zero_stage},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if recipe.distributed.use_gpu and recipe.model.dtype == "bfloat16":
        cfg["bf16"] = {"enabled": True}
    return cfg


def build_trainer(
    recipe: Recipe,
    weights,
    *,
    device="cpu",
    comm=None,
    use_deepspeed=False,
    restore=None,
    space=None,
    moc: bool = False,
    router: RouterJob | None = None,
):
    """The PPO trainer of one backbone on this process. ``restore`` = a checkpoint directory; ``space`` = the
    run's ``RewardSpace`` (None: calibrated here from this policy's W0, the same deterministic rollouts a
    launcher would make); ``moc``: MOC's per-sample preferences and min-norm objective (``recipe.moc``);
    ``router``: a HoE router expert over its frozen LoRA experts, scalarised by OMD-STCH (``hoe.routers``)."""

    comm = comm or LocalComm()
    torch.manual_seed(recipe.seed)
    if router is not None:
        model, tokenizer = router_policy(recipe, router, device)
    else:
        policy, tokenizer = load_policy(recipe, device=device)
        model = PolicyWithValue(policy, len(recipe.objectives)).to(device)
    state = opt_state = None
    if restore is not None:
        trainable, opt_state, state = load_training_checkpoint(restore, comm.rank)
        saved = state.get("layout", {})
        stage = recipe.distributed.zero_stage if use_deepspeed else 0
        layout = {"world_size": comm.world_size, "zero_stage": stage}
        trained_w = state.get("backbone", {}).get("weights")
        if trained_w is not None and not np.allclose(trained_w, weights, atol=1e-9):
            raise ConfigError(
                "--run-name",
                f"checkpoint {restore} was trained with w={trained_w}, this backbone has w={list(weights)}; "
                "the run name is already used by other policies: pick another --run-name",
            )
        trained_router = state.get("backbone", {}).get("router")
        if router is not None and trained_router != asdict(router):
            raise ConfigError(
                "--run-name",
                f"checkpoint {restore} trained router {router.name} over other experts or settings "
                f"({trained_router}); the HoE set was rebuilt: pick another --run-name",
            )
        if saved and saved != layout:
            raise ConfigError(
                "distributed",
                f"checkpoint {restore} was written with {saved}, this run has {layout}; optimiser shards "
                "cannot be re-partitioned: keep num_workers/zero_stage, or start a new --run-name",
            )
        model.load_trainable_state_dict(trainable)  # before DeepSpeed copies the weights into its partitions
    if use_deepspeed:
        import deepspeed

        params = [p for p in model.parameters() if p.requires_grad]
        client_opt = torch.optim.AdamW(params, lr=recipe.ppo.learning_rate, weight_decay=0.0)
        engine, *_ = deepspeed.initialize(
            model=model,
            optimizer=client_opt,
            model_parameters=params,
            config=deepspeed_config(recipe, comm.world_size),
        )
        optimizer = DeepSpeedOptimizer(engine)
    else:
        optimizer = TorchOptimizer(model, recipe.ppo.learning_rate, recipe.ppo.max_grad_norm)
    if opt_state is not None:
        optimizer.load_state_dict(*opt_state)
    rewards = build_rewards(recipe.rewards, device=device)
    if space is None:
        with model.reference():
            space = calibrate(recipe, model.policy, tokenizer, rewards, device)
    rewards.normalizer = space.normalizer()  # the run's frozen space (running: only for one-hot w)
    trainer = MOPPOTrainer(
        model,
        tokenizer,
        rewards,
        PerSamplePreference()
        if moc
        else OMDTchebycheff(weights, router.ideal, router.omd_step, comm)
        if router
        else FixedWeights(weights),
        recipe.ppo,
        recipe.generation,
        format_prompt=lambda p: format_prompt(tokenizer, p, recipe.model.use_chat_template),
        max_prompt_tokens=recipe.model.max_prompt_tokens,
        optimizer=optimizer,
        comm=comm,
        device=device,
        reward_scale=space.reward_scale(recipe, weights),
        objective=MOCObjective(recipe.moc, len(recipe.objectives), recipe.ppo.whiten_advantages)
        if moc
        else None,
    )
    trainer.space = space
    if state is not None:
        trainer.load_state_dict(state["trainer"])
    return trainer


def save_checkpoint(trainer, directory, extra: dict) -> Path:

    rank = trainer.comm.rank
    with trainer.optimizer.gathered_parameters():  # ZeRO-3 partitions weights: every rank joins the gather
        trainable = trainer.model.trainable_state_dict()
    layout = {
        "world_size": trainer.comm.world_size,
        "zero_stage": getattr(trainer.optimizer, "zero_stage", 0),
    }
    state = {"trainer": trainer.state_dict(), "layout": layout, **extra}
    return save_training_checkpoint(
        directory, trainable if rank == 0 else None, trainer.optimizer.state_dict(), state, rank
    )


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: PPO for one backbone (``config`` = {recipe, backbone: {name, weights}})."""

    recipe: Recipe = config["recipe"]  # validated by the launcher; travels as the object
    spec: BackboneSpec = config["backbone"]
    quiet_train_reports()
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    device = resolve_device("cuda" if recipe.distributed.use_gpu else "cpu")
    if device == "cuda":
        device = f"cuda:{ray.train.torch.get_device().index or 0}"
    space: RewardSpace = config["reward_space"]
    if recipe.ppo.algorithm == "grpo":
        return _train_grpo(space.apply(recipe), spec, device, config.get("parent_run"))
    comm = TorchDistComm(device if device.startswith("cuda") else "cpu")
    restore = ray.train.get_checkpoint()
    if restore is None and (found := latest_checkpoint(config.get("checkpoint_root"), world)):
        # Killed after the checkpoint was written but before Ray Train registered it: no step is lost.
        if rank == 0:
            say(f"[{spec.name}] no registered checkpoint; resuming from {found}")
        restore = ray.train.Checkpoint.from_directory(str(found))
    with restore.as_directory() if restore else contextlib.nullcontext() as ckpt_dir:
        if ckpt_dir is not None and (why := checkpoint_problem(ckpt_dir, world)):
            # truncated or altered on disk: never load it; the newest complete one before it, or the start
            ckpt_dir = latest_checkpoint(config.get("checkpoint_root"), world, refuse=Path(ckpt_dir))
            if rank == 0:
                say(f"[{spec.name}] checkpoint refused: {why}; resuming from {ckpt_dir or 'step 0'}")
        trainer = build_trainer(
            recipe,
            spec.weights,
            device=device,
            comm=comm,
            use_deepspeed=recipe.distributed.zero_stage > 0 or world > 1,  # stage 0 = DDP all-reduce
            restore=ckpt_dir,
            space=space,
            moc=spec.moc,
            router=spec.router,
        )
    resumed_from = trainer.global_step  # reported with every result: the log can drop lines, results cannot
    if rank == 0 and resumed_from:
        say(f"[{spec.name}] resumed at step {resumed_from}/{recipe.ppo.steps}")
    records = load_prompt_records(recipe.data, "train")
    local = recipe.ppo.batch_size // world
    logger = BackboneLogger(recipe, spec, config.get("parent_run")) if rank == 0 else None
    P = training_preferences(recipe.moc, len(recipe.objectives)) if spec.moc else None
    while trainer.global_step < recipe.ppo.steps:
        idx = prompt_schedule(len(records), recipe.ppo.batch_size, trainer.global_step, recipe.data.seed)
        mine = [records[i] for i in idx[rank * local : (rank + 1) * local]]
        prompts, prefs = [r.prompt for r in mine], None
        if spec.moc:  # a preference per row, written into its prompt
            prompts, prefs = relabeled_rows(
                prompts,
                P,
                recipe.ppo.batch_size,
                trainer.global_step,
                recipe.seed,
                recipe.moc.prompt,
                rank * local,
            )
        stats = trainer.step(prompts, [r.context for r in mine], prefs)
        if logger:
            logger.log_step(stats)
            say(progress_line(spec.name, stats, recipe))
        step = trainer.global_step
        stats.update(trainer.reward_window("start") | trainer.reward_window("end"))
        stats["resumed_from_step"] = resumed_from
        if step % recipe.ppo.checkpoint_every == 0 or step == recipe.ppo.steps:
            with tempfile.TemporaryDirectory() as tmp:
                extra = {"backbone": asdict(spec), "data_position": step, "objectives": recipe.objectives}
                save_checkpoint(trainer, Path(tmp) / "ckpt", extra)
                if logger and step == recipe.ppo.steps:  # copied to the outbox: uploads even after an outage
                    logger.log_adapter(Path(tmp) / "ckpt")
                ray.train.report(stats, checkpoint=ray.train.Checkpoint.from_directory(Path(tmp) / "ckpt"))
        else:
            ray.train.report(stats)
    if restore is not None and resumed_from >= recipe.ppo.steps:
        # Finished in an earlier run (e.g. a comparison re-using it): hand its checkpoint back as the result.
        stats = {"step": resumed_from, "resumed_from_step": resumed_from}
        stats.update(trainer.reward_window("start") | trainer.reward_window("end"))
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None if rank else ray.train.Checkpoint.from_directory(restore.to_directory(f"{tmp}/c"))
            ray.train.report(stats, checkpoint=ckpt)
    if logger:
        logger.log_normalizer(trainer.normalizer.state_dict())
        logger.finish()


def _train_grpo(recipe: Recipe, spec: BackboneSpec, device: str, parent_run: str | None) -> None:
    """``ppo.algorithm: grpo``: TRL's GRPOTrainer with one reward function per objective, weights w."""

    logger = BackboneLogger(recipe, spec, parent_run)

    def on_step(stats):
        logger.log_step(stats)
        if stats["step"] < recipe.ppo.steps:  # the last rollout is reported with the checkpoint
            ray.train.report(stats)

    with tempfile.TemporaryDirectory() as tmp:
        result = train_grpo_backbone(recipe, spec, Path(tmp) / "ckpt", device=device, on_step=on_step)
        final = {k: v for k, v in result.items() if isinstance(v, (int, float))}
        final.update(reward_window(result["history"], "start") | reward_window(result["history"], "end"))
        logger.log_adapter(Path(tmp) / "ckpt")
        ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(Path(tmp) / "ckpt"))
    logger.log_normalizer(result["normalizer"])
    logger.finish()


def quiet_train_reports() -> None:
    """Ray Train logs every ``ray.train.report`` as the whole metrics dict at INFO ("Reporting training
    result N: TrainingReport(...)"); the progress line already says it for people. Its logger is named
    after its file (``logging.getLogger(__file__)``), so it is silenced by that name (no private import)."""
    name = Path(ray.train.__file__).parent / "v2" / "_internal" / "execution" / "context.py"
    logging.getLogger(str(name)).setLevel(logging.WARNING)


def say(line: str) -> None:
    """One line on the worker's real stdout. Ray Train patches ``print`` to also log it, and once a library
    wraps ``sys.stdout`` (MLflow, DeepSpeed) each plain print reaches the driver twice."""
    print(line, file=sys.__stdout__, flush=True)


def progress_line(name: str, stats: dict, recipe: Recipe) -> str:
    objectives = " ".join(f"{o}={stats[f'reward/{o}']:.3f}" for o in recipe.objectives)
    return (
        f"[{name}] step {stats['step']}/{recipe.ppo.steps} {objectives} "
        f"h={stats['reward/scalarized']:.3f} kl={stats['kl']:.3f} η={stats['kl_coef']:.4f} "
        f"len={stats['response_length']:.1f} {stats['tokens_per_s']:.0f} tok/s"
        + (f" c¹={stats['moc/c1']:.2f} violated={stats['moc/violated']:.2f}" if "moc/c1" in stats else "")
        + (
            f" w=[{' '.join(f'{v:.2f}' for k, v in stats.items() if k.startswith('omd/w'))}]"
            if "omd/w0" in stats
            else ""
        )
    )


def latest_checkpoint(root: str | None, world_size: int, refuse: Path | None = None) -> Path | None:
    """The newest complete checkpoint in a local run directory (``checkpoint_*/state.json``, which is written
    last, every rank's state file, every file's sha256 as recorded: ``checkpoint_problem``), other than
    ``refuse`` (and, when given, older than it), or None. Remote (``s3://``) roots are left to Ray Train."""
    if not root or "://" in root:
        return None
    found: list[tuple[int, Path]] = []
    for state in Path(root).glob("checkpoint_*/state.json"):
        try:
            found.append((int(json.loads(state.read_text())["data_position"]), state.parent))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # partial or foreign file: never resume from it
    limit = _position(refuse) if refuse is not None else None
    for position, path in sorted(found, key=lambda x: x[0], reverse=True):
        newer = limit is not None and position >= limit
        if refuse is not None and (newer or path.resolve() == refuse.resolve()):
            continue
        if checkpoint_problem(path, world_size) is None:
            return path
    return None


def _position(directory: Path) -> int | None:
    """The data position a checkpoint records, or None when its state is unreadable (then any older one)."""
    try:
        return int(json.loads((directory / "state.json").read_text())["data_position"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
