"""One decoding loop for every mode: all forward rows of a batch in one pass of the mixed model, one KV cache.

    plans = [roles.plan("mage_i_m", mu, gamma=1.0) for mu in mus]       # decoding.plans
    out = decode(model, tok, prompts, plans, DecodeSettings(max_new_tokens=32))
    out.texts, out.tokens [R, T], out.lengths, out.has_eos

Each decoding row r expands into ``plans[r].width`` forward rows (its coefficient vectors, ``merging``), so a
batch mixes μ, modes and γ freely. Per step: one forward of all forward rows (prefill, then one token with the
cache), then s_r = Σ_j w_j log_softmax(l_j) + u_j l_j (plans.py; u reads residual value heads), then greedy
argmax or sampling from softmax(s_r / T) after top-k / top-p. The first ``min_new_tokens`` steps cannot pick
EOS (as ``generation.generate_batch``). A row ends at EOS, at a stop string or at ``max_new_tokens`` and
leaves the batch at once (``RunningBatch``: rows also join between steps); a row's sampling draws do not
depend on when other rows end or join (``sampling.RowRules.uniform``).

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

from soupkitchen.decoding.batch import RowBatch
from soupkitchen.decoding.plans import RowPlan
from soupkitchen.decoding.sampling import DecodeSettings, RowRules, choose, restrict
from soupkitchen.generation import clean_text, encode_prompts


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


def _step(batch: RowBatch, s, base_lp, rules: RowRules, tokenizer, sample_all=False):
    """Pick one token per row, update values (beam), EOS / stop / limit / done flags, and append it."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    s = restrict(s, base_lp, batch.base_f >= 0, rules, batch.t, eos)
    tok = choose(s, rules, sample_all, None if sample_all else batch.ids)
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
    batch.done |= hit | (rules.max_new <= batch.t)
    for r in torch.nonzero(live & ~hit).flatten().tolist():
        if rules.stop[r]:
            text = tokenizer.decode(batch.tokens(r), skip_special_tokens=True)
            if any(x in text for x in rules.stop[r]):
                batch.done[r] = True


@dataclass
class Finished:
    """A row that left the batch: its key, generated tokens (EOS / the stop string included) and why."""

    key: object
    tokens: list[int]
    eos: bool


class RunningBatch:
    """The decoding loop with continuous batching: rows join (``admit``) and leave (finished, or ``drop``)
    between two decode steps, each with its own plan, settings and seeded generator.

        run = RunningBatch(model, tok, device="cuda")
        run.admit(["key-a"], ["prompt"], [plan], [DecodeSettings(max_new_tokens=64, seed=1)])
        while run:
            tokens, finished = run.step()     # {key: token} of every row this step; the rows that ended
            run.admit(...)                    # new requests join the running batch between steps

    Admission prefills the new rows alone (their own left-padded prompts and coefficient rows), then joins
    their KV cache, mask, positions and next-token scores to the running batch (``RowBatch.join``); a finished
    row leaves at once, so it costs no compute after its last token. A row's output does not depend on
    which rows share its batch: its scores see only its own cache (attention masks the others' padding) and
    its sampling draws come from its own generator (``DecodeSettings.seed``). ``generator``: one generator
    for every row (``decode`` with one ``DecodeSettings``): then all rows join in one ``admit``.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        format_prompt: Callable[[str], str] | None = None,
        max_prompt_tokens: int = 256,
        device: str | torch.device = "cpu",
        generator: torch.Generator | None = None,
    ):
        self.model, self.tokenizer, self.format_prompt = model, tokenizer, format_prompt
        self.max_prompt_tokens, self.device, self.generator = max_prompt_tokens, device, generator
        self.batch: RowBatch | None = None
        self.rules: RowRules | None = None
        self.keys: list = []
        self.steps, self._next, self._admitted = 0, None, 0

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def forward_rows(self) -> int:
        return self.batch.forward_rows if self.batch is not None else 0

    @torch.no_grad()
    def admit(
        self,
        keys: Sequence,
        prompts: Sequence[str],
        plans: Sequence[RowPlan],
        settings: Sequence[DecodeSettings],
    ) -> None:
        """Prefill ``prompts`` (row i: ``plans[i]``, ``settings[i]``) and join them to the running batch."""
        assert len(keys) == len(prompts) == len(plans) == len(settings) > 0, (keys, prompts, plans)
        assert self.generator is None or self._admitted == 0, "a shared generator: admit all rows at once"
        enc = encode_prompts(self.tokenizer, prompts, self.format_prompt, self.max_prompt_tokens, self.device)
        ids = torch.arange(self._admitted, self._admitted + len(keys))
        new = RowBatch(self.model, plans, enc["input_ids"], enc["attention_mask"], ids=ids)
        rules = RowRules(list(settings), new.device, self.generator)
        s, base_lp = new.forward()
        self._admitted += len(keys)
        if self.batch is None:
            self.batch, self.rules, self._next = new, rules, (s, base_lp)
        else:
            self.batch.join(new)
            self.rules.join(rules)
            self._next = tuple(torch.cat([a, b]) for a, b in zip(self._next, (s, base_lp), strict=True))
        self.keys += list(keys)

    @torch.no_grad()
    def step(self) -> tuple[dict, list[Finished]]:
        """One token for every row: ({key: token}, the rows that ended with it, in row order)."""
        batch, rules = self.batch, self.rules
        assert batch is not None and len(batch), "nothing to decode"
        _step(batch, *self._next, rules, self.tokenizer)
        self.steps += 1
        tokens = dict(zip(self.keys, batch.gen[:, -1].tolist(), strict=True))
        done = batch.done.tolist()
        ended = [
            Finished(k, batch.tokens(r).tolist(), bool(batch.eos[r]))
            for r, k in enumerate(self.keys)
            if done[r]
        ]
        self._keep([r for r, d in enumerate(done) if not d])
        return tokens, ended

    def drop(self, keys) -> None:
        """Remove rows (cancelled requests) before the next step; unknown keys are ignored."""
        gone = set(keys)
        if any(k in gone for k in self.keys):
            self._keep([r for r, k in enumerate(self.keys) if k not in gone], forwarded=True)

    def _keep(self, rows: list[int], forwarded: bool = False) -> None:
        """Keep ``rows``; forward them over their pending token unless that has happened (``forwarded``)."""
        if not rows:
            self.batch = self.rules = self._next = None
            self.keys = []
            return
        batch = self.batch
        if len(rows) < len(batch):
            keep = torch.tensor(rows, dtype=torch.long, device=batch.device)
            batch.select(keep)
            self.rules.select(keep)
            batch.trim()
            self.keys = [self.keys[r] for r in rows]
            if forwarded:
                self._next = tuple(x[keep] for x in self._next)
        if not forwarded:
            self._next = batch.forward()


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
    """Decode one batch: row r is ``prompts[r]`` under ``plans[r]`` (module docstring).

    ``settings``: one ``DecodeSettings`` for all rows (one generator, seeded by it; the only way to the
    chunk-level beam), or one per row (each row its own limits, sampling and seeded generator)."""
    if len(prompts) != len(plans):
        raise ValueError(f"got {len(prompts)} prompts and {len(plans)} row plans; one plan per prompt")
    if not prompts:
        raise ValueError("nothing to decode: no prompts")
    settings = settings or DecodeSettings()
    if isinstance(settings, DecodeSettings):  # checked when built (DecodeSettings.__post_init__)
        rows = [settings] * len(prompts)
        generator = generator or torch.Generator().manual_seed(settings.seed)
    else:
        rows = list(settings)
        assert all(isinstance(x, DecodeSettings) for x in rows), rows
        if len(rows) != len(prompts):
            raise ValueError(f"got {len(rows)} settings for {len(prompts)} prompts; one per prompt")
        if any(x.beam_width for x in rows):
            raise ValueError("chunk-level beam needs one DecodeSettings for the whole batch")
    t0 = time.perf_counter()
    if isinstance(settings, DecodeSettings) and settings.beam_width:
        enc = encode_prompts(tokenizer, prompts, format_prompt, max_prompt_tokens, device)
        batch = RowBatch(model, plans, enc["input_ids"], enc["attention_mask"])
        rules = RowRules(rows, batch.device, generator)
        width, steps = _beam(batch, settings, rules, tokenizer)
        ends = [
            _cut(batch.tokens(r).tolist(), bool(batch.eos[r]), settings, tokenizer) for r in range(len(batch))
        ]
        return _decoded(tokenizer, ends, rows, width, steps, t0, batch.device)
    run = RunningBatch(
        model,
        tokenizer,
        format_prompt=format_prompt,
        max_prompt_tokens=max_prompt_tokens,
        device=device,
        generator=generator,
    )
    run.admit(range(len(prompts)), prompts, plans, rows)
    width, ends = run.forward_rows, {}
    while len(run):
        for f in run.step()[1]:
            ends[f.key] = (f.tokens, f.eos)
    return _decoded(tokenizer, [ends[i] for i in range(len(prompts))], rows, width, run.steps, t0, run.device)


def _cut(tokens: list[int], eos: bool, st: DecodeSettings, tokenizer) -> tuple[list[int], bool]:
    """A beam candidate's tokens up to its EOS (kept) or its token limit (finished candidates fed pad)."""
    end = tokens.index(tokenizer.eos_token_id) + 1 if eos else min(len(tokens), st.max_new_tokens)
    return tokens[:end], eos


def _decoded(
    tokenizer, ends, rows: list[DecodeSettings], width: int, steps: int, t0: float, device
) -> Decoded:
    """``Decoded`` of per-row (tokens, eos), in prompt order."""
    T = max([x.max_new_tokens for x in rows] + [len(t) for t, _ in ends])
    tokens = torch.full((len(ends), T), tokenizer.pad_token_id, dtype=torch.long)
    for r, (t, _) in enumerate(ends):
        tokens[r, : len(t)] = torch.tensor(t, dtype=torch.long)
    lengths = torch.tensor([len(t) for t, _ in ends], dtype=torch.long)
    tokens, lengths = tokens.to(device), lengths.to(device)
    texts = [
        clean_text(tokenizer.decode(t, skip_special_tokens=True), list(st.stop))
        for (t, _), st in zip(ends, rows, strict=True)
    ]
    has_eos = torch.tensor([e for _, e in ends], dtype=torch.bool, device=device)
    return Decoded(tokens, lengths, texts, has_eos, width, steps, time.perf_counter() - t0)


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
            _step(batch, s, base_lp, rules, tokenizer, sample_all=True)
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
