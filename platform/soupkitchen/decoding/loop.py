"""One decoding loop for every mode: all forward rows of a batch in one pass of the mixed model, one KV cache.

    plans = [roles.plan("mage_i_m", mu, gamma=1.0) for mu in mus]       # decoding.plans
    out = decode(model, tok, prompts, plans, DecodeSettings(max_new_tokens=32))
    out.texts, out.tokens [R, T], out.lengths, out.has_eos

Each decoding row r expands into ``plans[r].width`` forward rows (its coefficient vectors, ``merging``), so a
batch mixes μ, modes and γ freely. Per step: one forward of all forward rows (prefill, then one token with the
cache), then s_r = Σ_j w_j log_softmax(l_j) + u_j l_j (plans.py; u reads residual value heads), then greedy
argmax or sampling from softmax(s_r / T) after top-k / top-p. The first ``min_new_tokens`` steps cannot pick
EOS (as ``generation.generate_batch``). A row ends at EOS, at a stop string or at ``max_new_tokens``; finished
rows stay in the batch (feeding pad) so the random stream of sampling does not depend on when other rows end.

Chunk-level beam (``beam_width`` b > 0, docs/methods/mage.md; Weak-to-Strong Search's CBS semantics):
the prompt expands into b·c candidates; each candidate samples ``beam_lookahead`` l tokens with the
token-level rule; per request the b candidates with the best value are kept and each is copied c times
(``beam_expansion``) for the next chunk; at the end the best candidate is returned. The value of a partial
sequence is Σ_t γ(log π*_merge − log π_ref)(y_t) for implicit modes (Eq. 23), the last token's guidance
γ V(x, y<T)[y_T] for explicit modes, Σ_t log softmax(s)(y_t) for unguided modes / mod. With c = 1 nothing
is pruned between chunks (b·c = b candidates, b kept), so b<k>c1 is best-of-k by value: the paper's caveat,
kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from soupkitchen.config import DecodingConfig, GenerationConfig
from soupkitchen.decoding.plans import RowPlan
from soupkitchen.errors import ConfigError
from soupkitchen.generation import clean_text, encode_prompts
from soupkitchen.merging.mixed import mix_state, set_coefficients

_BEAM_VALUE = {"logprob": 0, "sum": 1, "last": 2}


@dataclass(frozen=True)
class DecodeSettings:
    """Decoding settings, checked once when built (a ConfigError naming the ``decoding.*`` key): ``decode``
    and ``Decoder`` take them as they are."""

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

    def __post_init__(self):
        self.check()

    @classmethod
    def from_config(
        cls, dec: DecodingConfig, gen: GenerationConfig, seed: int = 0, **overrides
    ) -> DecodeSettings:
        """The settings of a recipe's ``decoding`` section (``max_new_tokens`` / ``stop`` None: from
        ``generation``); ``overrides`` (DecodeSettings fields) replace what a caller takes from elsewhere,
        e.g. ``greedy=recipe.eval.greedy`` and the ``generation`` sampling settings. Checked once, when built.
        """
        fields = dict(
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
        )
        return cls(**{**fields, **overrides})

    def check(self) -> DecodeSettings:
        """Raise ConfigError naming the first bad ``decoding.*`` key (run when the settings are built)."""
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
        self.values = torch.tensor([c.value for c in comps], dtype=torch.float32, device=self.device)
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
        lp = logits.log_softmax(-1)
        f = _weighted(lp, self.weights) + _weighted(logits, self.values)
        s = torch.zeros(len(self.plans), f.shape[-1], device=f.device).index_add_(0, self.src, f)
        return s, lp[self.base_f.clamp(min=0)]

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


def _weighted(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """w_j · x_j per forward row, exactly 0 where w_j = 0 (even at −inf entries of x)."""
    return torch.where(w[:, None] != 0, x * w[:, None], 0.0)


class RowRules:
    """Per-row decoding settings as tensors: a batch may mix greedy and sampled rows, temperatures, top-k /
    top-p, token limits and stop strings (a server batches requests that differ in all of these).

    Sampling draws one uniform u_r per row and step and takes the inverse CDF of softmax(s_r / T_r) after
    top-k / top-p (transformers' warper semantics). Rows share one generator (``decode`` with one
    ``DecodeSettings``) or each has its own, seeded by its settings' ``seed`` (a list of settings): then a
    row's draws do not depend on which other rows share its batch.
    """

    def __init__(self, settings: Sequence[DecodeSettings], device, generator: torch.Generator | None = None):
        def col(key, dtype):
            return torch.tensor([getattr(x, key) for x in settings], dtype=dtype, device=device)

        self.greedy = col("greedy", torch.bool)
        self.temperature = col("temperature", torch.float32)
        self.top_k, self.top_p = col("top_k", torch.long), col("top_p", torch.float32)
        self.guide_top_k = col("guide_top_k", torch.long)
        self.max_new, self.min_new = col("max_new_tokens", torch.long), col("min_new_tokens", torch.long)
        self.stop = [tuple(x.stop) for x in settings]
        self.max_steps = int(self.max_new.max())
        self.sampled = bool((~self.greedy).any())
        self.generators = (
            [generator]
            if generator is not None
            else [torch.Generator().manual_seed(int(x.seed)) for x in settings]
        )

    def select(self, keep: torch.Tensor) -> None:
        for key in ("greedy", "temperature", "top_k", "top_p", "guide_top_k", "max_new", "min_new"):
            setattr(self, key, getattr(self, key)[keep])
        keep = keep.tolist()
        self.stop = [self.stop[i] for i in keep]
        if len(self.generators) > 1:
            self.generators = [self.generators[i] for i in keep]

    def uniform(self, n: int, device) -> torch.Tensor:
        if len(self.generators) == 1:
            return torch.rand(n, generator=self.generators[0]).to(device)
        return torch.cat([torch.rand(1, generator=g) for g in self.generators]).to(device)


def _keep_top(x: torch.Tensor, k: torch.Tensor, p: torch.Tensor | None = None) -> torch.Tensor:
    """Per row, −inf outside the k_r best entries (k_r = 0: all) and outside the top-p_r nucleus."""
    V = x.shape[-1]
    k = torch.where(k > 0, k.clamp(max=V), torch.full_like(k, V))
    if p is None and bool((k == V).all()):
        return x
    sx, idx = x.sort(-1, descending=True)
    drop = torch.arange(V, device=x.device)[None] >= k[:, None]
    if p is not None and bool((p < 1).any()):
        probs = sx.masked_fill(drop, float("-inf")).softmax(-1)
        drop |= probs.cumsum(-1) - probs >= p[:, None]  # mass strictly before the token already >= p
    return x.scatter(-1, idx, sx.masked_fill(drop, float("-inf")))


def _filter(s: torch.Tensor, base_lp: torch.Tensor, batch: RowBatch, rules: RowRules, step: int, eos):
    """Guidance restricted to π_base's top-k (``guide_top_k``) and no EOS before ``min_new_tokens``."""
    if bool((rules.guide_top_k > 0).any()):
        allowed = torch.isfinite(_keep_top(base_lp, rules.guide_top_k))
        s = s.masked_fill(~allowed & (batch.base_f >= 0)[:, None], float("-inf"))
    if eos is not None and bool((rules.min_new > step).any()):
        s = s.clone()
        s[rules.min_new > step, eos] = float("-inf")
    return s


def _choose(s: torch.Tensor, rules: RowRules, sample_all: bool = False) -> torch.Tensor:
    """Argmax for greedy rows; for the others a draw from softmax(s / T) after top-k and top-p."""
    greedy = s.argmax(-1)
    if not (rules.sampled or sample_all):
        return greedy
    x = _keep_top(s / rules.temperature[:, None], rules.top_k, rules.top_p)
    cdf = x.softmax(-1).cumsum(-1)
    u = rules.uniform(len(s), s.device)[:, None] * cdf[:, -1:]
    drawn = torch.searchsorted(cdf, u).squeeze(1).clamp(max=s.shape[-1] - 1)
    return drawn if sample_all else torch.where(rules.greedy, greedy, drawn)


def _step(batch: RowBatch, s, base_lp, rules: RowRules, tokenizer, step: int, sample_all=False):
    """Pick one token per row, update values (beam), EOS / stop / limit / done flags, and append it."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    s = _filter(s, base_lp, batch, rules, step, eos)
    tok = _choose(s, rules, sample_all)
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
    batch.done |= hit | (rules.max_new <= step + 1)
    for r in torch.nonzero(live & ~hit).flatten().tolist():
        if rules.stop[r]:
            text = tokenizer.decode(batch.gen[r], skip_special_tokens=True)
            if any(x in text for x in rules.stop[r]):
                batch.done[r] = True


class Decoder:
    """Token-level decoding one step at a time (what ``decode`` runs and a server streams from).

        dec = Decoder(model, tok, prompts, plans, [DecodeSettings(...) per row])
        while not dec.finished:
            new, done = dec.step()     # one token per row (pad once done), done flags after it
        out = dec.result()

    ``settings``: one ``DecodeSettings`` for all rows (one generator, seeded by it), or one per row (each
    row its own limits, sampling and seeded generator). The chunk-level beam is ``decode``'s alone.
    """

    def __init__(
        self,
        model,
        tokenizer,
        prompts: Sequence[str],
        plans: Sequence[RowPlan],
        settings: DecodeSettings | Sequence[DecodeSettings] | None = None,
        *,
        format_prompt: Callable[[str], str] | None = None,
        max_prompt_tokens: int = 256,
        device: str | torch.device = "cpu",
        generator: torch.Generator | None = None,
    ):
        if len(prompts) != len(plans):
            raise ValueError(f"got {len(prompts)} prompts and {len(plans)} row plans; one plan per prompt")
        if not prompts:
            raise ValueError("nothing to decode: no prompts")
        settings = settings or DecodeSettings()
        if isinstance(settings, DecodeSettings):  # checked when built (DecodeSettings.__post_init__)
            self.settings = settings
            rows = [self.settings] * len(prompts)
            generator = generator or torch.Generator().manual_seed(self.settings.seed)
        else:
            rows = list(settings)
            assert all(isinstance(x, DecodeSettings) for x in rows), rows
            if len(rows) != len(prompts):
                raise ValueError(f"got {len(rows)} settings for {len(prompts)} prompts; one per prompt")
            if any(x.beam_width for x in rows):
                raise ValueError("chunk-level beam needs one DecodeSettings for the whole batch")
            self.settings = None
        self.tokenizer = tokenizer
        self.t0 = time.perf_counter()
        enc = encode_prompts(tokenizer, prompts, format_prompt, max_prompt_tokens, device)
        self.batch = RowBatch(model, plans, enc["input_ids"], enc["attention_mask"])
        self.rules = RowRules(rows, self.batch.device, generator)
        self.rows, self.steps = self.batch.forward_rows, 0
        self._next = None

    @property
    def finished(self) -> bool:
        return self.steps >= self.rules.max_steps or bool(self.batch.done.all())

    @torch.no_grad()
    def step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode one token for every row: (tokens [R], done [R]) in prompt order."""
        if self.finished:
            raise RuntimeError("decoding has finished")
        s, base_lp = self._next if self._next is not None else self.batch.forward()
        _step(self.batch, s, base_lp, self.rules, self.tokenizer, self.steps)
        self.steps += 1
        self._next = None if self.finished else self.batch.forward()
        return self.batch.gen[:, -1], self.batch.done.clone()

    def result(self) -> Decoded:
        tok = self.tokenizer
        order = torch.argsort(self.batch.ids)  # the beam reorders rows; results come in prompt order
        gen, eos, max_new = self.batch.gen[order], self.batch.eos[order], self.rules.max_new[order]
        stops = [self.rules.stop[i] for i in order.tolist()]
        R, T = gen.shape[0], max(self.rules.max_steps, gen.shape[1])
        tokens = torch.full((R, T), tok.pad_token_id, dtype=torch.long, device=self.batch.device)
        tokens[:, : gen.shape[1]] = gen
        lengths = torch.minimum(torch.full((R,), gen.shape[1], device=gen.device), max_new)
        if tok.eos_token_id is not None and gen.shape[1]:
            is_eos = gen == tok.eos_token_id
            first = torch.where(is_eos.any(1), is_eos.long().argmax(1) + 1, lengths)
            lengths = torch.where(eos, first, lengths)
        texts = [
            clean_text(tok.decode(tokens[r, : lengths[r]], skip_special_tokens=True), list(stops[r]))
            for r in range(R)
        ]
        return Decoded(tokens, lengths, texts, eos, self.rows, self.steps, time.perf_counter() - self.t0)


@torch.no_grad()
def decode(
    model,
    tokenizer,
    prompts: Sequence[str],
    plans: Sequence[RowPlan],
    settings: DecodeSettings | Sequence[DecodeSettings] | None = None,
    *,
    format_prompt: Callable[[str], str] | None = None,
    max_prompt_tokens: int = 256,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
) -> Decoded:
    """Decode one batch: row r is ``prompts[r]`` under ``plans[r]`` (module docstring, ``Decoder``)."""
    dec = Decoder(
        model,
        tokenizer,
        prompts,
        plans,
        settings,
        format_prompt=format_prompt,
        max_prompt_tokens=max_prompt_tokens,
        device=device,
        generator=generator,
    )
    if dec.settings is not None and dec.settings.beam_width:
        dec.rows, dec.steps = _beam(dec.batch, dec.settings, dec.rules, tokenizer)
    else:
        while not dec.finished:
            dec.step()
    return dec.result()


def _beam(batch: RowBatch, st: DecodeSettings, rules: RowRules, tokenizer) -> tuple[int, int]:
    """Chunk-level beam search (module docstring); leaves the best candidate of each request in ``batch``."""
    R, b, c, T = len(batch.plans), st.beam_width, st.beam_expansion, st.max_new_tokens
    s, base_lp = batch.forward()
    expand = torch.arange(R, device=batch.device).repeat_interleave(b * c)
    batch.select(expand)
    rules.select(expand)
    s, base_lp = s[expand], base_lp[expand]
    rows, width, t = batch.forward_rows, b * c, 0
    while True:
        for _ in range(st.beam_lookahead):
            _step(batch, s, base_lp, rules, tokenizer, t, sample_all=True)
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
        rules.select(keep)
        s, base_lp = s[keep], base_lp[keep]
    best = batch.value.view(R, width).argmax(1) + torch.arange(R, device=batch.device) * width
    batch.select(best)
    rules.select(best)
    return rows, t
