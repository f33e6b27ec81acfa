"""Tracking against the real local services (moto S3 server + MLflow server): metrics, recipe, registered
adapters and soup bundles with aliases, load by URI with sha256 verification, an S3 outage mid-run and
MLflow down as a job starts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file, save_file

from soupkitchen.artifacts import MANIFEST, ArtifactIntegrityError, fetch, load_soup, parse_uri, promote
from soupkitchen.checkpoint import sha256_of
from soupkitchen.config import ConfigError, load_recipe, replace
from soupkitchen.data import load_prompt_records
from soupkitchen.merging import set_coefficients, write_bundle
from soupkitchen.services import mlflow_service, s3_client, s3_service, start_service, stop_service
from soupkitchen.tracking import BackboneLogger, RunLogger
from soupkitchen.training.specs import BackboneSpec
from soupkitchen.training.worker import build_trainer, save_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _recipe(stack, **tracking):
    r = load_recipe(
        "tiny", {"ppo.steps": 2, "ppo.batch_size": 4, "ppo.mini_batch_size": 4, "ppo.ppo_epochs": 1}
    )
    r.tracking = replace(r.tracking, tracking_uri=stack.mlflow_uri, experiment="stack-tests", **tracking)
    return r


@pytest.fixture(scope="module")
def trained(local_services, tmp_path_factory):
    """A tiny backbone trained for 2 PPO steps in-process, logged as a child run with its adapter."""
    recipe = _recipe(local_services)
    parent = RunLogger(recipe, "train_backbones:stack-test", tags={"soupkitchen.job": "train_backbones"})
    spec = BackboneSpec("bone_soup-0", [0.7, 0.3])
    logger = BackboneLogger(recipe, spec, parent.key)
    trainer = build_trainer(recipe, spec.weights)
    records = load_prompt_records(recipe.data, "train")[: recipe.ppo.batch_size]
    for _ in range(recipe.ppo.steps):
        logger.log_step(trainer.step([r.prompt for r in records], [r.context for r in records]))
    ckpt = save_checkpoint(trainer, tmp_path_factory.mktemp("ckpt") / "ckpt", {"data_position": 2})
    name = logger.log_adapter(ckpt)
    logger.log_normalizer(trainer.normalizer.state_dict())
    assert logger.finish() == 0 and parent.finish() == 0
    return dataclasses.make_dataclass("T", ["recipe", "parent", "logger", "ckpt", "name", "trainer"])(
        recipe, parent, logger, ckpt, name, trainer
    )


def test_backbone_run_logs_metrics_recipe_and_a_registered_adapter(local_services, trained):
    client = mlflow.MlflowClient(local_services.mlflow_uri)
    run = client.get_run(trained.logger.run_id)
    assert run.info.artifact_uri.startswith(f"s3://{local_services.bucket}/")  # artifacts live in S3
    assert run.data.tags["mlflow.parentRunId"] == trained.parent.run_id
    assert run.data.params["ppo.steps"] == "2" and run.data.params["soup.beta"] == "0.7"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "kl")] == [1, 2]
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"recipe.yaml", "adapter", "reward_normalizer.json"} <= files
    mv = client.get_model_version_by_alias(trained.name, "candidate")
    assert trained.name == "soup-tiny-bone_soup-0" and mv.run_id == run.info.run_id
    assert not mv.current_stage or mv.current_stage == "None"  # aliases, never stages
    local = fetch(f"models:/{trained.name}@candidate", tracking_uri=local_services.mlflow_uri)
    assert sorted(p.name for p in local.iterdir()) == sorted(
        [MANIFEST, "state.json", "trainable.safetensors"]
    )
    assert sha256_of(local / "trainable.safetensors") == sha256_of(trained.ckpt / "trainable.safetensors")
    # the same files by run URI and by the raw s3:// location
    assert sha256_of(
        fetch(f"runs:/{run.info.run_id}/adapter", tracking_uri=local_services.mlflow_uri) / "state.json"
    ) == sha256_of(local / "state.json")
    assert (fetch(f"{run.info.artifact_uri}/adapter") / "trainable.safetensors").is_file()


def _bundle(trained, tmp_path):
    """A 2-adapter soup bundle from the trained backbone (B perturbed: LoRA starts at B = 0, a no-op)."""
    base = load_file(str(trained.ckpt / "trainable.safetensors"))
    gen = torch.Generator().manual_seed(0)
    paths = []
    for i in range(2):
        t = {
            k: (v + 0.2 * torch.randn(v.shape, generator=gen) if "lora_B" in k else v)
            for k, v in base.items()
        }
        save_file(t, str(tmp_path / f"a{i}.safetensors"))
        paths.append((f"bone_soup-{i}", tmp_path / f"a{i}.safetensors"))
    r = trained.recipe
    return write_bundle(
        tmp_path / "soup",
        base=r.model,
        adapters=paths,
        beta=0.7,
        alpha=0.2,
        objectives=r.objectives,
        normalization={o: {"mean": 0.0, "std": 1.0} for o in r.objectives},
        ref_point=[0.0, 0.0],
        lora_config=r.lora,
    )


def test_soup_bundle_round_trips_s3_cache_model_with_identical_outputs(local_services, trained, tmp_path):
    bundle = _bundle(trained, tmp_path)
    logger = RunLogger(trained.recipe, "evaluate_front:stack-test", trained.parent.key)
    name = logger.log_bundle(bundle.directory)
    assert logger.finish() == 0 and name == "soup-tiny"
    version = promote(name, tracking_uri=local_services.mlflow_uri)  # @candidate → @production
    client = mlflow.MlflowClient(local_services.mlflow_uri)
    assert client.get_model_version_by_alias(name, "production").version == version
    loaded = load_soup(
        "models:/soup-tiny@production", cache_dir=tmp_path / "cache", tracking_uri=local_services.mlflow_uri
    )
    assert loaded.directory.is_relative_to(tmp_path / "cache") and loaded.names == bundle.names
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    out = []
    for b in (bundle, loaded):
        model = b.mixed_model(b.load_base_model()[0]).eval()
        set_coefficients(model, b.coefficients([0.6, 0.4]))
        with torch.no_grad():
            out.append(model(input_ids=ids).logits)
    assert torch.equal(out[0], out[1])


def test_corrupt_or_partial_artifacts_are_refused_after_one_retry(local_services, trained, tmp_path, caplog):
    run_id = trained.logger.run_id
    art = f"{mlflow.MlflowClient(local_services.mlflow_uri).get_run(run_id).info.artifact_uri}/adapter"
    good = fetch(art, cache_dir=tmp_path / "c0")
    bucket, key = art.removeprefix("s3://").split("/", 1)
    s3 = s3_client(local_services.s3_endpoint)
    original = s3.get_object(Bucket=bucket, Key=f"{key}/state.json")["Body"].read()
    try:
        s3.put_object(Bucket=bucket, Key=f"{key}/state.json", Body=original[:-5] + b"XXXXX")
        with pytest.raises(ArtifactIntegrityError, match=r"state.json does not match its sha256 \(corrupt\)"):
            fetch(art, cache_dir=tmp_path / "c1")
        assert "retrying once" in caplog.text
        s3.delete_object(Bucket=bucket, Key=f"{key}/state.json")
        with pytest.raises(ArtifactIntegrityError, match="state.json is missing"):
            fetch(art, cache_dir=tmp_path / "c1")
    finally:
        s3.put_object(Bucket=bucket, Key=f"{key}/state.json", Body=original)
    # a damaged cached copy is detected and replaced by a fresh download
    cached = fetch(
        f"runs:/{run_id}/adapter", cache_dir=tmp_path / "c2", tracking_uri=local_services.mlflow_uri
    )
    (cached / "trainable.safetensors").write_bytes(b"truncated")
    again = fetch(
        f"runs:/{run_id}/adapter", cache_dir=tmp_path / "c2", tracking_uri=local_services.mlflow_uri
    )
    assert sha256_of(again / "trainable.safetensors") == sha256_of(good / "trainable.safetensors")


def test_uri_validation_names_the_fix(tmp_path):
    for bad, match in [
        ("models:/soup", "malformed"),
        ("runs:/xyz", "malformed"),
        ("gs://bucket/x", "scheme not supported"),
        (str(tmp_path / "nope"), "does not exist"),
        ("", "is empty"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_uri(bad)
    assert parse_uri("models:/soup-demo@production") == (
        "models",
        {"name": "soup-demo", "alias": "production", "version": None},
    )
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "x.bin").write_bytes(b"abc")
    assert fetch(str(d)) == d  # a plain local directory (no manifest) is used as it is


def test_s3_outage_mid_run_loses_no_checkpoint(local_services, trained, tmp_path):
    recipe = _recipe(local_services, upload_retry_s=0.0)
    logger = RunLogger(recipe, "outage-test")
    ckpt = trained.ckpt
    logger.log_checkpoint(ckpt, "checkpoint-1", files=["state.json"])  # before the outage
    logger.log_metrics({"loss": 1.0}, 1)
    s3 = s3_service(local_services)
    stop_service(s3, local_services)  # S3 endpoint down (MLflow up): the next uploads wait in the outbox
    try:
        logger.log_checkpoint(
            ckpt, "checkpoint-2", files=["trainable.safetensors"], register_as="soup-outage"
        )
        logger.log_metrics({"loss": 0.5}, 2)  # training goes on
        assert len(logger.uploads) == 1 and not logger.flush(force=True)
        other = RunLogger(recipe, "outage-never-back")  # a run that ends while S3 is still down
        other.log_checkpoint(ckpt, "checkpoint", files=["state.json"])
        assert other.finish() == 2  # recipe.yaml + checkpoint, reported, kept on disk
        assert [a["artifact_path"] for a in other.undelivered["artifacts"]] == ["recipe.yaml", "checkpoint"]
        assert all(Path(a["spooled_at"]).exists() for a in other.undelivered["artifacts"])
    finally:
        start_service(s3, local_services)  # restores the objects uploaded before the outage
    assert logger.finish() == 0
    client = mlflow.MlflowClient(local_services.mlflow_uri)
    assert [m.value for m in client.get_metric_history(logger.run_id, "loss")] == [1.0, 0.5]
    assert (
        fetch(f"runs:/{logger.run_id}/checkpoint-1", tracking_uri=local_services.mlflow_uri) / "state.json"
    ).is_file()
    got = fetch("models:/soup-outage@candidate", cache_dir=tmp_path, tracking_uri=local_services.mlflow_uri)
    assert sha256_of(got / "trainable.safetensors") == sha256_of(ckpt / "trainable.safetensors")


def test_mlflow_down_when_a_job_starts_loses_nothing(local_services, trained, tmp_path):
    """The server is down before the runs exist: training goes on, and once it is back the runs appear
    with every param, metric, artifact and registration, the child (created first) linked to its parent."""
    recipe = _recipe(local_services, upload_retry_s=0.0)
    mlf = mlflow_service(local_services)
    records = load_prompt_records(recipe.data, "train")[: recipe.ppo.batch_size]
    stop_service(mlf, local_services)
    try:
        parent = RunLogger(
            recipe, "train_backbones:down-at-start", tags={"soupkitchen.job": "train_backbones"}
        )
        child = BackboneLogger(recipe, BackboneSpec("bone_soup-1", [0.2, 0.8]), parent.key)
        for _ in range(2):  # training goes on while nothing reaches MLflow
            child.log_step(trained.trainer.step([r.prompt for r in records], [r.context for r in records]))
        name = child.log_adapter(trained.ckpt)
        child.log_normalizer(trained.trainer.normalizer.state_dict())
        (tmp_path / "manifest.json").write_text("{}")
        parent.log_file(tmp_path / "manifest.json")
        assert parent.run_id is None and child.run_id is None and len(child.pending) > 0
        never = RunLogger(recipe, "down-throughout")  # a run that ends before the server is back
        assert never.finish() == 2  # the run itself and its recipe.yaml, reported and kept on disk
        assert never.undelivered["run"] and Path(never.undelivered["artifacts"][0]["spooled_at"]).exists()
    finally:
        start_service(mlf, local_services)
    assert child.finish() == 0  # created now, before its parent: it cannot name the parent's id yet
    assert parent.finish() == 0  # created now, it links the child that was created first
    client = mlflow.MlflowClient(local_services.mlflow_uri)
    run = client.get_run(child.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id == run.data.tags["soupkitchen.parent_run"]
    assert run.data.params["ppo.steps"] == "2" and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(child.run_id, "kl")] == [3, 4]
    assert {f.path for f in client.list_artifacts(child.run_id)} >= {
        "adapter",
        "recipe.yaml",
        "reward_normalizer.json",
    }
    assert {f.path for f in client.list_artifacts(parent.run_id)} >= {"manifest.json", "recipe.yaml"}
    got = fetch(f"models:/{name}@candidate", cache_dir=tmp_path / "c", tracking_uri=local_services.mlflow_uri)
    assert sha256_of(got / "trainable.safetensors") == sha256_of(trained.ckpt / "trainable.safetensors")
    # a second logger with the same key (a restarted worker) finds the run instead of making another
    again = BackboneLogger(recipe, BackboneSpec("bone_soup-1", [0.2, 0.8]), parent.key)
    assert again.run_id == child.run_id and again.finish() == 0
