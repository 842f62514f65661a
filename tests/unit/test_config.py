"""Unit tests for zizq.config (value parsers, ServeConfig) and zizq.logs (formats, rotation)."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
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
    BoundedFloat,
    ServeConfig,
    parse_count,
    parse_duration,
    parse_size,
)

SECOND = 1000
DAY = 24 * 3600 * SECOND

# --- durations -------------------------------------------------------------------------


# Reference: src/commands/serve/mod.rs `parse_duration_ms` (a bare u64 is milliseconds,
# else humantime 2.x `parse_duration`, truncated with `as_millis`); units as humantime
# 2.4.0 src/duration.rs `Unit::from_str` defines them (month 30.44 d, year 365.25 d).
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
YEAR = 31_557_600 * SECOND
MONTH = 2_630_016 * SECOND


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1500", 1500),
        ("500ms", 500),
        ("15s", 15 * SECOND),
        ("2m", 2 * MINUTE),
        ("2min", 2 * MINUTE),
        ("1h", HOUR),
        ("1h 30m", 90 * MINUTE),
        ("1h30m", 90 * MINUTE),
        ("2h 37min", 157 * MINUTE),
        ("1hour 12min 5s", HOUR + 12 * MINUTE + 5 * SECOND),
        ("7d", 7 * DAY),
        ("90d", 90 * DAY),
        ("3w", 21 * DAY),
        ("12.5s", 12_500),
        ("4.2s", 4_200),
        ("2.5h", 150 * MINUTE),
        ("1.5minutes", 90 * SECOND),
        (" 15s ", 15 * SECOND),
        ("15 s", 15 * SECOND),
        ("20 min 17 nsec ", 20 * MINUTE),
        # Every humantime unit name.
        ("3sec", 3 * SECOND),
        ("3secs", 3 * SECOND),
        ("3second", 3 * SECOND),
        ("3seconds", 3 * SECOND),
        ("2mins", 2 * MINUTE),
        ("2minute", 2 * MINUTE),
        ("2minutes", 2 * MINUTE),
        ("2hr", 2 * HOUR),
        ("2hrs", 2 * HOUR),
        ("2hours", 2 * HOUR),
        ("1day", DAY),
        ("2days", 2 * DAY),
        ("1week", 7 * DAY),
        ("2weeks", 14 * DAY),
        ("2wk", 14 * DAY),
        ("2wks", 14 * DAY),
        ("1M", MONTH),
        ("1month", MONTH),
        ("2months", 2 * MONTH),
        ("1y", YEAR),
        ("1yr", YEAR),
        ("2yrs", 2 * YEAR),
        ("1year", YEAR),
        ("2years", 2 * YEAR),
        ("31msec", 31),
        ("31millis", 31),
        # Sub-millisecond parts are dropped, as the reference's `as_millis` does.
        ("1500us", 1),
        ("1500usec", 1),
        ("1500µs", 1),
        ("999us", 0),
        ("0.5ms", 0),
        ("2000000ns", 2),
        ("17nanos", 0),
        ("1s 999999ns", 1000),
        # The largest duration the engine's int64 times can hold.
        ("9223372036854775807", 2**63 - 1),
        ("292000000y", 292_000_000 * YEAR),
    ],
)
def test_parse_duration_accepts(text: str, expected: int) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("  ", "empty"),
        ("-1", "invalid duration '-1'"),
        ("-5s", "invalid duration '-5s'"),
        ("abc", "invalid duration 'abc'"),
        ("s", "invalid duration 's'"),
        (".25s", "invalid duration '.25s'"),  # humantime wants a digit first
        ("15x", "unknown time unit 'x'"),
        ("15S", "unknown time unit 'S'"),  # units are case-sensitive (M is months)
        ("1H", "unknown time unit 'H'"),
        ("1e3", "unknown time unit 'e'"),
        ("1.2.3s", "invalid character '.'"),
        ("1.s", "digits must follow"),
        ("15s3", "a time unit is needed after 3"),
        ("1.5", "a time unit is needed after 1.5"),
        ("1h 30", "a time unit is needed after 30"),
        ("١٥s", "invalid duration"),
        ("1s,2s", "invalid character ','"),
    ],
)
def test_parse_duration_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_duration(text)


@pytest.mark.parametrize(
    "text",
    [
        "9223372036854775808",  # one past int64 milliseconds
        "292471209y",
        "9" * 5000,
        "9" * 5000 + "s",
        "1" + "0" * 30 + "ns",
        "18446744073709551615s",
    ],
)
def test_parse_duration_too_large_is_one_short_line(text: str) -> None:
    with pytest.raises(ValueError, match="too large: at most 9223372036854775807ms") as info:
        parse_duration(text)
    assert len(str(info.value)) < 200 and "\n" not in str(info.value)


def test_parse_duration_custom_maximum() -> None:
    assert parse_duration("24d", maximum=2**31 - 1) == 24 * DAY
    with pytest.raises(ValueError, match=r"at most 2147483647ms \(24d 20h 31m 23s 647ms\)"):
        parse_duration("25d", maximum=2**31 - 1)


def test_parse_duration_long_fraction_is_refused_quickly() -> None:
    started = time.monotonic()
    with pytest.raises(ValueError, match="too many decimal places"):
        parse_duration("1." + "5" * 100_000 + "s")
    assert time.monotonic() - started < 1


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


@pytest.mark.parametrize(
    ("text", "expected"), [("1Ki", 1024), ("2PB", 2 * 10**15), ("1PiB", 2**50)]
)
def test_parse_size_accepts_the_reference_units(text: str, expected: int) -> None:
    # Reference: bytesize 2 (src/commands/serve/mod.rs `parse_byte_size`).
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["9" * 5000, "9" * 5000 + "MB", "8EiB", "9223372036854775808"])
def test_parse_size_too_large_is_one_short_line(text: str) -> None:
    with pytest.raises(ValueError, match="too large") as info:
        parse_size(text)
    assert len(str(info.value)) < 200


# --- counts and numbers ------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [("0", 0), ("65535", 65535), (" 7 ", 7)])
def test_parse_count_accepts(text: str, expected: int) -> None:
    assert parse_count(text, 0, 65535) == expected


@pytest.mark.parametrize("text", ["-1", "65536", "1.5", "1e3", "", "9" * 5000, "0x10", "+5"])
def test_parse_count_rejects_with_a_short_message(text: str) -> None:
    with pytest.raises(ValueError, match="is not a whole number from 0 to 65535") as info:
        parse_count(text, 0, 65535)
    assert len(str(info.value)) < 120


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e999", "-1", "101", "x", "9" * 5000])
def test_bounded_float_refuses_non_finite_and_out_of_range(text: str) -> None:
    with pytest.raises(click.BadParameter, match="is not a number from 0 to 100") as info:
        BoundedFloat(0, 100).convert(text, None, None)
    assert len(str(info.value.message)) < 120


def test_bounded_float_accepts() -> None:
    assert BoundedFloat(0, 100).convert("3.75", None, None) == 3.75


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
    assert config.log_format is None  # pretty on a terminal, compact otherwise
    assert config.auto_compact_threshold == 10_000
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


def test_compact_format_is_the_plain_line() -> None:
    record = _record("store opened", root_dir="./zizq-root")
    record.created = 1775367687.081547
    line = logs.CompactFormatter().format(record)
    assert (
        line == "2026-04-05T05:41:27.081547Z  INFO zizq.server: store opened root_dir=./zizq-root"
    )
    assert logs.PrettyFormatter().format(record) == line  # pretty without a terminal


def test_pretty_format_colours_for_a_terminal() -> None:
    record = _record("store opened", root_dir="./zizq-root")
    line = logs.PrettyFormatter(colour=True).format(record)
    assert "\x1b[32m INFO\x1b[0m" in line  # green level
    assert "\x1b[3mroot_dir\x1b[0m=./zizq-root" in line
    assert "store opened" in line


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stdout", "log_format", "log_dir", "expected"),
    [
        (_Terminal(), None, None, "pretty"),
        (io.StringIO(), None, None, "compact"),  # a pipe or a file
        (_Terminal(), None, Path("logs"), "compact"),  # log files are never a terminal
        (io.StringIO(), "pretty", None, "pretty"),
        (_Terminal(), "json", None, "json"),
        (_Terminal(), "compact", None, "compact"),
    ],
)
def test_effective_log_format(
    monkeypatch: pytest.MonkeyPatch,
    stdout: io.StringIO,
    log_format: str | None,
    log_dir: Path | None,
    expected: str,
) -> None:
    # Reference: src/logging.rs `init` (TTY -> pretty, else compact).
    monkeypatch.setattr(sys, "stdout", stdout)
    config = ServeConfig(root_dir=Path("r"), log_format=log_format, log_dir=log_dir)
    assert logs.effective_log_format(config) == expected


@pytest.mark.parametrize(("stdout", "coloured"), [(_Terminal(), True), (io.StringIO(), False)])
def test_default_format_colours_only_a_terminal(
    restore_root_logger: logging.Logger,
    monkeypatch: pytest.MonkeyPatch,
    stdout: io.StringIO,
    coloured: bool,
) -> None:
    monkeypatch.setattr(sys, "stdout", stdout)
    logs.configure_logging(ServeConfig(root_dir=Path("r")))
    logs.log_event(logging.getLogger("zizq.test"), logging.INFO, "hello", n=1)
    out = stdout.getvalue()
    assert "hello" in out and "=1" in out
    assert ("\x1b[" in out) is coloured


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
