"""MAGE guidance as a transformers ``LogitsProcessor``: ``model.generate`` runs π_base, this adds γ·g.

    plans = [roles.plan(Mode.MAGE_I_M, mu, 1.0) for mu in mus]
    with use_coefficients(model, base_coefficients(plans)):
        model.generate(**enc, logits_processor=[GuidanceProcessor(model, plans, enc["attention_mask"])])

``generate`` computes the base rows (c = the plans' base coefficients); the processor runs the plans' other
forward rows (π*, π_ref, value models and their W0 row) in one pass of the same mixed model with its own KV
cache and returns s = w_base · log_softmax(scores) + Σ_j (w_j log_softmax(l_j) + u_j l_j) (plans.py), so
greedy / sampling / warpers of ``generate`` apply to the MAGE score. It fits every mode with a base (not
``mod``) and one row per prompt (no ``num_beams`` / ``num_return_sequences``). ``decoding.decode`` runs the
same rule in one pass for all rows; this is for callers that want HF ``generate``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import LogitsProcessor

from soupkitchen.decoding.batch import RowBatch
from soupkitchen.decoding.plans import Component, RowPlan
from soupkitchen.errors import ConfigError


def base_coefficients(plans: Sequence[RowPlan]) -> np.ndarray:
    """[R, m] base coefficients of the plans: what ``generate``'s own forward rows must use."""
    for i, p in enumerate(plans):
        if p.base is None:
            raise ConfigError(
                f"plans[{i}]", f"mode {p.mode.value!r} has no base model row; use decoding.decode"
            )
    return np.array([p.components[p.base].c for p in plans], dtype=np.float64)


def _guide_rows(plan: RowPlan) -> tuple[Component, ...]:
    """The plan's forward rows but the base's log-probabilities (``generate`` computes those); a raw-logit
    weight u merged into the base row (base c = 0 serving as the residual's W0) stays as a guidance row."""
    base = plan.components[plan.base]
    rest = tuple(c for j, c in enumerate(plan.components) if j != plan.base)
    return (Component(base.c, value=base.value), *rest) if base.value else rest


class GuidanceProcessor(LogitsProcessor):
    """s = w_base · log_softmax(base logits) + guidance rows (see module docstring)."""

    def __init__(self, model, plans: Sequence[RowPlan], attention_mask: torch.Tensor):
        base_coefficients(plans)
        self.model, self.mask = model, attention_mask
        self.base_weight = torch.tensor([p.components[p.base].weight for p in plans], dtype=torch.float32)
        self.guides = [RowPlan(_guide_rows(p), None, p.mode) for p in plans]
        self.rows: RowBatch | None = None
        self.seen = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != len(self.guides):
            raise ValueError(
                f"generate has {input_ids.shape[0]} rows but {len(self.guides)} plans; "
                "num_beams / num_return_sequences are not supported"
            )
        if self.rows is None:
            self.rows = RowBatch(self.model, self.guides, input_ids, self.mask.to(input_ids.device))
        else:
            self.rows.advance(input_ids[:, -1])
        out = scores.float().log_softmax(-1) * self.base_weight.to(scores.device)[:, None]
        if self.rows.forward_rows:
            g, _ = self.rows.forward()
            out = out + g[:, : out.shape[-1]]
        return out
