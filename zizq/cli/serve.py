"""`zizq serve`: parse and validate the server's flags into a `ServeConfig`, then run it.

Every flag has an exactly named `ZIZQ_*` environment variable. The global options
(`--root-dir`, `--license-key`) live in `zizq.cli.common`, because they are accepted both
before the subcommand (on the group) and after it (on `serve` and `restore`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from zizq.cli.common import (
    CONTEXT_SETTINGS,
    F,
    GlobalOptions,
    envvar_for,
    global_value,
    license_key_option,
    option,
    root_dir_option,
    with_options,
)
from zizq.config import (
    DEFAULT_AUTO_COMPACT_THRESHOLD,
    DEFAULT_BACKOFF,
    DURATION,
    MAX_I32,
    SIZE,
    BackoffPolicy,
    BoundedFloat,
    Count,
    DurationType,
    ServeConfig,
)
from zizq.logs import LOG_FORMATS

__all__ = [
    "CONTEXT_SETTINGS",
    "GlobalOptions",
    "config_from_context",
    "envvar_for",
    "license_key_option",
    "root_dir_option",
    "serve",
    "serve_config_from_params",
]

COMMIT_MODES = ("buffered", "fsync")
PORT = Count(0, 65535)
# The API's limits for a job's own backoff, so the default is one a job could carry too.
BACKOFF_MS = DurationType(maximum=MAX_I32)
# Timers of the server itself (intervals, timeouts): any duration works for these.
TIMER_MS = DURATION
# The jq watchdog thread waits on a deadline; past about 292 years that overflows the
# platform's time_t, so the limit is capped well before (a call is killed after it anyway).
JQ_TIME_MS = DurationType(maximum=MAX_I32)
LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error")
TLS_PARAMS = (
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "admin_tls_cert",
    "admin_tls_key",
    "admin_tls_client_ca",
)
BACKOFF_FLAGS = ("--default-backoff-base", "--default-backoff-exponent", "--default-backoff-jitter")

_option = option


def _positive(_ctx: click.Context, _param: click.Parameter, value: int) -> int:
    """Reject zero for intervals: a zero period would spin a background loop."""
    if value <= 0:
        raise click.BadParameter("must be greater than 0")
    return value


def _jq_memory(_ctx: click.Context, _param: click.Parameter, value: int) -> int:
    """A jq worker is a Python process: below 64 MiB it could not even start."""
    if value < 64 * 1024 * 1024:
        raise click.BadParameter("must be at least 64MiB")
    return value


# --- config building -------------------------------------------------------------------


def _backoff(base: int | None, exponent: float | None, jitter: int | None) -> BackoffPolicy:
    """The default backoff policy: all three parts given (flag or env var) or none.

    The backoff flags have no click default (their documented defaults are display-only),
    so `None` means "not given" whether the value would have come from a flag or env var.
    """
    values = (base, exponent, jitter)
    if all(v is None for v in values):
        return DEFAULT_BACKOFF
    missing = [flag for flag, v in zip(BACKOFF_FLAGS, values, strict=True) if v is None]
    if missing:
        raise click.UsageError(
            f"{', '.join(BACKOFF_FLAGS[:2])} and {BACKOFF_FLAGS[2]} must be given together; "
            f"missing {', '.join(missing)}"
        )
    assert base is not None and exponent is not None and jitter is not None
    return BackoffPolicy(base_ms=base, exponent=float(exponent), jitter_ms=jitter)


def _idle_timeout(idle_ms: int, heartbeat_ms: int) -> int:
    """A take stream is kept open by its heartbeats: they must come well within the timeout."""
    if idle_ms <= heartbeat_ms:
        raise click.UsageError(
            f"--idle-timeout ({idle_ms} ms) must be longer than --heartbeat-interval "
            f"({heartbeat_ms} ms), or idle take streams would be closed"
        )
    return idle_ms


def _log_dir(params: dict[str, Any]) -> Path | None:
    """`--log-dir` wins; `--log-to-disk` alone means `<root-dir>/log`; else stdout."""
    if params["log_dir"] is not None:
        return Path(params["log_dir"])
    if params.get("log_to_disk"):
        return Path(params["root_dir"]) / "log"
    return None


def _path(value: Any) -> Path | None:
    return Path(value) if value not in (None, "") else None


def serve_config_from_params(**params: Any) -> ServeConfig:
    """Map `serve`'s parameter values (click's names) onto a `ServeConfig`.

    Raises `click.UsageError` when only some of the backoff flags were given.
    """
    default_commit_mode: str = params["default_commit_mode"]
    return ServeConfig(
        root_dir=Path(params["root_dir"]),
        license_key=params["license_key"],
        license_key_check_interval_ms=params.get("license_key_check_interval", 5_000),
        host=params["host"],
        port=params["port"],
        admin_host=params["admin_host"],
        admin_port=params["admin_port"],
        admin_enabled=not params["no_admin"],
        log_format=params["log_format"],
        log_level=params["log_level"],
        log_dir=_log_dir(params),
        log_rotation=params["log_rotation"],
        log_max_size=params["log_max_size"],
        log_max_files=params["log_max_files"],
        heartbeat_interval_ms=params["heartbeat_interval"],
        idle_timeout_ms=_idle_timeout(params["idle_timeout"], params["heartbeat_interval"]),
        global_in_flight_limit=params["global_in_flight_limit"],
        max_budgets=params["max_budgets"],
        enqueue_batch_size=params["enqueue_batch_size"],
        complete_batch_size=params["complete_batch_size"],
        default_retry_limit=params["default_retry_limit"],
        default_backoff=_backoff(
            params["default_backoff_base"],
            params["default_backoff_exponent"],
            params["default_backoff_jitter"],
        ),
        default_completed_retention_ms=params["default_completed_job_retention"],
        default_dead_retention_ms=params["default_dead_job_retention"],
        reaper_check_interval_ms=params["reaper_check_interval"],
        default_commit_mode=default_commit_mode,
        enqueue_commit_mode=params["enqueue_commit_mode"] or default_commit_mode,
        cache_size=params["cache_size"],
        jq_time_limit_ms=params["jq_time_limit"],
        jq_memory_limit=params["jq_memory_limit"],
        auto_compact_threshold=params.get("auto_compact_threshold", DEFAULT_AUTO_COMPACT_THRESHOLD),
        **{name: _path(params.get(name)) for name in TLS_PARAMS},
    )


def config_from_context(ctx: click.Context) -> ServeConfig:
    """Build the config for an invocation of `serve`, honouring group-level globals."""
    params = dict(ctx.params)
    params["root_dir"] = global_value(ctx, "root_dir")
    params["license_key"] = global_value(ctx, "license_key")
    return serve_config_from_params(**params)


def _run(config: ServeConfig) -> int:
    """Start the server; a module-level seam so tests can replace it."""
    # Imported here so that `zizq --help` does not pay for loading the server stack.
    from zizq.server import run

    return run(config)


# --- the command -----------------------------------------------------------------------


def _tls_options(prefix: str, api: str) -> list[Callable[[F], F]]:
    """`--[admin-]tls-cert`, `--[admin-]tls-key`, `--[admin-]tls-client-ca` (PEM file paths).

    Plain strings, not click.Path(exists=True): the server checks the files at start and
    says in one line what is wrong with one (unreadable, no key, expired, mismatched).
    """
    flag = f"--{prefix}tls"
    return [
        _option(
            f"{flag}-cert",
            f"PEM certificate chain for the {api} API: serve it over HTTPS (with {flag}-key).",
            metavar="PATH",
            default=None,
            show_default=False,
        ),
        _option(
            f"{flag}-key",
            f"PEM private key of {flag}-cert (unencrypted).",
            metavar="PATH",
            default=None,
            show_default=False,
        ),
        _option(
            f"{flag}-client-ca",
            f"PEM CA certificate(s): the {api} API then requires a client certificate "
            f"signed by one (mutual TLS; needs {flag}-cert/-key and a pro license).",
            metavar="PATH",
            default=None,
            show_default=False,
        ),
    ]


_SERVE_OPTIONS: list[Callable[[F], F]] = [
    root_dir_option,
    license_key_option,
    _option("--host", "Address the primary API listens on.", default="127.0.0.1"),
    _option("--port", "Port of the primary API (0 = pick a free port).", type=PORT, default=7890),
    _option("--admin-host", "Address the admin API listens on.", default="127.0.0.1"),
    _option(
        "--admin-port", "Port of the admin API (0 = pick a free port).", type=PORT, default=8901
    ),
    _option("--no-admin", "Do not start the admin API.", is_flag=True, show_default=False),
    *_tls_options("", "primary"),
    *_tls_options("admin-", "admin"),
    _option(
        "--log-format",
        "Log line format: pretty (coloured on a terminal), compact (one plain line per "
        "record) or json (one JSON object per line).",
        type=click.Choice(LOG_FORMATS),
        default=None,
        show_default="pretty on a terminal, else compact",
    ),
    _option(
        "--log-level",
        "Minimum level of log records to write.",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        default="info",
    ),
    _option(
        "--log-to-disk",
        "Write logs to rotated files in <root-dir>/log/ instead of stdout.",
        is_flag=True,
        show_default=False,
    ),
    _option(
        "--log-dir",
        "Write logs to rotated files <dir>/zizq.log instead of stdout (implies --log-to-disk).",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
    ),
    _option(
        "--log-rotation",
        "Time-based rotation of the log file (with --log-to-disk or --log-dir).",
        type=click.Choice(["daily", "hourly", "never"]),
        default="daily",
    ),
    _option(
        "--log-max-size",
        "Rotate the log file when it reaches this size.",
        type=SIZE,
        default="100MB",
    ),
    _option(
        "--log-max-files",
        "How many rotated log files to keep.",
        type=Count(1, 100_000),
        default=10,
    ),
    _option(
        "--heartbeat-interval",
        "Interval between heartbeats on idle take streams.",
        type=TIMER_MS,
        default="3s",
        callback=_positive,
    ),
    _option(
        "--idle-timeout",
        "Close a client connection after this long without data either way "
        "(no request in progress).",
        type=TIMER_MS,
        default="75s",
        callback=_positive,
    ),
    _option(
        "--global-in-flight-limit",
        "Maximum in-flight jobs across all workers (0 = no limit).",
        short="-l",
        type=Count(0),
        default=1024,
    ),
    _option(
        "--enqueue-batch-size",
        "Most enqueue requests written together when they arrive at once "
        "(one write, all or none; a bulk counts as one; 1 = write each alone).",
        type=Count(1, MAX_I32),
        default=1000,
    ),
    _option(
        "--complete-batch-size",
        "Most acknowledgement requests written together when they arrive at once "
        "(1 = write each alone).",
        type=Count(1, MAX_I32),
        default=1000,
    ),
    _option(
        "--max-budgets",
        "Most budgets (pro: concurrency and rate limits) the server holds.",
        type=Count(1, MAX_I32),
        default=8192,
    ),
    _option(
        "--default-retry-limit",
        "Retries allowed for jobs that do not set their own limit.",
        type=Count(0, MAX_I32),
        default=25,
    ),
    _option(
        "--default-backoff-base",
        "Base retry delay B (give all three backoff flags together).",
        type=BACKOFF_MS,
        default=None,
        show_default="15s",
    ),
    _option(
        "--default-backoff-exponent",
        "Backoff exponent E applied to the attempt count (0 to 100).",
        type=BoundedFloat(0, 100),
        default=None,
        show_default="4",
    ),
    _option(
        "--default-backoff-jitter",
        "Maximum random jitter J per attempt.",
        type=BACKOFF_MS,
        default=None,
        show_default="30s",
    ),
    _option(
        "--default-completed-job-retention",
        "How long completed jobs are kept (0 = remove at once).",
        type=DURATION,
        default="0",
    ),
    _option(
        "--default-dead-job-retention",
        "How long dead jobs are kept (0 = remove at once).",
        type=DURATION,
        default="7d",
    ),
    _option(
        "--license-key-check-interval",
        "How often a license key given as @path is re-read, so a rotated key takes effect "
        "without a restart (0 = never).",
        type=DurationType(maximum=MAX_I32),
        default="5s",
    ),
    _option(
        "--reaper-check-interval",
        "How often expired terminal jobs are purged.",
        type=TIMER_MS,
        default="30s",
        callback=_positive,
    ),
    _option(
        "--default-commit-mode",
        "Durability of every write: buffered (OS buffers) or fsync.",
        type=click.Choice(COMMIT_MODES),
        default="buffered",
    ),
    _option(
        "--enqueue-commit-mode",
        "Durability of enqueue writes only.",
        type=click.Choice(COMMIT_MODES),
        default=None,
        show_default="same as --default-commit-mode",
    ),
    _option(
        "--cache-size",
        "Block cache size of the storage engine.",
        type=SIZE,
        default="256MiB",
    ),
    _option(
        "--jq-time-limit",
        "Longest a jq worker may take on one call of a filter (then it is killed; 400).",
        type=JQ_TIME_MS,
        default="5s",
        callback=_positive,
    ),
    _option(
        "--jq-memory-limit",
        "Address space cap of each jq worker process (not enforced on Windows).",
        type=SIZE,
        default="512MiB",
        callback=_jq_memory,
    ),
    _option(
        "--auto-compact-threshold",
        "Compact the store in the background once this many jobs were deleted or patched "
        "by bulk operations (and resets) since the last compaction (0 = never).",
        type=Count(0),
        default=DEFAULT_AUTO_COMPACT_THRESHOLD,
    ),
]


@click.command("serve", context_settings=CONTEXT_SETTINGS)
@with_options(_SERVE_OPTIONS)
@click.pass_context
def serve(ctx: click.Context, **_params: Any) -> None:
    """Run the job queue server (the default command).

    \b
    DURATION: whole milliseconds (1500), or numbers with units, spaces optional:
      500ms, 12.5s, 2min, 1h30m, 1h 30m, 7d, 3w; also ns, us, sec, hr, days,
      weeks, months (30.44d) and years (365.25d). m is minutes, M months.
    SIZE: bytes (1048576) or 256MB, 1.5GiB (KB, MB, GB: powers of 1000;
      KiB, MiB, GiB: powers of 1024).
    """
    config = config_from_context(ctx)
    sys.exit(_run(config))
