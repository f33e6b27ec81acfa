"""Pareto-front plots (PNG, matplotlib Agg canvas: no display and no pyplot global state)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike


def _check_front(name: str, points: ArrayLike, preferences: ArrayLike, n: int) -> tuple[np.ndarray, ...]:
    p, mu = np.asarray(points, dtype=np.float64), np.asarray(preferences, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != n or mu.shape != p.shape:
        raise ValueError(
            f"front {name!r}: points {p.shape} and preferences {mu.shape} must both be [N, {n}] "
            f"(one column per objective)"
        )
    order = np.lexsort(mu.T[::-1])  # preference order, so the line follows μ
    return p[order], mu[order]


def _draw(ax, fronts: dict[str, tuple[np.ndarray, np.ndarray]], i: int, j: int, names: Sequence[str]) -> None:
    """Objective i on x, objective j on y; each point annotated with its μ_i (and μ_j for n > 2).

    For n = 2 the points are joined in preference order; projections of n > 2 fronts are scatter only.
    """
    style = "o-" if len(names) == 2 else "o"
    for label, (p, mu) in fronts.items():
        (line,) = ax.plot(p[:, i], p[:, j], style, ms=4, lw=1, alpha=0.85, label=label)
        for pt, m in zip(p, mu, strict=True):
            text = f"{m[i]:.1f}" if len(names) == 2 else f"{m[i]:.1f},{m[j]:.1f}"
            ax.annotate(text, (pt[i], pt[j]), fontsize=6, color=line.get_color(),
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(names[i])
    ax.set_ylabel(names[j])
    ax.grid(alpha=0.3)


def pareto_plot(
    fronts: Mapping[str, tuple[ArrayLike, ArrayLike]],
    path: str | Path,
    objective_names: Sequence[str],
    title: str | None = None,
) -> Path:
    """Write a PNG of several methods' fronts {method: (points [N, n], preferences [N, n])} to `path`.

    n = 2: one scatter of objective 1 vs 2, points labelled with μ_1. n ≥ 3: a grid of the C(n, 2)
    pairwise projections, points labelled with (μ_i, μ_j). Returns the path written.
    """
    names = list(objective_names)
    if len(names) < 2:
        raise ValueError(f"pareto_plot needs at least 2 objective names, got {names}")
    if not fronts:
        raise ValueError("fronts is empty: pass at least one {method: (points, preferences)}")
    checked = {label: _check_front(label, p, mu, len(names)) for label, (p, mu) in fronts.items()}
    pairs = list(itertools.combinations(range(len(names)), 2))
    cols = min(3, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig = Figure(figsize=(5 * cols, 4.5 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (i, j) in zip(axes, pairs, strict=False):
        _draw(ax, checked, i, j, names)
    for ax in axes[len(pairs):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path
