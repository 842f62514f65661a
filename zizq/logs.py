"""Logging setup for `zizq serve`: pretty or JSON lines, to stdout or rotating files.

Code logs through the stdlib `logging` module. Structured key/value data travels in the
record's `fields` attribute (see `log_event`) so that both formats can render it: the pretty
format appends `key=value` pairs, the JSON format nests them under `"fields"`, which is what
scripts parse to find, for example, the port a listener bound.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import traceback
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

import orjson

from zizq.config import ServeConfig

__all__ = [
    "TRACE",
    "JsonFormatter",
    "PrettyFormatter",
    "SizeAndTimeRotatingFileHandler",
    "configure_logging",
    "log_event",
    "parse_log_level",
]

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


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _label(record: logging.LogRecord) -> str:
    return _LABELS.get(record.levelno, record.levelname)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _exception_text(record: logging.LogRecord) -> str | None:
    if record.exc_info and record.exc_info[0] is not None:
        return "".join(traceback.format_exception(*record.exc_info)).rstrip()
    return None


class PrettyFormatter(logging.Formatter):
    """`<timestamp> <LEVEL> <logger>: <message> key=value ...` for humans."""

    def format(self, record: logging.LogRecord) -> str:
        pairs = "".join(f" {key}={value}" for key, value in _fields(record).items())
        line = f"{_timestamp(record)} {_label(record):>5} {record.name}: {record.getMessage()}"
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


class SizeAndTimeRotatingFileHandler(RotatingFileHandler):
    """Rotates when the file would exceed `max_bytes` OR a daily/hourly boundary passes.

    Rotated files are `<name>.1` (newest) to `<name>.<backup_count>`; older ones are deleted.
    """

    def __init__(self, filename: Path, rotation: str, max_bytes: int, backup_count: int) -> None:
        # Measure the period from the existing file's age so that a restart the next day
        # still rotates yesterday's log instead of appending to it.
        exists = filename.exists()
        started = filename.stat().st_mtime if exists else time.time()
        super().__init__(filename, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8")
        self.rotation = rotation
        self.next_rollover = _next_boundary(started, rotation)

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        if time.time() >= self.next_rollover:
            if self.stream is not None and self.stream.tell() == 0:
                # Nothing was written this period: no point in rotating an empty file.
                self.next_rollover = _next_boundary(time.time(), self.rotation)
                return bool(super().shouldRollover(record))
            return True
        return bool(super().shouldRollover(record))

    def doRollover(self) -> None:
        super().doRollover()
        self.next_rollover = _next_boundary(time.time(), self.rotation)


def _make_handler(config: ServeConfig) -> logging.Handler:
    if config.log_dir is None:
        # StreamHandler flushes after every record, so piped output is never held back.
        return logging.StreamHandler(sys.stdout)
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
    handler.setFormatter(JsonFormatter() if config.log_format == "json" else PrettyFormatter())
    setattr(handler, _OWNED_ATTR, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OWNED_ATTR, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
