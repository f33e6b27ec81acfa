"""Pareto-front plots (PNG, matplotlib Agg canvas: no display and no pyplot global state)."""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

Front = tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]  # points, μ, (lo, hi)
TITLE_CHARS = 70  # title characters per line per 5-inch subplot column (at TITLE_FONTSIZE)
TITLE_FONTSIZE = 9


def _check_front(
    name: str, points: ArrayLike, preferences: ArrayLike, n: int, errors: tuple[ArrayLike, ArrayLike] | None
) -> Front:
    p, mu = np.asarray(points, dtype=np.float64), np.asarray(preferences, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != n or mu.shape != p.shape:
        raise ValueError(
            f"front {name!r}: points {p.shape} and preferences {mu.shape} must both be [N, {n}] "
            f"(one column per objective)"
        )
    order = np.lexsort(mu.T[::-1])  # preference order, so the line follows μ
    if errors is None:
        return p[order], mu[order], None
    lo, hi = (np.asarray(e, dtype=np.float64) for e in errors)
    if lo.shape != p.shape or hi.shape != p.shape:
        raise ValueError(
            f"front {name!r}: errors (lo {lo.shape}, hi {hi.shape}) must be [N, {n}] like its points"
        )
    return p[order], mu[order], (lo[order], hi[order])


def _draw(ax, fronts: dict[str, Front], i: int, j: int, names: Sequence[str]) -> None:
    """Objective i on x, objective j on y; each point annotated with its μ_i (and μ_j for n > 2), with
    error bars from its (lo, hi) bounds when given.

    For n = 2 the points are joined in preference order; projections of n > 2 fronts are scatter only.
    """
    style = "o-" if len(names) == 2 else "o"
    for label, (p, mu, err) in fronts.items():
        (line,) = ax.plot(p[:, i], p[:, j], style, ms=4, lw=1, alpha=0.85, label=label)
        if err is not None:
            xerr, yerr = (np.clip([p[:, c] - err[0][:, c], err[1][:, c] - p[:, c]], 0, None) for c in (i, j))
            ax.errorbar(
                p[:, i],
                p[:, j],
                xerr=xerr,
                yerr=yerr,
                fmt="none",
                ecolor=line.get_color(),
                elinewidth=0.8,
                capsize=2,
                alpha=0.6,
            )
        for pt, m in zip(p, mu, strict=True):
            text = f"{m[i]:.1f}" if len(names) == 2 else f"{m[i]:.1f},{m[j]:.1f}"
            ax.annotate(
                text,
                (pt[i], pt[j]),
                fontsize=6,
                color=line.get_color(),
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set_xlabel(names[i])
    ax.set_ylabel(names[j])
    ax.grid(alpha=0.3)


def pareto_plot(
    fronts: Mapping[str, tuple[ArrayLike, ArrayLike]],
    path: str | Path,
    objective_names: Sequence[str],
    title: str | None = None,
    errors: Mapping[str, tuple[ArrayLike, ArrayLike]] | None = None,
) -> Path:
    """Write a PNG of several methods' fronts {method: (points [N, n], preferences [N, n])} to `path`.

    n = 2: one scatter of objective 1 vs 2, points labelled with μ_1. n ≥ 3: a grid of the C(n, 2)
    pairwise projections, points labelled with (μ_i, μ_j). ``errors`` {method: (lo [N, n], hi [N, n])}
    (e.g. ``BootstrapResult.errors()``: bounds of each point's mean reward) draws error bars on every
    projection; methods without an entry get none. The title is wrapped to the figure width.
    Returns the path written.
    """
    names = list(objective_names)
    if len(names) < 2:
        raise ValueError(f"pareto_plot needs at least 2 objective names, got {names}")
    if not fronts:
        raise ValueError("fronts is empty: pass at least one {method: (points, preferences)}")
    errors = errors or {}
    if unknown := sorted(set(errors) - set(fronts)):
        raise ValueError(f"errors for methods without a front: {unknown}")
    checked = {
        label: _check_front(label, p, mu, len(names), errors.get(label)) for label, (p, mu) in fronts.items()
    }
    pairs = list(itertools.combinations(range(len(names)), 2))
    cols = min(3, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig = Figure(figsize=(5 * cols, 4.5 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (i, j) in zip(axes, pairs, strict=False):
        _draw(ax, checked, i, j, names)
    for ax in axes[len(pairs) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, TITLE_CHARS * cols)), fontsize=TITLE_FONTSIZE)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path
