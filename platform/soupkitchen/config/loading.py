"""Recipe files and overrides: shipped recipes (package data), ``extends:`` inheritance, dotted overrides
from code or the command line, and the JSON manifests jobs hand to each other.

    load_recipe("demo")                                   # soupkitchen/recipes/demo.yaml
    load_recipe("my.yaml", ["ppo.kl_coef=0.1"])           # a path, with overrides
    load_recipe("tiny", parse_cli_overrides(["--rewards.0.params.target", "40"]))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from soupkitchen.config.recipe import Recipe
from soupkitchen.config.schema import from_dict
from soupkitchen.errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"  # shipped inside the package
# The source checkout, for data paths relative to it (meaningful in a checkout / editable install only).
REPO_ROOT = Path(__file__).resolve().parents[3]


def read_format(path, flag: str, fmt: str, what: str) -> dict:
    """The JSON document at ``path`` whose ``format`` is ``fmt`` (one of our manifests); a ConfigError naming
    the CLI ``flag`` if it is not JSON or not that kind of document (``what``)."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(flag, f"cannot read {path} ({e.strerror or e})") from e
    except json.JSONDecodeError as e:
        raise ConfigError(flag, f"{path} is not valid JSON ({e})") from e
    found = doc.get("format") if isinstance(doc, dict) else None
    if found != fmt:
        raise ConfigError(flag, f"{path} is not a {what} (format {found!r})")
    return doc


def _parse_scalar(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: dict[str, Any] | list[str]) -> dict:
    """Apply dotted overrides (``{"ppo.kl_coef": 0.1}`` or ``["ppo.kl_coef=0.1"]``) to a raw mapping."""
    if isinstance(overrides, list):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(item, "override must look like key.path=value")
            k, v = item.split("=", 1)
            pairs[k.strip()] = _parse_scalar(v)
        overrides = pairs
    for dotted, value in overrides.items():
        keys = dotted.split(".")
        node = data
        for depth, k in enumerate(keys[:-1]):
            here = ".".join(keys[: depth + 1])
            if isinstance(node, list):
                if not k.isdigit() or int(k) >= len(node):
                    raise ConfigError(here, f"list index out of range (has {len(node)} entries)")
                node = node[int(k)]
            else:
                node = node.setdefault(k, {})
                if not isinstance(node, (dict, list)):
                    raise ConfigError(here, "is a value, not a section: cannot override a key below it")
        last = keys[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(dotted, f"list index out of range (has {len(node)} entries)")
            node[int(last)] = value
        else:
            node[last] = value
    return data


def parse_cli_overrides(argv: list[str]) -> dict[str, Any]:
    """``["--ppo.kl_coef", "0.1", "--soup.beta=0.8"]`` → ``{"ppo.kl_coef": 0.1, "soup.beta": 0.8}``."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(arg, "expected a --key.path value override")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(key, "override is missing its value")
            value = argv[i + 1]
            i += 2
        out[key] = _parse_scalar(value)
    return out


def available_recipes() -> list[str]:
    """The names of the shipped recipes."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A YAML path as given, else the shipped recipe of that name."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    candidate = RECIPES_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    raise ConfigError(
        "recipe",
        f"no recipe {str(name_or_path)!r}; pass a YAML path or one of: {', '.join(available_recipes())}",
    )


def _deep_merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``: mappings merge key by key, everything else (lists included) is replaced."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_raw_recipe(name_or_path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The recipe's YAML mapping with ``extends: <parent recipe>`` resolved (parent first, child on top).
    The parent is looked up next to the child first, then among the shipped recipes (or as a path)."""
    path = resolve_recipe_path(name_or_path).resolve()
    if path in _seen:
        raise ConfigError("extends", f"recipe inheritance loops through {path.name}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError("recipe", f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            "recipe", f"{path} must hold a mapping of config sections, got {type(data).__name__}"
        )
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_path = path.parent / f"{parent}.yaml" if (path.parent / f"{parent}.yaml").exists() else parent
    return _deep_merge(load_raw_recipe(parent_path, (*_seen, path)), data)


def load_recipe(name_or_path: str | Path, overrides: dict[str, Any] | list[str] | None = None) -> Recipe:
    """Load a shipped recipe by name (or a YAML path), apply dotted overrides, type-check and validate."""
    data = apply_overrides(load_raw_recipe(name_or_path), overrides or {})
    return from_dict(Recipe, data)
