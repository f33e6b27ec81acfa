"""MLflow tracking for jobs. With no ``tracking.tracking_uri`` (and no MLFLOW_TRACKING_URI) runs go to a
local SQLite store under the data directory, so every job is tracked without any server running.

Logging never stops training: a failed call is kept and retried with the next one, and ``finish`` reports
what could still not be delivered.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from soupkitchen.config import Recipe, to_dict

log = logging.getLogger("soupkitchen.tracking")


def data_dir() -> Path:
    from soupkitchen.models import cache_root

    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    return root


def tracking_uri(recipe: Recipe | None = None) -> str:
    if recipe is not None and recipe.tracking.tracking_uri:
        return recipe.tracking.tracking_uri
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{data_dir() / 'mlflow.db'}"


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


class RunLogger:
    """One MLflow run (optionally nested under ``parent_run_id``) with buffered, retried metric logging."""

    def __init__(
        self, recipe: Recipe, run_name: str, parent_run_id: str | None = None, tags: dict | None = None
    ):
        import mlflow

        self.mlflow = mlflow
        self.client = mlflow.MlflowClient(tracking_uri(recipe))
        self.pending: list = []
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
            all_tags["mlflow.parentRunId"] = parent_run_id
        self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=all_tags).info.run_id
        params = flat_params(to_dict(recipe))
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k.replace("/", "."), float(v), now, step) for k, v in metrics.items()]
        try:
            self.client.log_batch(self.run_id, metrics=self.pending)
            self.pending = []
        except Exception as e:  # noqa: BLE001 - tracking outages must not stop training
            log.warning("MLflow unavailable (%s); %d metric values buffered for retry", e, len(self.pending))

    def finish(self, status: str = "FINISHED") -> int:
        """Flush, close the run and return the number of metric values that could not be delivered."""
        if self.pending:
            self.log_metrics({}, 0)
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as e:  # noqa: BLE001
            log.warning("could not close MLflow run %s: %s", self.run_id, e)
        if self.pending:
            log.error("%d metric values were never uploaded to MLflow run %s", len(self.pending), self.run_id)
        return len(self.pending)


class BackboneLogger(RunLogger):
    """The MLflow run of one backbone (a child of the ``train_backbones`` run)."""

    def __init__(self, recipe: Recipe, spec, parent_run_id: str | None = None):
        super().__init__(
            recipe, spec.name, parent_run_id, {"soupkitchen.backbone_weights": str(spec.weights)}
        )

    def log_step(self, stats: dict[str, float]) -> None:
        self.log_metrics({k: v for k, v in stats.items() if k != "step"}, int(stats["step"]))

    def finish(self, normalizer_state: dict | None = None) -> int:
        if normalizer_state is not None:
            try:
                self.client.log_dict(self.run_id, normalizer_state, "reward_normalizer.json")
            except Exception as e:  # noqa: BLE001
                log.warning("could not log the reward normaliser: %s", e)
        return super().finish()
