"""Rule-based rewards: response length and keyword frequency (cheap, exact, used by the tiny recipe)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from soupkitchen.config import ConfigError, Schema
from soupkitchen.rewards.base import BaseReward, words

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")  # words plus single punctuation marks: a tokenizer-free proxy


def text_length(text: str, unit: str) -> int:
    """Length of ``text`` in ``words`` (alphanumeric runs), ``chars`` (of the stripped text) or ``tokens``."""
    if unit == "words":
        return len(words(text))
    if unit == "chars":
        return len(text.strip())
    if unit == "tokens":
        return len(_TOKEN_RE.findall(text))
    raise ValueError(f"unknown unit {unit!r}")  # pragma: no cover - guarded by the Literal


class LengthParams(Schema):
    """Response length L in ``unit``.

    - ``target`` set: r = −|L − target| / target (0 at the target, −1 for an empty response, ≤ 0 always).
    - otherwise: r = L / max_len, capped at 1 when ``clip`` (so r ∈ [0, 1]).
    """

    unit: Literal["words", "chars", "tokens"] = "words"
    target: int | None = Field(None, ge=1)
    max_len: int = Field(100, ge=1)
    clip: bool = True


class LengthReward(BaseReward):
    kind = "length"
    Params = LengthParams

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        p: LengthParams = self.params
        out = []
        for r in responses:
            n = text_length(r, p.unit)
            if p.target is not None:
                out.append(-abs(n - p.target) / p.target)
            else:
                out.append(min(n, p.max_len) / p.max_len if p.clip else n / p.max_len)
        return out


class KeywordParams(Schema):
    """Keyword frequency in the response (words = alphanumeric runs, see ``base.words``).

    ``fraction``: (# response words in the keyword set) / (# response words), 0 for an empty response, so
    two rewards with disjoint keyword sets compete for the same words and genuinely conflict.
    ``count``: the number of keyword occurrences. Each keyword must itself be a single word.
    """

    keywords: list[str] = Field(default_factory=list)
    mode: Literal["fraction", "count"] = "fraction"
    case_sensitive: bool = False

    @model_validator(mode="after")
    def _single_words(self):
        if not self.keywords:
            raise ConfigError("keywords", "must list at least one keyword")
        for i, k in enumerate(self.keywords):
            if words(k) != [k]:
                raise ConfigError(
                    f"keywords.{i}",
                    f"must be one word of letters/digits (responses are split on anything else), got {k!r}",
                )
        return self


class KeywordReward(BaseReward):
    kind = "keyword"
    Params = KeywordParams

    def __init__(self, name: str, params: KeywordParams):
        super().__init__(name, params)
        fold = (lambda s: s) if params.case_sensitive else str.casefold
        self._fold = fold
        self._keywords = frozenset(fold(k) for k in params.keywords)

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        out = []
        for r in responses:
            ws = words(r)
            hits = sum(self._fold(w) in self._keywords for w in ws)
            if self.params.mode == "count":
                out.append(float(hits))
            else:
                out.append(hits / len(ws) if ws else 0.0)
        return out
