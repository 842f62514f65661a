"""Server configuration: the `ServeConfig` value object and parsers for CLI values.

Durations, byte sizes and counts are written by humans (`1h 30m`, `256MB`, `1024`) but used
by the server as integers (milliseconds, bytes), so parsing lives here, next to the config,
and the click parameter types simply wrap these parsers.

Durations follow the reference implementation's syntax (the Rust `humantime` crate, 2.x):
a bare whole number is milliseconds; otherwise one or more `<number><unit>` spans, with or
without spaces between them (`1h30m`, `1h 30m`, `12.5s`). Every parser bounds the length
and the value of what it reads, so a 5,000-digit value is one short error, not a traceback.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import click

__all__ = [
    "DEFAULT_AUTO_COMPACT_THRESHOLD",
    "DEFAULT_BACKOFF",
    "DURATION",
    "MAX_DURATION_MS",
    "MAX_I32",
    "MAX_SIZE_BYTES",
    "SIZE",
    "BackoffPolicy",
    "BoundedFloat",
    "Count",
    "DurationType",
    "ServeConfig",
    "SizeType",
    "format_duration_ms",
    "parse_count",
    "parse_duration",
    "parse_size",
]

# Times are int64 milliseconds everywhere in the engine; a duration past that could never
# be added to "now", so it is refused here rather than saturated silently later.
MAX_DURATION_MS = 2**63 - 1
MAX_SIZE_BYTES = 2**63 - 1
MAX_I32 = 2**31 - 1  # the API's limit for per-job retry limits and backoff milliseconds
MAX_U64 = 2**64 - 1

# A u64 has 20 digits: any longer number is too large whatever its unit, and refusing it
# before any arithmetic keeps hostile input cheap.
_MAX_DIGITS = 20
_MAX_SHOWN = 40  # characters of a bad value quoted back in an error

_NS_PER_S = 1_000_000_000
# humantime's unit names (case-sensitive: `m` is minutes, `M` months). A month is 30.44
# days and a year 365.25 days, as humantime defines them.
_NS_PER_DURATION_UNIT: dict[str, int] = {
    **dict.fromkeys(("nanos", "nsec", "ns"), 1),
    **dict.fromkeys(("usec", "us", "µs"), 1_000),
    **dict.fromkeys(("millis", "msec", "ms"), 1_000_000),
    **dict.fromkeys(("seconds", "second", "secs", "sec", "s"), _NS_PER_S),
    **dict.fromkeys(("minutes", "minute", "min", "mins", "m"), 60 * _NS_PER_S),
    **dict.fromkeys(("hours", "hour", "hr", "hrs", "h"), 3600 * _NS_PER_S),
    **dict.fromkeys(("days", "day", "d"), 86_400 * _NS_PER_S),
    **dict.fromkeys(("weeks", "week", "wk", "wks", "w"), 7 * 86_400 * _NS_PER_S),
    **dict.fromkeys(("months", "month", "M"), 2_630_016 * _NS_PER_S),
    **dict.fromkeys(("years", "year", "yr", "yrs", "y"), 31_557_600 * _NS_PER_S),
}

# One span of a duration: digits, an optional fraction, optional spaces, then the unit
# (possibly empty, which is an error unless the whole value is a bare number).
_SPAN = re.compile(r"\s*(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]*))?\s*(?P<unit>[A-Za-zµ]*)\s*")
_BARE_INT = re.compile(r"[0-9]+")

# Sizes: a number (integer or decimal) and an optional unit, case-insensitive. A bare
# K/M/G/T/P means the decimal (SI) unit, as does KB/MB/...; binary units need the "i".
_QUANTITY = re.compile(r"^(?P<num>\d+(?:\.\d+)?|\.\d+)\s*(?P<unit>[A-Za-z]*)$", re.ASCII)
_BYTES_PER_UNIT: dict[str, int] = {"b": 1}
for _power, _letter in enumerate("kmgtpe", start=1):
    _BYTES_PER_UNIT[_letter] = _BYTES_PER_UNIT[_letter + "b"] = 1000**_power
    _BYTES_PER_UNIT[_letter + "i"] = _BYTES_PER_UNIT[_letter + "ib"] = 1024**_power

DURATION_FORMS = (
    "expected milliseconds (e.g. 1500) or numbers with units such as 500ms, 12.5s, 2min, "
    "1h30m, 7d, 3w (units: ns, us, ms, s/sec, m/min, h/hr, d, w, M/months, y/years)"
)
SIZE_FORMS = (
    "expected bytes (e.g. 1048576) or a number with a unit B, KB, MB, GB, TB, PB (powers of "
    "1000) or KiB, MiB, GiB, TiB, PiB (powers of 1024), e.g. 256MB or 1.5GiB"
)


def _shown(text: str) -> str:
    """`text` quoted for an error message, cut short if it is long."""
    return repr(text) if len(text) <= _MAX_SHOWN else repr(text[:_MAX_SHOWN] + "...")


def format_duration_ms(ms: int) -> str:
    """Milliseconds in humantime's style, for messages: 90061001 -> `1d 1h 1m 1s 1ms`."""
    if ms == 0:
        return "0s"
    if ms >= 1000 * 31_557_600_000:
        return f"about {ms / 31_557_600_000:,.0f} years"
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    if ms:
        parts.append(f"{ms}ms")
    return " ".join(parts)


def parse_duration(text: str, maximum: int = MAX_DURATION_MS) -> int:
    """Parse a duration into whole milliseconds (sub-millisecond parts are dropped).

    Raises `ValueError` with a one-line message for anything else, including values above
    `maximum` milliseconds.
    """
    value = text.strip()
    if not value:
        raise ValueError(f"the value is empty: {DURATION_FORMS}")
    if _BARE_INT.fullmatch(value):
        # A bare whole number is milliseconds, as in the reference.
        return _bounded(value, int(value) if len(value) <= _MAX_DIGITS else None, maximum)
    total_ns = 0
    pos = 0
    while pos < len(value):
        span = _SPAN.match(value, pos)
        if span is None:
            if pos == 0:
                raise ValueError(f"invalid duration {_shown(value)}: {DURATION_FORMS}")
            bad = value[pos:].lstrip()[:1]
            raise ValueError(
                f"invalid character {bad!r} in duration {_shown(value)}: {DURATION_FORMS}"
            )
        number, frac, unit = span["int"], span["frac"], span["unit"]
        if frac == "":
            raise ValueError(f"invalid duration {_shown(value)}: digits must follow the '.'")
        if not unit:
            after = span.end()
            if after < len(value):
                raise ValueError(
                    f"invalid character {value[after]!r} in duration {_shown(value)}: "
                    f"{DURATION_FORMS}"
                )
            shown = number + (f".{frac}" if frac else "")
            raise ValueError(
                f"a time unit is needed after {shown[:_MAX_SHOWN]} in {_shown(value)}, "
                f"for example {shown[:_MAX_SHOWN]}s or {shown[:_MAX_SHOWN]}ms"
            )
        per_unit = _NS_PER_DURATION_UNIT.get(unit)
        if per_unit is None:
            raise ValueError(
                f"unknown time unit {_shown(unit)} in {_shown(value)}: {DURATION_FORMS}"
            )
        if frac is not None and len(frac) > _MAX_DIGITS:
            raise ValueError(f"invalid duration {_shown(value)}: too many decimal places")
        if len(number) > _MAX_DIGITS:
            return _bounded(value, None, maximum)
        total_ns += int(number) * per_unit
        if frac:
            total_ns += int(frac) * per_unit // 10 ** len(frac)
        if total_ns // 1_000_000 > maximum:
            return _bounded(value, None, maximum)
        pos = span.end()
    return _bounded(value, total_ns // 1_000_000, maximum)


def _bounded(text: str, ms: int | None, maximum: int) -> int:
    if ms is None or ms > maximum:
        raise ValueError(
            f"duration {_shown(text)} is too large: at most {maximum}ms "
            f"({format_duration_ms(maximum)})"
        )
    return ms


def parse_size(text: str, maximum: int = MAX_SIZE_BYTES) -> int:
    """Parse a human byte size into bytes. A bare number is bytes."""
    value = text.strip()
    match = _QUANTITY.match(value)
    if match is None:
        raise ValueError(f"invalid size {_shown(value)}: {SIZE_FORMS}")
    unit = match["unit"].lower() or "b"
    if unit not in _BYTES_PER_UNIT:
        raise ValueError(f"unknown unit {_shown(match['unit'])} in {_shown(value)}: {SIZE_FORMS}")
    whole = match["num"].split(".")[0]
    if len(whole) > _MAX_DIGITS or len(match["num"]) > 2 * _MAX_DIGITS:
        size = None
    else:
        # Decimal keeps `1.5GiB` exact; a fraction of a byte rounds half up.
        exact = Decimal(match["num"]) * _BYTES_PER_UNIT[unit]
        size = int(exact.to_integral_value(rounding=ROUND_HALF_UP))
    if size is None or size > maximum:
        raise ValueError(f"size {_shown(value)} is too large: at most {maximum} bytes")
    return size


def parse_count(text: str, low: int, high: int) -> int:
    """A whole number from `low` to `high` (digits only, no sign or unit)."""
    value = text.strip()
    if not _BARE_INT.fullmatch(value) or len(value) > _MAX_DIGITS or not low <= int(value) <= high:
        raise ValueError(f"{_shown(value)} is not a whole number from {low} to {high}")
    return int(value)


class _ParsedIntType(click.ParamType):
    """A click type that turns text into an int with a `ValueError`-raising parser."""

    def parse(self, text: str) -> int:
        raise NotImplementedError

    def check(self, value: int) -> int:
        """Bounds for values that arrive as ints already (defaults)."""
        return value

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            if isinstance(value, int) and not isinstance(value, bool):
                return self.check(value)
            return self.parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class DurationType(_ParsedIntType):
    """A duration in milliseconds, at most `maximum`."""

    name = "duration"

    def __init__(self, maximum: int = MAX_DURATION_MS) -> None:
        self.maximum = maximum

    def parse(self, text: str) -> int:
        return parse_duration(text, self.maximum)

    def check(self, value: int) -> int:
        return _checked_int(value, 0, self.maximum, "ms")


class SizeType(_ParsedIntType):
    name = "size"

    def parse(self, text: str) -> int:
        return parse_size(text)

    def check(self, value: int) -> int:
        return _checked_int(value, 0, MAX_SIZE_BYTES, " bytes")


class Count(_ParsedIntType):
    """A whole number in a range (click's IntRange echoes a 5,000-digit value whole)."""

    name = "integer"

    def __init__(self, low: int = 0, high: int = 2**63 - 1) -> None:
        self.low, self.high = low, high

    def parse(self, text: str) -> int:
        return parse_count(text, self.low, self.high)

    def check(self, value: int) -> int:
        return _checked_int(value, self.low, self.high, "")


def _checked_int(value: int, low: int, high: int, unit: str) -> int:
    if not low <= value <= high:
        raise ValueError(f"{value}{unit} is out of range: from {low} to {high}")
    return value


class BoundedFloat(click.ParamType):
    """A finite decimal number from `low` to `high` (refuses nan, inf and 1e999)."""

    name = "number"

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        text = str(value).strip()
        try:
            number = float(text) if len(text) <= _MAX_SHOWN else math.nan
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and self.low <= number <= self.high):
            self.fail(
                f"{_shown(text)} is not a number from {self.low:g} to {self.high:g}", param, ctx
            )
        return number


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

# After this many jobs were deleted or patched by bulk operations (and resets) since the
# last compaction, the server compacts in the background; 0 turns it off.
DEFAULT_AUTO_COMPACT_THRESHOLD = 10_000


@dataclass(frozen=True)
class ServeConfig:
    """Everything `zizq serve` needs, already parsed and validated."""

    root_dir: Path
    host: str = "127.0.0.1"
    port: int = 7890  # 0 = let the OS pick a free port
    admin_host: str = "127.0.0.1"
    admin_port: int = 8901
    admin_enabled: bool = True
    log_format: str | None = None  # "pretty" | "compact" | "json"; None = pretty on a tty
    log_level: str = "info"  # trace | debug | info | warn | warning | error
    log_dir: Path | None = None  # None = log to stdout
    log_rotation: str = "daily"  # daily | hourly | never
    log_max_size: int = 100_000_000
    log_max_files: int = 10
    heartbeat_interval_ms: int = 3000
    idle_timeout_ms: int = 75_000  # close client connections idle this long
    global_in_flight_limit: int = 1024  # 0 = no limit
    max_budgets: int = 8192  # budgets (pro) the server holds at most
    enqueue_batch_size: int = 1000  # enqueue requests coalesced into one write (1 = off)
    complete_batch_size: int = 1000  # ack requests coalesced into one write (1 = off)
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
    auto_compact_threshold: int = DEFAULT_AUTO_COMPACT_THRESHOLD  # 0 = never compact by itself
    license_key: str | None = None  # a token, or "@path" to a file re-read for rotation
    license_key_check_interval_ms: int = 5_000  # how often "@path" is re-read; 0 = never
    # TLS per listener: a certificate chain and its key (PEM files) serve https; a client
    # CA on top requires every client to present a certificate it signed (mutual TLS, pro).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    admin_tls_cert: Path | None = None
    admin_tls_key: Path | None = None
    admin_tls_client_ca: Path | None = None
