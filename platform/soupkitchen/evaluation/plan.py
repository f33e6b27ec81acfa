"""The evaluation plan: one stack of adapters, and for every method a front of points (μ, coefficients c)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from soupkitchen.conditioning import Conditioning
from soupkitchen.config import ConfigError, Recipe, model_differences, to_dict
from soupkitchen.decoding import AdapterRoles, DecodeSettings, check_gamma
from soupkitchen.evaluation.sources import BackboneSource, check_source, shared_space
from soupkitchen.hoe import ExpertSet, ExpertStack, build_hoe_model, configurations
from soupkitchen.merging import build_mixed_model, load_adapter_state
from soupkitchen.methods import SOUPS, Method, Mode, parse
from soupkitchen.models import load_base_model
from soupkitchen.preferences import merge_coefficients, preference_grid
from soupkitchen.reward_space import RewardSpace

DEFAULT_REF = -1.0  # per objective, in z units, when eval.ref_point is unset


@dataclass
class MethodFront:
    label: str
    preferences: np.ndarray  # [k, n] μ of each point
    coefficients: np.ndarray  # [k, m] c over ``EvalPlan.adapters`` (guided: the base's c)
    plans: list | None = None  # guided decoding: one ``decoding.RowPlan`` per point (None: plain generate)
    conditioning: Conditioning | None = None  # MOC / RiC: each point's prompt is relabeled for its μ
    group: str | None = None  # an unseen-preference group ("unseen1", ...): its own front, same methods
    soup: tuple | None = None  # (adapter indices, β, α) of a merged soup, to re-plan it at other μ
    routing: tuple | None = None  # HoE: (ExpertStack, expert names) whose preference routing gives each c

    def prompt(self, prompt: str, k: int) -> str:
        """The prompt of point ``k``: relabeled for μ_k by a conditioned policy, as is otherwise."""
        return self.conditioning.prompt_for(prompt, self.preferences[k]) if self.conditioning else prompt


@dataclass
class EvalPlan:
    objectives: list[str]
    adapters: list[Path]
    names: list[str]
    lora: list
    fronts: list[MethodFront]
    space: RewardSpace  # shared by every source: points and metrics live in it
    routers: list = field(default_factory=list)  # HoE's router experts (``hoe.Router``), after the adapters

    @property
    def columns(self) -> list[str]:
        """What each coefficient column is: the adapters, then the router slots."""
        return self.names + [r.name for r in self.routers]


def soup_front(label: str, idx: list[int], m: int, grid: np.ndarray, beta: float | None, alpha: float):
    """BS (β) or RS (β None): c = (1 + α) B⁻¹μ on the adapters ``idx`` for every μ of ``grid``."""
    C = np.zeros((len(grid), m))
    C[:, idx] = [merge_coefficients(mu, beta, alpha) for mu in grid]
    return MethodFront(label, np.asarray(grid, dtype=np.float64), C, soup=(list(idx), beta, alpha))


def policy_front(label: str, idx: list[int], m: int, weights: list[list[float]]) -> MethodFront:
    """One point per independently trained policy: c = e_j at μ = w_j (MORLHF)."""
    C = np.zeros((len(idx), m))
    C[np.arange(len(idx)), idx] = 1.0
    return MethodFront(label, np.asarray(weights, dtype=np.float64), C)


def conditioned_front(
    label: str, j: int, m: int, grid: np.ndarray, conditioning: Conditioning
) -> MethodFront:
    """MOC / RiC: the one policy (adapter ``j``, c = e_j) at each μ of ``grid``, its prompt relabeled."""
    C = np.zeros((len(grid), m))
    C[:, j] = 1.0
    return MethodFront(label, np.asarray(grid, dtype=np.float64), C, conditioning=conditioning)


def hoe_front(label: str, stack: ExpertStack, names: list[str], grid: np.ndarray) -> MethodFront:
    """HoE (one expert configuration): the coefficient row of preference routing (Eqs. 9-10) at each μ."""
    C = np.stack([stack.coefficients(mu, names) for mu in grid])
    return MethodFront(label, np.asarray(grid, dtype=np.float64), C, routing=(stack, list(names)))


def unseen_groups(recipe: Recipe) -> list[np.ndarray]:
    """MOC §3.3: ``eval.unseen_groups`` groups of ``eval.unseen_group_size`` preferences (w1, 1 − w1),
    w1 = k/100 with k ~ U{1..100} drawn without repeats inside a group (``eval.unseen_seed``), sorted."""
    ev = recipe.eval
    rng = np.random.default_rng(ev.unseen_seed)
    out = []
    for _ in range(ev.unseen_groups):
        w1 = np.sort(rng.choice(np.arange(1, 101), size=ev.unseen_group_size, replace=False)) / 100.0
        out.append(np.round(np.stack([w1, 1.0 - w1], axis=1), 12))
    return out


def at_preferences(front: MethodFront, grid: np.ndarray, group: str) -> MethodFront | None:
    """The same method at other preferences ``grid`` (an unseen group), or None if it has no inference-time
    control (MORLHF, SFT, guided modes are left out)."""
    if front.plans is not None or front.label in ("morlhf", "sft"):
        return None
    label = f"{front.label}@{group}"
    if front.conditioning is not None:
        j = int(np.argmax(front.coefficients[0]))
        out = conditioned_front(label, j, front.coefficients.shape[1], grid, front.conditioning)
    elif front.routing is not None:
        out = hoe_front(label, *front.routing, grid)
    else:
        idx, beta, alpha = front.soup
        out = soup_front(label, idx, front.coefficients.shape[1], grid, beta, alpha)
    out.group = group
    return out


def alpha_label(alpha: float) -> str:
    return "bone_soup" if alpha == 0 else f"bone_soup_a{alpha:g}"


def build_plan(
    recipe: Recipe,
    sources: dict[str, BackboneSource],
    include_sft: bool = True,
    modes: Sequence[Mode | str] = (),
    gamma: float | None = None,
    value_models=None,
    hoe: ExpertSet | None = None,
) -> EvalPlan:
    """The fronts to evaluate: every source's method (Bone Soup at each α of ``eval.alphas``), SFT, and the
    guided ``modes`` at strength ``gamma`` (default ``decoding.gamma``); ``value_models``
    (``value_models.load_value_models``) are stacked for mage_e / mage_e_m; ``hoe`` (``hoe.load_experts``):
    its LoRA experts and routers are stacked, with one front per expert configuration
    (``hoe.configurations``: the full set and the expert-count ablation it supports)."""
    modes = [parse(Mode, md, "modes") for md in modes]  # library callers may pass names
    n = len(recipe.objectives)
    adapters: list[Path] = []
    names: list[str] = []
    lora: list = []
    index: dict[Path, int] = {}
    placed: dict[str, list[int]] = {}
    for method, src in sources.items():
        check_source(recipe, src, f"--{method.replace('_', '-')}")
        placed[method] = []
        for name, path, cfg in zip(src.names, src.adapters, src.lora, strict=True):
            key = path.resolve()
            if key not in index:
                index[key] = len(adapters)
                adapters.append(path)
                names.append(name if name not in names else f"{method}.{name}")
                lora.append(cfg)
            placed[method].append(index[key])
    values = _stack_values(recipe, value_models, modes, adapters, names, lora)
    hoe_start, routers = _stack_hoe(recipe, hoe, adapters, names, lora)
    m, grid = len(adapters) + len(routers), preference_grid(n, recipe.eval.grid_step)
    fronts = []
    for method, src in sources.items():
        idx = placed[method]
        if method == "bone_soup":
            if src.beta is None:
                raise ConfigError("--bone-soup", f"{src.path} has no β (Rewarded Soups backbones?)")
            fronts += [soup_front(alpha_label(a), idx, m, grid, src.beta, a) for a in recipe.eval.alphas]
        elif method == "rewarded_soups":
            fronts.append(soup_front("rewarded_soups", idx, m, grid, None, 0.0))
        elif Method(method).conditioned:
            fronts.append(conditioned_front(method, idx[0], m, grid, src.conditioning))
        else:
            fronts.append(policy_front(method, idx, m, src.weights))
    if hoe is not None:
        stack = ExpertStack.of(hoe, hoe_start, len(adapters), [r.name for r in routers])
        fronts += [hoe_front(label, stack, xs, grid) for label, xs in configurations(hoe.manifest).items()]
    fronts += guided_fronts(recipe, sources, placed, values, m, grid, modes, gamma)
    if include_sft:
        fronts.append(MethodFront("sft", np.full((1, n), 1.0 / n), np.zeros((1, m))))
    seen = list(fronts)
    for g, prefs in enumerate(unseen_groups(recipe), start=1):
        fronts += [f for f in (at_preferences(fr, prefs, f"unseen{g}") for fr in seen) if f]
    if not fronts:
        raise ConfigError(
            "methods", "nothing to evaluate: give at least one of --bone-soup/--rewarded-soups/--morlhf"
        )
    space = shared_space(sources) if sources else RewardSpace.identity(recipe.objectives)  # SFT alone: raw
    if hoe is not None:
        hspace = RewardSpace.from_dict(hoe.manifest.reward_space)
        if not sources:
            space = hspace
        elif not hspace.same_as(space):
            raise ConfigError(
                "--hoe",
                f"experts were built in another reward space ({hspace.describe()}) than the other methods "
                f"({space.describe()}): build them from this run's specialists",
            )
    return EvalPlan(list(recipe.objectives), adapters, names, lora, fronts, space, routers)


def _stack_hoe(recipe: Recipe, hoe: ExpertSet | None, adapters: list, names: list, lora: list):
    """Append HoE's LoRA experts to the stack (in place): (first position, the routers), or (None, [])."""
    if hoe is None:
        return None, []
    doc = hoe.manifest
    if doc.objectives != recipe.objectives:
        raise ConfigError(
            "--hoe", f"experts are for objectives {doc.objectives}, the recipe has {recipe.objectives}"
        )
    if differ := model_differences(doc.base.get("model"), to_dict(recipe.model)):
        raise ConfigError("--hoe", f"experts were built over another base model ({differ} differ)")
    start = len(adapters)
    adapters += [hoe.directory / e.file for e in doc.lora]
    names += hoe.lora_names
    lora += hoe.specs
    return start, hoe.routers(start)


def _stack_values(
    recipe: Recipe, value_models, modes, adapters: list, names: list, lora: list
) -> list[int] | None:
    """Append the value adapters to the stack (in place); their indices, or None without value models."""

    if value_models is None:
        if any(md.explicit for md in modes):
            raise ConfigError(
                "--value-models", f"modes {list(modes)} include explicit ones: pass --value-models"
            )
        return None
    if value_models.objectives != recipe.objectives:
        raise ConfigError(
            "--value-models",
            f"value models are for objectives {value_models.objectives}, the recipe has {recipe.objectives}",
        )
    if value_models.model and value_models.model != to_dict(recipe.model):
        raise ConfigError("--value-models", "value models were trained over another base model (model.*)")
    start = len(adapters)
    adapters += value_models.files
    names += value_models.names
    lora += value_models.lora
    return list(range(start, len(adapters)))


def guided_fronts(recipe, sources, placed, values, m, grid, modes, gamma) -> list[MethodFront]:
    """One front per guided mode (module docstring); the point at μ decodes ``roles.plan(mode, μ, γ)``.

    π_base and MAGE-I's π*_i (Eq. 26) are the base's Stage-1 backbones (Bone Soup, with its β); MOD's experts
    are the Rewarded Soups specialists when given, else the same backbones."""

    if not modes:
        return []
    gamma = check_gamma(recipe.decoding.gamma if gamma is None else gamma, "--gamma")
    assert all(md.guided for md in modes), modes  # methods.parse_guided_modes at the entry point
    base = next((k for k in SOUPS if k in sources), None)
    if base is None:
        raise ConfigError("--modes", "guided modes need a base: pass --bone-soup (or --rewarded-soups)")
    beta = sources[base].beta if base == "bone_soup" else None
    roles = AdapterRoles(
        m,
        placed[base],
        beta,
        recipe.soup.alpha,
        mod_experts=placed.get("rewarded_soups"),  # None: MOD mixes the base's backbones
        values=values,
    )
    dec = recipe.decoding
    fronts = []
    for md in dict.fromkeys(modes):
        plans = [
            roles.plan(md, mu, gamma, ensemble_weights=dec.ensemble_weights, shortcut=dec.implicit_shortcut)
            for mu in grid
        ]
        C = np.array([_display_coefficients(pl) for pl in plans])
        fronts.append(MethodFront(md, np.asarray(grid, dtype=np.float64), C, plans))
    return fronts


def _display_coefficients(plan) -> np.ndarray:
    """The c shown in points.csv: the base's (MOD: Σ_j w_j c_j of its experts)."""
    if plan.base is not None:
        return np.asarray(plan.components[plan.base].c)
    return np.sum([np.asarray(c.c) * c.weight for c in plan.components], axis=0)


def load_mixed(plan: EvalPlan, recipe: Recipe, device: str = "cpu"):
    """W0 from the recipe with every adapter of the plan stacked for per-row mixing: (model, tokenizer)."""

    model, tokenizer = load_base_model(recipe.model, device=device)
    if plan.adapters:
        states = [load_adapter_state(p) for p in plan.adapters]
        if plan.routers:
            model = build_hoe_model(model, states, plan.lora, plan.names, plan.routers)
        else:
            model = build_mixed_model(model, states, plan.lora, plan.names)
    return model, tokenizer


def ref_point(recipe: Recipe) -> list[float]:
    """The reference point of every hypervolume: ``eval.ref_point`` or ``DEFAULT_REF`` per objective (z units;
    never computed from the points being scored, so fronts of different runs and trials compare)."""
    n = len(recipe.objectives)
    return list(recipe.eval.ref_point) if recipe.eval.ref_point is not None else [DEFAULT_REF] * n


def projection_point(recipe: Recipe) -> list[float]:
    """Where Kendall's τ measures angles (MOC Listing 1): ``eval.projection_ref``, else the HV reference."""
    return list(recipe.eval.projection_ref) if recipe.eval.projection_ref is not None else ref_point(recipe)


def eval_settings(recipe: Recipe):
    """The decoding settings of every evaluated row: greedy if ``eval.greedy``, else the training sampling
    settings (``generation``), with ``decoding``'s guidance options."""

    gen = recipe.generation
    return DecodeSettings.from_config(
        recipe.decoding,
        gen,
        recipe.seed,
        greedy=recipe.eval.greedy,
        temperature=gen.temperature,
        top_k=gen.top_k,
        top_p=gen.top_p,
    )
