"""Unit tests for zizq.config (value parsers, ServeConfig) and zizq.logs (formats, rotation)."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import sys
import time
from pathlib import Path

import click
import pytest

from zizq import logs
from zizq.config import (
    DEFAULT_BACKOFF,
    DURATION,
    SIZE,
    BackoffPolicy,
    ServeConfig,
    parse_duration,
    parse_size,
)

SECOND = 1000
DAY = 24 * 3600 * SECOND

# --- durations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1500", 1500),
        ("500ms", 500),
        ("15s", 15 * SECOND),
        ("2m", 120 * SECOND),
        ("1h", 3600 * SECOND),
        ("7d", 7 * DAY),
        ("90d", 90 * DAY),
        ("3w", 21 * DAY),
        ("1y", 365 * DAY),
        ("12.5s", 12_500),
        ("0.5ms", 1),  # fractions of a millisecond round half up
        (".25s", 250),
        (" 15s ", 15 * SECOND),
        ("15 s", 15 * SECOND),
        ("90000000000y", 90_000_000_000 * 365 * DAY),
    ],
)
def test_parse_duration_accepts(text: str, expected: int) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "  ", "-1", "-5s", "abc", "s", "15x", "15S", "1.2.3s", "1e3", "15s3", "١٥s"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"ms, s, m, h, d, w or y"):
        parse_duration(text)


# --- sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1048576", 1_048_576),
        ("10B", 10),
        ("1KB", 1000),
        ("500MB", 500_000_000),
        ("2GB", 2_000_000_000),
        ("1TB", 10**12),
        ("1.5GB", 1_500_000_000),
        ("1KiB", 1024),
        ("256MiB", 256 * 1024**2),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("1TiB", 1024**4),
        ("2gib", 2 * 1024**3),
        ("100mb", 100_000_000),
        ("1k", 1000),
        ("3M", 3_000_000),
        ("1G", 10**9),
        ("4 MB", 4_000_000),
    ],
)
def test_parse_size_accepts(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "-1", "MB", "10XB", "1.5.5MB", "ten", "1e9"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"KiB"):
        parse_size(text)


# --- click types -----------------------------------------------------------------------


def test_click_types_convert_text_and_pass_ints_through() -> None:
    assert DURATION.convert("15s", None, None) == 15_000
    assert DURATION.convert(250, None, None) == 250
    assert SIZE.convert("1KiB", None, None) == 1024


@pytest.mark.parametrize(("kind", "value"), [(DURATION, "soon"), (SIZE, "big"), (DURATION, -1)])
def test_click_types_fail_with_bad_parameter(kind: click.ParamType, value: object) -> None:
    with pytest.raises(click.BadParameter):
        kind.convert(value, None, None)


# --- ServeConfig -----------------------------------------------------------------------


def test_serve_config_defaults_and_frozen() -> None:
    config = ServeConfig(root_dir=Path("r"))
    assert (config.host, config.port, config.admin_port) == ("127.0.0.1", 7890, 8901)
    assert config.default_backoff == BackoffPolicy(15_000, 4.0, 30_000) == DEFAULT_BACKOFF
    assert config.default_dead_retention_ms == 7 * DAY
    assert config.default_completed_retention_ms == 0
    assert config.cache_size == 256 * 1024**2
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


# --- logging ---------------------------------------------------------------------------


@pytest.fixture
def restore_root_logger() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def _record(message: str, level: int = logging.INFO, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("zizq.server", level, __file__, 1, message, None, None)
    record.fields = fields
    return record


def test_pretty_format_line() -> None:
    record = _record("store opened", root_dir="./zizq-root", ready=0)
    record.created = 1775367687.081547
    line = logs.PrettyFormatter().format(record)
    assert line.startswith("2026-04-05T05:41:27.0815")
    assert line.endswith("Z  INFO zizq.server: store opened root_dir=./zizq-root ready=0")


def test_pretty_format_pads_and_renames_levels() -> None:
    fmt = logs.PrettyFormatter()
    assert " WARN zizq.server: w" in fmt.format(_record("w", logging.WARNING))
    assert "Z ERROR zizq.server: e" in fmt.format(_record("e", logging.ERROR))


def test_json_format_line() -> None:
    record = _record("primary API listening", addr="127.0.0.1:7890", scheme="http", api="primary")
    doc = json.loads(logs.JsonFormatter().format(record))
    assert list(doc) == ["timestamp", "level", "fields", "target"]
    assert doc["timestamp"].endswith("Z") and len(doc["timestamp"]) == len(
        "2026-04-05T05:41:27.081547Z"
    )
    assert doc["level"] == "INFO"
    assert doc["target"] == "zizq.server"
    assert doc["fields"] == {
        "message": "primary API listening",
        "addr": "127.0.0.1:7890",
        "scheme": "http",
        "api": "primary",
    }


def test_json_format_survives_odd_values() -> None:
    record = _record("odd", path=Path("/x"), huge=2**70)
    doc = json.loads(logs.JsonFormatter().format(record))
    assert doc["fields"]["path"] == "/x"
    assert doc["fields"]["huge"] == 2**70


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("trace", logs.TRACE),
        ("debug", 10),
        ("INFO", 20),
        ("warn", 30),
        ("warning", 30),
        ("error", 40),
    ],
)
def test_parse_log_level(name: str, level: int) -> None:
    assert logs.parse_log_level(name) == level


def test_parse_log_level_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="trace"):
        logs.parse_log_level("loud")


def test_configure_logging_to_stdout_json(
    restore_root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    logs.configure_logging(ServeConfig(root_dir=Path("r"), log_format="json", log_level="warn"))
    logger = logging.getLogger("zizq.test")
    logger.info("hidden")
    logs.log_event(logger, "warn", "shown", n=1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["fields"] == {"message": "shown", "n": 1}
    assert logging.getLogger("granian").level == logging.WARNING
    # Reconfiguring replaces our handler instead of stacking a second one.
    logs.configure_logging(ServeConfig(root_dir=Path("r"), log_format="json"))
    logger.info("once")
    assert out.getvalue().count("once") == 1


def test_configure_logging_to_dir_rotates_by_size(
    restore_root_logger: logging.Logger, tmp_path: Path
) -> None:
    log_dir = tmp_path / "logs"
    config = ServeConfig(root_dir=tmp_path, log_dir=log_dir, log_max_size=200, log_max_files=2)
    logs.configure_logging(config)
    logger = logging.getLogger("zizq.test")
    for i in range(20):
        logs.log_event(logger, logging.INFO, "line", i=i)
    names = sorted(p.name for p in log_dir.iterdir())
    assert names == ["zizq.log", "zizq.log.1", "zizq.log.2"]
    assert "i=19" in (log_dir / "zizq.log").read_text()


def test_file_handler_rotates_when_period_passes(tmp_path: Path) -> None:
    path = tmp_path / "zizq.log"
    handler = logs.SizeAndTimeRotatingFileHandler(path, "hourly", max_bytes=0, backup_count=3)
    handler.setFormatter(logs.PrettyFormatter())
    try:
        handler.emit(_record("before"))
        handler.next_rollover = time.time() - 1  # pretend the hour is over
        handler.emit(_record("after"))
    finally:
        handler.close()
    assert "before" in (tmp_path / "zizq.log.1").read_text()
    assert "after" in path.read_text() and "before" not in path.read_text()


def test_file_handler_rotates_stale_file_from_previous_period(tmp_path: Path) -> None:
    path = tmp_path / "zizq.log"
    path.write_text("yesterday\n")
    two_days_ago = time.time() - 2 * 86400
    os.utime(path, (two_days_ago, two_days_ago))
    handler = logs.SizeAndTimeRotatingFileHandler(path, "daily", max_bytes=0, backup_count=3)
    handler.setFormatter(logs.PrettyFormatter())
    try:
        handler.emit(_record("today"))
    finally:
        handler.close()
    assert (tmp_path / "zizq.log.1").read_text() == "yesterday\n"
    assert "today" in path.read_text()


def test_never_rotation_has_no_time_boundary(tmp_path: Path) -> None:
    handler = logs.SizeAndTimeRotatingFileHandler(
        tmp_path / "zizq.log", "never", max_bytes=0, backup_count=1
    )
    handler.close()
    assert handler.next_rollover == float("inf")
