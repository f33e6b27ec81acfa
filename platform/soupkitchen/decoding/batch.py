"""The running rows of a decoding batch: forward rows over one adapter stack and one KV cache, which rows can
join and leave between two decode steps (continuous batching, ``decoding.running``).

Layout. Decoding row r (one request) is ``plans[r].width`` forward rows (its coefficient vectors); forward
rows sit contiguously, row by row. Sequences are left-padded: ``mask`` [F, L] marks real tokens, the cache
holds L positions per forward row, positions are the real-token count minus one (so padding never shifts a
row's positions). Generated tokens are right-aligned in ``gen`` [R, W]: row r's are ``gen[r, W - t_r:]``.

Joining (``join``) pads the shorter side on the left (mask 0, zero keys/values, masked out by attention) and
concatenates rows; leaving (``select``) keeps the rows asked for; ``trim`` drops the leading columns no row
uses any more, so the batch's length follows its longest live row, not its oldest. Why our own: transformers'
``DynamicCache`` offers batch selection (``reorder_cache``) but no batch concatenation, and its continuous-
batching manager packs sequences into one paged row, where a per-row coefficient vector has no row to sit on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

from soupkitchen.decoding.plans import RowPlan
from soupkitchen.merging.mixed import mix_state, set_coefficients

BEAM_VALUE = {"logprob": 0, "sum": 1, "last": 2}


class RowBatch:
    """Decoding rows, their forward rows and one KV cache over all forward rows (module docstring)."""

    def __init__(
        self,
        model,
        plans: Sequence[RowPlan],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        ids: torch.Tensor | None = None,
    ):
        self.model = model
        self.mixed = hasattr(model, "soup_mix")
        self.device = input_ids.device
        self.plans = list(plans)
        self._layout()
        if not self.mixed and any(any(x != 0 for x in c.c) for p in self.plans for c in p.components):
            raise ValueError("non-zero coefficients need a mixed model (merging.build_mixed_model)")
        R = len(self.plans)
        self.mask = attention_mask.long()[self.src]
        self.pending = input_ids[self.src]
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = None
        self.gen = torch.zeros(R, 0, dtype=torch.long, device=self.device)
        self.t = torch.zeros(R, dtype=torch.long, device=self.device)  # tokens generated per row
        self.done = torch.zeros(R, dtype=torch.bool, device=self.device)
        self.eos = torch.zeros(R, dtype=torch.bool, device=self.device)
        self.value = torch.zeros(R, device=self.device)
        self.ids = torch.arange(R, device=self.device) if ids is None else ids.to(self.device)

    def _layout(self) -> None:
        widths = torch.tensor([p.width for p in self.plans], dtype=torch.long)
        self.widths = widths.to(self.device)
        self.offsets = (widths.cumsum(0) - widths).to(self.device)
        self.src = torch.repeat_interleave(torch.arange(len(self.plans)), widths).to(self.device)
        comps = [c for p in self.plans for c in p.components]
        m = len(comps[0].c) if comps else 0
        self.coeffs = torch.tensor([c.c for c in comps], dtype=torch.float32).reshape(len(comps), m)
        self.weights = torch.tensor([c.weight for c in comps], dtype=torch.float32, device=self.device)
        self.values = torch.tensor([c.value for c in comps], dtype=torch.float32, device=self.device)
        base = [
            int(o) + p.base if p.base is not None else -1
            for p, o in zip(self.plans, self.offsets, strict=True)
        ]
        self.base_f = torch.tensor(base, dtype=torch.long, device=self.device)
        self._c = None
        self.beam_kind = torch.tensor([BEAM_VALUE[p.beam_value] for p in self.plans], device=self.device)

    def __len__(self) -> int:
        return len(self.plans)

    @property
    def forward_rows(self) -> int:
        return int(self.src.numel())

    @property
    def length(self) -> int:
        """Positions per forward row in the cache after the pending tokens (the batch's KV length)."""
        return int(self.mask.shape[1])

    def tokens(self, r: int) -> torch.Tensor:
        """The tokens row ``r`` generated so far."""
        return self.gen[r, self.gen.shape[1] - int(self.t[r]) :]

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over the pending tokens: (s [R, V], log π_base [R, V]; rows without base: row 0's)."""
        state = previous = None
        if self.mixed:  # checked and moved to the device once per layout; restored after the pass
            state = mix_state(self.model)
            previous = state.c
            if self._c is None:
                self._c = set_coefficients(self.model, self.coeffs)
            state.c = self._c
        try:
            out = self.model(
                input_ids=self.pending,
                attention_mask=self.mask,
                position_ids=self.positions,
                past_key_values=self.cache,
                use_cache=True,
                logits_to_keep=1,  # a prefill's earlier positions need no [V] logits
            )
        finally:
            if state is not None:
                state.c = previous
        self.cache = out.past_key_values
        logits = out.logits[:, -1].float()
        lp = logits.log_softmax(-1)
        f = _weighted(lp, self.weights) + _weighted(logits, self.values)
        s = torch.zeros(len(self.plans), f.shape[-1], device=f.device).index_add_(0, self.src, f)
        return s, lp[self.base_f.clamp(min=0)]

    def advance(self, tokens: torch.Tensor) -> None:
        """Append one token per decoding row (all its forward rows get it)."""
        self.gen = torch.cat([self.gen, tokens[:, None]], dim=1)
        self.t = self.t + 1
        self.pending = tokens[self.src][:, None]
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        self.positions = self.mask.sum(-1, keepdim=True) - 1

    def _forward_index(self, keep: torch.Tensor) -> torch.Tensor:
        spans = [
            torch.arange(int(o), int(o) + int(w))
            for o, w in zip(self.offsets[keep].tolist(), self.widths[keep].tolist(), strict=True)
        ]
        return (torch.cat(spans) if spans else torch.zeros(0, dtype=torch.long)).to(self.device)

    def select(self, keep: torch.Tensor) -> None:
        """Keep decoding rows ``keep`` (positions, repeats allowed), with their forward rows and cache."""
        keep = keep.to(self.device)
        fidx = self._forward_index(keep)
        if self.cache is not None:
            self.cache.reorder_cache(fidx)
        self.mask, self.pending, self.positions = self.mask[fidx], self.pending[fidx], self.positions[fidx]
        self.plans = [self.plans[int(i)] for i in keep]
        self.gen, self.t, self.done, self.eos = self.gen[keep], self.t[keep], self.done[keep], self.eos[keep]
        self.value, self.ids = self.value[keep], self.ids[keep]
        self._layout()

    def trim(self) -> None:
        """Drop the leading mask columns (and their cache positions) that no forward row uses any more, and
        the generated columns beyond the longest row's (after ``select`` evicted rows)."""
        if self.cache is not None and self.mask.shape[0]:
            used = self.mask.any(0)
            k = int(used.long().argmax()) if bool(used.any()) else 0
            if k:
                for layer in _layers(self.cache):
                    layer.keys, layer.values = layer.keys[..., k:, :], layer.values[..., k:, :]
                self.mask = self.mask[:, k:]
        width = int(self.t.max()) if len(self.t) else 0
        self.gen = self.gen[:, self.gen.shape[1] - width :]

    def join(self, other: RowBatch) -> None:
        """Append ``other``'s rows (both already forwarded over their pending tokens: caches as long as their
        masks), left-padding the shorter side's mask, cache and generated tokens to the other's length."""
        assert self.cache is not None and other.cache is not None, "join forwarded batches"
        L = max(self.length, other.length)
        W = max(self.gen.shape[1], other.gen.shape[1])
        mine, theirs = list(_layers(self.cache)), list(_layers(other.cache))
        assert len(mine) == len(theirs), (len(mine), len(theirs))
        for a, b in zip(mine, theirs, strict=True):
            a.keys = torch.cat([_pad_seq(a.keys, L), _pad_seq(b.keys, L)])
            a.values = torch.cat([_pad_seq(a.values, L), _pad_seq(b.values, L)])
        self.mask = torch.cat(
            [F.pad(self.mask, (L - self.length, 0)), F.pad(other.mask, (L - other.length, 0))]
        )
        # forwarded: pending / positions are spent until the next ``advance`` overwrites them
        self.pending = torch.cat([self.pending[:, -1:], other.pending[:, -1:]])
        self.positions = torch.cat([self.positions[:, -1:], other.positions[:, -1:]])
        self.gen = torch.cat(
            [F.pad(self.gen, (W - self.gen.shape[1], 0)), F.pad(other.gen, (W - other.gen.shape[1], 0))]
        )
        for key in ("t", "done", "eos", "value", "ids"):
            setattr(self, key, torch.cat([getattr(self, key), getattr(other, key)]))
        self.plans += other.plans
        self._layout()


def _layers(cache):
    """The per-layer key/value holders of a transformers cache (only full-attention ``DynamicLayer``s can be
    joined and trimmed: a sliding-window or static layer keeps positions of its own)."""
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            raise NotImplementedError(
                "continuous batching needs full-attention dynamic cache layers; "
                f"this model has {type(layer).__name__}"
            )
        yield layer


def _pad_seq(x: torch.Tensor, length: int) -> torch.Tensor:
    """[B, H, l, D] left-padded with zeros to ``length`` positions."""
    return F.pad(x, (0, 0, length - x.shape[-2], 0))


def _weighted(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """w_j · x_j per forward row, exactly 0 where w_j = 0 (even at −inf entries of x)."""
    return torch.where(w[:, None] != 0, x * w[:, None], 0.0)
