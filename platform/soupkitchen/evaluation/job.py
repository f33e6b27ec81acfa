"""The whole evaluation job (``jobs/evaluate_front.py``, ``jobs/compare.py``): sources → plan → run →
outputs, with the metrics and files logged to one MLflow run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from soupkitchen.config import Recipe
from soupkitchen.evaluation.plan import build_plan
from soupkitchen.evaluation.report import write_outputs
from soupkitchen.evaluation.run import EvalResult, evaluate
from soupkitchen.evaluation.sources import read_source
from soupkitchen.hoe import ExpertSet, load_experts
from soupkitchen.methods import Method, Mode
from soupkitchen.tracking import RunLogger
from soupkitchen.value_models import load_value_models


def evaluate_front(
    recipe: Recipe,
    paths: dict[str, str | Path | None],
    out: Path,
    include_sft: bool = True,
    split: str = "eval",
    modes: Sequence[Mode] = (),
    gamma: float | None = None,
    value_models: str | Path | None = None,
) -> tuple[EvalResult, dict[str, Path]]:
    """Evaluate every given method (``{method: manifest or bundle}``, + SFT, + guided ``modes``), write the
    outputs under ``out`` and log them to MLflow; returns the result and the files written. ``paths["hoe"]``
    is a HoE directory (``hoe.build``) or a soup bundle carrying one."""
    paths = dict(paths)
    hoe = read_hoe(paths.pop(Method.HOE, None))
    sources = {m: read_source(p, m) for m, p in paths.items() if p}
    values = load_value_models(value_models) if value_models else None
    plan = build_plan(
        recipe, sources, include_sft=include_sft, modes=modes, gamma=gamma, value_models=values, hoe=hoe
    )
    tags = {"soupkitchen.job": "evaluate_front"}
    with RunLogger(recipe, f"evaluate_front:{recipe.name}", tags=tags) as logger:
        result = evaluate(plan, recipe, split=split)
        files = write_outputs(result, out, title=f"{recipe.name}: {', '.join(f.label for f in plan.fronts)}")
        metrics = {
            f"{label}/{k}": v for label, m in result.metrics.items() for k, v in m.items() if math.isfinite(v)
        }
        metrics["eval_seconds"] = result.seconds
        metrics["generated_tokens_per_s"] = result.generated_tokens / max(result.seconds, 1e-9)
        metrics |= {f"{label}/{k}": v for label, c in result.costs.items() for k, v in c.items()}
        logger.log_metrics(metrics, 0)
        for path in files.values():
            logger.log_file(path)
    return result, files


def read_hoe(path: str | Path | None) -> ExpertSet | None:
    """The expert set of ``--hoe``: a HoE directory, or a soup bundle directory with one inside."""
    if not path:
        return None
    path = Path(path)
    if (path / "bundle.json").is_file() and (path / "hoe").is_dir():
        path = path / "hoe"
    return load_experts(path)
