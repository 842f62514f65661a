"""`zizq top`: watch a running server live in the terminal (through its admin API)."""

from __future__ import annotations

from pathlib import Path

import click

from zizq import __version__
from zizq.cli.admin_client import admin_options, normalize_url, ssl_context
from zizq.cli.common import CONTEXT_SETTINGS, option
from zizq.config import DurationType

__all__ = ["top"]

MIN_REFRESH_MS = 50
MAX_REFRESH_MS = 60_000


@click.command("top", context_settings=CONTEXT_SETTINGS)
@admin_options
@option(
    "--refresh-rate",
    "How often the screen redraws: a duration (500ms, 1s); a bare number is milliseconds, "
    "as in the reference.",
    short="-r",
    type=DurationType(MAX_REFRESH_MS),
    default="500",
    envvar="ZIZQ_TOP_REFRESH_RATE",
)
def top(
    url: str,
    ca_cert: Path | None,
    client_cert: Path | None,
    client_key: Path | None,
    refresh_rate: int,
) -> None:
    """Show the server's jobs live: in flight, ready and scheduled.

    Keys: Tab/Shift-Tab switch tabs; arrows, j/k, PgUp/PgDn, g/G (Home/End) move; i shows
    a job's detail; p pauses the lists; D deletes the job under the cursor; / searches by
    type and queue (n/N next/previous, Esc unpins); q or Ctrl-C quits.
    """
    if refresh_rate < MIN_REFRESH_MS:
        raise click.BadParameter(f"at least {MIN_REFRESH_MS}ms", param_hint="'--refresh-rate'")
    base = normalize_url(url)
    tls_flags = (ca_cert, client_cert, client_key)
    https = base.startswith("https://")
    if not https and any(flag is not None for flag in tls_flags):
        raise click.UsageError("--ca-cert, --client-cert and --client-key need an https:// --url")
    context = ssl_context(ca_cert, client_cert, client_key) if https else None

    from zizq.top.app import TopApp  # Textual loads only for this command

    TopApp(base, __version__, context, refresh_rate / 1000).run()
