"""The error every user-facing input raises when it is invalid (recipes, CLI flags, HTTP bodies, files)."""

from __future__ import annotations


class ConfigError(ValueError):
    """An input is invalid; the message names the field (a dotted key path or a flag) and the fix."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.msg = message
        super().__init__(f"{path or '<recipe>'}: {message}")
