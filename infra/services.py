"""Start, check and stop the local services on 127.0.0.1: S3 endpoint (moto), MLflow server, Ray head.

    python infra/services.py up                 # or: make services-up
    python infra/services.py status
    eval "$(python infra/services.py env)"   # MLFLOW_TRACKING_URI, MLFLOW_S3_ENDPOINT_URL, AWS_*, RAY_ADDRESS
    python infra/services.py down               # or: make services-down

Ports (defaults): S3 25555, MLflow 25556, Ray GCS 26379, Ray dashboard 28265; state (pid files, logs,
MLflow SQLite store, S3 snapshot) under ~/.cache/soupkitchen/services. A second ``up`` leaves running
services alone. See ``soupkitchen.services`` for what each command does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from soupkitchen import cli
from soupkitchen.paths import cache_dir
from soupkitchen.services import DEFAULT_PORTS, ServicesConfig, down, status, up


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["up", "status", "down", "env"])
    p.add_argument("--state-dir", default=str(cache_dir("services")), help="pid files, logs, stores")
    p.add_argument("--s3-port", type=int, default=DEFAULT_PORTS["s3"])
    p.add_argument("--mlflow-port", type=int, default=DEFAULT_PORTS["mlflow"])
    p.add_argument("--ray-port", type=int, default=DEFAULT_PORTS["ray"])
    p.add_argument("--ray-dashboard-port", type=int, default=DEFAULT_PORTS["ray_dashboard"])
    p.add_argument("--ray-cpus", type=int, default=None, help="CPUs the Ray head offers (default: all)")
    p.add_argument("--bucket", default="soupkitchen", help="S3 bucket of the MLflow artifact root")
    p.add_argument("--no-ray", action="store_true", help="only S3 and MLflow")
    return p.parse_args(argv)


@cli.entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = ServicesConfig(
        state_dir=Path(args.state_dir),
        s3_port=args.s3_port,
        mlflow_port=args.mlflow_port,
        ray_port=args.ray_port,
        ray_dashboard_port=args.ray_dashboard_port,
        bucket=args.bucket,
        ray_cpus=args.ray_cpus,
    )
    with_ray = not args.no_ray
    try:
        cfg.validate()
        if args.command == "env":
            for k, v in cfg.client_env().items():
                print(f"export {k}={v}")
            return 0
        if args.command == "up":
            for name, state in up(cfg, with_ray).items():
                print(f"{name:<7} {state}")
            print(f"MLflow UI: {cfg.mlflow_uri}   artifacts: {cfg.artifact_root} on {cfg.s3_endpoint}")
            if with_ray:
                print(f"Ray dashboard: {cfg.ray_dashboard}")
            flags = " ".join(a for a in (sys.argv[2:] if argv is None else argv[1:]) if a != "--no-ray")
            print(f'use it: eval "$(python infra/services.py env {flags})"'.replace("env )", "env)"))
        elif args.command == "down":
            for name, state in down(cfg, with_ray).items():
                print(f"{name:<7} {state}")
        else:
            health = status(cfg)
            for name, ok in health.items():
                print(f"{name:<7} {'up' if ok else 'down'}")
            return 0 if all(ok for n, ok in health.items() if with_ray or n != "ray") else 1
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
