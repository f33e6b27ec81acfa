"""One decoding loop for every mode: all forward rows of a batch in one pass of the mixed model, one KV cache.

    plans = [roles.plan("mage_i_m", mu, gamma=1.0) for mu in mus]       # decoding.plans
    out = decode(model, tok, prompts, plans, DecodeSettings(max_new_tokens=32))
    out.texts, out.tokens [R, T], out.lengths, out.has_eos

Each decoding row r expands into ``plans[r].width`` forward rows (its coefficient vectors, ``merging``), so a
batch mixes μ, modes and γ freely. Per step: one forward of all forward rows (prefill, then one token with
the cache), then s_r = Σ_j w_j f_j (plans.py), then greedy argmax or sampling from softmax(s_r / T) after
top-k / top-p. The first ``min_new_tokens`` steps cannot pick EOS (as ``generation.generate_batch``). A row
ends at EOS, at a stop string or at ``max_new_tokens``; finished rows stay in the batch (feeding pad) so
the random stream of sampling does not depend on when other rows end.

Chunk-level beam (``beam_width`` b > 0, notes/mage.md §1.7; Weak-to-Strong Search's CBS semantics):
the prompt expands into b·c candidates; each candidate samples ``beam_lookahead`` l tokens with the
token-level rule; per request the b candidates with the best value are kept and each is copied c times
(``beam_expansion``) for the next chunk; at the end the best candidate is returned. The value of a partial
sequence is Σ_t γ(log π*_merge − log π_ref)(y_t) for implicit modes (Eq. 23), the last token's guidance
γ V(x, y<T)[y_T] for explicit modes, Σ_t log softmax(s)(y_t) for plain / mod. With c = 1 nothing is pruned
between chunks (b·c = b candidates, b kept), so b<k>c1 is best-of-k by value: the paper's caveat, kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from soupkitchen.config import ConfigError, DecodingConfig, GenerationConfig
from soupkitchen.decoding.plans import RowPlan

_BEAM_VALUE = {"logprob": 0, "sum": 1, "last": 2}


@dataclass
class DecodeSettings:
    """Decoding settings; ``check`` raises ConfigError naming the ``decoding.*`` key."""

    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 16
    min_new_tokens: int = 1
    stop: tuple[str, ...] = ()
    guide_top_k: int = 0
    beam_width: int = 0
    beam_expansion: int = 1
    beam_lookahead: int = 10
    seed: int = 0

    @classmethod
    def from_config(cls, dec: DecodingConfig, gen: GenerationConfig, seed: int = 0) -> DecodeSettings:
        return cls(
            greedy=dec.greedy,
            temperature=dec.temperature,
            top_k=dec.top_k,
            top_p=dec.top_p,
            max_new_tokens=dec.max_new_tokens or gen.max_new_tokens,
            stop=tuple(gen.stop if dec.stop is None else dec.stop),
            guide_top_k=dec.guide_top_k,
            beam_width=dec.beam_width,
            beam_expansion=dec.beam_expansion,
            beam_lookahead=dec.beam_lookahead,
            seed=seed,
        ).check()

    def check(self) -> DecodeSettings:
        ints = {
            "max_new_tokens": (self.max_new_tokens, 1),
            "min_new_tokens": (self.min_new_tokens, 0),
            "top_k": (self.top_k, 0),
            "guide_top_k": (self.guide_top_k, 0),
            "beam_width": (self.beam_width, 0),
            "beam_expansion": (self.beam_expansion, 1),
            "beam_lookahead": (self.beam_lookahead, 1),
        }
        for key, (v, lo) in ints.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"decoding.{key}", f"must be an integer >= {lo}, got {v!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ConfigError("decoding.temperature", f"must be > 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ConfigError("decoding.top_p", f"must lie in (0, 1], got {self.top_p!r}")
        if self.beam_width and self.beam_width * self.beam_expansion > 256:
            raise ConfigError(
                "decoding.beam_expansion",
                f"b·c = {self.beam_width * self.beam_expansion} candidates per request; keep it <= 256",
            )
        return self


@dataclass
class Decoded:
    tokens: torch.Tensor  # [R, T] generated ids, pad after the end (EOS kept when emitted)
    lengths: torch.Tensor  # [R] tokens up to and including EOS / the stop string
    texts: list[str]  # decoded, cut at the first stop string, stripped (as generate_batch)
    has_eos: torch.Tensor  # [R] bool
    forward_rows: int  # forward rows per step (Σ plan widths × candidates per request)
    steps: int
    seconds: float

    @property
    def generated_tokens(self) -> int:
        return int(self.lengths.sum())


class RowBatch:
    """Decoding rows, their forward rows and one KV cache over all forward rows (see module docstring)."""

    def __init__(
        self, model, plans: Sequence[RowPlan], input_ids: torch.Tensor, attention_mask: torch.Tensor
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
        self.done = torch.zeros(R, dtype=torch.bool, device=self.device)
        self.eos = torch.zeros(R, dtype=torch.bool, device=self.device)
        self.value = torch.zeros(R, device=self.device)
        self.ids = torch.arange(R, device=self.device)

    def _layout(self) -> None:
        widths = torch.tensor([p.width for p in self.plans], dtype=torch.long)
        self.widths = widths.to(self.device)
        self.offsets = (widths.cumsum(0) - widths).to(self.device)
        self.src = torch.repeat_interleave(torch.arange(len(self.plans)), widths).to(self.device)
        comps = [c for p in self.plans for c in p.components]
        m = len(comps[0].c) if comps else 0
        self.coeffs = torch.tensor([c.c for c in comps], dtype=torch.float32).reshape(len(comps), m)
        self.weights = torch.tensor([c.weight for c in comps], dtype=torch.float32, device=self.device)
        self.is_value = torch.tensor([c.kind == "value" for c in comps], dtype=torch.bool, device=self.device)
        base = [
            int(o) + p.base if p.base is not None else -1
            for p, o in zip(self.plans, self.offsets, strict=True)
        ]
        self.base_f = torch.tensor(base, dtype=torch.long, device=self.device)
        self._c = None
        self.beam_kind = torch.tensor([_BEAM_VALUE[p.beam_value] for p in self.plans], device=self.device)

    @property
    def forward_rows(self) -> int:
        return int(self.src.numel())

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over the pending tokens: (s [R, V], log π_base [R, V]; rows without base: row 0's)."""
        state = previous = None
        if self.mixed:  # checked and moved to the device once per layout; restored after the pass
            from soupkitchen.merging.mixed import mix_state, set_coefficients

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
            )
        finally:
            if state is not None:
                state.c = previous
        self.cache = out.past_key_values
        logits = out.logits[:, -1].float()
        f = torch.where(self.is_value[:, None], logits, logits.log_softmax(-1))
        s = torch.zeros(len(self.plans), f.shape[-1], device=f.device).index_add_(
            0, self.src, f * self.weights[:, None]
        )
        return s, f[self.base_f.clamp(min=0)]

    def advance(self, tokens: torch.Tensor) -> None:
        """Append one token per decoding row (all its forward rows get it)."""
        self.gen = torch.cat([self.gen, tokens[:, None]], dim=1)
        self.pending = tokens[self.src][:, None]
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        self.positions = self.mask.sum(-1, keepdim=True) - 1

    def select(self, keep: torch.Tensor) -> None:
        """Keep decoding rows ``keep`` (positions, repeats allowed), with their forward rows and cache."""
        keep = keep.to(self.device)
        fidx = torch.cat(
            [
                torch.arange(int(o), int(o) + int(w))
                for o, w in zip(self.offsets[keep], self.widths[keep], strict=True)
            ]
        )
        fidx = fidx.to(self.device)
        if self.cache is not None:
            self.cache.reorder_cache(fidx)
        self.mask, self.pending, self.positions = self.mask[fidx], self.pending[fidx], self.positions[fidx]
        self.plans = [self.plans[int(i)] for i in keep]
        self.gen, self.done, self.eos = self.gen[keep], self.done[keep], self.eos[keep]
        self.value, self.ids = self.value[keep], self.ids[keep]
        self._layout()


def _filter(s: torch.Tensor, base_lp: torch.Tensor, batch: RowBatch, st: DecodeSettings, step: int, eos: int):
    if st.guide_top_k:
        has_base = batch.base_f >= 0
        k = min(st.guide_top_k, s.shape[-1])
        outside = torch.ones_like(s, dtype=torch.bool).scatter_(1, base_lp.topk(k, dim=-1).indices, False)
        s = s.masked_fill(outside & has_base[:, None], float("-inf"))
    if step < st.min_new_tokens and eos is not None:
        s = s.clone()
        s[:, eos] = float("-inf")
    return s


def _choose(s: torch.Tensor, st: DecodeSettings, sample: bool, generator: torch.Generator) -> torch.Tensor:
    """Argmax, or a draw from softmax(s / T) after top-k and top-p (transformers' warpers)."""
    if not sample:
        return s.argmax(-1)
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    x = TemperatureLogitsWarper(float(st.temperature))(None, s)
    if st.top_k:
        x = TopKLogitsWarper(st.top_k)(None, x)
    if st.top_p < 1.0:
        x = TopPLogitsWarper(float(st.top_p))(None, x)
    return torch.multinomial(x.softmax(-1), 1, generator=generator).squeeze(1)


def _step(batch: RowBatch, s, base_lp, st, sample, generator, tokenizer, step: int) -> None:
    """Pick one token per row, update values (beam), EOS / stop / done flags, and append it."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    s = _filter(s, base_lp, batch, st, step, eos)
    tok = _choose(s, st, sample, generator)
    tok = torch.where(batch.done, torch.full_like(tok, pad), tok)
    picked = s.gather(1, tok[:, None]).squeeze(1)
    guide = picked - base_lp.gather(1, tok[:, None]).squeeze(1)
    logp = s.log_softmax(-1).gather(1, tok[:, None]).squeeze(1)
    live = ~batch.done
    new = torch.where(batch.beam_kind == 0, batch.value + logp, batch.value + guide)
    new = torch.where(batch.beam_kind == 2, guide, new)
    batch.value = torch.where(live & torch.isfinite(new), new, batch.value)
    batch.advance(tok)
    hit = live & (tok == eos) if eos is not None else torch.zeros_like(live)
    batch.eos |= hit
    batch.done |= hit
    if st.stop:
        for r in torch.nonzero(live & ~hit).flatten().tolist():
            text = tokenizer.decode(batch.gen[r], skip_special_tokens=True)
            if any(x in text for x in st.stop):
                batch.done[r] = True


@torch.no_grad()
def decode(
    model,
    tokenizer,
    prompts: Sequence[str],
    plans: Sequence[RowPlan],
    settings: DecodeSettings | None = None,
    *,
    format_prompt: Callable[[str], str] | None = None,
    max_prompt_tokens: int = 256,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
) -> Decoded:
    """Decode one batch: row r is ``prompts[r]`` under ``plans[r]`` (see the module docstring)."""
    from soupkitchen.generation import clean_text, encode_prompts

    st = (settings or DecodeSettings()).check()
    if len(prompts) != len(plans):
        raise ValueError(f"got {len(prompts)} prompts and {len(plans)} row plans; one plan per prompt")
    if not prompts:
        raise ValueError("nothing to decode: no prompts")
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(st.seed)
    t0 = time.perf_counter()
    enc = encode_prompts(tokenizer, prompts, format_prompt, max_prompt_tokens, device)
    batch = RowBatch(model, plans, enc["input_ids"], enc["attention_mask"])
    R, T = len(prompts), st.max_new_tokens
    if st.beam_width:
        rows, steps = _beam(batch, st, generator, tokenizer)
    else:
        rows, steps = batch.forward_rows, 0
        s, base_lp = batch.forward()
        for t in range(T):
            _step(batch, s, base_lp, st, not st.greedy, generator, tokenizer, t)
            steps += 1
            if bool(batch.done.all()) or t == T - 1:
                break
            s, base_lp = batch.forward()
    pad = tokenizer.pad_token_id
    tokens = torch.full((R, T), pad, dtype=torch.long, device=batch.device)
    order = torch.argsort(batch.ids)
    gen = batch.gen[order]
    tokens[:, : gen.shape[1]] = gen
    eos = batch.eos[order]
    lengths = torch.full((R,), gen.shape[1], dtype=torch.long, device=batch.device)
    if tokenizer.eos_token_id is not None and gen.shape[1]:
        is_eos = gen == tokenizer.eos_token_id
        first = torch.where(is_eos.any(1), is_eos.long().argmax(1) + 1, lengths)
        lengths = torch.where(eos, first, lengths)
    texts = [
        clean_text(tokenizer.decode(tokens[r, : lengths[r]], skip_special_tokens=True), list(st.stop))
        for r in range(R)
    ]
    return Decoded(tokens, lengths, texts, eos, rows, steps, time.perf_counter() - t0)


def _beam(batch: RowBatch, st: DecodeSettings, generator, tokenizer) -> tuple[int, int]:
    """Chunk-level beam search (module docstring); leaves the best candidate of each request in ``batch``."""
    R, b, c, T = len(batch.plans), st.beam_width, st.beam_expansion, st.max_new_tokens
    s, base_lp = batch.forward()
    expand = torch.arange(R, device=batch.device).repeat_interleave(b * c)
    batch.select(expand)
    s, base_lp = s[expand], base_lp[expand]
    rows, width, t = batch.forward_rows, b * c, 0
    while True:
        for _ in range(st.beam_lookahead):
            _step(batch, s, base_lp, st, True, generator, tokenizer, t)
            t += 1
            if t >= T or bool(batch.done.all()):
                break
            s, base_lp = batch.forward()
        if t >= T or bool(batch.done.all()):
            break
        top = (
            batch.value.view(R, width).topk(b, dim=1).indices
            + torch.arange(R, device=batch.device)[:, None] * width
        )
        keep = top.flatten().repeat_interleave(c)
        batch.select(keep)
        s, base_lp = s[keep], base_lp[keep]
    best = batch.value.view(R, width).argmax(1) + torch.arange(R, device=batch.device) * width
    batch.select(best)
    return rows, t
