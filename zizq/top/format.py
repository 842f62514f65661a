"""Short human figures for the `zizq top` screen: durations, ages, timestamps.

Compact forms (`2m18s`, `1h6m`) so that a column of 12 cells holds any of them.
"""

from __future__ import annotations

import datetime as _dt

__all__ = ["compact_duration", "due_in", "elapsed_since", "timestamp"]

_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000))


def compact_duration(ms: int) -> str:
    """At most two units, largest first: 500ms, 5s, 2m18s, 1h6m, 2d5h."""
    ms = max(0, int(ms))
    if ms < 1_000:
        return f"{ms}ms"
    for index, (unit, size) in enumerate(_UNITS):
        if ms >= size:
            count, rest = divmod(ms, size)
            if unit == "s":
                return f"{count}s"
            small_unit, small_size = _UNITS[index + 1]
            small = rest // small_size
            return f"{count}{unit}{small}{small_unit}" if small else f"{count}{unit}"
    raise AssertionError("unreachable")


def elapsed_since(timestamp_ms: int | None, now_ms: int) -> str:
    """How long ago `timestamp_ms` was; `-` when unknown (0 or None)."""
    if not timestamp_ms:
        return "-"
    diff = now_ms - timestamp_ms
    if diff < 1_000:
        return "< 1s"
    return compact_duration(diff)


def due_in(ready_at_ms: int | None, now_ms: int) -> str:
    """How far off a due time is (`3m52s`), or how late (`1m ago`)."""
    if not ready_at_ms:
        return "-"
    diff = abs(ready_at_ms - now_ms)
    if diff < 1_000:
        return "< 1s"
    text = compact_duration(diff)
    return text if ready_at_ms >= now_ms else f"{text} ago"


def timestamp(ms: int | None) -> str:
    """Local time with its offset, to the second: `2026-03-01 14:05:09 +01:00`."""
    if not ms:
        return "-"
    try:
        moment = _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.UTC).astimezone()
    except (OverflowError, OSError, ValueError):
        return str(ms)
    offset = moment.strftime("%z")
    return moment.strftime("%Y-%m-%d %H:%M:%S ") + f"{offset[:3]}:{offset[3:]}"
