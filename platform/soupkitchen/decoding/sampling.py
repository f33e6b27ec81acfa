"""Per-row decoding settings and the choice of the next token: ``DecodeSettings`` (one request's, checked
once when built), ``RowRules`` (a batch's settings as tensors, rows joining and leaving with the batch),
top-k / top-p filtering, the ``min_new_tokens`` / ``guide_top_k`` restrictions, greedy or sampled choice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from soupkitchen.config import DecodingConfig, GenerationConfig
from soupkitchen.errors import ConfigError


@dataclass(frozen=True)
class DecodeSettings:
    """Decoding settings, checked once when built (a ConfigError naming the ``decoding.*`` key): ``decode``
    and ``RunningBatch`` take them as they are."""

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
        self._summary()
        self.generators = (
            [generator]
            if generator is not None
            else [torch.Generator().manual_seed(int(x.seed)) for x in settings]
        )

        self.shared = generator is not None
        self.rows = len(settings)  # a shared generator draws this many per step (``uniform``)

    _COLUMNS = ("greedy", "temperature", "top_k", "top_p", "guide_top_k", "max_new", "min_new")

    def select(self, keep: torch.Tensor) -> None:
        for key in self._COLUMNS:
            setattr(self, key, getattr(self, key)[keep])
        keep = keep.tolist()
        self.stop = [self.stop[i] for i in keep]
        if not self.shared:
            self.generators = [self.generators[i] for i in keep]
        self._summary()

    def join(self, other: RowRules) -> None:
        """Append ``other``'s rows (rows joining a running batch: each with its own generator)."""
        assert not (self.shared or other.shared), "rows that join a batch bring their own generators"
        for key in self._COLUMNS:
            setattr(self, key, torch.cat([getattr(self, key), getattr(other, key)]))
        self.stop += other.stop
        self.generators += other.generators
        self._summary()

    def _summary(self) -> None:
        self.max_steps = int(self.max_new.max()) if len(self.max_new) else 0
        self.sampled = bool((~self.greedy).any())

    def uniform(self, n: int, device, ids: torch.Tensor | None = None) -> torch.Tensor:
        """One u ~ U(0, 1) per row. A shared generator with ``ids`` draws for every row it started with and
        hands row i draw ``ids[i]``, so a row's draws do not depend on which rows have already left."""
        if self.shared:
            g = self.generators[0]
            return (
                torch.rand(n, generator=g) if ids is None else torch.rand(self.rows, generator=g)[ids.cpu()]
            ).to(device)
        return torch.cat([torch.rand(1, generator=g) for g in self.generators]).to(device)


def keep_top(x: torch.Tensor, k: torch.Tensor, p: torch.Tensor | None = None) -> torch.Tensor:
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


def restrict(s: torch.Tensor, base_lp: torch.Tensor, has_base: torch.Tensor, rules: RowRules, t, eos):
    """Guidance restricted to π_base's top-k (``guide_top_k``; rows with a base) and no EOS while a row has
    generated fewer than ``min_new_tokens`` (``t``: tokens so far, per row)."""
    if bool((rules.guide_top_k > 0).any()):
        allowed = torch.isfinite(keep_top(base_lp, rules.guide_top_k))
        s = s.masked_fill(~allowed & has_base[:, None], float("-inf"))
    early = rules.min_new > t
    if eos is not None and bool(early.any()):
        s = s.clone()
        s[early, eos] = float("-inf")
    return s


def choose(s: torch.Tensor, rules: RowRules, sample_all: bool = False, ids=None) -> torch.Tensor:
    """Argmax for greedy rows; for the others a draw from softmax(s / T) after top-k and top-p (``ids``:
    ``RowRules.uniform``)."""
    greedy = s.argmax(-1)
    if not (rules.sampled or sample_all):
        return greedy
    x = keep_top(s / rules.temperature[:, None], rules.top_k, rules.top_p)
    cdf = x.softmax(-1).cumsum(-1)
    u = rules.uniform(len(s), s.device, ids)[:, None] * cdf[:, -1:]
    drawn = torch.searchsorted(cdf, u).squeeze(1).clamp(max=s.shape[-1] - 1)
    return drawn if sample_all else torch.where(rules.greedy, greedy, drawn)
