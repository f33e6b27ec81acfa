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

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from soupkitchen.bootstrap import paired_difference, resample_counts
from soupkitchen.checkpoint import sha256_of
from soupkitchen.config import ConfigError, LoraConfig, ModelConfig, Recipe, from_dict, to_dict
from soupkitchen.evaluation import evaluate
from soupkitchen.evaluation.plan import EvalPlan, MethodFront, policy_front
from soupkitchen.hoe.experts import (
    TaskVector,
    build_experts,
    dense_task_vector,
    load_experts,
    lora_task_vector,
    router_entry,
)
from soupkitchen.hoe.manifest import ExpertEntry, HoEManifest
from soupkitchen.hoe.routers import RouterJob
from soupkitchen.manifests import BackboneManifest
from soupkitchen.merging.mixed import load_adapter_state, lora_spec
from soupkitchen.methods import Method
from soupkitchen.models import load_base_model
from soupkitchen.reward_space import RewardSpace, load_or_calibrate
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


@dataclass
class Parent:
    """A single-objective policy HoE extracts an expert from: a LoRA adapter over W0 (a manifest's
    specialist) or a fully fine-tuned model (``model``: a local directory or HF id, read as model.name)."""

    name: str
    adapter: Path | None = None
    lora: LoraConfig | None = None
    model: str | None = None

    def model_config(self, recipe: Recipe) -> ModelConfig:
        return from_dict(ModelConfig, {**to_dict(recipe.model), "name": self.model}, "--dense")


def manifest_parents(manifest: BackboneManifest) -> list[Parent]:
    return [Parent(name, path, manifest.lora()) for name, path in specialists(manifest)]


def dense_parents(models: list[str], recipe: Recipe) -> list[Parent]:
    if len(models) != len(recipe.objectives):
        raise ConfigError(
            "--dense", f"needs one fine-tuned model per objective {recipe.objectives}, got {models}"
        )
    return [Parent(Path(m).name or m, model=m) for m in models]


def task_vectors(recipe: Recipe, parents: list[Parent]) -> list[TaskVector]:
    """τ_i of each parent: s·B A of its LoRA, or θ_i − θ_pre of its fine-tuned weights (Eq. 2)."""
    out = []
    base = load_base_model(recipe.model)[0] if any(p.model for p in parents) else None
    for p in parents:
        if p.adapter is not None:
            delta = lora_task_vector(load_adapter_state(p.adapter), lora_spec(p.lora))
            out.append(TaskVector(p.name, sha256_of(p.adapter), delta))
            continue
        tuned, _ = load_base_model(p.model_config(recipe))
        weights = Path(p.model) / "model.safetensors"
        sha = sha256_of(weights) if weights.is_file() else hashlib.sha256(p.model.encode()).hexdigest()
        out.append(TaskVector(p.name, sha, dense_task_vector(base, tuned, recipe.lora.target_modules)))
        del tuned
    return out


def measure(recipe: Recipe, directory: Path, parents: list[Parent], space: RewardSpace) -> HoEManifest:
    """Fidelity of every single-objective expert to its dense parent on its objective (paired bootstrap over
    prompts: the same prompts and (prompt, sample) seeds on both sides, the eval recipe's decoding), and
    z*; recorded in ``hoe.json``."""
    doc = HoEManifest.read(directory)
    single = [e for e in doc.lora if e.merge is None]
    objs, n = list(doc.objectives), len(single)
    eye = np.eye(n).tolist()
    experts = load_experts(directory)
    fronts = [policy_front(e.name, [i], n, [eye[i]]) for i, e in enumerate(single)]
    plan = EvalPlan(
        objs, [directory / e.file for e in single], experts.lora_names[:n], experts.specs[:n], fronts, space
    )
    per_prompt = dict(evaluate(plan, recipe, progress=False).per_prompt)
    if all(p.adapter is not None for p in parents):
        fronts = [policy_front(f"parent-{o}", [i], n, [eye[i]]) for i, o in enumerate(objs)]
        names = [p.name for p in parents]
        plan = EvalPlan(objs, [p.adapter for p in parents], names, [p.lora for p in parents], fronts, space)
        per_prompt |= evaluate(plan, recipe, progress=False).per_prompt
    else:  # full fine-tunes: each decoded as its own W0, with the same rows and seeds
        for i, (o, p) in enumerate(zip(objs, parents, strict=True)):
            model, tok = load_base_model(p.model_config(recipe))
            front = MethodFront(f"parent-{o}", np.array([eye[i]]), np.zeros((1, 0)))
            plan = EvalPlan(objs, [], [], [], [front], space)
            per_prompt |= evaluate(plan, recipe, model=model, tokenizer=tok, progress=False).per_prompt
    prompts = next(iter(per_prompt.values())).shape[0]
    ev = recipe.eval
    w = resample_counts(prompts, ev.bootstrap_samples, recipe.seed) / prompts
    fidelity, ideal = {}, []
    for i, (o, e, p) in enumerate(zip(objs, single, parents, strict=True)):
        a, b = per_prompt[e.name][:, 0, i], per_prompt[f"parent-{o}"][:, 0, i]
        diff = paired_difference(w @ a, w @ b, ev.confidence, a=float(a.mean()), b=float(b.mean()))
        fidelity[e.name] = {
            "objective": o,
            "parent": p.name,
            "expert_z": float(a.mean()),
            "parent_z": float(b.mean()),
            "difference": list(diff),
            "prompts": prompts,
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
    out: str | Path,
    run_name: str,
    storage: str,
    *,
    rewarded_soups: str | Path | None = None,
    dense: list[str] | None = None,
    reward_space: str | Path | None = None,
    train: bool = True,
) -> Path:
    """Algorithm 1 (module docstring) from the Rewarded Soups manifest ``rewarded_soups`` (its specialists
    and reward space) or from fully fine-tuned models ``dense`` (one per objective; the reward space of
    ``reward_space``, else calibrated from W0 into the run directory). Returns the set's directory."""
    if (rewarded_soups is None) == (dense is None):
        raise ConfigError("--rewarded-soups", "give the specialists' manifest or --dense models, not both")
    if rewarded_soups is not None:
        manifest = BackboneManifest.read(rewarded_soups, "--rewarded-soups")
        if manifest.objectives != recipe.objectives:
            raise ConfigError(
                "--rewarded-soups", f"trained on {manifest.objectives}, the recipe has {recipe.objectives}"
            )
        parents, space = manifest_parents(manifest), manifest.space
    else:
        parents = dense_parents(dense, recipe)
        path = Path(reward_space) if reward_space else run_dir(storage, run_name) / "reward_space.json"
        if reward_space and not path.is_file():
            raise ConfigError("--reward-space", f"{path} does not exist: pass the reward_space.json of a run")
        space = load_or_calibrate(recipe, path)
    out = Path(out)
    build_experts(out, recipe, task_vectors(recipe, parents), space)
    measure(recipe, out, parents, space)
    if train:
        train_routers(recipe, out, run_name, storage)
    return out
