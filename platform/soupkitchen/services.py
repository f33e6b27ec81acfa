"""The local services on loopback: an S3 endpoint (moto server), an MLflow tracking server (SQLite backend
store, ``s3://`` artifact root on that endpoint) and a Ray head with token auth.

``infra/services.py`` is the command line (``up``/``status``/``down``/``env``); the test fixtures use the same
functions. Each service has a pid file and a health check under the state directory:

- ``start`` waits until a service answers its health check; a service that already answers is left alone
  (a second ``up`` never clobbers running services); a port held by something else is an error naming
  the flag to change.
- ``stop`` ends only the processes these services started (by pid, process group, or for Ray those
  of its own ``--temp-dir``), never every Ray or Python process on the machine.
- moto keeps its objects in memory: ``stop`` snapshots every bucket to ``<state>/s3`` and ``start``
  restores the snapshot, so stopping and restarting the endpoint loses nothing that was uploaded.

MLflow runs with ``--no-serve-artifacts``: clients read and write artifacts in S3 themselves (boto3,
``MLFLOW_S3_ENDPOINT_URL``), as they do on a cluster; the server only keeps runs and the registry.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from soupkitchen.config import ConfigError, Schema

LOOPBACK = "127.0.0.1"
DEFAULT_PORTS = {"s3": 25555, "mlflow": 25556, "ray": 26379, "ray_dashboard": 28265}
# Credentials of the local S3 endpoint (moto accepts any); a real bucket takes the user's own.
LOCAL_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class ServicesConfig(Schema):
    """Where the local services keep their state (pid files, logs, stores; resolved to an absolute path) and
    the loopback ports they listen on (each its own, 1024..65535; ``infra/services.py`` flags). Checked when
    built: a ConfigError names the field (and the flag to change)."""

    state_dir: Path = Field(strict=False)  # a str is read as a path
    host: str = LOOPBACK
    s3_port: int = DEFAULT_PORTS["s3"]
    mlflow_port: int = DEFAULT_PORTS["mlflow"]
    ray_port: int = DEFAULT_PORTS["ray"]
    ray_dashboard_port: int = DEFAULT_PORTS["ray_dashboard"]
    bucket: str = "soupkitchen"
    ray_cpus: int | None = None

    def __init__(self, state_dir: Path | str | None = None, /, **data):
        if state_dir is not None:
            data["state_dir"] = state_dir
        super().__init__(**data)

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, state_dir: Path) -> Path:
        return state_dir.expanduser().resolve()

    @model_validator(mode="after")
    def _loopback_ports_bucket(self):
        if self.host not in (LOOPBACK, "localhost"):
            raise ConfigError(
                "host", f"the local services binds loopback only (127.0.0.1), got {self.host!r}"
            )
        ports = {f: getattr(self, f) for f in ("s3_port", "mlflow_port", "ray_port", "ray_dashboard_port")}
        for name, port in ports.items():
            if not 1024 <= port <= 65535:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(name, f"must be an integer port in 1024..65535, got {port!r} (set {flag})")
        if len(set(ports.values())) != len(ports):
            raise ConfigError("ports", f"every service needs its own port, got {ports}")
        validate_bucket(self.bucket, "bucket")
        return self

    def validate(self) -> ServicesConfig:
        """The config itself: it is checked whenever it is built or a field is assigned."""
        return self

    @property
    def s3_endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.s3_port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{LOOPBACK}:{self.mlflow_port}"

    @property
    def artifact_root(self) -> str:
        return f"s3://{self.bucket}/mlflow"

    @property
    def ray_dashboard(self) -> str:
        return f"http://{LOOPBACK}:{self.ray_dashboard_port}"

    def client_env(self) -> dict[str, str]:
        """What a job (or a test) needs in its environment to use these services."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "RAY_ADDRESS": self.ray_dashboard,
            "RAY_AUTH_MODE": "token",
            **LOCAL_AWS,
        }


def validate_bucket(bucket: str, path: str) -> str:
    import re

    if not isinstance(bucket, str) or not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise ConfigError(path, f"{bucket!r} is not a valid S3 bucket name (3-63 chars: a-z 0-9 . -)")
    return bucket


def port_open(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def http_ok(url: str, timeout: float = 2.0, also: tuple[int, ...] = ()) -> bool:
    """GET ``url`` answers 2xx (or one of the ``also`` codes)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except urllib.error.HTTPError as e:
        return e.code in also
    except Exception:  # noqa: BLE001 - any other failure means "not healthy yet"
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie (our own exited child) is not alive
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:  # noqa: BLE001
        return True


@dataclass
class Service:
    """One long-running process of the local services: how to start it and how to tell it is ready."""

    name: str
    port: int
    port_flag: str
    argv: list[str]
    healthy: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    after_start: Callable[[], None] | None = None
    before_stop: Callable[[], None] | None = None

    def pid_file(self, cfg: ServicesConfig) -> Path:
        return cfg.state_dir / f"{self.name}.pid"

    def log_file(self, cfg: ServicesConfig) -> Path:
        return cfg.state_dir / f"{self.name}.log"


def read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def start_service(svc: Service, cfg: ServicesConfig, timeout: float = 300.0) -> str:
    """Start ``svc`` unless it already runs; wait for its health check. Returns 'started' or 'running'."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    pid = read_pid(svc.pid_file(cfg))
    if svc.healthy():
        return "running"
    if pid is not None:
        raise RuntimeError(
            f"{svc.name}: process {pid} (pid file {svc.pid_file(cfg)}) runs but does not answer its health "
            f"check; see {svc.log_file(cfg)}, or `infra/services.py down` first"
        )
    if port_open(svc.port):
        raise ConfigError(
            svc.port_flag.lstrip("-").replace("-", "_"),
            f"port {svc.port} on {LOOPBACK} is taken by another process; choose another with {svc.port_flag}",
        )
    log = open(svc.log_file(cfg), "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        svc.argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **svc.env},
        start_new_session=True,  # its own process group: stop ends it and its workers, nothing else
    )
    log.close()
    svc.pid_file(cfg).write_text(str(proc.pid))
    deadline = time.time() + timeout
    while not svc.healthy():
        if proc.poll() is not None or time.time() > deadline:
            _terminate_group(proc.pid)
            svc.pid_file(cfg).unlink(missing_ok=True)
            tail = svc.log_file(cfg).read_text(errors="replace")[-2000:]
            why = (
                f"exited with {proc.returncode}"
                if proc.returncode is not None
                else f"not ready in {timeout}s"
            )
            raise RuntimeError(f"{svc.name} {why}; last log lines ({svc.log_file(cfg)}):\n{tail}")
        time.sleep(0.3)
    if svc.after_start:
        svc.after_start()
    return "started"


def _terminate_group(pid: int, grace: float = 15.0) -> None:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid == os.getpgid(0):  # never signal our own group
        os.kill(pid, signal.SIGTERM)
    else:
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.time() + grace
    while _pid_alive(pid) and time.time() < deadline:
        time.sleep(0.2)
    if _pid_alive(pid):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it was our child


def stop_service(svc: Service, cfg: ServicesConfig) -> str:
    pid = read_pid(svc.pid_file(cfg))
    if pid is None:
        svc.pid_file(cfg).unlink(missing_ok=True)
        return "not running"
    if svc.before_stop and svc.healthy():
        svc.before_stop()
    _terminate_group(pid)
    svc.pid_file(cfg).unlink(missing_ok=True)
    return "stopped"


# --- S3 (moto server) ---------------------------------------------------------------------------------------


def s3_client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=LOCAL_AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_AWS["AWS_SECRET_ACCESS_KEY"],
        region_name=LOCAL_AWS["AWS_DEFAULT_REGION"],
        config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=60),
    )


def snapshot_s3(endpoint: str, directory: Path) -> int:
    """Every bucket's objects → ``directory/<bucket>/<key>`` (replacing the previous snapshot)."""
    s3 = s3_client(endpoint)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    count = 0
    for b in s3.list_buckets()["Buckets"]:
        (tmp / b["Name"]).mkdir(parents=True, exist_ok=True)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b["Name"]):
            for obj in page.get("Contents", []):
                dest = tmp / b["Name"] / obj["Key"]
                dest.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(b["Name"], obj["Key"], str(dest))
                count += 1
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
    return count


def restore_s3(endpoint: str, directory: Path, bucket: str) -> int:
    """Create ``bucket`` and every snapshotted bucket, and upload the snapshot's objects."""
    s3 = s3_client(endpoint)
    existing = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    buckets = {bucket} | (
        {p.name for p in directory.iterdir() if p.is_dir()} if directory.is_dir() else set()
    )
    count = 0
    for name in sorted(buckets):
        if name not in existing:
            s3.create_bucket(Bucket=name)
        root = directory / name
        for f in sorted(root.rglob("*")) if root.is_dir() else []:
            if f.is_file():
                s3.upload_file(str(f), name, f.relative_to(root).as_posix())
                count += 1
    return count


def s3_service(cfg: ServicesConfig) -> Service:
    snap = cfg.state_dir / "s3"
    return Service(
        name="s3",
        port=cfg.s3_port,
        port_flag="--s3-port",
        argv=[sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(cfg.s3_port)],
        healthy=lambda: http_ok(f"{cfg.s3_endpoint}/moto-api/data.json"),
        after_start=lambda: restore_s3(cfg.s3_endpoint, snap, cfg.bucket),
        before_stop=lambda: snapshot_s3(cfg.s3_endpoint, snap),
    )


# --- MLflow tracking server ---------------------------------------------------------------------------------


def mlflow_service(cfg: ServicesConfig) -> Service:
    exe = Path(sys.executable).with_name("mlflow")
    return Service(
        name="mlflow",
        port=cfg.mlflow_port,
        port_flag="--mlflow-port",
        argv=[
            str(exe) if exe.exists() else "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{cfg.state_dir / 'mlflow.db'}",
            "--default-artifact-root",
            cfg.artifact_root,
            "--no-serve-artifacts",
            "--host",
            LOOPBACK,
            "--port",
            str(cfg.mlflow_port),
            "--workers",
            "1",
        ],
        # No job runner (GenAI scoring jobs): one process less to import pandas/pyarrow at start-up.
        env={
            "MLFLOW_S3_ENDPOINT_URL": cfg.s3_endpoint,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            **LOCAL_AWS,
        },
        healthy=lambda: http_ok(f"{cfg.mlflow_uri}/health"),
    )


# --- Ray head -----------------------------------------------------------------------------------------------


def _ray(cfg: ServicesConfig, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("ray")
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [str(exe) if exe.exists() else "ray", *args],
        env=env,
        check=check,
        capture_output=True,
        text=True,
        timeout=300,
    )


def ray_temp_dir(cfg: ServicesConfig) -> Path:
    # Ray's unix socket paths must stay under ~107 bytes: keep its temp dir short.
    return Path("/tmp") / f"sk-ray-{cfg.ray_port}"


def ray_healthy(cfg: ServicesConfig) -> bool:
    # With RAY_AUTH_MODE=token the dashboard answers 401 to a request without the token: it is up.
    return http_ok(f"{cfg.ray_dashboard}/api/version", also=(401,))


def start_ray(cfg: ServicesConfig, timeout: float = 180.0) -> str:
    if ray_healthy(cfg):
        return "running"
    for port, flag in ((cfg.ray_port, "--ray-port"), (cfg.ray_dashboard_port, "--ray-dashboard-port")):
        if port_open(port):
            raise ConfigError(flag[2:].replace("-", "_"), f"port {port} is taken; choose another with {flag}")
    _ray(cfg, "get-auth-token", "--generate", check=False)  # once: keeps an existing token
    args = [
        "start",
        "--head",
        f"--port={cfg.ray_port}",
        f"--node-ip-address={LOOPBACK}",
        f"--dashboard-host={LOOPBACK}",
        f"--dashboard-port={cfg.ray_dashboard_port}",
        "--include-dashboard=true",
        f"--temp-dir={ray_temp_dir(cfg)}",
        "--disable-usage-stats",
    ]
    if cfg.ray_cpus:
        args.append(f"--num-cpus={cfg.ray_cpus}")
    out = _ray(cfg, *args, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"ray start failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    deadline = time.time() + timeout
    while not ray_healthy(cfg):
        if time.time() > deadline:
            raise RuntimeError(f"Ray dashboard {cfg.ray_dashboard} not ready in {timeout}s")
        time.sleep(1)
    return "started"


def _ray_processes(cfg: ServicesConfig) -> list:
    """Processes of this set's Ray head: those whose command line names its own temp dir or GCS port."""
    import psutil

    marks = (str(ray_temp_dir(cfg)), f"--gcs_server_port={cfg.ray_port}", f"{LOOPBACK}:{cfg.ray_port}")
    procs = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["pid"] != os.getpid() and any(m in cmd for m in marks):
            procs.append(p)
    return procs


def stop_ray(cfg: ServicesConfig, grace: float = 15.0) -> str:
    import psutil

    procs = _ray_processes(cfg)
    if not procs:
        return "not running"
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    return "stopped"


# --- all services ----------------------------------------------------------------------------------------


def services(cfg: ServicesConfig) -> list[Service]:
    """In start order (MLflow needs S3 for its artifact root)."""
    return [s3_service(cfg), mlflow_service(cfg)]


def up(cfg: ServicesConfig, with_ray: bool = True) -> dict[str, str]:
    cfg.validate()
    out = {svc.name: start_service(svc, cfg) for svc in services(cfg)}
    if with_ray:
        out["ray"] = start_ray(cfg)
    return out


def down(cfg: ServicesConfig, with_ray: bool = True) -> dict[str, str]:
    cfg.validate()
    out = {}
    if with_ray:
        out["ray"] = stop_ray(cfg)
    for svc in reversed(services(cfg)):
        out[svc.name] = stop_service(svc, cfg)
    return out


def status(cfg: ServicesConfig) -> dict[str, bool]:
    cfg.validate()
    return {**{svc.name: svc.healthy() for svc in services(cfg)}, "ray": ray_healthy(cfg)}
