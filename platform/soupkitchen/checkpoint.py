"""Checkpoint files: tensors in safetensors, everything else in JSON. Nothing is ever unpickled.

A training checkpoint directory holds
    trainable.safetensors        LoRA adapter + value heads (``PolicyWithValue.trainable_state_dict``)
    optimizer-rank{r}.safetensors  the rank's optimiser tensors (Adam moments), flattened
    state.json                   trainer scalars (KL controller, normaliser, step, RNG), optimiser scalars,
                                 data position, and the sha256 of every file above
Writes go to a temporary directory that is renamed into place, so a killed worker never leaves a
half-written checkpoint behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def flatten_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """torch optimiser ``state_dict`` → (tensors keyed ``state.<param>.<name>``, JSON-able rest)."""
    tensors, scalars = {}, {}
    for pid, pstate in state["state"].items():
        for name, value in pstate.items():
            key = f"state.{pid}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value.detach().cpu().contiguous()
            else:
                scalars[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_training_checkpoint(
    directory: str | os.PathLike,
    trainable: dict[str, torch.Tensor] | None,
    optimizer: tuple[dict[str, torch.Tensor], dict] | None,
    state: dict,
    rank: int = 0,
) -> Path:
    """Write (or, on rank > 0, add this rank's optimiser file to) a checkpoint directory atomically.

    ``optimizer`` is the ``(tensors, meta)`` pair of ``TorchOptimizer``/``DeepSpeedOptimizer.state_dict``."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp"))
    try:
        files = {}
        if trainable is not None:
            save_file(trainable, tmp / "trainable.safetensors")
            files["trainable.safetensors"] = sha256_of(tmp / "trainable.safetensors")
        meta = {}
        if optimizer is not None:
            tensors, meta = optimizer
            name = f"optimizer-rank{rank}.safetensors"
            save_file(tensors, tmp / name)
            files[name] = sha256_of(tmp / name)
        doc = {"files": files, "optimizer": meta, **state}
        (tmp / (f"state-rank{rank}.json" if rank else "state.json")).write_text(json.dumps(doc, indent=1))
        directory.mkdir(exist_ok=True)
        # The state file names the tensor files' sha256: it goes in last, so a kill never leaves a state that
        # points at files from another write.
        for f in sorted(tmp.iterdir(), key=lambda f: f.name.startswith("state")):
            os.replace(f, directory / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _verified(path: Path, expected: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file missing: {path}")
    if sha256_of(path) != expected:
        raise ValueError(
            f"checkpoint file {path} is corrupt (sha256 mismatch); delete the checkpoint to restart"
        )
    return path


def checkpoint_problem(directory: str | os.PathLike, world_size: int = 1) -> str | None:
    """Why ``directory`` is not a complete checkpoint for ``world_size`` ranks (a state file missing or
    unreadable, a file missing, truncated or altered: its sha256 differs from the one recorded), or None."""
    directory = Path(directory)
    for r in range(world_size):
        name = "state.json" if r == 0 else f"state-rank{r}.json"
        try:
            files = json.loads((directory / name).read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"{name} unreadable ({type(e).__name__})"
        for f, digest in files.items():
            if not (directory / f).is_file():
                return f"{f} missing"
            if sha256_of(directory / f) != digest:
                return f"{f} corrupt (sha256 differs from {name}'s)"
    return None


def load_training_checkpoint(directory: str | os.PathLike, rank: int = 0):
    """→ (trainable tensors, this rank's optimiser (tensors, meta) or None, state); verifies every sha256."""
    directory = Path(directory)
    main = json.loads((directory / "state.json").read_text())
    trainable = load_file(
        _verified(directory / "trainable.safetensors", main["files"]["trainable.safetensors"])
    )
    own = main if rank == 0 else json.loads((directory / f"state-rank{rank}.json").read_text())
    name = f"optimizer-rank{rank}.safetensors"
    optimizer = None
    if name in own["files"]:
        tensors = load_file(_verified(directory / name, own["files"][name]))
        optimizer = (tensors, own["optimizer"])
    state = {k: v for k, v in main.items() if k not in ("files", "optimizer")}
    if rank and "trainer" in own:  # each rank resumes its own sampling/shuffling RNG stream
        state["trainer"] = {**state["trainer"], "generator": own["trainer"]["generator"]}
    return trainable, optimizer, state
