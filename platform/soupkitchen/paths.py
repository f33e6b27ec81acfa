"""Where soupkitchen keeps files on this machine: the one reader of ``SOUPKITCHEN_CACHE``.

Everything a job caches or keeps between runs lives under one root, ``$SOUPKITCHEN_CACHE`` or
``~/.cache/soupkitchen``:

    gguf/             dequantised GGUF checkpoints (``models.gguf_cache``)
    sft/<recipe>/     merged SFT models (``training.sft``)
    value-models/     MAGE-E value adapters (``jobs/train_value_models.py``)
    mlflow.db         the default MLflow store when no tracking URI is set (``tracking``)
    spool/<run key>/  metrics and files MLflow did not take yet (``tracking.RunLogger``)
    artifact-cache/   soups fetched by URI (``artifacts.fetch``)
    services/         pid files, logs and stores of the local services (``services``, ``infra/services.py``)
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "SOUPKITCHEN_CACHE"


def cache_root() -> Path:
    """``$SOUPKITCHEN_CACHE`` or ``~/.cache/soupkitchen`` (not created)."""
    return Path(os.environ.get(ENV) or "~/.cache/soupkitchen").expanduser()


def data_dir() -> Path:
    """The cache root, created if missing."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_dir(*parts: str) -> Path:
    """``<cache root>/<parts...>`` (not created)."""
    return cache_root().joinpath(*parts)
