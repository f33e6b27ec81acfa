"""What every entry point in jobs/, tune/, bench/ and infra/ shares: the recipe flag, dotted recipe overrides
and the exit code of a bad input.

    parser = cli.recipe_parser(__doc__, "--ppo.steps 10")
    parser.add_argument("--run-name")

    @cli.entry
    def main(argv=None) -> int:
        args, recipe = cli.parse_recipe(parser, argv)
        ...

A ``ConfigError`` raised anywhere under ``main`` (a recipe key, a flag, a file) prints ``error: <field>:
<what is wrong and the fix>`` on stderr and returns 2, never a stack trace.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

from soupkitchen.config import ConfigError, Recipe, available_recipes, load_recipe, parse_cli_overrides

EXIT_BAD_INPUT = 2


def recipe_parser(doc: str | None, example: str, default: str | None = "demo") -> argparse.ArgumentParser:
    """An ArgumentParser with ``--recipe`` whose description is ``doc``'s first paragraph; any unknown
    ``--section.key VALUE`` overrides that recipe key (``example`` shows one)."""
    p = argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0],
        epilog=f"Any other --section.key VALUE overrides that recipe key, e.g. {example}.",
    )
    p.add_argument(
        "--recipe",
        default=default,
        help=f"a shipped recipe ({', '.join(available_recipes())}) or a YAML path (default: {default})",
    )
    return p


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, dict]:
    """``(args, overrides)``: the parser's flags, and every other ``--a.b VALUE`` as a dotted override."""
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return args, parse_cli_overrides(rest)


def parse_recipe(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> tuple[argparse.Namespace, Recipe]:
    """``(args, recipe)``: the recipe ``--recipe`` names with the command line's overrides, validated."""
    args, overrides = parse_args(parser, argv)
    return args, load_recipe(args.recipe, overrides)


def entry(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap an entry point: a ``ConfigError`` becomes ``error: ...`` on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT

    return wrapped
