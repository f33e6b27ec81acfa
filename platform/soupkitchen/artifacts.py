"""Checkpoints and soup bundles as MLflow artifacts (in S3 behind a tracking server, or beside a local
SQLite store), registered in the Model Registry with aliases, and loaded back by URI.

Every directory soupkitchen logs carries ``soupkitchen-files.json``: the sha256 and size of every other
file. ``fetch(uri)`` downloads through MLflow (boto3 for ``s3://``) into a local cache, verifies every file
against that manifest, and refuses a corrupt or partial download with ``ArtifactIntegrityError`` after
one retry. Registered models use aliases (``@candidate`` when logged, ``@production`` when promoted),
never the deprecated stages.

    fetch("models:/soup-demo@production")      fetch("runs:/<run_id>/soup")
    fetch("s3://bucket/mlflow/1/<run>/artifacts/soup")   fetch("/path/to/bundle")
    load_soup("models:/soup-demo@candidate")   # → merging.bundle.Bundle
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

from soupkitchen.checkpoint import sha256_of
from soupkitchen.config import ConfigError
from soupkitchen.merging.bundle import load_bundle
from soupkitchen.paths import data_dir

log = logging.getLogger("soupkitchen.artifacts")

MANIFEST = "soupkitchen-files.json"
MANIFEST_FORMAT = "soupkitchen.files/v1"
ALIASES = ("candidate", "production")
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$")
_RUN_URI = re.compile(r"^runs:/(?P<run>[0-9a-f]{8,64})/(?P<path>.+)$")
_S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<key>.+)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")


class ArtifactIntegrityError(RuntimeError):
    """A downloaded or local artifact does not match its sha256 manifest (corrupt, partial or foreign)."""


def write_manifest(directory: str | os.PathLike, kind: str, extra: dict | None = None) -> Path:
    """Write ``soupkitchen-files.json`` listing the sha256 and size of every file under ``directory``."""
    directory = Path(directory)
    files = {}
    for f in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = f.relative_to(directory).as_posix()
        if rel != MANIFEST:
            files[rel] = {"sha256": sha256_of(f), "size": f.stat().st_size}
    doc = {"format": MANIFEST_FORMAT, "kind": kind, "files": files, **(extra or {})}
    (directory / MANIFEST).write_text(json.dumps(doc, indent=1))
    return directory / MANIFEST


def verify(directory: str | os.PathLike, source: str | None = None) -> dict:
    """Check every file of ``directory`` against its manifest; return the manifest or raise."""
    directory = Path(directory)
    where = source or str(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactIntegrityError(
            f"{where}: {MANIFEST} is missing (partial download, or not logged by soupkitchen); "
            "log the directory with RunLogger.log_checkpoint / log_directory"
        )
    try:
        doc = json.loads(path.read_text())
        files = doc["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ArtifactIntegrityError(f"{where}: {MANIFEST} is unreadable ({err})") from err
    for rel, meta in files.items():
        f = directory / rel
        if not f.is_file():
            raise ArtifactIntegrityError(f"{where}: {rel} is missing (partial download)")
        size = f.stat().st_size
        if size != meta["size"]:
            raise ArtifactIntegrityError(
                f"{where}: {rel} has {size} bytes, expected {meta['size']} (truncated)"
            )
        if sha256_of(f) != meta["sha256"]:
            raise ArtifactIntegrityError(f"{where}: {rel} does not match its sha256 (corrupt)")
    return doc


def stage_directory(src: str | os.PathLike, dest: str | os.PathLike, kind: str, files=None) -> Path:
    """Copy ``src`` (or only ``files`` of it) to ``dest`` and write the manifest there (the original stays
    untouched, so a trainer may delete its temporary checkpoint right after)."""
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise FileNotFoundError(f"checkpoint directory {src} does not exist")
    shutil.rmtree(dest, ignore_errors=True)
    if files is None:
        shutil.copytree(src, dest)
    else:
        dest.mkdir(parents=True)
        for name in files:
            shutil.copy2(src / name, dest / name)
    write_manifest(dest, kind)
    return dest


# --- Model Registry ---------------------------------------------------------------------------------------


def check_model_name(name: str, path: str = "registered_model_name") -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(path, f"{name!r} is not a valid registered model name (letters, digits, _ . -)")
    return name


def register(client, name: str, source: str, run_id: str | None, aliases=("candidate",), tags=None):
    """One new version of ``name`` (created if missing) pointing at ``source``; ``aliases`` move to it."""
    from mlflow.exceptions import MlflowException

    check_model_name(name)
    try:
        client.create_registered_model(name, tags={"soupkitchen": "1"})
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, source, run_id=run_id, tags=tags or {})
    set_aliases(client, name, version.version, aliases)
    return version


def set_aliases(client, name: str, version: str, aliases) -> None:
    for alias in aliases:
        if alias not in ALIASES:
            raise ConfigError("alias", f"{alias!r} is not one of {', '.join(ALIASES)}")
        client.set_registered_model_alias(name, alias, str(version))


def promote(name: str, version: str | None = None, alias: str = "production", tracking_uri=None) -> str:
    """Point ``@alias`` (default ``@production``) at ``version`` (default: the ``@candidate`` version)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    if version is None:
        version = client.get_model_version_by_alias(name, "candidate").version
    set_aliases(client, name, version, [alias])
    return str(version)


# --- loading by URI ----------------------------------------------------------------------------------------


def default_cache() -> Path:
    return data_dir() / "artifact-cache"


def parse_uri(uri: str) -> tuple[str, dict]:
    """URI → (kind, parts): models:/name@alias, models:/name/3, runs:/id/path, s3://bucket/key, a path."""
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError(
            "uri", "is empty; give models:/<name>@<alias>, runs:/<run_id>/<path>, s3://... or a path"
        )
    uri = uri.strip()
    for kind, pattern in (("models", _MODEL_URI), ("runs", _RUN_URI), ("s3", _S3_URI)):
        m = pattern.match(uri)
        if m:
            return kind, m.groupdict()
    if uri.startswith(("models:", "runs:", "s3:")):
        raise ConfigError(
            "uri",
            f"{uri!r} is malformed; expected models:/<name>@<alias> or models:/<name>/<version>, "
            "runs:/<run_id>/<artifact path>, s3://<bucket>/<key>",
        )
    if "://" in uri:
        raise ConfigError(
            "uri", f"{uri!r}: scheme not supported; use models:/, runs:/, s3:// or a local path"
        )
    path = Path(uri).expanduser()
    if not path.exists():
        raise ConfigError("uri", f"local path {path} does not exist")
    return "path", {"path": str(path.resolve())}


def fetch(uri: str, cache_dir: str | os.PathLike | None = None, tracking_uri: str | None = None) -> Path:
    """Download ``uri`` into the cache (once per immutable version), verify every sha256, return the dir.

    A corrupt or partial download is deleted and downloaded once more; a second failure raises
    ``ArtifactIntegrityError``. A local path is verified in place when it has a manifest."""
    import mlflow

    kind, parts = parse_uri(uri)
    if kind == "path":
        path = Path(parts["path"])
        if (path / MANIFEST).is_file():
            verify(path, uri)
        return path
    cache = Path(cache_dir) if cache_dir else default_cache()
    client = mlflow.MlflowClient(tracking_uri)
    immutable = True
    if kind == "models":
        if parts["alias"]:
            mv = client.get_model_version_by_alias(parts["name"], parts["alias"])
        else:
            mv = client.get_model_version(parts["name"], parts["version"])
        # name/version repeats across registries (a new server, a reset store): the source names the files
        tag = hashlib.sha256(f"{mv.source}|{mv.run_id}".encode()).hexdigest()[:12]
        source, key = mv.source, f"models/{parts['name']}/v{mv.version}-{tag}"
    elif kind == "runs":
        source, key = uri, f"runs/{parts['run']}/{parts['path'].strip('/')}"
    else:  # an s3:// object may be overwritten: always downloaded afresh
        source, key, immutable = uri, f"s3/{hashlib.sha256(uri.encode()).hexdigest()[:16]}", False
    dest = cache / key
    if immutable and dest.is_dir():
        try:
            verify(dest, f"{uri} (cached at {dest})")
            return dest
        except ArtifactIntegrityError as err:
            log.warning("%s; downloading it again", err)
    last: Exception | None = None
    for attempt in (1, 2):
        tmp = cache / ".tmp" / uuid.uuid4().hex
        tmp.mkdir(parents=True)
        try:
            got = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=str(tmp), tracking_uri=tracking_uri
                )
            )
            verify(got, uri)
            shutil.rmtree(dest, ignore_errors=True)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(got, dest)
            return dest
        except ArtifactIntegrityError as err:
            last = err
        except Exception as err:  # noqa: BLE001 - a failed transfer also gets its one retry
            last = err
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if attempt == 1:
            log.warning("download of %s failed (%s); retrying once", uri, last)
    if isinstance(last, ArtifactIntegrityError):
        raise ArtifactIntegrityError(
            f"{last}; downloaded twice and both copies fail verification: the stored artifact is damaged, "
            "re-log it (or point the alias at another version)"
        ) from last
    raise RuntimeError(f"could not download {uri} (tried twice): {last}") from last


def load_soup(uri: str, base_model=None, cache_dir=None, tracking_uri: str | None = None):
    """``merging.bundle.load_bundle`` of a bundle fetched (and verified) by URI."""

    return load_bundle(fetch(uri, cache_dir, tracking_uri), base_model)
