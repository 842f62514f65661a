"""PATCH bodies: which mutable fields change, and applying them to a record.

Omitted fields stay as they are; `null` resets a field to the server default;
`retention` is merge-patched field by field. Fields that are not mutable (or not
fields at all) are ignored, at every level, as the reference ignores them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zizq.queue.errors import Conflict, InvalidInput
from zizq.queue.records import MAX_PRIORITY, READY, SCHEDULED
from zizq.queue.spec import (
    MAX_I32,
    MAX_I64,
    _int_in,
    _name,
    parse_backoff,
    parse_retention,
)

MUTABLE_FIELDS = frozenset({"queue", "priority", "ready_at", "retry_limit", "backoff", "retention"})
RETENTION_FIELDS = ("completed_ms", "dead_ms")
_UNSET = object()


@dataclass(frozen=True)
class JobPatch:
    """Each attribute is _UNSET (leave alone), None (reset to default) or the new value."""

    queue: Any = _UNSET
    priority: Any = _UNSET
    ready_at: Any = _UNSET
    retry_limit: Any = _UNSET
    backoff: Any = _UNSET
    retention: Any = _UNSET  # dict of sub-fields, each an int or None (clear)


def parse_patch(body: Any) -> JobPatch:
    """Validate a PATCH body. Bad values are 422, as the reference documents for PATCH."""
    if not isinstance(body, dict):
        raise Conflict("body: must be an object of fields to change")
    try:
        return _parse(body)
    except InvalidInput as exc:
        raise Conflict(str(exc)) from None


def _parse(body: dict) -> JobPatch:
    changes: dict[str, Any] = {}
    for key in ("queue", "priority"):
        if key in body and body[key] is None:
            raise InvalidInput(f"{key}: cannot be null")
    if "queue" in body:
        changes["queue"] = _name(body, "queue", "")
    if "priority" in body:
        changes["priority"] = _int_in(body, "priority", "", 0, MAX_PRIORITY)
    if "ready_at" in body:
        changes["ready_at"] = _int_in(body, "ready_at", "", 0, MAX_I64)
    if "retry_limit" in body:
        changes["retry_limit"] = _int_in(body, "retry_limit", "", 0, MAX_I32)
    if "backoff" in body:
        changes["backoff"] = None if body["backoff"] is None else parse_backoff(body["backoff"], "")
    if "retention" in body:
        changes["retention"] = (
            None if body["retention"] is None else _retention_patch(body["retention"])
        )
    return JobPatch(**changes)


def _retention_patch(value: Any) -> dict:
    if not isinstance(value, dict):
        raise InvalidInput("retention: must be an object or null")
    given = [key for key in RETENTION_FIELDS if key in value]  # others are ignored
    parsed = parse_retention({k: value[k] for k in given if value[k] is not None}, "")
    return {key: parsed.get(key) for key in given}  # None entries clear that sub-field


def apply_patch(record: dict, patch: JobPatch, now: int) -> None:
    """Change a non-terminal record in place, moving ready <-> scheduled as ready_at requires."""
    if patch.queue is not _UNSET:
        record["queue"] = patch.queue
    if patch.priority is not _UNSET:
        record["priority"] = patch.priority
    if patch.ready_at is None and record["status"] == SCHEDULED:
        record["ready_at"] = now  # null: due now
        record["status"] = READY
    elif patch.ready_at is not None and patch.ready_at is not _UNSET:
        record["ready_at"] = patch.ready_at
        if record["status"] in (READY, SCHEDULED):
            record["status"] = SCHEDULED if patch.ready_at > now else READY
    for key in ("retry_limit", "backoff"):
        value = getattr(patch, key)
        if value is None:
            record.pop(key, None)
        elif value is not _UNSET:
            record[key] = value
    if patch.retention is None:
        record.pop("retention", None)
    elif patch.retention is not _UNSET:
        merged = dict(record.get("retention", {}))
        for key, value in patch.retention.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        if merged:
            record["retention"] = merged
        else:
            record.pop("retention", None)
