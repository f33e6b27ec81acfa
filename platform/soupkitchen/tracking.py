"""MLflow tracking for jobs. With no ``tracking.tracking_uri`` (and no MLFLOW_TRACKING_URI) runs go to a
local SQLite store under the data directory, so every job is tracked without any server running; with a
tracking server (``infra/services.py``, or a cluster's) artifacts go to its ``s3://`` artifact root.

Every run gets its recipe twice: flattened params (``ppo.kl_coef``...) and ``recipe.yaml``. Child runs
(each backbone of a ``train_backbones`` run) carry ``mlflow.parentRunId`` and ``soupkitchen.parent_run``.

Logging never stops training, not even when MLflow is down as the job starts: the run itself, its params,
metric values, checkpoints (copied to a spool directory first, with a
sha256 manifest, see ``soupkitchen.artifacts``) and registrations wait in order in an outbox and are sent
with the next call once MLflow and S3 answer again (backing off while they do not). ``finish`` keeps
retrying for ``tracking.upload_retry_s`` seconds and then logs a summary of whatever is still undelivered
(the spooled files stay on disk).
"""

from __future__ import annotations

import functools
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

METRICS_PER_BATCH = 1000  # MLflow's log_batch limits
PARAMS_PER_BATCH = 100
RUN_KEY, PARENT_KEY = "soupkitchen.run_key", "soupkitchen.parent_key"
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


@functools.cache
def outage_errors() -> tuple[type[BaseException], ...]:
    """What an unreachable or failing MLflow server or S3 endpoint raises (requests' errors are OSErrors)."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError
    from mlflow.exceptions import MlflowException

    return (MlflowException, OSError, BotoCoreError, ClientError, Boto3Error)


def mlflow_client(recipe: Recipe):
    import mlflow

    return mlflow.MlflowClient(tracking_uri(recipe))


def experiment_id(client, recipe: Recipe) -> str:
    """The id of ``tracking.experiment``, created (with our artifact location) on first use."""
    exp = client.get_experiment_by_name(recipe.tracking.experiment)
    if exp:
        return exp.experiment_id
    return client.create_experiment(
        recipe.tracking.experiment, artifact_location=artifact_location(tracking_uri(recipe))
    )


def _set_parent(client, run_id: str, parent_run_id: str) -> None:
    client.set_tag(run_id, "mlflow.parentRunId", parent_run_id)
    client.set_tag(run_id, "soupkitchen.parent_run", parent_run_id)


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
    """One MLflow run (optionally the child of the run whose key is ``parent``) with an outbox for its
    params, metrics and artifacts.

    The run is created by the first delivery that reaches MLflow, not in ``__init__``: a job started while
    the tracking server is down trains on and its run appears, with everything logged so far, once the
    server answers. ``key`` (tag ``soupkitchen.run_key``) names the run before MLflow has given it an id:
    creation looks the key up first, so a retried or resumed creation never makes a second run, and a child
    created before its parent is linked (``mlflow.parentRunId``) by whichever of the two is created last.
    """

    def __init__(
        self,
        recipe: Recipe,
        run_name: str,
        parent: str | None = None,
        tags: dict | None = None,
        key: str | None = None,
    ):
        import yaml
        from mlflow.entities import Param

        for k, v in _CLIENT_RETRIES.items():
            os.environ.setdefault(k, v)
        self.recipe = recipe
        self.client = mlflow_client(recipe)
        self.key = key or uuid.uuid4().hex
        self.parent = parent
        self.run_name = run_name
        self.tags = {"soupkitchen.recipe": recipe.name, RUN_KEY: self.key, **(tags or {})}
        if parent:
            self.tags[PARENT_KEY] = parent
        self.run_id: str | None = None  # MLflow's id, once the run exists
        self.artifact_uri: str | None = None
        self.parent_run_id: str | None = None
        self._experiment_id: str | None = None
        self.params = [Param(k, v) for k, v in flat_params(to_dict(recipe)).items()]
        self.pending: list = []
        self.uploads: list[_Upload] = []
        self.retry_s = recipe.tracking.upload_retry_s
        self._retry_at, self._backoff = 0.0, 1.0
        self.undelivered: dict = {}
        self.spool = data_dir() / "spool" / self.key
        self.log_text("recipe.yaml", yaml.safe_dump(to_dict(recipe), sort_keys=False))

    def _create_run(self) -> None:
        """Find (by key) or create the run, then link it to its parent if the parent exists yet."""
        if self._experiment_id is None:
            self._experiment_id = experiment_id(self.client, self.recipe)
        found = self._runs_tagged(RUN_KEY, self.key)
        run = (
            found[0]
            if found
            else self.client.create_run(self._experiment_id, tags=self.tags, run_name=self.run_name)
        )
        self.run_id, self.artifact_uri = run.info.run_id, run.info.artifact_uri
        log.info("MLflow run %s (%s)", self.run_id, self.run_name)

    def _link_parent(self) -> None:
        if self.parent and self.parent_run_id is None and self.run_id is not None:
            found = self._runs_tagged(RUN_KEY, self.parent)
            if found:
                self.parent_run_id = found[0].info.run_id
                _set_parent(self.client, self.run_id, self.parent_run_id)

    def _adopt_children(self) -> None:
        """Link the children created before this run existed (they could not name its id)."""
        for child in self._runs_tagged(PARENT_KEY, self.key):
            if "mlflow.parentRunId" not in child.data.tags:
                _set_parent(self.client, child.info.run_id, self.run_id)

    def _runs_tagged(self, tag: str, value: str) -> list:
        return self.client.search_runs(
            [self._experiment_id], filter_string=f"tags.`{tag}` = '{value}'", max_results=100
        )

    def log_params(self, params: dict[str, object]) -> None:
        """Params beyond the recipe's (a trial's searched values), through the outbox."""
        from mlflow.entities import Param

        self.params += [Param(k, str(v)[:6000]) for k, v in params.items()]
        self.flush()

    def log_file(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """One file as an artifact (under ``artifact_path``), copied to the spool first like checkpoints."""
        staged = self._spool_dir() / Path(path).name
        shutil.copy2(path, staged)
        self.uploads.append(_Upload(staged, artifact_path))
        self.flush()

    def log_text(self, name: str, text: str) -> None:
        """``text`` as the artifact file ``name``, written to the spool and sent through the outbox."""
        staged = self._spool_dir() / name
        staged.write_text(text)
        self.uploads.append(_Upload(staged, None))
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
            if self.run_id is None:
                self._create_run()
                self._link_parent()
            while self.params:
                self.client.log_batch(self.run_id, params=self.params[:PARAMS_PER_BATCH])
                del self.params[:PARAMS_PER_BATCH]
            while self.pending:
                self.client.log_batch(self.run_id, metrics=self.pending[:METRICS_PER_BATCH])
                del self.pending[:METRICS_PER_BATCH]
            while self.uploads:
                self._deliver(self.uploads[0])
                self.uploads.pop(0)
        except outage_errors() as e:  # tracking outages must not stop training; bugs still raise
            self._retry_at = time.time() + self._backoff
            self._backoff = min(2 * self._backoff, 60.0)
            log.warning(
                "MLflow/S3 unavailable (%s: %s); buffered %s%d metric values and %d artifacts for retry",
                type(e).__name__,
                str(e)[:300],
                "the run itself, " if self.run_id is None else "",
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
        if self.run_id is not None:
            try:
                self._link_parent()
                self._adopt_children()
                self.client.set_terminated(self.run_id, status)
            except outage_errors() as e:
                log.warning("could not close MLflow run %s: %s", self.run_id, e)
        self.undelivered = {
            "run": self.run_id is None,
            "params": len(self.params),
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
        if self.run_id is None or self.pending or self.uploads:
            lines = (
                ["the run itself"] * (self.run_id is None)
                + [f"{len(self.pending)} metric values"]
                + [
                    f"artifact {a['artifact_path']} (kept at {a['spooled_at']})"
                    + (f", registration of {a['model']}" if a["model"] else "")
                    for a in self.undelivered["artifacts"]
                ]
            )
            name = self.run_id or f"{self.run_name} (key {self.key})"
            log.error("MLflow run %s: never uploaded: %s", name, "; ".join(lines))
        return (self.run_id is None) + len(self.pending) + len(self.uploads)


def model_name(recipe: Recipe, suffix: str) -> str:
    """Registered model name: ``<registered_model_prefix>-<recipe name>-<suffix>``."""
    return f"{recipe.tracking.registered_model_prefix}-{recipe.name}-{suffix}"


class BackboneLogger(RunLogger):
    """The MLflow run of one backbone (a child of the ``train_backbones`` run). Its key follows from the
    parent's, so a worker group restarted from a checkpoint goes on logging into the same run."""

    def __init__(self, recipe: Recipe, spec, parent: str | None = None):
        self.spec = spec
        tags = {"soupkitchen.backbone_weights": str(spec.weights)}
        super().__init__(recipe, spec.name, parent, tags, key=f"{parent}.{spec.name}" if parent else None)

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
        self.log_text("reward_normalizer.json", json.dumps(state, indent=1))
