"""The layout rules the import contract (``lint-imports``, pyproject.toml) cannot see: first-party imports at
module top (so a cycle cannot hide in a function), and thin scripts that import only the library."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "platform" / "soupkitchen"
SCRIPTS = [p for d in ("jobs", "tune", "bench", "infra", "serve") for p in sorted((ROOT / d).glob("*.py"))]


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return []


def test_first_party_imports_are_at_module_top():
    nested = []
    for path in sorted(LIBRARY.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            for node in ast.walk(fn):
                nested += [
                    f"{path.relative_to(ROOT)}:{node.lineno} {m}"
                    for m in _imported(node)
                    if m == "soupkitchen" or m.startswith("soupkitchen.")
                ]
    assert not nested, "function-local first-party imports:\n" + "\n".join(nested)


def test_scripts_are_thin_entry_points_over_the_library():
    bad = []
    for path in SCRIPTS:
        text = path.read_text()
        if "sys.path" in text:
            bad.append(f"{path.relative_to(ROOT)}: edits sys.path")
        for node in ast.walk(ast.parse(text)):
            for m in _imported(node):
                top = m.split(".")[0]
                script = (
                    top in ("jobs", "tune", "bench", "infra", "serve")
                    or (ROOT / "bench" / f"{top}.py").exists()
                )
                if script:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports the script module {m}")
    assert not bad, "\n".join(bad)
