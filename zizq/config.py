"""Server configuration: the `ServeConfig` value object and parsers for CLI values.

Durations and byte sizes are written by humans (`15s`, `7d`, `256MB`) but used by the
server as integers (milliseconds, bytes), so parsing lives here, next to the config, and
the click parameter types simply wrap these parsers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import click

__all__ = [
    "DEFAULT_BACKOFF",
    "DURATION",
    "SIZE",
    "BackoffPolicy",
    "DurationType",
    "ServeConfig",
    "SizeType",
    "parse_duration",
    "parse_size",
]

# A non-negative integer or decimal, then an optional unit. Whitespace between the two is
# tolerated because `15 s` in an env file is an easy mistake with an obvious meaning.
_QUANTITY = re.compile(r"^(?P<num>\d+(?:\.\d+)?|\.\d+)\s*(?P<unit>[A-Za-z]*)$", re.ASCII)

_MS_PER_UNIT: dict[str, int] = {
    "ms": 1,
    "s": 1000,
    "m": 60 * 1000,
    "h": 3600 * 1000,
    "d": 24 * 3600 * 1000,
    "w": 7 * 24 * 3600 * 1000,
    "y": 365 * 24 * 3600 * 1000,
}

# Keys are lower case because size units are matched case-insensitively. A bare K/M/G/T
# means the decimal (SI) unit, the same as KB/MB/GB/TB; binary units need the "i".
_BYTES_PER_UNIT: dict[str, int] = {
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}

DURATION_FORMS = (
    "expected milliseconds (e.g. 1500) or a number with a unit ms, s, m, h, d, w or y "
    "(e.g. 500ms, 12.5s, 7d)"
)
SIZE_FORMS = (
    "expected bytes (e.g. 1048576) or a number with a unit B, KB, MB, GB, TB (powers of "
    "1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 256MB or 1.5GiB"
)


def _parse_quantity(
    text: str, units: dict[str, int], default_unit: str, forms: str, *, fold_case: bool
) -> int:
    """Parse `<number><unit>` into an integer count of the base unit.

    Decimal arithmetic keeps huge values such as `90000000000y` exact and makes
    `12.5s` come out as exactly 12500 rather than a float approximation.
    """
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise ValueError(f"invalid value {text!r}: {forms}")
    unit = match["unit"] or default_unit
    key = unit.lower() if fold_case else unit
    if key not in units:
        raise ValueError(f"unknown unit {unit!r} in {text!r}: {forms}")
    value = Decimal(match["num"]) * units[key]
    return int(value.to_integral_value(rounding=ROUND_HALF_UP))


def parse_duration(text: str) -> int:
    """Parse a human duration into milliseconds. A bare number is milliseconds."""
    # Case-sensitive so that `m` (minutes) can never be confused with a future `M`.
    return _parse_quantity(text, _MS_PER_UNIT, "ms", DURATION_FORMS, fold_case=False)


def parse_size(text: str) -> int:
    """Parse a human byte size into bytes. A bare number is bytes."""
    return _parse_quantity(text, _BYTES_PER_UNIT, "b", SIZE_FORMS, fold_case=True)


class _ParsedIntType(click.ParamType):
    """A click type that turns text into an int with a `ValueError`-raising parser."""

    def parse(self, text: str) -> int:
        raise NotImplementedError

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        # Defaults may already be ints; only strings need parsing.
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                self.fail(f"{value} must not be negative", param, ctx)
            return value
        try:
            return self.parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class DurationType(_ParsedIntType):
    name = "duration"

    def parse(self, text: str) -> int:
        return parse_duration(text)


class SizeType(_ParsedIntType):
    name = "size"

    def parse(self, text: str) -> int:
        return parse_size(text)


DURATION = DurationType()
SIZE = SizeType()


@dataclass(frozen=True)
class BackoffPolicy:
    """Retry delay formula: base + attempts**exponent + attempts * rand(0..jitter), in ms."""

    base_ms: int
    exponent: float
    jitter_ms: int


# About 25 days of retries in total with the default retry limit of 25.
DEFAULT_BACKOFF = BackoffPolicy(base_ms=15_000, exponent=4.0, jitter_ms=30_000)


@dataclass(frozen=True)
class ServeConfig:
    """Everything `zizq serve` needs, already parsed and validated."""

    root_dir: Path
    host: str = "127.0.0.1"
    port: int = 7890  # 0 = let the OS pick a free port
    admin_host: str = "127.0.0.1"
    admin_port: int = 8901
    admin_enabled: bool = True
    log_format: str = "pretty"  # "pretty" | "json"
    log_level: str = "info"  # trace | debug | info | warn | warning | error
    log_dir: Path | None = None  # None = log to stdout
    log_rotation: str = "daily"  # daily | hourly | never
    log_max_size: int = 100_000_000
    log_max_files: int = 10
    heartbeat_interval_ms: int = 3000
    idle_timeout_ms: int = 75_000  # close client connections idle this long
    global_in_flight_limit: int = 1024  # 0 = no limit
    default_retry_limit: int = 25
    default_backoff: BackoffPolicy = DEFAULT_BACKOFF  # frozen, so sharing it is safe
    default_completed_retention_ms: int = 0
    default_dead_retention_ms: int = 7 * 24 * 3600 * 1000
    reaper_check_interval_ms: int = 30_000
    default_commit_mode: str = "buffered"  # "buffered" | "fsync"
    enqueue_commit_mode: str = "buffered"
    cache_size: int = 256 * 1024 * 1024
    jq_time_limit_ms: int = 5_000  # each call to a jq worker process (filters)
    jq_memory_limit: int = 512 * 1024 * 1024  # address space of each jq worker (not on Windows)
    license_key: str | None = None  # a token, or "@path" to a file re-read for rotation
