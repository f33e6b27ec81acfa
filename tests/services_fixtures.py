"""The real local services for tests: a moto S3 server and an MLflow tracking server (SQLite store, ``s3://``
artifact root) on 127.0.0.1, started with the same code as ``infra/services.py`` and stopped afterwards."""

from __future__ import annotations

import os

import pytest

from soupkitchen.services import LOCAL_AWS, ServicesConfig, port_open, services, start_service, stop_service

S3_PORT, MLFLOW_PORT = 25555, 25556  # not 5000 (a user's MLflow); moved up if something else holds them


def _free_pair(s3: int, mlflow: int) -> tuple[int, int]:
    while port_open(s3) or port_open(mlflow):
        s3, mlflow = s3 + 10, mlflow + 10
    return s3, mlflow


@pytest.fixture(scope="session")
def local_services(tmp_path_factory):
    """S3 + MLflow up for the session; the client env (S3 endpoint, fake credentials) set while it runs.
    Tests point recipes at it with ``tracking.tracking_uri = local_services.mlflow_uri``."""
    s3_port, mlflow_port = _free_pair(S3_PORT, MLFLOW_PORT)
    cfg = ServicesConfig(
        state_dir=tmp_path_factory.mktemp("services"),
        s3_port=s3_port,
        mlflow_port=mlflow_port,
        bucket="sk-test",
    ).validate()
    env = {"MLFLOW_S3_ENDPOINT_URL": cfg.s3_endpoint, "AWS_MAX_ATTEMPTS": "2", **LOCAL_AWS}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    started = []
    try:
        for svc in services(cfg):
            start_service(svc, cfg)
            started.append(svc)
        yield cfg
    finally:
        for svc in reversed(started):
            stop_service(svc, cfg)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
