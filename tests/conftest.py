"""Shared fixtures: isolated caches and MLflow store per session, and a real local Ray head on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest_plugins = ["services_fixtures"]  # the real S3 + MLflow stack (tests/services_fixtures.py)
REPO = Path(__file__).resolve().parents[1]
RAY_PORT, RAY_DASHBOARD_PORT = 26390, 28270


@pytest.fixture(scope="session", autouse=True)
def _isolated_state(tmp_path_factory):
    """Keep tests off the user's MLflow store; reuse the GGUF cache (dequantising is slow) if present."""
    root = tmp_path_factory.mktemp("state")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield root


def _ray(*args: str, env=None, check=True, timeout=300) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("ray")
    return subprocess.run(
        [str(exe), *args], env=env, check=check, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def _actor_pids(address: str, env: dict, class_suffix: str) -> list[int]:
    """The PIDs of the live actors whose class name ends with ``class_suffix`` (``ray list actors``)."""
    out = _ray("list", "actors", "--address", address, "--format", "json", "--limit", "1000", env=env)
    actors = json.loads(out.stdout)
    return [int(a["pid"]) for a in actors if a["state"] == "ALIVE" and a["class_name"].endswith(class_suffix)]


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """``ray start --head`` on 127.0.0.1 with token auth (Ray 2.60 job server needs it); stopped after."""
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0", RAY_DEDUP_LOGS="0")
    # `python` in a job's entrypoint is looked up on the head's PATH: make it this (virtualenv) interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    _ray("get-auth-token", "--generate", env=env, check=False)
    temp = tmp_path_factory.mktemp("ray")
    _ray("stop", "--force", env=env, check=False)
    _ray(
        "start",
        "--head",
        f"--port={RAY_PORT}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={RAY_DASHBOARD_PORT}",
        "--num-cpus=2",
        "--include-dashboard=true",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
        env=env,
    )
    address = f"http://127.0.0.1:{RAY_DASHBOARD_PORT}"
    deadline = time.time() + 120
    while _ray("job", "list", "--address", address, env=env, check=False).returncode != 0:
        if time.time() > deadline:
            raise RuntimeError("Ray job server did not come up")
        time.sleep(2)
    yield {
        "address": address,
        "env": env,
        "ray": _ray,
        "temp": temp,
        "actor_pids": lambda cls: _actor_pids(address, env, cls),
    }
    _ray("stop", "--force", env=env, check=False)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_policies(tmp_path_factory):
    """The tiny recipe's Bone Soup, Rewarded Soups and MORLHF policies, trained once per session in-process
    (20 PPO steps each; a policy shared by two methods is trained once) with one manifest per method."""
    from soupkitchen.config import load_recipe
    from tests.tiny_training import train_policies

    recipe = load_recipe("tiny")
    return recipe, train_policies(recipe, tmp_path_factory.mktemp("tiny-policies"))


@pytest.fixture(scope="session")
def tiny_value_models(tiny_policies, tmp_path_factory):
    """``(dir, value_models.json, metrics)``: explicit value models for the tiny Bone Soup backbones."""
    from tests.tiny_training import train_value_models

    _, trained = tiny_policies
    return train_value_models(trained["manifests"]["bone_soup"], tmp_path_factory.mktemp("values") / "vm")


@pytest.fixture(scope="session")
def tiny_moc(tiny_policies, tmp_path_factory) -> Path:
    """A tiny MOC policy (4 PPO steps in the tiny policies' reward space): its manifest."""
    from tests.tiny_training import train_moc

    recipe, trained = tiny_policies
    space = next(iter(trained["trainers"].values())).space
    return train_moc(recipe, tmp_path_factory.mktemp("tiny-moc"), space=space)


@pytest.fixture(scope="session")
def tiny_soup(tiny_policies, tiny_value_models, tiny_moc, tiny_hoe, tmp_path_factory) -> Path:
    """The tiny Bone Soup bundle with its value models, a MOC policy and the HoE set: what the serving tests
    deploy."""
    from tests.tiny_training import write_soup

    recipe, trained = tiny_policies
    out = tmp_path_factory.mktemp("soup")
    bs = trained["manifests"]["bone_soup"]
    return write_soup(recipe, bs, tiny_value_models[0], out, tiny_moc, tiny_hoe)


@pytest.fixture(scope="session")
def tiny_hoe(tiny_policies, tmp_path_factory) -> Path:
    """The tiny HoE set of the Rewarded Soups specialists: 2 single + 1 MO LoRA expert, fidelity and z*, one
    router and its single-pool ablation twin (3 PPO steps each, in-process)."""
    from soupkitchen.config import load_recipe
    from tests.tiny_training import train_hoe

    _, trained = tiny_policies
    recipe = load_recipe("tiny", {"hoe.ablation": True})
    return train_hoe(recipe, trained["manifests"]["rewarded_soups"], tmp_path_factory.mktemp("hoe"), 3)
