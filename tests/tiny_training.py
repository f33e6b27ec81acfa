"""In-process PPO on the tiny recipe, shared by the tests that need trained backbones (no Ray)."""

from __future__ import annotations

from pathlib import Path

from soupkitchen.conditioning import Conditioning
from soupkitchen.config import to_dict
from soupkitchen.data import load_prompt_records
from soupkitchen.manifests import write_manifest
from soupkitchen.methods import Method
from soupkitchen.moc import relabeled_rows, training_preferences
from soupkitchen.training.specs import BackboneSpec, backbone_specs
from soupkitchen.training.worker import build_trainer, prompt_schedule, save_checkpoint

METHODS = (Method.BONE_SOUP, Method.REWARDED_SOUPS, Method.MORLHF)  # the PPO backbone methods


def train_tiny(recipe, weights, steps, trainer=None, space=None):
    """``(trainer, per-step stats)`` after PPO on the tiny recipe's training prompts up to ``steps``."""
    records = load_prompt_records(recipe.data, "train")
    trainer = trainer or build_trainer(recipe, weights, space=space)
    history = []
    while trainer.global_step < steps:
        idx = prompt_schedule(len(records), recipe.ppo.batch_size, trainer.global_step, recipe.data.seed)
        history.append(trainer.step([records[i].prompt for i in idx]))
    return trainer, history


def train_policies(recipe, out: Path) -> dict:
    """Every policy Bone Soup, Rewarded Soups and MORLHF need (one PPO run per distinct w, shared between
    methods as ``jobs/compare.py`` does), checkpointed under ``out``, with one manifest per method.

    Returns ``{"histories": {w: stats}, "manifests": {method: path}, "trainers": {w: trainer}}``.
    """
    specs = {m: backbone_specs(recipe, m) for m in METHODS}
    trained, histories, space = {}, {}, None
    for s in (s for m in METHODS for s in specs[m]):
        w = tuple(s.weights)
        if w in trained:
            continue
        trainer, history = train_tiny(recipe, s.weights, recipe.ppo.steps, space=space)
        space = trainer.space  # calibrated by the first policy, shared by all (as a launcher does)
        directory = out / f"policy-{'-'.join(f'{x:g}' for x in w)}"
        save_checkpoint(trainer, directory, {"backbone": to_dict(BackboneSpec(s.name, s.weights))})
        trained[w], histories[w] = (trainer, directory), history
    manifests = {}
    for m in METHODS:
        entries = [
            {
                "name": s.name,
                "weights": s.weights,
                "checkpoint": str(trained[tuple(s.weights)][1]),
                "adapter_file": "trainable.safetensors",
                "reward_normalizer": trained[tuple(s.weights)][0].normalizer.state_dict(),
            }
            for s in specs[m]
        ]
        manifests[m] = write_manifest(out / m / "manifest.json", recipe, m, entries, space)
    return {
        "histories": histories,
        "manifests": manifests,
        "trainers": {w: t for w, (t, _) in trained.items()},
    }


def train_moc(recipe, out: Path, steps: int = 4, space=None) -> Path:
    """A MOC policy (``soupkitchen.moc``) after ``steps`` in-process PPO steps; its manifest under ``out``."""
    records = load_prompt_records(recipe.data, "train")
    trainer = build_trainer(recipe, [0.5, 0.5], moc=True, space=space)
    P = training_preferences(recipe.moc, len(recipe.objectives))
    while trainer.global_step < steps:
        idx = prompt_schedule(len(records), recipe.ppo.batch_size, trainer.global_step, recipe.data.seed)
        prompts, prefs = relabeled_rows(
            [records[i].prompt for i in idx], P, len(idx), trainer.global_step, recipe.seed, recipe.moc.prompt
        )
        trainer.step(prompts, [records[i].context for i in idx], prefs)
    save_checkpoint(
        trainer, out / "policy-moc", {"backbone": to_dict(BackboneSpec("moc-0", [0.5, 0.5], True))}
    )
    entry = {
        "name": "moc-0",
        "weights": [0.5, 0.5],
        "checkpoint": str(out / "policy-moc"),
        "reward_normalizer": trainer.normalizer.state_dict(),
    }
    cond = Conditioning(kind="preference", prompt=recipe.moc.prompt)
    return write_manifest(out / "moc" / "manifest.json", recipe, Method.MOC, [entry], trainer.space, cond)


VALUE_FAST = {  # a few Eq. 16 steps: enough to learn the keyword rewards' direction on the tiny model
    "value_model.num_prompts": 6,
    "value_model.samples_per_prompt": 2,
    "value_model.epochs": 3,
    "value_model.batch_size": 8,
    "value_model.learning_rate": 0.02,
    "value_model.val_fraction": 0.34,
}


def train_value_models(manifest: Path, out: Path):
    """``(dir, value_models.json, metrics)``: the tiny recipe's value models on rollouts of ``manifest``."""
    from soupkitchen.config import load_recipe
    from soupkitchen.training.values import train_value_models

    recipe = load_recipe("tiny", VALUE_FAST)
    path, metrics = train_value_models(recipe, str(manifest), out, progress=False)
    return out, path, metrics


def write_soup(
    recipe, manifest: Path, values: Path | None, out: Path, moc: Path | None = None, hoe: Path | None = None
) -> Path:
    """The Bone Soup bundle of ``manifest`` (γ 1), with the value models in ``values``, the MOC policy of
    the ``moc`` manifest and the HoE set ``hoe`` shipped along."""
    from soupkitchen.comparison import write_bundles
    from soupkitchen.merging import attach_hoe, attach_value_models
    from soupkitchen.value_models import load_value_models

    manifests = {Method.BONE_SOUP: manifest} | ({Method.MOC: moc} if moc else {})
    path = write_bundles(recipe, manifests, out, gamma=1.0)["bone_soup"]
    if values is not None:
        attach_value_models(path, load_value_models(values))
    if hoe is not None:
        attach_hoe(path, hoe)
    return path


def train_hoe(recipe, rs_manifest: Path, out: Path, steps: int = 3) -> Path:
    """The tiny HoE set of the Rewarded Soups specialists: LoRA experts, fidelity and z*, and each router
    trained in-process (``steps`` PPO steps, the router recipe) as the Ray job's workers would."""
    from soupkitchen.hoe.build import (
        build_experts,
        manifest_parents,
        measure,
        record_routers,
        router_recipe,
        router_specs,
        task_vectors,
        training_facts,
    )
    from soupkitchen.manifests import BackboneManifest

    manifest = BackboneManifest.read(rs_manifest)
    parents = manifest_parents(manifest)
    build_experts(out, recipe, task_vectors(recipe, parents), manifest.space)
    measure(recipe, out, parents, manifest.space)
    rr = router_recipe(recipe)
    trained = []
    for spec in router_specs(recipe, out):
        trainer = build_trainer(rr, spec.weights, space=manifest.space, router=spec.router)
        trainer, history = train_tiny(rr, spec.weights, steps, trainer=trainer)
        facts = training_facts(rr, spec.router) | {"steps": steps, "history": [h["step"] for h in history]}
        trained.append((spec.router, trainer.model.trainable_state_dict(), facts))
    record_routers(out, trained)
    return out
