"""train_backbones end to end: `ray job submit` against a real `ray start --head`, kill and resume, and
bad recipes rejected before any worker starts."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from soupkitchen.config import ConfigError, load_recipe

REPO = Path(__file__).resolve().parents[1]


def _submit(head, *job_args: str, script: str = "jobs/train_backbones.py") -> str:
    out = head["ray"](
        "job",
        "submit",
        "--address",
        head["address"],
        "--no-wait",
        "--runtime-env",
        "jobs/runtime_env.yaml",
        "--",
        "python",
        script,
        *job_args,
        env=head["env"],
    )
    return re.search(r"raysubmit_\w+", out.stdout + out.stderr).group(0)


def _status(head, job_id: str) -> str:
    proc = head["ray"]("job", "status", "--address", head["address"], job_id, env=head["env"])
    out = proc.stdout + proc.stderr  # the CLI logs its status lines to stderr
    if found := re.search(r"Status for job '[^']+': (\w+)", out):
        return found.group(1)
    for word, status in (("succeeded", "SUCCEEDED"), ("was stopped", "STOPPED"), ("failed", "FAILED")):
        if f"Job '{job_id}' {word}" in out:
            return status
    raise AssertionError(f"no status for {job_id}: {out[-2000:]}")


def _wait(head, job_id: str, timeout: float = 600) -> str:
    deadline = time.time() + timeout
    while (status := _status(head, job_id)) in ("PENDING", "RUNNING"):
        if time.time() > deadline:
            tail = _logs(head, job_id)[-3000:]
            raise AssertionError(f"job {job_id} still {status} after {timeout}s; its log ends:\n{tail}")
        time.sleep(3)
    return status


def _logs(head, job_id: str) -> str:
    return head["ray"]("job", "logs", "--address", head["address"], job_id, env=head["env"]).stdout


def _checkpoints(storage: Path, run: str, backbone: str) -> list[Path]:
    return sorted((storage / f"{run}-{backbone}").glob("checkpoint_*/state.json"))


def _steps(log: str, backbone: str) -> list[int]:
    return [int(s) for s in re.findall(rf"\[{backbone}\] step (\d+)/", log)]


@pytest.mark.slow
def test_bone_soup_backbones_through_ray_job_submit_with_kill_and_resume(ray_head, tmp_path):
    storage, run = tmp_path / "runs", "tiny-bs"
    args = ["--recipe", "tiny", "--run-name", run, "--storage", str(storage), "--ppo.steps", "20"]

    # 1. Start, wait for both backbones' first checkpoint (every 5 steps), then kill the job.
    job = _submit(ray_head, *args)
    deadline = time.time() + 400
    while not all(_checkpoints(storage, run, f"bone_soup-{i}") for i in (0, 1)):
        assert _status(ray_head, job) in ("PENDING", "RUNNING"), _logs(ray_head, job)[-3000:]
        assert time.time() < deadline, "no checkpoint within 400 s"
        time.sleep(2)
    ray_head["ray"]("job", "stop", "--address", ray_head["address"], job, env=ray_head["env"], check=False)
    assert _wait(ray_head, job, 120) in ("STOPPED", "FAILED")
    killed_at = {
        i: json.loads(_checkpoints(storage, run, f"bone_soup-{i}")[-1].read_text())["data_position"]
        for i in (0, 1)
    }
    assert all(0 < s < 20 for s in killed_at.values()), killed_at

    # 2. Re-submit with the same run name: it resumes from the checkpoints and finishes.
    job = _submit(ray_head, *args)
    status, log = _wait(ray_head, job), _logs(ray_head, job)
    assert status == "SUCCEEDED", log[-4000:]
    manifest = json.loads((storage / run / "manifest.json").read_text())
    for i, b in enumerate(manifest["backbones"]):
        # Resumed from a registered checkpoint (every 5 steps), not from scratch. The manifest is checked,
        # not the job log: Ray's log forwarding may drop worker lines when a job ends.
        assert 0 < b["resumed_from_step"] <= killed_at[i] and b["resumed_from_step"] % 5 == 0, b
        if steps := _steps(log, f"bone_soup-{i}"):
            assert min(steps) > b["resumed_from_step"], steps  # continued, did not start over
    assert manifest["method"] == "bone_soup" and manifest["beta"] == 0.7
    assert [b["weights"] for b in manifest["backbones"]] == [[0.7, 0.3], [0.3, 0.7]]
    for b in manifest["backbones"]:
        state = json.loads((Path(b["checkpoint"]) / "state.json").read_text())
        assert state["data_position"] == 20 and (Path(b["checkpoint"]) / b["adapter_file"]).exists()
        assert b["reward_normalizer"] == state["trainer"]["normalizer"]

    # 3. Each backbone's scalarised reward rose, and the two lean to opposite objectives.
    for b in manifest["backbones"]:
        start, end = b["rewards_first_steps"], b["rewards_last_steps"]
        h = [sum(w * r[o] for w, o in zip(b["weights"], ("warm", "calm"), strict=True)) for r in (start, end)]
        assert h[1] > h[0] + 0.05, (b["name"], start, end)
    (w0, c0), (w1, c1) = (
        [b["rewards_last_steps"][o] for o in ("warm", "calm")] for b in manifest["backbones"]
    )
    assert w0 > w1 and c0 < c1, manifest["backbones"]


@pytest.mark.slow
def test_one_killed_train_worker_restarts_its_group_from_the_last_checkpoint(ray_head, tmp_path):
    """SIGKILL of one of a backbone's two Ray Train workers mid-run (not the job): FailureConfig restarts
    the worker group from the last reported checkpoint and the run finishes with every step trained."""
    storage, run = tmp_path / "runs", "tiny-wk"
    args = ["--recipe", "tiny", "--method", "morlhf", "--run-name", run, "--storage", str(storage)]
    args += ["--distributed.num_workers", "2", "--distributed.max_failures", "1"]
    args += ["--ppo.steps", "6", "--ppo.checkpoint_every", "2"]
    job = _submit(ray_head, *args)
    deadline = time.time() + 400
    while not _checkpoints(storage, run, "morlhf-0"):
        assert _status(ray_head, job) in ("PENDING", "RUNNING"), _logs(ray_head, job)[-3000:]
        assert time.time() < deadline, "no checkpoint within 400 s"
        time.sleep(1)
    workers = ray_head["actor_pids"]("RayTrainWorker")
    assert len(workers) == 2, workers
    os.kill(max(workers), signal.SIGKILL)  # one worker of the group; the job, Tune and the controller live
    status, log = _wait(ray_head, job), _logs(ray_head, job)
    assert status == "SUCCEEDED", log[-4000:]
    (b,) = json.loads((storage / run / "manifest.json").read_text())["backbones"]
    assert b["resumed_from_step"] in (2, 4), b  # restarted from a checkpoint, not from step 0
    state = json.loads((Path(b["checkpoint"]) / "state.json").read_text())
    assert state["data_position"] == 6 and state["trainer"]["global_step"] == 6, state
    assert len(state["trainer"]["reward_history"]) == 6  # one entry per step: none lost, none twice
    assert not set(ray_head["actor_pids"]("RayTrainWorker")) & set(workers)  # the group was replaced


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--soup.beta", "0.4"], r"soup.beta: β must lie in .*\(0.5, 1\] for n=2"),
        (["--distributed.num_workers", "0"], r"distributed.num_workers: must lie in \[1, inf\)"),
        (["--rewards.0.kind", "sentiment"], "rewards.0.kind: must be one of"),
        (["--rewards.0.params.keywordz", "[a]"], "rewards.0.params.keywordz: unknown key"),
        (["--data.source", "/nonexistent/prompts.jsonl"], "data.source"),
        (["--ppo.algorithm", "grpo"], "lora.target_modules: .*GRPOTrainer never trains"),
    ],
)
def test_bad_recipe_values_fail_before_any_worker_starts(args, fragment, capsys, monkeypatch):
    import jobs.train_backbones as job

    started = []
    monkeypatch.setattr("ray.init", lambda *a, **k: started.append(1))
    assert job.main(["--recipe", "tiny", *args]) == 2
    assert re.search(fragment, capsys.readouterr().err)
    assert not started


def test_preflight_accepts_every_method():
    from soupkitchen.training.launcher import preflight

    recipe = load_recipe("tiny")
    assert len(preflight(recipe, "bone_soup")) == 2
    assert len(preflight(recipe, "morlhf")) == 1
    with pytest.raises(ConfigError):
        preflight(load_recipe("tiny", {"rewards.1.params.keywords": []}), "bone_soup")


@pytest.mark.slow
def test_two_workers_under_zero3_split_the_batch_and_resume_with_their_optimizer_shards(ray_head, tmp_path):
    storage, run = tmp_path / "runs", "tiny-z3"
    common = ["--recipe", "tiny", "--method", "morlhf", "--run-name", run, "--storage", str(storage)]
    common += [
        "--distributed.num_workers",
        "2",
        "--distributed.zero_stage",
        "3",
        "--ppo.checkpoint_every",
        "2",
    ]
    job = _submit(ray_head, *common, "--ppo.steps", "2")
    assert _wait(ray_head, job) == "SUCCEEDED", _logs(ray_head, job)[-4000:]
    first = _checkpoints(storage, run, "morlhf-0")[-1].parent
    assert {p.name for p in first.iterdir()} >= {
        "trainable.safetensors",
        "optimizer-rank0.safetensors",
        "optimizer-rank1.safetensors",
        "state-rank1.json",
    }
    # Extending the run resumes both ranks (weights, ZeRO-3 Adam shards, KL controller) and trains on.
    job = _submit(ray_head, *common, "--ppo.steps", "4")
    status, log = _wait(ray_head, job), _logs(ray_head, job)
    assert status == "SUCCEEDED", log[-4000:]
    assert "[morlhf-0] resumed at step 2/4" in log
    assert max(_steps(log, "morlhf-0")) == 4 and min(_steps(log, "morlhf-0")) == 3


@pytest.mark.slow
def test_compare_trains_each_distinct_policy_once_and_evaluates_all_methods(ray_head, tmp_path):
    """jobs/compare.py through `ray job submit`: BS, RS and MORLHF policies (4 distinct w on tiny: MORLHF at
    μ = e_i is RS) and MOC's one policy train in parallel, RiC in the same reward space; one manifest per
    method and a bundle per soup (carrying MOC, RiC and HoE's experts, built from the RS specialists with a
    router trained after) are written, and every front is evaluated, unseen preferences included."""
    storage, run = tmp_path / "runs", "tiny-cmp"
    out = tmp_path / "out"
    job = ray_head["ray"](
        "job",
        "submit",
        "--address",
        ray_head["address"],
        "--no-wait",
        "--runtime-env",
        "jobs/runtime_env.yaml",
        "--",
        "python",
        "jobs/compare.py",
        "--recipe",
        "tiny-moc",
        "--run-name",
        run,
        "--storage",
        str(storage),
        "--out",
        str(out),
        "--ppo.steps",
        "4",
        "--eval.num_prompts",
        "4",
        "--eval.samples_per_prompt",
        "2",
        "--eval.unseen_groups",
        "1",
        "--eval.unseen_group_size",
        "3",
        "--ric.max_steps",
        "10",
        "--ric.num_prompts",
        "8",
        "--ric.samples_per_prompt",
        "2",
        "--hoe.router_steps",
        "2",
        "--soup.morlhf_preferences",
        "[[1.0, 0.0], [0.0, 1.0]]",  # the RS specialists: 4 distinct PPO policies + MOC (2 CPUs)
        env=ray_head["env"],
    )
    job_id = re.search(r"raysubmit_\w+", job.stdout + job.stderr).group(0)
    # 341 s alone on 2 cores; CI runs it last, after ~35 min of other tests, where 600 s was not enough
    status, log = _wait(ray_head, job_id, timeout=1500), _logs(ray_head, job_id)
    assert status == "SUCCEEDED", log[-4000:]
    union = json.loads((storage / run / "manifest.json").read_text())
    assert [(b["name"], b["weights"]) for b in union["backbones"]] == [
        ("morlhf-0", [1.0, 0.0]),
        ("morlhf-1", [0.7, 0.3]),
        ("morlhf-2", [0.3, 0.7]),
        ("morlhf-3", [0.0, 1.0]),
        ("moc-0", [0.5, 0.5]),  # its own policy (w: only its reward scale)
    ]
    docs = {
        m: json.loads((out / m / "manifest.json").read_text())
        for m in ("bone_soup", "rewarded_soups", "morlhf", "moc", "ric")
    }
    assert (
        docs["moc"]["conditioning"]["kind"] == "preference"
        and docs["ric"]["conditioning"]["kind"] == "rewards"
    )
    assert docs["ric"]["reward_space"] == union["reward_space"]  # RiC trained in the run's one space
    ric, moc = docs.pop("ric"), docs.pop("moc")
    assert moc["backbones"][0]["checkpoint"].rsplit("/", 2)[-2] == "tiny-cmp-moc-0"
    assert docs["bone_soup"]["beta"] == 0.7 and docs["rewarded_soups"]["beta"] is None
    shared = shared_of(union)
    for doc in docs.values():
        assert all(b["checkpoint"] == shared[tuple(b["weights"])] for b in doc["backbones"])
    from soupkitchen.merging import load_bundle

    bundle = load_bundle(out / "bundles" / "bone_soup")
    assert bundle.beta == 0.7 and [c.method for c in bundle.conditioned] == ["moc", "ric"]
    assert bundle.hoe_routers == ["hoe-router0"] and bundle.hoe.manifest.ideal is not None
    assert load_bundle(out / "bundles" / "rewarded_soups").beta is None
    with (out / "eval" / "metrics.csv").open() as f:
        methods = [line.split(",")[0] for line in f][1:]
    grid = ["bone_soup", "bone_soup_a0.2", "rewarded_soups", "morlhf", "moc", "ric"]
    grid += ["hoe", "hoe_lora", "hoe_linear", "sft"]
    unseen = [
        "bone_soup@unseen1",
        "bone_soup_a0.2@unseen1",
        "rewarded_soups@unseen1",
        "moc@unseen1",
        "ric@unseen1",
        "hoe@unseen1",
        "hoe_lora@unseen1",
        "hoe_linear@unseen1",
    ]
    assert methods == grid + unseen
    assert "hypervolume ratio bone_soup/rewarded_soups" in log and "hypervolume ratio moc/bone_soup" in log
    assert "hypervolume ratio hoe/rewarded_soups" in log and "[hoe-router0] step 2/2" in log
    assert "training wall time, MOC / one PPO backbone" in log and ric["backbones"][0]["name"] == "ric-0"
    import mlflow

    client = mlflow.MlflowClient()
    for name in (
        "soup-tiny-moc",
        "soup-tiny-moc-rs",
    ):  # bundles registered, loadable as models:/<name>@candidate
        assert client.get_model_version_by_alias(name, "candidate").version


def test_concurrent_backbones_all_at_once_unless_the_recipe_caps_them():
    from soupkitchen.training.launcher import concurrent_backbones

    assert concurrent_backbones(load_recipe("tiny"), 5) == 5
    capped = load_recipe("tiny", {"distributed.max_concurrent_backbones": 2})
    assert concurrent_backbones(capped, 5) == 2 and concurrent_backbones(capped, 1) == 1


def shared_of(union: dict) -> dict:
    """``{w: checkpoint}`` of the union run's PPO backbones (MOC's policy left out)."""
    return {
        tuple(b["weights"]): b["checkpoint"] for b in union["backbones"] if b["name"].startswith("morlhf")
    }


@pytest.mark.slow
def test_hoe_experts_and_a_router_through_ray_job_submit(ray_head, tiny_policies, tmp_path):
    """jobs/build_hoe.py through `ray job submit`: LoRA experts from the tiny Rewarded Soups specialists,
    their fidelity and z*, one router trained by a Ray Train worker (one progress line per step with its
    OMD-STCH w), the set recorded in hoe.json with the router's checkpoint and copied into a soup bundle."""
    from soupkitchen.hoe import HoEManifest
    from soupkitchen.merging import load_bundle
    from tests.tiny_training import write_soup

    recipe, trained = tiny_policies
    bundle = write_soup(recipe, trained["manifests"]["bone_soup"], None, tmp_path / "soup")
    out, storage = tmp_path / "hoe", tmp_path / "runs"
    rs = str(trained["manifests"]["rewarded_soups"])
    args = ["--recipe", "tiny", "--rewarded-soups", rs, "--out", str(out), "--bundle", str(bundle)]
    args += ["--storage", str(storage), "--run-name", "tiny-hoe", "--hoe.router_steps", "2"]
    args += ["--eval.num_prompts", "6", "--eval.samples_per_prompt", "2"]  # fidelity and z*: a quick look
    job = _submit(ray_head, *args, script="jobs/build_hoe.py")
    status, log = _wait(ray_head, job), _logs(ray_head, job)
    assert status == "SUCCEEDED", log[-4000:]
    assert _steps(log, "hoe-router0") == [1, 2], log[-3000:]
    assert re.search(r"\[hoe-router0\] step 2/2 .* w=\[0\.\d\d 0\.\d\d\]", log)
    doc = HoEManifest.read(out)
    (router,) = doc.routers
    assert router.training["steps"] == 2 and router.training["checkpoint"]
    assert "fidelity hoe-warm" in log and "z* = [" in log
    b = load_bundle(bundle)
    assert b.hoe is not None and b.hoe_routers == ["hoe-router0"] and b.width == b.stack_size + 1
