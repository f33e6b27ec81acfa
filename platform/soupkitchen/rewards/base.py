"""The reward interface and small shared helpers.

A reward maps a batch of (prompt, response) pairs to one float per pair. Rewards are deterministic and
never build autograd graphs; model-based rewards batch internally. Each kind is a :class:`BaseReward`
subclass with a ``Params`` model (a :class:`soupkitchen.config.Schema`: types, ranges and the kind's own
rules, checked by :func:`soupkitchen.config.from_dict` with the ``rewards.<i>.params`` path), so adding a
kind means writing one class and adding one entry to ``registry.REWARD_KINDS``.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from soupkitchen.config import ConfigError, Schema

_WORD_RE = re.compile(r"[^\W_]+")  # runs of letters/digits (Unicode-aware); everything else separates
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@runtime_checkable
class Reward(Protocol):
    """Anything with a name that scores (prompt, response) pairs."""

    name: str

    def score(self, prompts: list[str], responses: list[str]) -> list[float]: ...


def words(text: str) -> list[str]:
    """Split on non-alphanumeric characters: ``"don't stop-now"`` → ``["don", "t", "stop", "now"]``."""
    return _WORD_RE.findall(text)


def check_batch(prompts: Sequence[str], responses: Sequence[str]) -> tuple[list[str], list[str]]:
    """Both sequences must be lists of strings of equal length."""
    if isinstance(prompts, str) or isinstance(responses, str):
        raise TypeError("prompts and responses must be lists of strings, not a single string")
    prompts, responses = list(prompts), list(responses)
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        if not isinstance(p, str) or not isinstance(r, str):
            raise TypeError(
                f"row {i}: prompt and response must be str, got {type(p).__name__}, {type(r).__name__}"
            )
    return prompts, responses


def check_device(device: str | None, path: str) -> None:
    """``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` (None = decided by the caller)."""
    if device is not None and not _DEVICE_RE.match(device):
        raise ConfigError(path, f"must be auto, cpu, mps, cuda or cuda:N, got {device!r}")


def resolve_device(*candidates: str | None) -> str:
    """First non-None, non-``auto`` candidate; otherwise ``cuda`` when available, else ``cpu``."""
    for c in candidates:
        if c is not None and c != "auto":
            return c
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class BaseReward(abc.ABC):
    """Base class for the built-in kinds: input checks, float conversion, the params hooks."""

    kind: ClassVar[str]
    Params: ClassVar[type[Schema]]

    def __init__(self, name: str, params: Any):
        self.name = name
        self.params = params

    @classmethod
    def prepare_params(cls, raw: Any, path: str) -> Any:
        """Rewrite the raw params mapping before type checking (e.g. expand presets)."""
        return raw

    @classmethod
    def from_params(cls, name: str, params: Any, *, path: str, device: str | None = None) -> BaseReward:
        """Build the reward from validated params (model-based kinds load their model here)."""
        return cls(name, params)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        prompts, responses = check_batch(prompts, responses)
        if not responses:
            return []
        out = np.asarray(self._score(prompts, responses), dtype=np.float64).reshape(-1)
        if out.shape[0] != len(responses):  # pragma: no cover - implementation bug
            raise RuntimeError(
                f"reward {self.name!r} returned {out.shape[0]} scores for {len(responses)} rows"
            )
        return [float(x) for x in out]

    @abc.abstractmethod
    def _score(self, prompts: list[str], responses: list[str]) -> Sequence[float] | np.ndarray:
        """Scores for a non-empty, validated batch."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, params={self.params!r})"
