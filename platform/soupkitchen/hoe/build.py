"""The HoE job (``jobs/build_hoe.py``, ``jobs/compare.py``): Algorithm 1 from single-objective policies to a
complete expert set.

1. Task vectors of the single-objective policies (objective i's: a Rewarded Soups specialist, w = e_i).
2. LoRA experts: task-SVD of each, and of each Eq. 4 merge (``experts.build_experts``).
3. Fidelity and z*: every extracted expert and its dense parent on the eval prompts, same decoding, in the
   sources' reward space; z*_i = expert i's mean z on objective i (+ ``hoe.ideal_offset``).
4. Routers: one Ray Train PPO run per router expert (``hoe.routers``; the launcher every policy uses:
   DeepSpeed ZeRO, checkpoints, resume, MLflow), in the sources' reward space; each trained router's weights
   are copied into the set and recorded in ``hoe.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from soupkitchen.bootstrap import paired_difference, resample_counts
from soupkitchen.checkpoint import sha256_of
from soupkitchen.config import ConfigError, Recipe, from_dict, to_dict
from soupkitchen.evaluation import evaluate
from soupkitchen.evaluation.plan import EvalPlan, policy_front
from soupkitchen.hoe.experts import TaskVector, build_experts, load_experts, lora_task_vector, router_entry
from soupkitchen.hoe.manifest import ExpertEntry, HoEManifest
from soupkitchen.hoe.routers import RouterJob
from soupkitchen.manifests import BackboneManifest
from soupkitchen.merging.mixed import load_adapter_state, lora_spec
from soupkitchen.methods import Method
from soupkitchen.training.launcher import run_dir, train_backbones
from soupkitchen.training.specs import BackboneSpec


def specialists(manifest: BackboneManifest, flag: str = "--rewarded-soups") -> list[tuple[str, Path]]:
    """(name, adapter) of the single-objective policy of each objective (w = e_i), in objective order."""
    n = len(manifest.objectives)
    by_w = {tuple(np.round(b.weights, 9)): (b.name, b.adapter_path(flag)) for b in manifest.backbones}
    out = []
    for i, obj in enumerate(manifest.objectives):
        found = by_w.get(tuple(np.eye(n)[i]))
        if found is None:
            raise ConfigError(
                flag, f"has no single-objective policy for {obj} (w = e_{i + 1}); train rewarded_soups"
            )
        out.append(found)
    return out


def task_vectors(manifest: BackboneManifest) -> list[TaskVector]:
    spec = lora_spec(manifest.lora())
    return [
        TaskVector(name, sha256_of(path), lora_task_vector(load_adapter_state(path), spec))
        for name, path in specialists(manifest)
    ]


def measure(recipe: Recipe, directory: Path, manifest: BackboneManifest) -> HoEManifest:
    """Fidelity of every single-objective expert to its dense parent on its objective (paired bootstrap over
    prompts, the eval recipe's decoding), and z*; recorded in ``hoe.json``."""
    doc = HoEManifest.read(directory)
    parents = specialists(manifest)
    single = [e for e in doc.lora if e.merge is None]
    n = len(single)
    adapters = [p for _, p in parents] + [directory / e.file for e in single]
    names = [nm for nm, _ in parents] + [e.name for e in single]
    experts = load_experts(directory)
    lora = [manifest.lora()] * n + experts.specs[:n]
    eye = np.eye(n).tolist()
    fronts = [policy_front(f"parent-{o}", [i], 2 * n, [eye[i]]) for i, o in enumerate(doc.objectives)]
    fronts += [policy_front(e.name, [n + i], 2 * n, [eye[i]]) for i, e in enumerate(single)]
    plan = EvalPlan(list(doc.objectives), adapters, names, lora, fronts, manifest.space)
    result = evaluate(plan, recipe, progress=False)
    ev = recipe.eval
    w = resample_counts(result.prompts, ev.bootstrap_samples, recipe.seed) / result.prompts
    fidelity, ideal = {}, []
    for i, (o, e) in enumerate(zip(doc.objectives, single, strict=True)):
        a, b = result.per_prompt[e.name][:, 0, i], result.per_prompt[f"parent-{o}"][:, 0, i]
        diff = paired_difference(w @ a, w @ b, ev.confidence, a=float(a.mean()), b=float(b.mean()))
        fidelity[e.name] = {
            "objective": o,
            "parent": names[i],
            "expert_z": float(a.mean()),
            "parent_z": float(b.mean()),
            "difference": list(diff),
            "prompts": result.prompts,
        }
        ideal.append(float(a.mean()) + recipe.hoe.ideal_offset)
    doc = doc.model_copy(update={"fidelity": fidelity, "ideal": ideal})
    doc.write(directory)
    return doc


def router_recipe(recipe: Recipe) -> Recipe:
    """The routers' PPO: ``hoe.router_steps`` (default ppo.steps) at ``hoe.router_learning_rate``."""
    tree = to_dict(recipe)
    tree["ppo"]["steps"] = recipe.hoe.router_steps or recipe.ppo.steps
    tree["ppo"]["learning_rate"] = recipe.hoe.router_learning_rate
    return from_dict(Recipe, tree).validate()


def router_specs(recipe: Recipe, directory: Path) -> list[BackboneSpec]:
    """One policy spec per router of ``hoe.routers`` over all LoRA experts (and, with ``hoe.ablation``, each
    again over the single-objective experts only): w = its λ, ``router`` what its workers build."""
    doc = HoEManifest.read(directory)
    n = len(doc.objectives)
    pools = ["all", "single"] if recipe.hoe.ablation and len(doc.lora) > n else ["all"]
    entries = [
        router_entry(doc, f"hoe-router{k}" + ("" if pool == "all" else "-single"), lam, pool)
        for pool in pools
        for k, lam in enumerate(recipe.hoe.router_preferences(n))
    ]
    sha = {e.name: e.sha256 for e in doc.lora}
    if entries and doc.ideal is None:
        raise ConfigError("--hoe", f"{directory} has no z* yet: measure the experts before training routers")
    return [
        BackboneSpec(
            e.name,
            e.preference,
            router=RouterJob(
                directory=str(directory.resolve()),
                name=e.name,
                votes=e.votes,
                init=e.init,
                ideal=doc.ideal,
                omd_step=recipe.hoe.omd_step,
                preference=e.preference,
                pool=e.pool,
                sha256=[sha[v] for v in e.votes],
            ),
        )
        for e in entries
    ]


def record_routers(directory: Path, trained: list[tuple[RouterJob, dict, dict]]) -> HoEManifest:
    """Write each trained router ``(job, state with router.* keys, training facts)`` into the set and its
    entry into hoe.json (replacing an older one of the same name)."""
    doc = HoEManifest.read(directory)
    entries = []
    for job, state, facts in trained:
        file = f"{job.name}.safetensors"
        save_file(
            {k[len("router.") :]: v for k, v in state.items() if k.startswith("router.")},
            str(directory / file),
        )
        entries.append(
            ExpertEntry(
                name=job.name,
                kind="router",
                preference=job.preference,
                file=file,
                sha256=sha256_of(directory / file),
                votes=job.votes,
                init=job.init,
                pool=job.pool,
                training=facts,
            )
        )
    names = {e.name for e in entries}
    keep = [e for e in doc.experts if e.name not in names]
    doc = HoEManifest.model_validate(
        {**doc.model_dump(), "experts": [x.model_dump() for x in keep + entries]}
    )
    doc.write(directory)
    return doc


def train_routers(recipe: Recipe, directory: Path, run_name: str, storage: str) -> HoEManifest:
    """Every router of ``router_specs`` as one Ray Train PPO run each (the launcher every policy uses), in
    the set's reward space; their weights and training facts go into the set."""
    specs = router_specs(recipe, directory)
    doc = HoEManifest.read(directory)
    if not specs:
        return doc
    if "://" in storage:
        raise ConfigError(
            "--storage",
            f"{storage} is remote: router workers read the expert set and the driver reads their checkpoints "
            "from a filesystem every node shares; use a local or shared-filesystem path",
        )
    space_path = run_dir(storage, run_name) / "reward_space.json"  # the sources' space: one reward space
    space_path.parent.mkdir(parents=True, exist_ok=True)
    space_path.write_text(json.dumps(doc.reward_space, indent=1))
    rr = router_recipe(recipe)
    trained = BackboneManifest.read(train_backbones(rr, Method.HOE, run_name, storage, specs=specs))
    by_name = {b.name: b for b in trained.backbones}
    results = []
    for s in specs:
        b = by_name[s.name]
        facts = training_facts(rr, s.router) | {
            "checkpoint": b.checkpoint,
            "train_seconds": b.train_seconds,
            "rewards_first_steps": b.rewards_first_steps,
            "rewards_last_steps": b.rewards_last_steps,
        }
        results.append((s.router, load_adapter_state(b.adapter_path("routers")), facts))
    return record_routers(directory, results)


def training_facts(rr: Recipe, job: RouterJob) -> dict:
    """What ``hoe.json`` records of a router's training besides its checkpoint."""
    return {
        "steps": rr.ppo.steps,
        "learning_rate": rr.ppo.learning_rate,
        "omd_step": job.omd_step,
        "ideal": job.ideal,
    }


def build_hoe(
    recipe: Recipe,
    sources: str | Path,
    out: str | Path,
    run_name: str,
    storage: str,
    train: bool = True,
) -> Path:
    """Algorithm 1 (module docstring) from the Rewarded Soups manifest ``sources``; returns the set's dir."""
    manifest = BackboneManifest.read(sources, "--rewarded-soups")
    if manifest.objectives != recipe.objectives:
        raise ConfigError(
            "--rewarded-soups", f"trained on {manifest.objectives}, the recipe has {recipe.objectives}"
        )
    out = Path(out)
    build_experts(out, recipe, task_vectors(manifest), manifest.space)
    measure(recipe, out, manifest)
    if train:
        train_routers(recipe, out, run_name, storage)
    return out
