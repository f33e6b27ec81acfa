"""A non-editable install ships the recipes as package data.

The package is built from a copy of the sources (so the checkout gets no build/ or egg-info) and installed
with ``pip install --target`` into a fresh directory, then imported from a directory outside the checkout
with only that directory on PYTHONPATH. PYTHONPATH comes before site-packages, so the installed copy
shadows the editable one of .venv (its .pth adds platform/ at the end of sys.path), and the heavy
dependencies are still found in .venv. (A ``venv --system-site-packages`` made from .venv's python would
not see them: its system site is the base interpreter's.) The test asserts which copy was imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import sys
from pathlib import Path

import soupkitchen
from soupkitchen.config import RECIPES_DIR, available_recipes, load_recipe

site = Path(sys.argv[1]).resolve()
assert Path(soupkitchen.__file__).resolve().is_relative_to(site), soupkitchen.__file__
assert RECIPES_DIR.is_relative_to(site), RECIPES_DIR
names = set(available_recipes())
assert {"tiny", "demo", "hh-helpful-harmless", "hh-helpful-humor", "summary-faithful"} <= names, names
for name in ("tiny", "demo"):
    assert load_recipe(name).name == name
print("installed:", soupkitchen.__file__)
"""


def test_a_non_editable_install_ships_the_recipes(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(
        ROOT / "platform" / "soupkitchen",
        src / "platform" / "soupkitchen",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    site = tmp_path / "site"
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
    ]
    built = subprocess.run(
        [*pip, "--target", str(site), str(src)], capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert (site / "soupkitchen" / "recipes" / "demo.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    run = subprocess.run(
        [sys.executable, "-c", CHECK, str(site)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert str(site) in run.stdout
