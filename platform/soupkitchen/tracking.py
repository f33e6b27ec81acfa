"""MLflow tracking for jobs. With no ``tracking.tracking_uri`` (and no MLFLOW_TRACKING_URI) runs go to a
local SQLite store under the data directory, so every job is tracked without any server running; with a
tracking server (``infra/services.py``, or a cluster's) artifacts go to its ``s3://`` artifact root.

Every run gets its recipe twice: flattened params (``ppo.kl_coef``...) and ``recipe.yaml``. Child runs
(each backbone of a ``train_backbones`` run) carry ``mlflow.parentRunId`` and ``soupkitchen.parent_run``.

Logging never stops training: metric values, checkpoints (copied to a spool directory first, with a
sha256 manifest, see ``soupkitchen.artifacts``) and registrations wait in order in an outbox and are sent
with the next call once MLflow and S3 answer again (backing off while they do not). ``finish`` keeps
retrying for ``tracking.upload_retry_s`` seconds and then logs a summary of whatever is still undelivered
(the spooled files stay on disk).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from soupkitchen.artifacts import check_model_name, register, set_aliases, stage_directory
from soupkitchen.config import ConfigError, Recipe, to_dict
from soupkitchen.paths import data_dir

log = logging.getLogger("soupkitchen.tracking")

METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
# The MLflow client retries a failed request 7 times with backoff factor 2 (minutes); the outbox below
# retries on its own, so a training step waits seconds, not minutes, while the server is down.
_CLIENT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def tracking_uri(recipe: Recipe | None = None) -> str:
    if recipe is not None and recipe.tracking.tracking_uri:
        return check_tracking_uri(recipe.tracking.tracking_uri, "tracking.tracking_uri")
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return check_tracking_uri(env, "MLFLOW_TRACKING_URI")
    return f"sqlite:///{data_dir() / 'mlflow.db'}"


def check_tracking_uri(uri: str, path: str) -> str:
    if not re.match(
        r"^(https?://[^/\s:]+(:\d{1,5})?/?\S*|sqlite:///\S+|file:/\S+|databricks\S*|postgresql\S*|mysql\S*)$",
        uri,
    ):
        raise ConfigError(
            path,
            f"{uri!r} is not a tracking URI; use http://<host>:<port> (an MLflow server, e.g. the local "
            "stack's http://127.0.0.1:25556) or sqlite:///<path>/mlflow.db",
        )
    return uri


def artifact_location(uri: str) -> str | None:
    """Artifacts of a local SQLite store live beside the database, not in ``./mlruns`` of whatever directory
    the job was started from; a tracking server decides for itself (None)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    return None


def flat_params(tree: dict, prefix: str = "") -> dict[str, str]:
    """Nested recipe → ``{"ppo.kl_coef": "0.2", ...}`` (MLflow params are flat strings ≤ 6000 chars)."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_params(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


@dataclass
class _Upload:
    """A spooled file or directory waiting to become an artifact (and maybe a registered model version)."""

    local: Path
    artifact_path: str | None
    register_as: str | None = None
    aliases: tuple[str, ...] = ()
    uploaded: bool = False
    version: str | None = None
    tags: dict = field(default_factory=dict)


class RunLogger:
    """One MLflow run (optionally nested under ``parent_run_id``) with an outbox for metrics and artifacts."""

    def __init__(
        self, recipe: Recipe, run_name: str, parent_run_id: str | None = None, tags: dict | None = None
    ):
        import mlflow
        import yaml

        for k, v in _CLIENT_RETRIES.items():
            os.environ.setdefault(k, v)
        self.recipe = recipe
        self.client = mlflow.MlflowClient(tracking_uri(recipe))
        self.pending: list = []
        self.uploads: list[_Upload] = []
        self.retry_s = recipe.tracking.upload_retry_s
        self._retry_at, self._backoff = 0.0, 1.0
        self.undelivered: dict = {}
        exp = self.client.get_experiment_by_name(recipe.tracking.experiment)
        exp_id = (
            exp.experiment_id
            if exp
            else self.client.create_experiment(
                recipe.tracking.experiment, artifact_location=artifact_location(tracking_uri(recipe))
            )
        )
        all_tags = {"soupkitchen.recipe": recipe.name, **(tags or {})}
        if parent_run_id:
            all_tags |= {"mlflow.parentRunId": parent_run_id, "soupkitchen.parent_run": parent_run_id}
        run = self.client.create_run(exp_id, run_name=run_name, tags=all_tags)
        self.run_id, self.artifact_uri = run.info.run_id, run.info.artifact_uri
        self.spool = data_dir() / "spool" / self.run_id
        params = flat_params(to_dict(recipe))
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])
        recipe_file = self._spool_dir() / "recipe.yaml"
        recipe_file.write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
        self.uploads.append(_Upload(recipe_file, None))
        self.flush()

    def _spool_dir(self) -> Path:
        d = self.spool / f"{len(self.uploads):04d}-{uuid.uuid4().hex[:8]}"
        d.mkdir(parents=True)
        return d

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k.replace("/", "."), float(v), now, step) for k, v in metrics.items()]
        self.flush()

    def log_checkpoint(
        self,
        directory: str | os.PathLike,
        artifact_path: str,
        kind: str = "checkpoint",
        files: list[str] | None = None,
        register_as: str | None = None,
        aliases: tuple[str, ...] = ("candidate",),
        tags: dict | None = None,
    ) -> None:
        """Log ``directory`` (or only ``files`` of it) under ``artifact_path`` with a sha256 manifest and,
        with ``register_as``, register it as a new version of that model with ``aliases``. The directory
        is copied first, so the caller may delete it as soon as this returns, uploaded or not."""

        if register_as is not None:
            check_model_name(register_as)
        staged = stage_directory(directory, self._spool_dir() / Path(artifact_path).name, kind, files)
        self.uploads.append(_Upload(staged, artifact_path, register_as, tuple(aliases), tags=tags or {}))
        self.flush()

    def log_bundle(
        self, directory: str | os.PathLike, name: str | None = None, aliases=("candidate",)
    ) -> str:
        """Log a soup bundle (``merging.bundle.write_bundle``) as ``soup/`` and register it (default name:
        ``<registered_model_prefix>-<recipe name>``, e.g. ``soup-demo``). Returns the model name."""
        name = name or f"{self.recipe.tracking.registered_model_prefix}-{self.recipe.name}"
        self.log_checkpoint(directory, "soup", kind="soup_bundle", register_as=name, aliases=aliases)
        return name

    def flush(self, force: bool = False) -> bool:
        """Send everything waiting, in order; False (and back off) at the first failure."""
        if not force and time.time() < self._retry_at:
            return False
        try:
            while self.pending:
                self.client.log_batch(self.run_id, metrics=self.pending[:METRICS_PER_BATCH])
                del self.pending[:METRICS_PER_BATCH]
            while self.uploads:
                self._deliver(self.uploads[0])
                self.uploads.pop(0)
        except Exception as e:  # noqa: BLE001 - tracking outages must not stop training
            self._retry_at = time.time() + self._backoff
            self._backoff = min(2 * self._backoff, 60.0)
            log.warning(
                "MLflow/S3 unavailable (%s: %s); buffered %d metric values and %d artifacts for retry",
                type(e).__name__,
                str(e)[:300],
                len(self.pending),
                len(self.uploads),
            )
            return False
        self._retry_at, self._backoff = 0.0, 1.0
        return True

    def _deliver(self, u: _Upload) -> None:

        if not u.uploaded:
            if u.local.is_dir():
                self.client.log_artifacts(self.run_id, str(u.local), u.artifact_path)
            else:
                self.client.log_artifact(self.run_id, str(u.local), u.artifact_path)
            u.uploaded = True
        if u.register_as and u.version is None:
            source = f"{self.artifact_uri}/{u.artifact_path}"
            u.version = register(self.client, u.register_as, source, self.run_id, (), u.tags).version
        if u.register_as and u.aliases:
            set_aliases(self.client, u.register_as, u.version, u.aliases)
            log.info("registered %s version %s @%s", u.register_as, u.version, ",@".join(u.aliases))
        shutil.rmtree(u.local.parent, ignore_errors=True)

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Close the run: FINISHED, or FAILED when the block raised (a run is never left RUNNING)."""
        self.finish("FINISHED" if exc_type is None else "FAILED")

    def finish(self, status: str = "FINISHED") -> int:
        """Flush (retrying for ``tracking.upload_retry_s``), close the run; return how many items (metric
        values, artifacts) could not be delivered. ``self.undelivered`` says which."""
        deadline = time.time() + self.retry_s
        while not self.flush(force=True) and time.time() < deadline:
            time.sleep(max(0.0, min(self._retry_at, deadline) - time.time()))
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as e:  # noqa: BLE001
            log.warning("could not close MLflow run %s: %s", self.run_id, e)
        self.undelivered = {
            "metric_values": len(self.pending),
            "artifacts": [
                {
                    "artifact_path": u.artifact_path or u.local.name,
                    "spooled_at": str(u.local),
                    "model": u.register_as,
                }
                for u in self.uploads
            ],
        }
        if self.pending or self.uploads:
            lines = [f"{len(self.pending)} metric values"] + [
                f"artifact {a['artifact_path']} (kept at {a['spooled_at']})"
                + (f", registration of {a['model']}" if a["model"] else "")
                for a in self.undelivered["artifacts"]
            ]
            log.error("MLflow run %s: never uploaded: %s", self.run_id, "; ".join(lines))
        return len(self.pending) + len(self.uploads)


def model_name(recipe: Recipe, suffix: str) -> str:
    """Registered model name: ``<registered_model_prefix>-<recipe name>-<suffix>``."""
    return f"{recipe.tracking.registered_model_prefix}-{recipe.name}-{suffix}"


class BackboneLogger(RunLogger):
    """The MLflow run of one backbone (a child of the ``train_backbones`` run)."""

    def __init__(self, recipe: Recipe, spec, parent_run_id: str | None = None):
        self.spec = spec
        super().__init__(
            recipe, spec.name, parent_run_id, {"soupkitchen.backbone_weights": str(spec.weights)}
        )

    def log_step(self, stats: dict[str, float]) -> None:
        self.log_metrics({k: v for k, v in stats.items() if k != "step"}, int(stats["step"]))

    def log_adapter(self, checkpoint_dir: str | os.PathLike) -> str:
        """The final adapter (+ value heads) and its state.json, registered as ``<prefix>-<recipe>-<name>``
        @candidate. Returns the model name."""
        name = model_name(self.recipe, self.spec.name)
        files = [f for f in ("trainable.safetensors", "state.json") if (Path(checkpoint_dir) / f).is_file()]
        tags = {"weights": str(self.spec.weights)}
        self.log_checkpoint(checkpoint_dir, "adapter", "backbone_adapter", files, register_as=name, tags=tags)
        return name

    def log_normalizer(self, state: dict) -> None:
        """The backbone's reward normaliser state, through the outbox like everything else."""
        f = self._spool_dir() / "reward_normalizer.json"
        f.write_text(json.dumps(state, indent=1))
        self.uploads.append(_Upload(f, None))
