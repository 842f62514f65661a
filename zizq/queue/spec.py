"""Validation of client input into typed specs.

Every check names the offending field (with its index inside a bulk request),
so a client can fix its request from the message alone.

Limits (documented in the README):
- queue and type names: 1..MAX_NAME_BYTES UTF-8 bytes, no leading or trailing
  whitespace (query strings strip it, so such a name could never be filtered
  or taken by name), none of RESERVED_NAME_CHARS;
- payloads: see zizq.queue.payload;
- a bulk enqueue holds at most MAX_BULK_JOBS jobs, a bulk ack MAX_ACK_IDS ids;
- failure reports: message, error_type and backtrace are cut to their caps
  (the failure is still recorded: refusing it would leave the job in flight).

Fields a body does not define are ignored, at every level (job, bulk envelope,
backoff, retention, failure, bulk ack), as the reference ignores them: a newer
client's optional field must not break an older server. Query parameters are
another matter (see zizq.api.params.reject_unknown).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from zizq.queue import jq_sandbox
from zizq.queue import payload as payload_model
from zizq.queue.budget_policy import Binding, parse_bindings
from zizq.queue.errors import InvalidInput
from zizq.queue.names import (  # noqa: F401 (some are re-exported)
    MAX_I32,
    MAX_I64,
    MAX_NAME_BYTES,
    RESERVED_NAME_CHARS,
    check_name,
    name_problem,
    shown_key,
)
from zizq.queue.records import MAX_PRIORITY
from zizq.queue.timeslice import TimeSlicer

MAX_BULK_JOBS = 10_000
MAX_ACK_IDS = 10_000
MAX_MESSAGE_BYTES = 64 * 1024
MAX_ERROR_TYPE_BYTES = 1024
MAX_BACKTRACE_BYTES = 256 * 1024
TRUNCATED = " [truncated]"


class TooLarge(InvalidInput):
    """More items than one request may carry (the API answers 413)."""


UNIQUE_SCOPES = ("queued", "active", "exists")
DEFAULT_UNIQUE_SCOPE = "queued"
BATCH_FIELDS = ("key", "when", "fold")
MAX_KEY_BYTES = 1024  # unique_key and batch.key


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
    unique_key: str | None = None  # pro: see zizq.queue.unique
    unique_while: str | None = None  # set (default "queued") whenever unique_key is
    batch: dict | None = None  # pro: {"key", "when", "fold"}, see zizq.queue.batching
    value: Any = None  # the decoded payload of a batched job (folds need it), else None
    budgets: list[Binding] | None = None  # pro: budget bindings, see zizq.queue.budgets

    @property
    def keyed(self) -> bool:
        """Whether the job takes part in a unique or batch key (the slower, locked path)."""
        return self.unique_key is not None or self.batch is not None


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
    # The usual case in one line: a bulk checks two names per job.
    if type(value) is str and len(value) <= MAX_NAME_BYTES and name_problem(value) is None:
        return value
    if value is None:
        raise InvalidInput(f"{where}{field}: is required")
    return check_name(value, field, where)


def parse_backoff(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidInput(
            f"{where}backoff: must be an object with base_ms, exponent and jitter_ms"
        )
    inner = f"{where}backoff."
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
    retention = {}
    for field in ("completed_ms", "dead_ms"):
        parsed = _int_in(value, field, inner, 0, MAX_I64)
        if parsed is not None:
            retention[field] = parsed
    return retention


def parse_job(obj: Any, where: str = "", from_json: bool = False) -> JobSpec:
    """Validate one enqueue request body.

    `from_json`: the body was JSON, whose parser already rules out most of
    what a payload may not hold (see zizq.queue.payload).

    Pro fields are validated here too; whether the license allows them is the
    engine's question, asked after every 400 (as in the reference: a request
    that could never succeed says why, licensed or not).
    """
    if not isinstance(obj, dict):
        raise InvalidInput(f"{where or 'body'}: must be an object")
    queue = _name(obj, "queue", where)
    job_type = _name(obj, "type", where)
    if "payload" not in obj:
        raise InvalidInput(f"{where}payload: is required")
    value = obj["payload"]
    try:
        payload_model.check(value, from_json)
    except payload_model.PayloadError as error:
        raise InvalidInput(error.describe(f"{where}payload")) from None
    try:
        payload = msgpack.packb(value)
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. a Python int past 64 bits
        raise InvalidInput(f"{where}payload: cannot be stored ({exc})") from None
    backoff = obj.get("backoff")
    retention = obj.get("retention")
    spec = JobSpec(
        queue=queue,
        type=job_type,
        payload=payload,
        priority=_int_in(obj, "priority", where, 0, MAX_PRIORITY),
        ready_at=_int_in(obj, "ready_at", where, 0, MAX_I64),
        retry_limit=_int_in(obj, "retry_limit", where, 0, MAX_I32),
        backoff=None if backoff is None else parse_backoff(backoff, where),
        retention=None if retention is None else parse_retention(retention, where),
    )
    if "unique_key" in obj or "unique_while" in obj or "batch" in obj:
        _parse_keys(spec, obj, where, value)
    if "budgets" in obj:
        spec.budgets = parse_bindings(obj["budgets"], where) or None  # [] binds nothing
    return spec


def _key(value: Any, label: str) -> str:
    if type(value) is not str:
        raise InvalidInput(f"{label}: must be a string")
    if not value:
        raise InvalidInput(f"{label}: must not be empty")
    if (
        len(value) > MAX_KEY_BYTES // 4
        and len(value.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES
    ):
        raise InvalidInput(f"{label}: must be at most {MAX_KEY_BYTES} bytes (UTF-8)")
    return value


def _parse_keys(spec: JobSpec, obj: dict, where: str, value: Any) -> None:
    """The unique and batch fields: shapes and combinations (400s)."""
    unique_key = obj.get("unique_key")
    unique_while = obj.get("unique_while")
    batch = obj.get("batch")
    if unique_key is not None:
        spec.unique_key = _key(unique_key, f"{where}unique_key")
    if unique_while is not None:
        if unique_while not in UNIQUE_SCOPES:
            raise InvalidInput(f"{where}unique_while: must be one of {', '.join(UNIQUE_SCOPES)}")
        if unique_key is None:
            raise InvalidInput(f"{where}unique_while: requires unique_key")
    if unique_key is not None:
        spec.unique_while = unique_while or DEFAULT_UNIQUE_SCOPE
    if batch is None:
        return
    if not isinstance(batch, dict):
        raise InvalidInput(f"{where}batch: must be an object with key, when and fold")
    for field in BATCH_FIELDS:
        if not isinstance(batch.get(field), str):
            raise InvalidInput(f"{where}batch.{field}: is required and must be a string")
    if unique_key is not None:
        raise InvalidInput(f"{where}unique_key: unique_key and batch cannot be combined")
    key = _key(batch["key"], f"{where}batch.key")
    for field in ("when", "fold"):
        jq_sandbox.check_text(batch[field], f"{where}batch.{field}")
    spec.batch = {"key": key, "when": batch["when"], "fold": batch["fold"]}
    spec.value = value


async def parse_bulk(obj: Any, from_json: bool = False) -> list[JobSpec]:
    """Validate a bulk enqueue body, letting other requests in between slices of it."""
    if not isinstance(obj, dict):
        raise InvalidInput("body: must be an object with a jobs array")
    jobs = obj.get("jobs")
    if not isinstance(jobs, list):
        raise InvalidInput("jobs: is required and must be an array")
    if len(jobs) > MAX_BULK_JOBS:
        raise TooLarge(
            f"jobs: a bulk holds at most {MAX_BULK_JOBS} jobs (got {len(jobs)}); split it"
        )
    specs = []
    slicer = TimeSlicer()
    for index, job in enumerate(jobs):
        where = f"jobs[{index}]."
        specs.append(parse_job(job, where, from_json))
        # Free each decoded job as soon as it is stored as bytes: freeing the
        # whole body at once at the end would be one more long stall.
        jobs[index] = job = None
        if index & 31 == 31 and slicer.due():  # 32 jobs take ~0.1 ms: look at the clock less
            await slicer.pause()
    return specs


def _capped_str(obj: dict, field: str, limit: int) -> str | None:
    value = obj.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{field}: must be a string")
    return _truncate(value, limit)


def _truncate(text: str, limit: int) -> str:
    """At most `limit` UTF-8 bytes, cut on a character boundary and marked as cut."""
    if len(text) <= limit // 4:
        return text  # four bytes per character at most: short enough without encoding
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text
    return raw[: limit - len(TRUNCATED)].decode("utf-8", "ignore") + TRUNCATED


def parse_failure(obj: Any) -> FailureSpec:
    if not isinstance(obj, dict):
        raise InvalidInput("body: must be an object with a message")
    if not isinstance(obj.get("message"), str):
        raise InvalidInput("message: is required and must be a string")
    message = _capped_str(obj, "message", MAX_MESSAGE_BYTES)
    kill = obj.get("kill")
    if kill is not None and not isinstance(kill, bool):
        raise InvalidInput("kill: must be a boolean")
    return FailureSpec(
        message=message,
        error_type=_capped_str(obj, "error_type", MAX_ERROR_TYPE_BYTES),
        backtrace=_capped_str(obj, "backtrace", MAX_BACKTRACE_BYTES),
        retry_at=_int_in(obj, "retry_at", "", 0, MAX_I64),
        kill=bool(kill),
    )


def parse_ids(obj: Any) -> list[str]:
    if not isinstance(obj, dict):
        raise InvalidInput("body: must be an object with an ids array")
    ids = obj.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InvalidInput("ids: is required and must be an array of strings")
    if not ids:
        raise InvalidInput("ids: must not be empty")
    if len(ids) > MAX_ACK_IDS:
        raise TooLarge(f"ids: at most {MAX_ACK_IDS} ids per request (got {len(ids)}); split it")
    return ids
