"""Row plans: what each request row of a guided batch runs, as forward rows over one adapter stack.

A decoding row (one request: prompt, μ, mode, γ) becomes a few *forward rows* of the mixed model, each a
coefficient vector c over the stack (``merging``) with two weights: w on its log-probabilities and u on its
raw logits. The row's next-token score is

    s(v) = Σ_j w_j · log_softmax(logits_j)(v) + u_j · logits_j(v)

which covers every mode (``methods.Mode``; MAGE Eq. 25, docs/methods/mage.md; MOD as MAGE Eq. 3 in its
reverse-KL form):

    bone_soup       log π_base(μ)                              base: c = (1+α)B⁻¹μ over the backbones
    rewarded_soups  log π_base(μ)                              base: c = (1+α)μ (B = I) over the backbones
    mage_i_m   log π_base + γ (log π*_merge − log π_ref)        π*_merge: Bone Soup c, π_ref: c = 0
    mage_i     log π_base + γ Σ_i w_i (log π*_i − log π_ref)    π*_i: Bone Soup backbone i (one-hot c), Eq. 26
    mage_e_m   log π_base + γ V_merge(x, y<t)[v]                V_merge: c = Σ_i w_i e_{V_i} (Eq. 24)
    mage_e     log π_base + γ Σ_i w_i V_i(x, y<t)[v]
    mod        Σ_i w_i log π_i                                  π_i: MOD expert i (one-hot c)

The two unguided modes (``not mode.guided``) decode the merged soup alone; the guided ones add rows to it.

Value models are residual heads (``value_models``): V(c) = logits(c) − logits(0), so an explicit mode's
value rows (u = γ w_i) come with one W0 row c = 0 of u = −γ Σ_i w_i, shared by all value rows; where the
plan already has a c = 0 row (π_ref) that one forward row serves both (its w and u add).

Forward rows with the same c are merged (w and u add) unless ``shortcut`` is off: with π*_merge ≡ π_base
(same coefficients) mage_i_m becomes (1+γ) log π_base − γ log π_ref, two forward rows instead of three
(docs/methods/mage.md). Rows with w = u = 0 are dropped, so γ = 0 is unguided decoding exactly.

Validation happens once, where a request enters: ``AdapterRoles.plan`` (library callers: mode, μ, γ as
given, each error naming its key) or ``serving.protocol`` (HTTP bodies); both hand a ``RowRequest`` of typed,
valid values (``Mode``, ``preferences.Preference``) to ``AdapterRoles.plan_for`` and ``row_plan``, which
only assert them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from soupkitchen.errors import ConfigError
from soupkitchen.methods import Mode, parse
from soupkitchen.preferences import Preference

ENSEMBLE_WEIGHTS = ("mu", "bone_soup")


@dataclass(frozen=True)
class Component:
    """One forward row: coefficients c [m] over the adapter stack; it adds
    ``weight`` · log_softmax(logits) + ``value`` · logits to the row's score (module docstring)."""

    c: tuple[float, ...]
    weight: float = 0.0  # w: on log-probabilities (π_base, π*, π_ref, MOD experts)
    value: float = 0.0  # u: on raw logits (MAGE-E value rows and their W0 row, the residual head)

    @property
    def silent(self) -> bool:
        return self.weight == 0 and self.value == 0


@dataclass(frozen=True)
class RowPlan:
    """The forward rows of one decoding row. ``base``: index of the π_base component (None for mod);
    ``mode``: the mode it decodes (default: unguided, its components alone); ``beam_value``: how the
    chunk-level beam ranks partial sequences (``sum``: Σ_t guidance of the chosen tokens, Eq. 23; ``last``:
    guidance of the last token, V(x, y<T)[y_T]; ``logprob``: Σ_t log softmax(s))."""

    components: tuple[Component, ...]
    base: int | None
    mode: Mode = Mode.BONE_SOUP
    beam_value: str = "logprob"

    @property
    def width(self) -> int:
        return len(self.components)


@dataclass(frozen=True)
class RowRequest:
    """What one decoding row asks of the roles: its mode, μ, γ and α (None: the roles' own α).

    Built from values already validated where they entered (``AdapterRoles.plan``, ``serving.protocol``);
    the constructor only asserts them."""

    mode: Mode
    mu: Preference
    gamma: float = 0.0
    alpha: float | None = None

    def __post_init__(self):
        assert isinstance(self.mode, Mode) and isinstance(self.mu, Preference), (self.mode, self.mu)
        assert math.isfinite(self.gamma) and self.gamma >= 0, self.gamma
        assert self.alpha is None or (math.isfinite(self.alpha) and self.alpha >= 0), self.alpha


def check_mode(mode, path: str = "decoding.mode") -> Mode:
    """``mode`` as a ``Mode``, or a ConfigError at ``path`` listing the modes."""
    return parse(Mode, mode, path)


def check_gamma(gamma, path: str = "decoding.gamma") -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not np.isfinite(gamma) or gamma < 0:
        raise ConfigError(
            path, f"guidance strength γ must be a finite number >= 0 (0 = no guidance), got {gamma!r}"
        )
    return float(gamma)


def check_alpha(alpha, path: str = "soup.alpha") -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha) or alpha < 0:
        raise ConfigError(path, f"extrapolation α must be a finite number >= 0 (0 = none), got {alpha!r}")
    return float(alpha)


def check_preference(mu, n: int, path: str = "mu") -> Preference:
    """μ on the simplex with one weight per objective (``Preference.of``), or a ConfigError at ``path``."""
    try:
        return Preference.of(mu, n)
    except ValueError as e:
        raise ConfigError(path, str(e)) from e


def _vec(c) -> tuple[float, ...]:
    return tuple(float(x) for x in np.asarray(c, dtype=np.float64).ravel())


def row_plan(
    mode: Mode,
    gamma: float,
    *,
    base=None,
    star=None,
    experts: Sequence | None = None,
    expert_weights: Sequence[float] | None = None,
    values: Sequence | None = None,
    value_weights: Sequence[float] | None = None,
    shortcut: bool = True,
) -> RowPlan:
    """The plan of one row from coefficient vectors over the stack (see the module docstring).

    ``mode`` / ``gamma``: a ``Mode`` and a γ >= 0, validated by the caller (asserted here). ``base``: c of
    π_base; ``star``: c of π*_merge (mage_i_m); ``experts``: c of π*_i (mage_i) or of the MOD experts,
    weighted by ``expert_weights``; ``values``: c of each explicit value model, weighted by ``value_weights``
    (mage_e_m merges them into one c = Σ w_i c_i, Eq. 24), read as residuals against c = 0.
    """
    assert isinstance(mode, Mode), mode
    assert math.isfinite(gamma) and gamma >= 0, gamma
    if not mode.guided:
        need = ("base",)
    else:
        need = {
            Mode.MAGE_I_M: ("base", "star"),
            Mode.MAGE_I: ("base", "experts"),
            Mode.MAGE_E_M: ("base", "values"),
            Mode.MAGE_E: ("base", "values"),
            Mode.MOD: ("experts",),
        }[mode]
    given = {"base": base, "star": star, "experts": experts, "values": values}
    for k in need:
        if given[k] is None or (k in ("experts", "values") and len(given[k]) == 0):
            what = {"star": "π*_merge coefficients", "experts": "experts", "values": "value models"}.get(k, k)
            raise ConfigError("decoding.mode", f"mode {mode.value!r} needs {what}; they were not given")
    has_base = mode is not Mode.MOD
    comps: list[Component] = []
    zero = None
    if has_base:
        comps.append(Component(_vec(base), 1.0))
        zero = tuple(0.0 for _ in comps[0].c)
    if mode is Mode.MAGE_I_M:
        comps += [Component(_vec(star), gamma), Component(zero, -gamma)]
    elif mode in (Mode.MAGE_I, Mode.MOD):
        w = list(expert_weights) if expert_weights is not None else [1.0 / len(experts)] * len(experts)
        if len(w) != len(experts):
            raise ConfigError(
                "mu", f"got {len(w)} weights for {len(experts)} experts; one weight per objective"
            )
        scale = gamma if mode is Mode.MAGE_I else 1.0
        comps += [Component(_vec(e), scale * wi) for e, wi in zip(experts, w, strict=True)]
        if mode is Mode.MAGE_I:
            comps.append(Component(_vec(np.zeros(len(experts[0]))), -gamma * float(sum(w))))
    elif mode.explicit:
        w = list(value_weights) if value_weights is not None else [1.0 / len(values)] * len(values)
        if len(w) != len(values):
            raise ConfigError("mu", f"got {len(w)} weights for {len(values)} value models")
        rows = list(zip(values, w, strict=True))
        if mode is Mode.MAGE_E_M:
            rows = [(np.sum([wi * np.asarray(v, dtype=np.float64) for v, wi in rows], 0), 1.0)]
        comps += [Component(_vec(v), value=gamma * float(wi)) for v, wi in rows]
        comps.append(Component(zero, value=-gamma * float(sum(wi for _, wi in rows))))  # residual: logits(W0)
    comps, base_idx = _simplify(comps, has_base, shortcut)
    beam_value = "sum" if mode.implicit else "last" if mode.explicit else "logprob"
    return RowPlan(tuple(comps), base_idx, mode, beam_value)


def _simplify(comps: list[Component], has_base: bool, merge: bool) -> tuple[list[Component], int | None]:
    """Drop rows with w = u = 0 (never the base) and, with ``merge``, add up rows with the same c."""
    out: list[Component] = []
    for j, comp in enumerate(comps):
        is_base = has_base and j == 0
        if comp.silent and not is_base:
            continue
        same = next((i for i, o in enumerate(out) if merge and o.c == comp.c), None)
        if same is None:
            out.append(comp)
        else:
            o = out[same]
            out[same] = Component(comp.c, o.weight + comp.weight, o.value + comp.value)
    return out, (0 if has_base else None)


@dataclass
class AdapterRoles:
    """Where the roles of MAGE/MOD sit in one adapter stack of ``m`` adapters (indices in objective order).

    ``backbones``: Stage-1 backbones (π_base = π*_merge = Σ c_i backbone_i with c = (1+α)B(β)⁻¹μ; β None:
    Rewarded Soups; mode ``rewarded_soups`` always merges with c = (1+α)μ); ``experts``: π*_i of mage_i
    (Eq. 26; default: the backbones, with β); ``mod_experts``: the π_i of MOD (e.g. the Rewarded Soups
    specialists; default: the backbones, with β). Ensemble weights ``bone_soup`` mix them with
    ``expert_beta`` / ``mod_beta`` (None: RS, w = μ); ``values``: explicit value adapters (residual heads,
    read against the c = 0 row). ``alpha`` / ``star_alpha`` are checked when the roles are built.
    """

    m: int
    backbones: list[int]
    beta: float | None
    alpha: float = 0.0
    experts: list[int] | None = None
    expert_beta: float | None = None
    mod_experts: list[int] | None = None
    mod_beta: float | None = None
    values: list[int] | None = None
    star_alpha: float | None = None  # α of π*_merge (None: the base's α, so π*_merge ≡ π_base)
    conditioned: dict[str, int] | None = None  # MOC / RiC policy of each conditioned mode (decoded alone)
    hoe: tuple | None = None  # (hoe.ExpertStack, served expert names): mode hoe's preference routing

    def __post_init__(self):
        self.alpha = check_alpha(self.alpha)
        if self.star_alpha is not None:
            self.star_alpha = check_alpha(self.star_alpha, "star_alpha")

    def _onehot(self, idx: Sequence[int]) -> list[np.ndarray]:
        out = []
        for i in idx:
            e = np.zeros(self.m)
            e[i] = 1.0
            out.append(e)
        return out

    def _over(self, idx: Sequence[int], coeffs) -> np.ndarray:
        c = np.zeros(self.m)
        c[list(idx)] = coeffs
        return c

    def ensemble(self, mode: Mode) -> tuple[list[int], float | None]:
        """(indices, β) of the experts ``mode`` mixes: MOD's π_i for ``mod``, else MAGE-I's π*_i."""
        idx, beta = (
            (self.mod_experts, self.mod_beta) if mode is Mode.MOD else (self.experts, self.expert_beta)
        )
        return (self.backbones, self.beta) if idx is None else (idx, beta)

    def base(self, mu, mode: Mode = Mode.BONE_SOUP, alpha: float | None = None) -> np.ndarray:
        """c of π_base over the stack: (1+α)B(β)⁻¹μ on the backbones (``rewarded_soups``: (1+α)μ)."""
        beta = None if mode is Mode.REWARDED_SOUPS else self.beta
        mu = check_preference(mu, len(self.backbones))
        return self._over(self.backbones, mu.coefficients(beta, self.alpha if alpha is None else alpha))

    def plan(
        self,
        mode: Mode | str,
        mu,
        gamma: float,
        *,
        ensemble_weights: str = "mu",
        shortcut: bool = True,
        path: str = "mu",
    ) -> RowPlan:
        """The ``RowPlan`` of one request, validating what a library caller gives: the mode, μ (on the
        simplex, one weight per backbone; errors name ``path``), γ and ``ensemble_weights``."""
        request = RowRequest(
            check_mode(mode), check_preference(mu, len(self.backbones), path), check_gamma(gamma)
        )
        if ensemble_weights not in ENSEMBLE_WEIGHTS:
            raise ConfigError(
                "decoding.ensemble_weights", f"must be 'mu' or 'bone_soup', got {ensemble_weights!r}"
            )
        return self.plan_for(request, ensemble_weights=ensemble_weights, shortcut=shortcut)

    def plan_for(
        self, request: RowRequest, *, ensemble_weights: str = "mu", shortcut: bool = True
    ) -> RowPlan:
        """The ``RowPlan`` of a validated request (``plan`` builds one; so does the serving engine)."""
        mode, mu = request.mode, request.mu
        assert len(mu) == len(self.backbones) and ensemble_weights in ENSEMBLE_WEIGHTS, (mu, ensemble_weights)
        if mode.explicit and not self.values:
            raise ConfigError(
                "--value-models", f"mode {mode.value!r} needs explicit value models (train_value_models.py)"
            )
        if mode.conditioned:  # the prompt carries μ (the caller relabels it); the policy decodes alone
            if not self.conditioned or mode.value not in self.conditioned:
                raise ConfigError(f"--{mode.value}", f"mode {mode.value!r} needs a trained {mode} policy")
            return row_plan(
                mode, 0.0, base=self._onehot([self.conditioned[mode.value]])[0], shortcut=shortcut
            )
        if mode is Mode.HOE:  # one row: the routed experts' coefficients (routers vote per token)
            if self.hoe is None:
                raise ConfigError("--hoe", "mode 'hoe' needs a HoE expert set (jobs/build_hoe.py)")
            stack, names = self.hoe
            return row_plan(mode, 0.0, base=stack.coefficients(mu.array, names), shortcut=shortcut)
        alpha = self.alpha if request.alpha is None else request.alpha
        base = self._over(
            self.backbones, mu.coefficients(None if mode is Mode.REWARDED_SOUPS else self.beta, alpha)
        )
        if not mode.guided:
            return row_plan(mode, request.gamma, base=base, shortcut=shortcut)
        experts, beta = self.ensemble(mode)
        ew = mu.coefficients(beta) if ensemble_weights == "bone_soup" else mu.array
        star_alpha = alpha if self.star_alpha is None else self.star_alpha
        return row_plan(
            mode,
            request.gamma,
            base=base,
            star=self._over(self.backbones, mu.coefficients(self.beta, star_alpha)),
            experts=self._onehot(experts),
            expert_weights=ew,
            values=self._onehot(self.values) if self.values else None,
            value_weights=mu.array,
            shortcut=shortcut,
        )
