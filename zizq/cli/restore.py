"""`zizq restore`: unpack a backup archive into a new root directory (server stopped)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from zizq.cli.common import CONTEXT_SETTINGS, global_value, option

__all__ = ["describe_jobs", "restore"]


def describe_jobs(jobs: dict) -> str:
    """`1,200 jobs (1,000 ready, 150 scheduled, 50 in flight, 0 completed, 0 dead)`."""
    parts = [
        f"{int(jobs.get(status, 0)):,} {status.replace('_', ' ')}"
        for status in ("ready", "scheduled", "in_flight", "completed", "dead")
    ]
    return f"{int(jobs.get('total', 0)):,} jobs ({', '.join(parts)})"


@click.command("restore", context_settings=CONTEXT_SETTINGS)
@option(
    "--root-dir",
    "Root directory to create from the backup (must not exist, or be empty).",
    type=click.Path(file_okay=False, path_type=Path),
    default="./zizq-root",
)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def restore(ctx: click.Context, root_dir: Path, file: Path) -> None:
    """Restore the backup archive FILE into a new root directory (--root-dir).

    Offline: run it while no server uses that directory. It refuses an existing non-empty
    directory, and checks the whole archive before it writes anything.
    """
    # Imported here so that the rest of the CLI does not load the storage engine.
    from zizq.store.backup import BackupError, restore_archive

    target = Path(global_value(ctx, "root_dir"))
    click.echo(f"Restoring from {file} to {target}...")
    started = time.monotonic()
    try:
        manifest = restore_archive(file, target)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"restore failed: {exc}") from None
    elapsed = time.monotonic() - started
    created = manifest.get("created_at")
    taken = (
        time.strftime(" taken %Y-%m-%d %H:%M:%S UTC", time.gmtime(created / 1000))
        if isinstance(created, int | float)
        else ""
    )
    click.echo("Restore complete.")
    click.echo(
        f"  {describe_jobs(manifest.get('jobs', {}))} from a backup{taken}, in {elapsed:.1f}s; "
        "in-flight jobs are ready again when the server starts."
    )
