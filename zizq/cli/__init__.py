"""The `zizq` command: a click group whose default subcommand is `serve`.

`serve` is the default in two ways: a bare `zizq` runs it, and serve's flags work without
naming it (`zizq --port 0`, `zizq --root-dir x --host 0.0.0.0`), as the reference documents.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from zizq import __version__
from zizq.cli.backup import backup as backup_command
from zizq.cli.common import (
    CONTEXT_SETTINGS,
    GlobalOptions,
    license_key_option,
    root_dir_option,
)
from zizq.cli.compact import compact as compact_command
from zizq.cli.restore import restore as restore_command
from zizq.cli.serve import serve as serve_command  # keeps `zizq.cli.serve` naming the module
from zizq.cli.tls import tls as tls_command
from zizq.cli.top import top as top_command

__all__ = ["main"]


class _OneLineErrors(click.Group):
    """A bad flag prints one `Error: ...` line naming it (no usage dump) and exits 2.

    It also routes flags the group does not know to the default command, `serve`.
    """

    default_command = "serve"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, self._with_default_command(ctx, args))

    def _with_default_command(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Insert `serve` before the first argument that is neither a group option nor a command.

        Group options before it stay the group's (`zizq --root-dir x --port 0` is
        `zizq --root-dir x serve --port 0`); `--help` and `--version` stay the group's too.
        """
        takes_value: set[str] = set()
        flags: set[str] = set(ctx.help_option_names)
        for param in self.get_params(ctx):
            if isinstance(param, click.Option):
                names = [*param.opts, *param.secondary_opts]
                (flags if param.is_flag else takes_value).update(names)
        i = 0
        while i < len(args):
            arg = args[i]
            name = arg.split("=", 1)[0] if arg.startswith("--") else arg
            if arg == "--" or name in self.commands or not arg.startswith("-"):
                return args  # a command (or a stray word, which click reports)
            if name in flags:
                i += 1
            elif name in takes_value:
                i += 1 if "=" in arg else 2
            elif not arg.startswith("--") and arg[:2] in takes_value:
                i += 1  # `-kTOKEN`: the value is attached
            else:
                return [*args[:i], self.default_command, *args[i:]]
        return args

    def main(self, *args, **kwargs):  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except click.ClickException as exc:
            click.echo(f"Error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(
    name="zizq", cls=_OneLineErrors, invoke_without_command=True, context_settings=CONTEXT_SETTINGS
)
@click.version_option(
    __version__, "-V", "--version", prog_name="zizq", message="%(prog)s %(version)s"
)
@root_dir_option
@license_key_option
@click.pass_context
def main(ctx: click.Context, root_dir: Path, license_key: str | None) -> None:
    """Zizq: a durable job queue server.

    Runs `serve` when no command is given; serve's flags work without naming it
    (`zizq --port 0`). See `zizq serve --help` for them.
    """
    ctx.obj = GlobalOptions(root_dir=root_dir, license_key=license_key)
    if ctx.invoked_subcommand is None:
        _invoke_default(ctx)


def _invoke_default(ctx: click.Context) -> None:
    # Parse an empty argument list rather than using ctx.invoke(), so that serve's env vars,
    # defaults and validation apply exactly as for an explicit `zizq serve`.
    with serve_command.make_context("serve", [], parent=ctx) as sub_ctx:
        serve_command.invoke(sub_ctx)


main.add_command(serve_command)
main.add_command(backup_command)
main.add_command(restore_command)
main.add_command(compact_command)
main.add_command(tls_command)
main.add_command(top_command)
