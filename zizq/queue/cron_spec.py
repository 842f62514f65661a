"""Validation of cron request bodies (pro) into definitions the cron book stores.

An entry's job template is checked exactly as an enqueue would be
(zizq.queue.spec.parse_job), when the entry is saved: a template that could
never be enqueued is refused now, not at three in the morning when it fires.
`ready_at` is refused (the schedule decides when the job is ready).

Fields a body does not define are ignored, as everywhere else in the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zizq.queue import cron_expr
from zizq.queue.cron_expr import Schedule
from zizq.queue.errors import InvalidInput
from zizq.queue.records import DEFAULT_PRIORITY
from zizq.queue.spec import JobSpec, check_name, parse_job

_UNSET: Any = object()  # a PATCH field that was not sent
TEMPLATE_FIELDS = (
    "queue",
    "type",
    "payload",
    "priority",
    "retry_limit",
    "backoff",
    "retention",
    "unique_key",
    "unique_while",
    "batch",
)


@dataclass(slots=True)
class EntryDef:
    """One entry as a request defines it (before it meets the stored state)."""

    name: str
    schedule: Schedule
    timezone: str | None
    paused: bool | None  # None: keep what the entry had (False for a new one)
    template: dict  # the job template as stored and shown (payload decoded)
    spec: JobSpec  # the template parsed once, copied at every firing


@dataclass(slots=True)
class GroupDef:
    paused: bool | None
    timezone: str | None
    entries: list[EntryDef]


@dataclass(slots=True)
class GroupPatch:
    paused: bool | None = None
    timezone: Any = _UNSET  # _UNSET: leave it; None: clear it; else the new zone name


def _object(body: Any, where: str) -> dict:
    if not isinstance(body, dict):
        raise InvalidInput(f"{where or 'body'}: must be an object")
    return body


def _paused(obj: dict, where: str) -> bool | None:
    value = obj.get("paused")
    if value is None or isinstance(value, bool):
        return value
    raise InvalidInput(f"{where}paused: must be a boolean")


def _zone(obj: dict, where: str) -> str | None:
    value = obj.get("timezone")
    if value is None:
        return None
    cron_expr.zone_named(value, f"{where}timezone")
    return value


def name_of(value: Any, label: str) -> str:
    """A group or entry name: the rules of queue names (1..1024 bytes, no reserved chars)."""
    return check_name(value, label)


def parse_template(obj: Any, where: str, from_json: bool) -> tuple[dict, JobSpec]:
    """A job template: what an enqueue accepts, without ready_at."""
    obj = _object(obj, f"{where}job" if where else "job")
    if obj.get("ready_at") is not None:
        raise InvalidInput(f"{where}job.ready_at: is not supported for cron entries")
    spec = parse_job(obj, f"{where}job.", from_json)
    template: dict = {"queue": spec.queue, "type": spec.type, "payload": obj["payload"]}
    template["priority"] = DEFAULT_PRIORITY if spec.priority is None else spec.priority
    for field in ("retry_limit", "backoff", "retention", "unique_key", "unique_while", "batch"):
        value = getattr(spec, field)
        if value is not None:
            template[field] = value
    if spec.budgets:
        # Stored and shown as a job shows them; the budgets exist once the entry is saved.
        template["budgets"] = [{"key": b.key, "cost": b.cost} for b in spec.budgets]
    return template, spec


def parse_entry(
    obj: Any, where: str = "", from_json: bool = False, name: str | None = None
) -> EntryDef:
    """One entry; `name` (from the URL) wins over the body's, which may then be left out."""
    obj = _object(obj, where.rstrip("."))
    if name is None:
        if obj.get("name") is None:
            raise InvalidInput(f"{where}name: is required")
        name = name_of(obj["name"], f"{where}name")
    elif obj.get("name") is not None and not isinstance(obj["name"], str):
        raise InvalidInput(f"{where}name: must be a string")
    if obj.get("expression") is None:
        raise InvalidInput(f"{where}expression: is required")
    schedule = cron_expr.parse_expression(obj["expression"], f"{where}expression")
    if obj.get("job") is None:
        raise InvalidInput(f"{where}job: is required")
    template, spec = parse_template(obj["job"], where, from_json)
    return EntryDef(
        name=name,
        schedule=schedule,
        timezone=_zone(obj, where),
        paused=_paused(obj, where),
        template=template,
        spec=spec,
    )


def parse_group(obj: Any, from_json: bool = False) -> GroupDef:
    """PUT /crons/{group}: the whole group; entry names must be distinct."""
    obj = _object(obj, "")
    entries = obj.get("entries")
    if entries is None:
        raise InvalidInput("entries: is required")
    if not isinstance(entries, list):
        raise InvalidInput("entries: must be an array")
    parsed: list[EntryDef] = []
    seen: set[str] = set()
    for index, item in enumerate(entries):
        entry = parse_entry(item, f"entries[{index}].", from_json)
        if entry.name in seen:
            raise InvalidInput(f"entries[{index}].name: duplicate entry name {entry.name!r}")
        seen.add(entry.name)
        parsed.append(entry)
    return GroupDef(paused=_paused(obj, ""), timezone=_zone(obj, ""), entries=parsed)


def parse_group_patch(obj: Any) -> GroupPatch:
    """PATCH /crons/{group}: a merge patch of paused and timezone (null clears the zone)."""
    obj = _object(obj, "")
    patch = GroupPatch(paused=_paused(obj, ""))
    if "timezone" in obj:
        patch.timezone = _zone(obj, "")
    return patch


def parse_entry_patch(obj: Any) -> bool | None:
    """PATCH /crons/{group}/entries/{entry}: only `paused` for now."""
    return _paused(_object(obj, ""), "")


def leave_alone(value: Any) -> bool:
    return value is _UNSET
