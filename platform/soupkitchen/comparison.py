"""Several methods from one training run (``jobs/compare.py``, the searches): train the union of their
policies once, split it into one manifest per method, write the soups' bundles, evaluate all fronts.

A w that two methods need is one PPO run: MORLHF at μ = e_i *is* Rewarded Soups' backbone i, and at a column
of B(β) it is a Bone Soup backbone. Every policy gets the same PPO budget (ppo.steps × ppo.batch_size), and
every method keeps the run's one reward space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soupkitchen.conditioning import Conditioning
from soupkitchen.config import Recipe, from_dict, to_dict
from soupkitchen.evaluation import EvalResult, evaluate_front
from soupkitchen.hoe.build import build_hoe
from soupkitchen.hoe.manifest import HoEManifest
from soupkitchen.manifests import BackboneManifest, write_manifest
from soupkitchen.merging import write_bundle
from soupkitchen.methods import SOUPS, Method, Mode
from soupkitchen.reward_space import RewardSpace, effective_weights
from soupkitchen.tracking import RunLogger
from soupkitchen.training.launcher import run_dir, train_backbones
from soupkitchen.training.ric import train_ric
from soupkitchen.training.specs import backbone_specs


def policy_weights(recipe: Recipe, methods: Sequence[Method]) -> list[list[float]]:
    """The distinct w of every method's policies, sorted from objective 1 down (deterministic names)."""
    seen = {tuple(s.weights) for m in methods for s in backbone_specs(recipe, m)}
    return [list(w) for w in sorted(seen, reverse=True)]


def union_specs(recipe: Recipe, methods: Sequence[Method]) -> tuple[Recipe, list]:
    """The one training run of ``methods``: MORLHF over every distinct w of the backbone methods (HoE's
    experts come from the Rewarded Soups specialists), plus the MOC policy when asked (RiC is supervised:
    ``training.ric``; HoE's routers train after, over its experts). Returns (the run's recipe, its specs)."""
    backbone = [m for m in methods if not Method(m).conditioned and m is not Method.HOE]
    if Method.HOE in methods and Method.REWARDED_SOUPS not in backbone:
        backbone.append(Method.REWARDED_SOUPS)
    tree = to_dict(recipe)
    if backbone:
        tree["soup"]["morlhf_preferences"] = policy_weights(recipe, backbone)
    union = from_dict(Recipe, tree).validate()
    specs = backbone_specs(union, Method.MORLHF) if backbone else []
    return union, specs + (backbone_specs(recipe, Method.MOC) if Method.MOC in methods else [])


def method_manifests(
    recipe: Recipe, methods: Sequence[Method], union_manifest: Path, out: Path
) -> dict[Method, Path]:
    """Split the shared training run into one manifest per method (entries renamed to the method's names;
    MOC's policy by its name, with its prompt conditioning)."""
    union = BackboneManifest.read(union_manifest)
    by_name = {b.name: b for b in union.backbones}
    by_w = {tuple(b.weights): b for b in union.backbones if not b.name.startswith(f"{Method.MOC}-")}
    paths = {}
    for m in (Method(m) for m in methods if m not in (Method.RIC, Method.HOE)):
        if m is Method.MOC:
            (spec,) = backbone_specs(recipe, m)
            entries, cond = [by_name[spec.name]], Conditioning(kind="preference", prompt=recipe.moc.prompt)
        else:
            entries = [
                by_w[tuple(s.weights)].model_copy(update={"name": s.name}) for s in backbone_specs(recipe, m)
            ]
            cond = None
        paths[m] = write_manifest(out / m / "manifest.json", recipe, m, entries, union.space, cond)
    return paths


def training_costs(manifests: dict[Method, Path], hoe: Path | None = None) -> dict[str, float]:
    """Wall time of every trained policy and HoE router (s) and, with MOC, ``moc_vs_backbone``: MOC's over
    the mean of the PPO backbones' (all trained at once on the same cluster, so they share its contention)."""
    seconds = {}
    for path in manifests.values():
        for b in BackboneManifest.read(path).backbones:
            if b.train_seconds is not None:
                seconds[b.name] = b.train_seconds
    for e in HoEManifest.read(hoe).routers if hoe else []:
        if e.training.get("train_seconds") is not None:
            seconds[e.name] = e.training["train_seconds"]
    moc = [v for k, v in seconds.items() if k.startswith(f"{Method.MOC}-")]
    others = [v for k, v in seconds.items() if not k.startswith((f"{Method.MOC}-", "hoe-"))]
    if moc and others:
        seconds["moc_vs_backbone"] = moc[0] / float(np.mean(others))
    return seconds


def diagnostics(manifest: BackboneManifest, space: RewardSpace) -> dict:
    """B (the trained w_i as rows) and effective_B (``reward_space.effective_weights``: the w̃_i that each
    backbone's normaliser really optimised in the shared space); equal under a frozen shared space."""
    W = manifest.weights
    eff = effective_weights(space, W, [b.reward_normalizer for b in manifest.backbones])
    return {
        "B": W,
        "effective_B": np.round(eff, 6).tolist(),
        "effective_B_max_abs_error": float(np.max(np.abs(eff - np.asarray(W)))),
    }


def conditioned_policies(manifests: dict[Method, Path]) -> list[tuple]:
    """``write_bundle``'s ``conditioned`` entries: the MOC / RiC policy of each such manifest."""
    out = []
    for m in (m for m in manifests if Method(m).conditioned):
        doc = BackboneManifest.read(manifests[m])
        ((name, adapter),) = doc.adapters()
        out.append((str(m), name, adapter, doc.lora(), doc.conditioning))
    return out


def write_bundles(
    recipe: Recipe,
    manifests: dict[Method, Path],
    out: Path,
    gamma: float | None = None,
    hoe: Path | None = None,
) -> dict[Method, Path]:
    """A soup bundle per soup (Bone Soup with the recipe's β and α; Rewarded Soups) under out/bundles, each
    carrying the run's MOC / RiC policies and HoE set (serving modes ``moc`` / ``ric`` / ``hoe``)."""
    bundles = {}
    conditioned = conditioned_policies(manifests)
    for m in SOUPS:
        if m not in manifests:
            continue
        doc = BackboneManifest.read(manifests[m])
        space = doc.space
        bone = m is Method.BONE_SOUP
        write_bundle(
            out / "bundles" / m,
            recipe.model,
            doc.adapters(),
            beta=recipe.soup.beta if bone else None,
            alpha=recipe.soup.alpha if bone else 0.0,
            objectives=recipe.objectives,
            normalization=space.normalization(),
            ref_point=recipe.eval.ref_point or [0.0] * len(recipe.objectives),
            lora_config=recipe.lora,
            gamma=gamma if bone else None,
            overwrite=True,
            reward_space=space,
            diagnostics=diagnostics(doc, space),
            conditioned=conditioned,
            hoe=hoe,
        )
        bundles[m] = out / "bundles" / m
    return bundles


def register_bundles(recipe: Recipe, bundles: dict[Method, Path], run_name: str) -> None:
    """Log the bundles to MLflow and register them (``soup-<recipe>`` for Bone Soup, ``soup-<recipe>-rs``),
    alias ``@candidate``: ``artifacts.load_soup("models:/soup-demo@candidate")`` loads them anywhere."""
    prefix = f"{recipe.tracking.registered_model_prefix}-{recipe.name}"
    with RunLogger(recipe, f"compare:{run_name}", tags={"soupkitchen.job": "compare"}) as logger:
        for m, path in bundles.items():
            logger.log_bundle(path, name=prefix if m is Method.BONE_SOUP else f"{prefix}-rs")


@dataclass
class Comparison:
    """What ``compare`` wrote: one manifest per method, the bundles, the evaluation and its files."""

    out: Path
    manifests: dict[Method, Path]
    bundles: dict[Method, Path]
    result: EvalResult
    files: dict[str, Path]
    costs: dict[str, float]  # ``training_costs``: seconds per policy, MOC's ratio to a backbone
    hoe: Path | None = None  # HoE's expert set (``hoe.build``), when compared


def compare(
    recipe: Recipe,
    methods: Sequence[Method],
    run_name: str,
    storage: str,
    out: Path | None = None,
    modes: Sequence[Mode] = (),
) -> Comparison:
    """Train the union of the methods' PPO policies (as MORLHF over every w: one linear-scalarisation PPO run
    per distinct w, and MOC's policy), then RiC in the same reward space, then HoE's experts from the
    Rewarded Soups specialists and its routers; split, bundle, register and evaluate them (+ the guided
    ``modes``) under ``out``."""
    union, specs = union_specs(recipe, methods)
    out = Path(out or run_dir(storage, run_name))
    manifests = {}
    if specs:
        trained = train_backbones(union, Method.MORLHF, run_name, storage, specs=specs)
        manifests = method_manifests(recipe, methods, trained, out)
    if Method.RIC in methods:
        space = run_dir(storage, run_name) / "reward_space.json" if specs else None
        ric = BackboneManifest.read(train_ric(recipe, f"{run_name}-ric", storage, reward_space=space))
        manifests[Method.RIC] = ric.write(out / Method.RIC / "manifest.json")
    hoe = None
    if Method.HOE in methods:
        rs = manifests.get(Method.REWARDED_SOUPS)
        rs = (
            rs
            or method_manifests(recipe, [Method.REWARDED_SOUPS], trained, out / "hoe")[Method.REWARDED_SOUPS]
        )
        hoe = build_hoe(recipe, out / "hoe" / "experts", f"{run_name}-hoe", storage, rewarded_soups=rs)
    bundles = write_bundles(recipe, manifests, out, hoe=hoe)
    register_bundles(recipe, bundles, run_name)
    paths = {m: str(p) for m, p in manifests.items()} | ({Method.HOE: str(hoe)} if hoe else {})
    result, files = evaluate_front(recipe, paths, out / "eval", modes=modes)
    return Comparison(out, manifests, bundles, result, files, training_costs(manifests, hoe), hoe)
