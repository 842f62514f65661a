"""Logging setup for `zizq serve`: pretty, compact or JSON lines, to stdout or rotating files.

Code logs through the stdlib `logging` module. Structured key/value data travels in the
record's `fields` attribute (see `log_event`) so that every format can render it: the pretty
and compact formats append `key=value` pairs, the JSON format nests them under `"fields"`,
which is what scripts parse to find, for example, the port a listener bound.

The formats mirror the reference's: `compact` is one plain line per record; `pretty` is the
same line, coloured when it goes to a terminal; with no `--log-format`, a terminal gets
`pretty` and anything else (a pipe, a file) gets `compact`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
import traceback
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

import orjson

from zizq.config import ServeConfig

__all__ = [
    "LOG_FORMATS",
    "TRACE",
    "CompactFormatter",
    "JsonFormatter",
    "PrettyFormatter",
    "SizeAndTimeRotatingFileHandler",
    "configure_logging",
    "effective_log_format",
    "is_terminal",
    "log_event",
    "parse_log_level",
]

LOG_FORMATS = ("pretty", "compact", "json")

# Finer than DEBUG, for per-request chatter nobody wants by default.
TRACE = logging.DEBUG - 5

_LEVELS_BY_NAME: dict[str, int] = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Short upper-case labels, at most five characters so the pretty format lines up.
_LABELS: dict[int, str] = {
    TRACE: "TRACE",
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARN",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "ERROR",
}

# Third-party loggers that are chatty at INFO; ours stay at the configured level.
_NOISY_LOGGERS = ("granian", "_granian", "granian.access", "granian.server")

_ROTATION_PERIOD_S: dict[str, float] = {"daily": 86400.0, "hourly": 3600.0, "never": math.inf}

# Marks handlers installed by configure_logging so that reconfiguring replaces only ours.
_OWNED_ATTR = "_zizq_owned"


def parse_log_level(name: str) -> int:
    """Map a level name (trace, debug, info, warn/warning, error) to a `logging` level."""
    try:
        return _LEVELS_BY_NAME[name.strip().lower()]
    except KeyError:
        choices = ", ".join(_LEVELS_BY_NAME)
        raise ValueError(f"unknown log level {name!r}, expected one of: {choices}") from None


def log_event(logger: logging.Logger, level: int | str, message: str, **fields: Any) -> None:
    """Log `message` with structured `fields` rendered by both formatters."""
    lvl = parse_log_level(level) if isinstance(level, str) else level
    # stacklevel=2 attributes the record to our caller rather than to this helper.
    logger.log(lvl, message, extra={"fields": fields}, stacklevel=2)


_second_cache: tuple[int, str] = (-1, "")


def _timestamp(record: logging.LogRecord) -> str:
    # Formatting the date once per second, not once per record: a request line is
    # written per request, and strftime was a fifth of its cost.
    global _second_cache
    whole = int(record.created)
    cached_second, prefix = _second_cache
    if whole != cached_second:
        prefix = datetime.fromtimestamp(whole, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache = (whole, prefix)
    micros = int((record.created - whole) * 1_000_000)
    return f"{prefix}.{micros:06d}Z"


def _label(record: logging.LogRecord) -> str:
    return _LABELS.get(record.levelno, record.levelname)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _exception_text(record: logging.LogRecord) -> str | None:
    if record.exc_info and record.exc_info[0] is not None:
        return "".join(traceback.format_exception(*record.exc_info)).rstrip()
    return None


class CompactFormatter(logging.Formatter):
    """`<timestamp> <LEVEL> <logger>: <message> key=value ...`, one plain line per record."""

    def format(self, record: logging.LogRecord) -> str:
        pairs = "".join(f" {key}={value}" for key, value in _fields(record).items())
        line = f"{_timestamp(record)} {_label(record):>5} {record.name}: {record.getMessage()}"
        exc = _exception_text(record)
        return f"{line}{pairs}\n{exc}" if exc else f"{line}{pairs}"


# ANSI styles of the pretty format on a terminal: dim timestamps and logger names, a
# colour per level, italic field names.
_DIM, _ITALIC, _RESET = "\x1b[2m", "\x1b[3m", "\x1b[0m"
_LEVEL_COLOURS: dict[str, str] = {
    "TRACE": "\x1b[35m",
    "DEBUG": "\x1b[34m",
    "INFO": "\x1b[32m",
    "WARN": "\x1b[33m",
    "ERROR": "\x1b[31m",
}


class PrettyFormatter(logging.Formatter):
    """The compact line for humans, in colour when `colour` is set (a terminal)."""

    def __init__(self, colour: bool = False) -> None:
        super().__init__()
        self.colour = colour
        self._compact = CompactFormatter()

    def format(self, record: logging.LogRecord) -> str:
        if not self.colour:
            return self._compact.format(record)
        label = _label(record)
        level = f"{_LEVEL_COLOURS.get(label, '')}{label:>5}{_RESET}"
        pairs = "".join(
            f" {_ITALIC}{key}{_RESET}={value}" for key, value in _fields(record).items()
        )
        line = (
            f"{_DIM}{_timestamp(record)}{_RESET} {level} {_DIM}{record.name}:{_RESET} "
            f"{record.getMessage()}"
        )
        exc = _exception_text(record)
        return f"{line}{pairs}\n{exc}" if exc else f"{line}{pairs}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the fields nested under `"fields"`."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {"message": record.getMessage(), **_fields(record)}
        exc = _exception_text(record)
        if exc:
            fields["exception"] = exc
        doc = {
            "timestamp": _timestamp(record),
            "level": _label(record),
            "fields": fields,
            "target": record.name,
        }
        try:
            return orjson.dumps(doc, default=str).decode()
        except TypeError:
            # orjson refuses ints wider than 64 bits; the stdlib encoder does not.
            return json.dumps(doc, default=str, separators=(",", ":"), ensure_ascii=False)


def _next_boundary(after: float, rotation: str) -> float:
    """The next UTC-aligned period start strictly after `after` (inf for `never`)."""
    period = _ROTATION_PERIOD_S[rotation]
    return math.inf if math.isinf(period) else (after // period + 1) * period


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def effective_log_format(config: ServeConfig) -> str:
    """The format in use: the configured one, else `pretty` on a terminal, `compact` otherwise.

    Log files are never a terminal, so they get `compact` by default.
    """
    if config.log_format is not None:
        return config.log_format
    return "pretty" if config.log_dir is None and is_terminal(sys.stdout) else "compact"


def _formatter(config: ServeConfig) -> logging.Formatter:
    chosen = effective_log_format(config)
    if chosen == "json":
        return JsonFormatter()
    if chosen == "pretty":
        # Colour only where a human reads it: a terminal, never a file or a pipe.
        return PrettyFormatter(colour=config.log_dir is None and is_terminal(sys.stdout))
    return CompactFormatter()


# High-volume loggers (a line per request) whose records are flushed in batches.
BATCHED_LOGGERS = frozenset({"zizq.http"})


class _FlushesInBatches:
    """Flushes the per-request lines and DEBUG records every FLUSH_INTERVAL_S instead of
    one by one; everything else is flushed as it is written.

    One write syscall per record (a request line per request) cost more than the
    request itself under load; batching keeps those lines at most a fraction of a
    second behind, and `logging.shutdown` flushes whatever is left at exit.
    """

    FLUSH_INTERVAL_S = 0.2

    def _start_flusher(self) -> None:
        thread = threading.Thread(target=self._flush_forever, name="zizq-log", daemon=True)
        thread.start()

    @staticmethod
    def _flush_now(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.INFO and record.name not in BATCHED_LOGGERS

    def _flush_forever(self) -> None:
        while True:
            time.sleep(self.FLUSH_INTERVAL_S)
            try:
                self.flush()  # type: ignore[attr-defined]
            except (OSError, ValueError):  # the stream is closed: nothing left to do
                return


class BatchingStreamHandler(_FlushesInBatches, logging.StreamHandler):
    """A stream handler (stdout) whose high-volume records are flushed in batches."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._start_flusher()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if self._flush_now(record):
                self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


class SizeAndTimeRotatingFileHandler(_FlushesInBatches, RotatingFileHandler):
    """Rotates when the file would exceed `max_bytes` OR a daily/hourly boundary passes.

    Rotated files are `<name>.1` (newest) to `<name>.<backup_count>`; older ones are
    deleted. Each record is formatted once and the file size is counted as we write
    (the standard handler formats every record twice and stats the file each time).
    """

    def __init__(self, filename: Path, rotation: str, max_bytes: int, backup_count: int) -> None:
        # Measure the period from the existing file's age so that a restart the next day
        # still rotates yesterday's log instead of appending to it.
        exists = filename.exists()
        started = filename.stat().st_mtime if exists else time.time()
        super().__init__(filename, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8")
        self.rotation = rotation
        self.next_rollover = _next_boundary(started, rotation)
        self._size = filename.stat().st_size if filename.exists() else 0
        self._start_flusher()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + self.terminator
            size = len(text.encode("utf-8"))
            if self._due(size):
                self.doRollover()
            if self.stream is None:
                self.stream = self._open()
            self.stream.write(text)
            self._size += size
            if self._flush_now(record):
                self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _due(self, adding: int) -> bool:
        if time.time() >= self.next_rollover:
            if self._size == 0:
                # Nothing was written this period: no point in rotating an empty file.
                self.next_rollover = _next_boundary(time.time(), self.rotation)
            else:
                return True
        return 0 < self.maxBytes <= self._size + adding and self._size > 0

    def doRollover(self) -> None:
        super().doRollover()
        self._size = 0
        self.next_rollover = _next_boundary(time.time(), self.rotation)


STDOUT_BUFFER_BYTES = 64 * 1024


def _buffered_stdout() -> Any:
    """Standard output with a buffer of its own, for the log handler.

    sys.stdout writes every line straight through under PYTHONUNBUFFERED=1
    (common in container images) or to a terminal: one write syscall per
    request line, a tenth of a small request's cost. The handler flushes this
    one itself (see _FlushesInBatches). A stdout that is not a file (a test's
    capture) is used as it is.
    """
    stream = sys.stdout
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream
    return open(  # noqa: SIM115 - lives as long as the handler
        fd,
        "w",
        buffering=STDOUT_BUFFER_BYTES,
        encoding=getattr(stream, "encoding", None) or "utf-8",
        errors="backslashreplace",
        closefd=False,
    )


def _make_handler(config: ServeConfig) -> logging.Handler:
    if config.log_dir is None:
        return BatchingStreamHandler(_buffered_stdout())
    os.makedirs(config.log_dir, exist_ok=True)
    return SizeAndTimeRotatingFileHandler(
        Path(config.log_dir) / "zizq.log",
        rotation=config.log_rotation,
        max_bytes=config.log_max_size,
        backup_count=config.log_max_files,
    )


def configure_logging(config: ServeConfig) -> None:
    """Install our formatter and destination on the root logger (idempotent)."""
    level = parse_log_level(config.log_level)
    logging.addLevelName(TRACE, "TRACE")
    handler = _make_handler(config)
    handler.setFormatter(_formatter(config))
    setattr(handler, _OWNED_ATTR, True)

    # Records never use the caller's file/line, thread or process fields: skip
    # collecting them (the logging HOWTO's "Optimization" section).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OWNED_ATTR, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
