"""Guided decoding over the merged base: MAGE (implicit / explicit, merged / ensemble), MOD, plain, beam.

    roles = AdapterRoles(m, backbones=[0, 1], beta=0.7, values=[2, 3])     # where things sit in the stack
    plans = [roles.plan(mode, mu, gamma) for mode, mu, gamma in requests]   # per-row mode / μ / γ
    out = decode(model, tok, prompts, plans, DecodeSettings(greedy=True, max_new_tokens=32))

Modules: ``plans`` (modes as weighted forward rows over one adapter stack, notes/mage.md §1.5-1.6),
``loop`` (the decoding loop with one KV cache, sampling, stop strings, chunk-level beam §1.7), ``processor``
(the same guidance as a transformers ``LogitsProcessor`` for ``model.generate``), ``value_models`` lives in
``soupkitchen.value_models``.
"""

from soupkitchen.decoding.loop import Decoded, Decoder, DecodeSettings, RowBatch, decode
from soupkitchen.decoding.plans import AdapterRoles, Component, RowPlan, check_gamma, check_mode, row_plan
from soupkitchen.decoding.processor import GuidanceProcessor, base_coefficients

__all__ = [
    "AdapterRoles",
    "Component",
    "DecodeSettings",
    "Decoded",
    "Decoder",
    "GuidanceProcessor",
    "RowBatch",
    "RowPlan",
    "base_coefficients",
    "check_gamma",
    "check_mode",
    "decode",
    "row_plan",
]
