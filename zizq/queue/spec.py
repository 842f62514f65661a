"""Validation of client input into typed specs.

Every check names the offending field (with its index inside a bulk request),
so a client can fix its request from the message alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import msgpack

from zizq.queue.errors import InvalidInput, ProFeatureRequired
from zizq.queue.records import MAX_PRIORITY

RESERVED_NAME_CHARS = frozenset(",*?[]{}\\")
MAX_I64 = 2**63 - 1
MAX_I32 = 2**31 - 1

JOB_FIELDS = frozenset(
    {
        "queue",
        "type",
        "payload",
        "priority",
        "ready_at",
        "retry_limit",
        "backoff",
        "retention",
        "unique_key",
        "unique_while",
        "batch",
    }
)
UNIQUE_SCOPES = ("queued", "active", "exists")
FAILURE_FIELDS = frozenset({"message", "error_type", "backtrace", "retry_at", "kill"})


@dataclass(slots=True)
class JobSpec:
    queue: str
    type: str
    payload: bytes  # msgpack-encoded, stored as is
    priority: int | None = None
    ready_at: int | None = None
    retry_limit: int | None = None
    backoff: dict | None = None
    retention: dict | None = None


@dataclass(slots=True)
class FailureSpec:
    message: str
    error_type: str | None = None
    backtrace: str | None = None
    retry_at: int | None = None
    kill: bool = False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in(obj: dict, field: str, where: str, low: int, high: int) -> int | None:
    value = obj.get(field)
    if value is None:
        return None
    if not _is_int(value) or not low <= value <= high:
        raise InvalidInput(f"{where}{field}: must be an integer between {low} and {high}")
    return value


def _name(obj: dict, field: str, where: str) -> str:
    value = obj.get(field)
    if value is None:
        raise InvalidInput(f"{where}{field}: is required")
    if not isinstance(value, str):
        raise InvalidInput(f"{where}{field}: must be a string")
    if not value:
        raise InvalidInput(f"{where}{field}: must not be empty")
    bad = _reserved_in(value)
    if bad:
        raise InvalidInput(f"{where}{field}: must not contain the reserved characters {bad}")
    return value


@functools.lru_cache(maxsize=4096)
def _reserved_in(name: str) -> str:
    # Cached: a bulk enqueue repeats the same few queue and type names many times.
    return " ".join(sorted(RESERVED_NAME_CHARS.intersection(name)))


def _unknown_fields(obj: dict, allowed: frozenset, where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise InvalidInput(f"{where}{key}: unknown field")


def parse_backoff(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidInput(
            f"{where}backoff: must be an object with base_ms, exponent and jitter_ms"
        )
    inner = f"{where}backoff."
    _unknown_fields(value, frozenset({"base_ms", "exponent", "jitter_ms"}), inner)
    for field in ("base_ms", "exponent", "jitter_ms"):
        if value.get(field) is None:
            raise InvalidInput(f"{inner}{field}: is required (backoff needs all three fields)")
    return {
        "base_ms": _whole_ms(value, "base_ms", inner),
        "exponent": _number(value, "exponent", inner, 100),
        "jitter_ms": _whole_ms(value, "jitter_ms", inner),
    }


def _number(obj: dict, field: str, where: str, high: float) -> float:
    value = obj[field]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise InvalidInput(f"{where}{field}: must be a number between 0 and {high:g}")
    return float(value)


def _whole_ms(obj: dict, field: str, where: str) -> int:
    # The Ruby client sends these as floats (15000.0); accept any number and
    # keep whole milliseconds.
    return round(_number(obj, field, where, MAX_I32))


def parse_retention(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}retention: must be an object")
    inner = f"{where}retention."
    _unknown_fields(value, frozenset({"completed_ms", "dead_ms"}), inner)
    retention = {}
    for field in ("completed_ms", "dead_ms"):
        parsed = _int_in(value, field, inner, 0, MAX_I64)
        if parsed is not None:
            retention[field] = parsed
    return retention


def parse_job(obj: Any, where: str = "") -> JobSpec:
    """Validate one enqueue request body (or one element of a bulk request)."""
    if not isinstance(obj, dict):
        raise InvalidInput(f"{where or 'body'}: must be an object")
    _unknown_fields(obj, JOB_FIELDS, where)
    unique_while = obj.get("unique_while")
    if unique_while is not None and unique_while not in UNIQUE_SCOPES:
        raise InvalidInput(f"{where}unique_while: must be one of {', '.join(UNIQUE_SCOPES)}")
    for pro_field in ("unique_key", "batch"):
        if obj.get(pro_field) is not None:
            raise ProFeatureRequired(f"{where}{pro_field}: requires a pro license")
    queue = _name(obj, "queue", where)
    job_type = _name(obj, "type", where)
    if "payload" not in obj:
        raise InvalidInput(f"{where}payload: is required")
    try:
        payload = msgpack.packb(obj["payload"])
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"{where}payload: cannot be stored ({exc})") from None
    backoff = obj.get("backoff")
    retention = obj.get("retention")
    return JobSpec(
        queue=queue,
        type=job_type,
        payload=payload,
        priority=_int_in(obj, "priority", where, 0, MAX_PRIORITY),
        ready_at=_int_in(obj, "ready_at", where, 0, MAX_I64),
        retry_limit=_int_in(obj, "retry_limit", where, 0, MAX_I32),
        backoff=None if backoff is None else parse_backoff(backoff, where),
        retention=None if retention is None else parse_retention(retention, where),
    )


def parse_bulk(obj: Any) -> list[JobSpec]:
    if not isinstance(obj, dict):
        raise InvalidInput("body: must be an object with a jobs array")
    _unknown_fields(obj, frozenset({"jobs"}), "")
    jobs = obj.get("jobs")
    if not isinstance(jobs, list):
        raise InvalidInput("jobs: is required and must be an array")
    return [parse_job(job, f"jobs[{index}].") for index, job in enumerate(jobs)]


def _optional_str(obj: dict, field: str) -> str | None:
    value = obj.get(field)
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"{field}: must be a string")
    return value


def parse_failure(obj: Any) -> FailureSpec:
    if not isinstance(obj, dict):
        raise InvalidInput("body: must be an object with a message")
    _unknown_fields(obj, FAILURE_FIELDS, "")
    message = obj.get("message")
    if not isinstance(message, str):
        raise InvalidInput("message: is required and must be a string")
    kill = obj.get("kill")
    if kill is not None and not isinstance(kill, bool):
        raise InvalidInput("kill: must be a boolean")
    return FailureSpec(
        message=message,
        error_type=_optional_str(obj, "error_type"),
        backtrace=_optional_str(obj, "backtrace"),
        retry_at=_int_in(obj, "retry_at", "", 0, MAX_I64),
        kill=bool(kill),
    )


def parse_ids(obj: Any) -> list[str]:
    if not isinstance(obj, dict):
        raise InvalidInput("body: must be an object with an ids array")
    _unknown_fields(obj, frozenset({"ids"}), "")
    ids = obj.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InvalidInput("ids: is required and must be an array of strings")
    return ids
