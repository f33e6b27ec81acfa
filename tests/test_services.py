"""infra/: the cluster manifests (checked without a cluster) and the local services's start/stop behaviour."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from soupkitchen.config import ConfigError
from soupkitchen.services import ServicesConfig, mlflow_service, read_pid, s3_service, start_service
from soupkitchen.tracking import check_tracking_uri

INFRA = Path(__file__).resolve().parents[1] / "infra"
PLACEHOLDERS = {"${MLFLOW_TRACKING_URI}", "${S3_BUCKET}"}
K8S = {p.name: p for p in (INFRA / "k8s").glob("*.yaml")}
REQUIRED = {
    "RayCluster": ["spec.headGroupSpec.template.spec.containers", "spec.workerGroupSpecs"],
    "RayJob": ["spec.entrypoint", "spec.runtimeEnvYAML", "spec.clusterSelector"],
    "RayService": [
        "spec.serveConfigV2",
        "spec.rayClusterConfig.headGroupSpec",
        "spec.rayClusterConfig.workerGroupSpecs",
    ],
}


def _get(doc, dotted):
    for part in dotted.split("."):
        doc = doc[part]
    return doc


def _images(doc) -> set[str]:
    if isinstance(doc, dict):
        return {v for k, v in doc.items() if k == "image" and isinstance(v, str)} | {
            i for v in doc.values() for i in _images(v)
        }
    if isinstance(doc, list):
        return {i for v in doc for i in _images(v)}
    return set()


def _pyproject_deps() -> set[str]:
    deps = tomllib.loads((INFRA.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    return {d for d in deps if not d.startswith("ray")}


def test_manifests_have_required_fields_one_image_and_only_the_two_placeholders():
    assert set(K8S) == {"raycluster.yaml", "rayjob-train.yaml", "rayservice-serve.yaml"}
    texts = {n: p.read_text() for n, p in K8S.items()} | {"ray-up.yaml": (INFRA / "ray-up.yaml").read_text()}
    images = set()
    for name, text in texts.items():
        found = set(re.findall(r"\$\{[A-Z0-9_]+\}", text))
        assert found == PLACEHOLDERS, f"{name}: placeholders {found}"
        doc = yaml.safe_load(text)
        images |= _images(doc)
        if name == "ray-up.yaml":
            for key in (
                "cluster_name",
                "provider",
                "available_node_types",
                "head_node_type",
                "setup_commands",
            ):
                assert key in doc, f"ray-up.yaml: {key} missing"
            assert doc["head_node_type"] in doc["available_node_types"]
            continue
        assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"]
        for field in REQUIRED[doc["kind"]]:
            assert _get(doc, field), f"{name}: {field} empty"
    assert len(images) == 1 and images.pop().startswith("rayproject/ray:2.")


def test_rayjob_targets_the_raycluster_and_runs_an_existing_job_with_every_dependency():
    cluster = yaml.safe_load(K8S["raycluster.yaml"].read_text())
    job = yaml.safe_load(K8S["rayjob-train.yaml"].read_text())
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    script = job["spec"]["entrypoint"].split()[1]
    assert (INFRA.parent / script).is_file()
    recipe = job["spec"]["entrypoint"].split("--recipe")[1].split()[0]
    assert (INFRA.parent / "platform" / "soupkitchen" / "recipes" / f"{recipe}.yaml").is_file()
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert env["env_vars"]["PYTHONPATH"] == "platform" and env["working_dir"].startswith("s3://${S3_BUCKET}/")
    assert set(env["pip"]) == _pyproject_deps()
    serve = yaml.safe_load(yaml.safe_load(K8S["rayservice-serve.yaml"].read_text())["spec"]["serveConfigV2"])
    app = serve["applications"][0]
    assert re.fullmatch(r"serve\.\w+:\w+", app["import_path"])
    assert app["runtime_env"]["working_dir"] == env["working_dir"]
    assert app["args"]["soup"].startswith("models:/soup-")
    from soupkitchen.serving import ServeOptions

    ServeOptions.from_args(app["args"])  # every key is a valid ServeOptions field
    local = yaml.safe_load((INFRA.parent / "serve" / "config.yaml").read_text())["applications"][0]
    assert local["import_path"] == app["import_path"] == "serve.app:app"
    ServeOptions.from_args(local["args"])


def _containers(doc) -> list[dict]:
    if isinstance(doc, dict):
        here = doc.get("containers", [])
        return list(here) + [c for k, v in doc.items() if k != "containers" for c in _containers(v)]
    if isinstance(doc, list):
        return [c for v in doc for c in _containers(v)]
    return []


def test_ray_token_auth_reaches_every_node_and_the_submitter():
    """KubeRay: every container (head, every worker group, the RayJob submitter) runs with
    RAY_AUTH_MODE=token and the one token from the same secret; `ray up`: the head and the workers start
    with RAY_AUTH_MODE=token and get the same token file."""
    for name, path in K8S.items():
        containers = _containers(yaml.safe_load(path.read_text()))
        assert containers, name
        for c in containers:
            env = {e["name"]: e for e in c.get("env", [])}
            assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{name}: {c['name']}"
            ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "soupkitchen-ray-token", "key": "auth_token"}, f"{name}: {c['name']}"
    up = yaml.safe_load((INFRA / "ray-up.yaml").read_text())
    assert up["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in up[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    serve_env = [
        e for c in _containers(yaml.safe_load(K8S["rayservice-serve.yaml"].read_text())) for e in c["env"]
    ]
    keys = [e for e in serve_env if e["name"] == "SOUPKITCHEN_API_KEY"]
    assert keys and all("value" not in e and e["valueFrom"]["secretKeyRef"]["name"] for e in keys)


def test_services_config_and_tracking_uri_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"s3_port: .*1024\.\.65535.*--s3-port"):
        ServicesConfig(tmp_path, s3_port=80).validate()
    with pytest.raises(ConfigError, match="every service needs its own port"):
        ServicesConfig(tmp_path, s3_port=25600, mlflow_port=25600).validate()
    with pytest.raises(ConfigError, match="bucket: 'My_Bucket' is not a valid S3 bucket"):
        ServicesConfig(tmp_path, bucket="My_Bucket").validate()
    with pytest.raises(ConfigError, match="host: the local services binds loopback only"):
        ServicesConfig(tmp_path, host="0.0.0.0").validate()
    with pytest.raises(ConfigError, match=r"tracking.tracking_uri: 'localhost:5000' is not a tracking URI"):
        check_tracking_uri("localhost:5000", "tracking.tracking_uri")
    assert check_tracking_uri("http://127.0.0.1:25556", "x")


def test_second_start_keeps_the_running_services_and_a_taken_port_is_refused(local_services, tmp_path):
    for svc in (s3_service(local_services), mlflow_service(local_services)):
        pid = read_pid(svc.pid_file(local_services))
        assert pid is not None
        assert start_service(svc, local_services) == "running"
        assert read_pid(svc.pid_file(local_services)) == pid
    ports = {"s3_port": local_services.mlflow_port, "mlflow_port": local_services.s3_port}
    other = ServicesConfig(tmp_path, **ports).validate()
    with pytest.raises(ConfigError, match=rf"port {local_services.mlflow_port} .* taken .*--s3-port"):
        start_service(s3_service(other), other)
