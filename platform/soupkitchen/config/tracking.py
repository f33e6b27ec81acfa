"""The section of experiment tracking."""

from __future__ import annotations

from pydantic import Field

from soupkitchen.config.schema import Schema


class TrackingConfig(Schema):
    """MLflow tracking. ``tracking_uri`` None → local SQLite store under the data directory."""

    tracking_uri: str | None = None
    experiment: str = "soupkitchen"
    registered_model_prefix: str = "soup"
    upload_retry_s: float = Field(120.0, ge=0.0)  # how long finish() retries what MLflow/S3 did not take
