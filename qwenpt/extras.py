"""A feature whose optional package (pyproject's extras) the install lacks says, in one line, which
extra to install, instead of a ModuleNotFoundError traceback."""

from __future__ import annotations

import importlib
from types import ModuleType

from qwenpt.errors import ConfigError


class MissingExtra(ConfigError):
    """An optional package a feature needs is not installed; the message names the pip command.
    A ConfigError, so every entry point reports it as it does a setting it cannot use (exit 2)."""


def install_hint(extra: str) -> str:
    """The exact command that installs ``extra`` (quoted: shells glob square brackets)."""
    return f"pip install 'qwenpt[{extra}]'"


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``; raise :class:`MissingExtra` naming ``extra`` when the package
    (not something it imports in turn) is missing."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name is None or e.name.split(".")[0] != top:
            raise  # a broken install of a package that is present: its own traceback says more
        raise MissingExtra(f"{feature} needs the package {top}, which is not installed: "
                           f"run {install_hint(extra)}") from None
