"""Guided decoding over the merged base: MAGE (implicit / explicit, merged / ensemble), MOD, unguided, beam.

    roles = AdapterRoles(m, backbones=[0, 1], beta=0.7, values=[2, 3])     # where things sit in the stack
    plans = [roles.plan(mode, mu, gamma) for mode, mu, gamma in requests]   # per-row Mode / μ / γ
    out = decode(model, tok, prompts, plans, DecodeSettings(greedy=True, max_new_tokens=32))

Modes are ``soupkitchen.methods.Mode``: the unguided ``bone_soup`` / ``rewarded_soups`` decode the merged soup
alone, the guided ones (``Mode.guided``) add guidance rows. Mode, μ and γ are validated once, by
``AdapterRoles.plan`` (or upstream, e.g. the serving protocol, which hands a typed ``RowRequest`` to
``AdapterRoles.plan_for``); ``DecodeSettings`` check themselves when built.

Modules: ``plans`` (modes as weighted forward rows over one adapter stack, docs/methods/mage.md),
``batch`` (the running rows and their one KV cache, which rows join and leave), ``sampling`` (per-row
settings and the choice of the next token), ``loop`` (the decoding loop with continuous batching, stop
strings, chunk-level beam §1.7), ``processor``
(the same guidance as a transformers ``LogitsProcessor`` for ``model.generate``), ``value_models`` lives in
``soupkitchen.value_models``.
"""

from soupkitchen.decoding.batch import RowBatch
from soupkitchen.decoding.loop import Decoded, Finished, RunningBatch, decode
from soupkitchen.decoding.plans import (
    AdapterRoles,
    Component,
    RowPlan,
    RowRequest,
    check_alpha,
    check_gamma,
    check_mode,
    check_preference,
    row_plan,
)
from soupkitchen.decoding.processor import GuidanceProcessor, base_coefficients
from soupkitchen.decoding.sampling import DecodeSettings

__all__ = [
    "AdapterRoles",
    "Component",
    "DecodeSettings",
    "Decoded",
    "Finished",
    "GuidanceProcessor",
    "RowBatch",
    "RowPlan",
    "RowRequest",
    "RunningBatch",
    "base_coefficients",
    "check_alpha",
    "check_gamma",
    "check_mode",
    "check_preference",
    "decode",
    "row_plan",
]
