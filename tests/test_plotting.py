"""pareto_plot with bootstrap error bars and a title longer than the figure is wide."""

from __future__ import annotations

import numpy as np
import pytest

from soupkitchen.bootstrap import paired_bootstrap
from soupkitchen.plotting import pareto_plot
from soupkitchen.preferences import preference_grid

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LONG_TITLE = "tiny: " + ", ".join(
    ["bone_soup", "bone_soup_a0.3", "rewarded_soups", "morlhf", "mage_i_m", "mage_e_m", "mod", "sft"] * 3
)


@pytest.mark.parametrize("n", [2, 3])
def test_pareto_plot_with_error_bars_and_a_long_title(tmp_path, n):
    rng, mu = np.random.default_rng(0), preference_grid(n, 0.25)
    scores = {
        m: np.sqrt(mu) * s + 0.2 * rng.standard_normal((20, *mu.shape)) for m, s in (("a", 1), ("b", 0.9))
    }
    res = paired_bootstrap(scores, {m: mu for m in scores}, [-1.0] * n, samples=50)
    fronts = {m: (res.points[m], mu) for m in scores} | {
        "sft": (np.full((1, n), 0.1), np.full((1, n), 1 / n))
    }
    out = pareto_plot(fronts, tmp_path / "front.png", list("xyz")[:n], title=LONG_TITLE, errors=res.errors())
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_pareto_plot_rejects_bad_errors(tmp_path):
    mu = preference_grid(2, 0.5)
    with pytest.raises(ValueError, match="errors"):
        pareto_plot({"a": (mu, mu)}, tmp_path / "x.png", ["x", "y"], errors={"a": (mu[:1], mu)})
    with pytest.raises(ValueError, match="without a front"):
        pareto_plot({"a": (mu, mu)}, tmp_path / "x.png", ["x", "y"], errors={"b": (mu, mu)})
