"""Pieces shared by the `zizq` subcommands: option helpers and the global options.

Every flag has an exactly named `ZIZQ_*` environment variable, shown in `--help`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

__all__ = [
    "CONTEXT_SETTINGS",
    "GlobalOptions",
    "envvar_for",
    "global_value",
    "license_key_option",
    "option",
    "root_dir_option",
    "with_options",
]

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def envvar_for(flag: str) -> str:
    """`--default-backoff-base` -> `ZIZQ_DEFAULT_BACKOFF_BASE` (the documented names)."""
    return "ZIZQ_" + flag.removeprefix("--").upper().replace("-", "_")


def option(flag: str, help: str, *, short: str | None = None, **kwargs: Any) -> Callable[[F], F]:
    """A click option with its exact env var shown in `--help`, and its default shown.

    `short` adds a one-letter alias (`-k`), as the reference defines for a few flags.
    """
    kwargs.setdefault("show_default", True)
    kwargs.setdefault("envvar", envvar_for(flag))
    names = (short, flag) if short else (flag,)
    return click.option(*names, show_envvar=True, help=help, **kwargs)


def with_options(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    """Apply options so that `--help` lists them in the order written."""

    def decorate(func: F) -> F:
        for each in reversed(options):
            func = each(func)
        return func

    return decorate


# --- global options --------------------------------------------------------------------


@dataclass(frozen=True)
class GlobalOptions:
    """Global option values as resolved by the `zizq` group, shared with subcommands."""

    root_dir: Path
    license_key: str | None


root_dir_option = option(
    "--root-dir",
    "Directory holding the database and other server files.",
    type=click.Path(file_okay=False, path_type=Path),
    default="./zizq-root",
)
license_key_option = option(
    "--license-key",
    "License key (a JWT) or @path to a file holding it; with @path a rotated key is "
    "picked up live. Without one the server runs in the free tier.",
    short="-k",
    default=None,
    show_default=False,
)


def global_value(ctx: click.Context, name: str) -> Any:
    """A global option's value: given after the subcommand wins, else the group's value.

    Both positions read the same env var, so only a command-line value here can differ
    from what the group already resolved (command line > env var > default).
    """
    own = ctx.params[name]
    if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE:
        return own
    group = ctx.find_object(GlobalOptions)
    return getattr(group, name) if group is not None else own
