"""The one vocabulary of methods and decoding modes, and the backbones each training method needs.

Every list of allowed names (CLI choices, recipe literals, the HTTP ``mode`` field, evaluation fronts)
derives from the enums below; docs/methods/README.md describes each method, and
``training.specs.backbone_specs`` gives the policies each training method trains.

Training methods (``soup.method``, ``--method``; a manifest's ``method``):
    bone_soup       n backbones, backbone i trained on h_i = w_iᵀr with w_i = column i of the circulant B(β)
    rewarded_soups  n single-reward specialists, w_i = e_i
    morlhf          one policy per μ of ``soup.morlhf_preferences``, w = μ
    moc             one policy conditioned on p in its prompt (Eq. 3), min-norm MOO PPO (``soupkitchen.moc``)
    ric             one policy conditioned on desired rewards in its prompt, SFT on relabeled data (RiC)
    hoe             LoRA experts extracted from the specialists + PPO-trained routers (``soupkitchen.hoe``)

Decoding modes (one per request row; ``--modes``, the HTTP ``mode``):
    bone_soup, rewarded_soups   unguided decoding of the merged soup at c = (1+α)B(β)⁻¹μ or c = μ
    mage_i_m, mage_i            MAGE implicit guidance (merged / ensemble of backbones)
    mage_e_m, mage_e            MAGE explicit guidance (value models, merged / ensemble)
    mod                         MOD: Σ_i μ_i log π_i over the Rewarded-Soups specialists
    moc, ric                    the conditioned policy alone (c = 1) on the prompt relabeled for μ
    hoe                         HoE: preference routing over the LoRA and router experts (per-token mix)
"""

from __future__ import annotations

from enum import StrEnum

from soupkitchen.errors import ConfigError


class Method(StrEnum):
    """What trains backbones: the scalarisation weights w of each policy."""

    BONE_SOUP = "bone_soup"
    REWARDED_SOUPS = "rewarded_soups"
    MORLHF = "morlhf"
    MOC = "moc"
    RIC = "ric"
    HOE = "hoe"

    @property
    def conditioned(self) -> bool:
        """One policy that reads μ from its prompt (``conditioning``) instead of merging backbones."""
        return self in (Method.MOC, Method.RIC)


class Mode(StrEnum):
    """How one request row decodes from a bundle."""

    BONE_SOUP = "bone_soup"
    REWARDED_SOUPS = "rewarded_soups"
    MAGE_I_M = "mage_i_m"
    MAGE_I = "mage_i"
    MAGE_E_M = "mage_e_m"
    MAGE_E = "mage_e"
    MOD = "mod"
    MOC = "moc"
    RIC = "ric"
    HOE = "hoe"

    @property
    def guided(self) -> bool:
        """A guided mode adds rows beyond the merged soup (``decoding``); the others decode it alone."""
        return self not in (Mode.BONE_SOUP, Mode.REWARDED_SOUPS, Mode.MOC, Mode.RIC, Mode.HOE)

    @property
    def conditioned(self) -> bool:
        """Decodes a conditioned policy (MOC, RiC) on the relabeled prompt."""
        return self in (Mode.MOC, Mode.RIC)

    @property
    def implicit(self) -> bool:
        return self in (Mode.MAGE_I_M, Mode.MAGE_I)

    @property
    def explicit(self) -> bool:
        """Needs value models (MAGE-E)."""
        return self in (Mode.MAGE_E_M, Mode.MAGE_E)


GUIDED_MODES = tuple(m for m in Mode if m.guided)
SOUPS = (Method.BONE_SOUP, Method.REWARDED_SOUPS)  # the training methods whose backbones merge into a bundle


def names(kind) -> str:
    """``"a, b, c"``: the allowed values of an enum, for error messages and CLI help."""
    return ", ".join(m.value for m in kind)


def parse(kind, value, path: str):
    """``value`` as a member of ``kind``, or a ConfigError at ``path`` listing the allowed values."""
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(
            path, f"unknown {kind.__name__.lower()} {value!r}; choose from {names(kind)}"
        ) from None


def parse_subset(kind, text: str, path: str) -> list:
    """``"a,b"`` → ``[kind.a, kind.b]``: a non-empty comma-separated subset of ``kind``, each once."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items or any(x not in set(kind) for x in items):
        raise ConfigError(path, f"must be a comma-separated subset of {names(kind)}, got {text!r}")
    return list(dict.fromkeys(kind(x) for x in items))


def parse_guided_modes(text: str, path: str = "--modes") -> list[Mode]:
    """``"bone_soup,mage_i_m,mod"`` → ``[Mode.MAGE_I_M, Mode.MOD]``: the guided modes of a comma-separated
    list (the unguided ones are the sources' own fronts and are skipped), each once, in order."""
    out: list[Mode] = []
    for x in (x.strip() for x in text.split(",")):
        if not x:
            continue
        if x not in set(Mode):
            guided = ", ".join(m.value for m in GUIDED_MODES)
            raise ConfigError(path, f"unknown guided mode {x!r}; choose from {guided}")
        if Mode(x).guided and Mode(x) not in out:
            out.append(Mode(x))
    return out
