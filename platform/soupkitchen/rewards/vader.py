"""VADER sentiment of the response (rule-based, CPU, deterministic)."""

from __future__ import annotations

import functools
from typing import Literal

from soupkitchen.config import Schema
from soupkitchen.rewards.base import BaseReward


class VaderParams(Schema):
    """``field``: which VADER score to use: ``compound`` ∈ [−1, 1], or ``pos``/``neg``/``neu`` ∈ [0, 1]."""

    field: Literal["compound", "pos", "neg", "neu"] = "compound"


@functools.cache
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


class VaderReward(BaseReward):
    kind = "vader"
    Params = VaderParams

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        analyzer = _analyzer()
        return [float(analyzer.polarity_scores(r)[self.params.field]) for r in responses]
