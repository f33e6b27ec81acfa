"""The evaluation's outputs: the console table, points.csv, metrics.csv, samples.jsonl and front.png."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from soupkitchen.evaluation.run import EvalResult
from soupkitchen.metrics import METRIC_KEYS
from soupkitchen.plotting import pareto_plot

RATIO_PREFIX = "hv_ratio_vs_"


def hypervolume_ratios(result: EvalResult) -> dict[str, tuple[float, float, float]]:
    """``{"bone_soup/sft": (ratio, lo, hi)}``: HV(method) / HV(baseline) with its paired-bootstrap interval,
    for every method against each baseline after it (``bootstrap.default_ratios``)."""
    out = {}
    for label, m in result.metrics.items():
        for key in (k for k in m if k.startswith(RATIO_PREFIX) and not k.endswith(("_lo", "_hi"))):
            out[f"{label}/{key.removeprefix(RATIO_PREFIX)}"] = (m[key], m[f"{key}_lo"], m[f"{key}_hi"])
    return out


TABLE_WIDTH = 120  # the console table wraps into blocks no wider than this
# Console table columns: metric key → header.
TABLE_COLUMNS = {
    "hypervolume": "hypervolume",
    "inner_product": "inner_product",
    "controllability": "controllability",
    "kendall_tau": "kendall_tau",
    "diversity": "mpd",
    "front_length": "front_length",
    "sparsity": "sparsity",
    "spacing": "spacing",
}


def _projection_point(result: EvalResult) -> list[float]:
    """The point Kendall's τ measures angles around (the reference point when the result has none)."""
    point = getattr(result, "projection_ref", None)
    return [float(v) for v in (result.ref_point if point is None else point)]


def _cell(m: dict, key: str) -> str:
    """``value [lo, hi]`` when the metric has an interval, else the value; Kendall's τ with ``p=<p-value>``
    (of the point estimate); ``-`` when the metric is missing."""
    if key not in m:
        return "-"
    cell = f"{m[key]:.4g}"
    if f"{key}_lo" in m and not all(math.isnan(m[k]) for k in (key, f"{key}_lo", f"{key}_hi")):
        cell += f" [{m[key + '_lo']:.3g}, {m[key + '_hi']:.3g}]"
    if key == "kendall_tau" and math.isfinite(m.get("kendall_p", math.nan)):
        cell += f" p={m['kendall_p']:.2g}"
    return cell


def format_table(result: EvalResult) -> str:
    """Console table: one row per method, front metrics with their intervals (Kendall's τ with its p-value,
    mpd = diversity), wrapped into blocks of at most ``TABLE_WIDTH`` characters (each repeating the method
    column), then the reference and projection points and the HV ratios."""
    rows = [
        [fr.label, str(len(fr.preferences)), *(_cell(result.metrics[fr.label], k) for k in TABLE_COLUMNS)]
        for fr in result.plan.fronts
    ]
    head = ["method", "points", *TABLE_COLUMNS.values()]
    widths = [max(len(r[i]) for r in [head, *rows]) + 2 for i in range(len(head))]
    blocks, block = [], []  # column indices after the method column, greedily packed
    for i in range(1, len(head)):
        if block and widths[0] + sum(widths[j] for j in [*block, i]) > TABLE_WIDTH:
            blocks.append(block)
            block = []
        block.append(i)
    blocks.append(block)

    def fmt(r, cols):
        return r[0].ljust(widths[0]) + "".join(r[j].rjust(widths[j]) for j in cols)

    lines = []
    for cols in blocks:
        rule = "-" * (widths[0] + sum(widths[j] for j in cols))
        lines += ([""] if lines else []) + [fmt(head, cols), rule, *(fmt(r, cols) for r in rows)]
    conf = f"{result.intervals.confidence:.0%}" if result.intervals else "95%"
    lines.append(
        f"[lo, hi]: {conf} paired bootstrap over {result.prompts} prompts; all metrics in z units against "
        f"reference point {[round(v, 4) for v in result.ref_point]}"
    )
    lines.append(
        "kendall_tau: Kendall τ-b (MOC Eqs. 24-25) between μ_1 and each point's angle around projection "
        f"point {[round(v, 4) for v in _projection_point(result)]}; p=: its two-sided p-value (scipy)"
    )
    lines.append("mpd: mean pairwise Euclidean distance between a front's points (MOC diversity)")
    lines.append(result.plan.space.describe())
    for label, m in result.metrics.items():
        if "backbone_distance" in m:
            dist = _cell(m, "backbone_distance")
            lines.append(f"backbone separation {label} (mean distance between its backbones, z): {dist}")
    for k, (v, lo, hi) in hypervolume_ratios(result).items():
        lines.append(f"hypervolume ratio {k}: {v:.3f} [{lo:.3f}, {hi:.3f}]" + _verdict(lo, hi))
    for label, c in result.costs.items():
        ratio = c.get("cost_per_token_vs_plain", math.nan)
        lines.append(
            f"cost per generated token {label}: {ratio:.2f}x plain "
            f"({c['forward_rows_per_row']:.1f} forward rows per row, {c['tokens']:.0f} tokens)"
        )
    return "\n".join(lines)


def _verdict(lo: float, hi: float) -> str:
    if lo > 1:
        return "  (above 1)"
    if hi < 1:
        return "  (below 1)"
    return "  (interval contains 1: not separated)"


def metric_columns(result: EvalResult) -> list[str]:
    """metrics.csv columns after ``method``/``points``: each metric (with ``_lo``/``_hi`` where it has an
    interval), then every ``hv_ratio_vs_<den>`` with its bounds."""
    ratios = sorted({k for m in result.metrics.values() for k in m if k.startswith(RATIO_PREFIX)})
    cols = []
    for k in [*METRIC_KEYS, "backbone_distance", *ratios]:
        if k.endswith(("_lo", "_hi")) or not any(k in m for m in result.metrics.values()):
            continue
        cols.append(k)
        if any(f"{k}_lo" in m for m in result.metrics.values()):
            cols += [f"{k}_lo", f"{k}_hi"]
    return cols


def write_outputs(result: EvalResult, out_dir: str | Path, title: str | None = None) -> dict[str, Path]:
    """points.csv (method, μ, c, mean z and raw rewards with the z bounds, length), metrics.csv (one row per
    method, intervals, the reference point, Kendall τ's projection point), front.png (z units, error bars),
    samples.jsonl."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    objs, plan, iv = result.plan.objectives, result.plan, result.intervals
    paths = {
        "points": out / "points.csv",
        "metrics": out / "metrics.csv",
        "plot": out / "front.png",
        "samples": out / "samples.jsonl",
    }
    with paths["points"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "method",
                *(f"mu_{o}" for o in objs),
                *(f"c_{a}" for a in plan.columns),
                *(f"reward_{o}" for o in objs),
                *(f"reward_{o}_{b}" for o in objs for b in ("lo", "hi")),
                *(f"raw_{o}" for o in objs),
                "response_words",
            ]
        )
        for fr in plan.fronts:
            lo, hi = iv.point_lo[fr.label], iv.point_hi[fr.label]
            for k, mu in enumerate(fr.preferences):
                w.writerow(
                    [
                        fr.label,
                        *mu.round(6),
                        *fr.coefficients[k].round(6),
                        *result.points[fr.label][k].round(6),
                        *(round(float(v), 6) for j in range(len(objs)) for v in (lo[k, j], hi[k, j])),
                        *result.raw_points[fr.label][k].round(6),
                        round(float(result.lengths[fr.label][k]), 2),
                    ]
                )
    cols = metric_columns(result)
    with paths["metrics"].open("w", newline="") as f:
        w = csv.writer(f)
        refs = [*(f"ref_{o}" for o in objs), *(f"proj_ref_{o}" for o in objs)]
        w.writerow(["method", "points", *cols, *refs, "prompts"])
        for fr in plan.fronts:
            m = result.metrics[fr.label]
            w.writerow(
                [
                    fr.label,
                    len(fr.preferences),
                    *(m.get(k, "") for k in cols),
                    *result.ref_point,
                    *_projection_point(result),
                    result.prompts,
                ]
            )
    fronts = {fr.label: (result.points[fr.label], fr.preferences) for fr in plan.fronts}
    pareto_plot(fronts, paths["plot"], [f"{o} (z)" for o in objs], title=title, errors=iv.errors())
    with paths["samples"].open("w") as f:
        for s in result.samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    if result.costs:
        paths["costs"] = out / "costs.csv"
        keys = sorted({k for c in result.costs.values() for k in c})
        with paths["costs"].open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["method", *keys])
            for label, c in result.costs.items():
                w.writerow([label, *(c.get(k, "") for k in keys)])
    return paths
