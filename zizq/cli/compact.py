"""`zizq compact`: ask the running server for a full compaction of its store."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

import click

from zizq.cli.admin_client import AdminClient, AdminError, admin_options, human_size
from zizq.cli.common import CONTEXT_SETTINGS

__all__ = ["compact", "describe_compaction"]


def describe_compaction(before: int, after: int, seconds: float) -> list[str]:
    saved = before - after
    change = f"freed {human_size(saved)}" if saved >= 0 else f"grew by {human_size(-saved)}"
    return [
        f"Size before: {human_size(before)}",
        f"Size after:  {human_size(after)} ({change})",
        f"Compaction took {seconds:.2f}s",
    ]


@click.command("compact", context_settings=CONTEXT_SETTINGS)
@admin_options
def compact(
    url: str, ca_cert: Path | None, client_cert: Path | None, client_key: Path | None
) -> None:
    """Compact the running server's store now (through its admin API).

    Rewrites the database without the space held by deleted jobs. The server also does
    this on its own, in the background, once bulk deletes, bulk patches and resets have
    touched --auto-compact-threshold jobs (serve's flag; 10,000 by default).
    """
    client = AdminClient(url, ca_cert, client_cert, client_key)
    click.echo(f"Requesting compaction from {client.url}...")
    started = time.monotonic()
    # No read timeout: a full compaction of a large store takes as long as it takes.
    connection, response = client.post("/compact", "application/json", None)
    try:
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise client.network_error(exc) from None
    finally:
        connection.close()
    elapsed = time.monotonic() - started
    try:
        sizes = json.loads(body)
        before, after = int(sizes["before_bytes"]), int(sizes["after_bytes"])
    except (ValueError, TypeError, KeyError):
        raise AdminError(f"unexpected answer from {client.url}: {body[:200]!r}") from None
    for line in describe_compaction(before, after, elapsed):
        click.echo(line)
