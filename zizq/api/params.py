"""Query-string parsing shared by the listing, counting and bulk endpoints.

Every value is checked before it reaches the engine: a malformed one is a 400
naming its parameter, never an exception from int() or from a key encoding.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlencode

import falcon

from zizq.queue import InvalidInput
from zizq.queue.query import JobFilter, PayloadFilter, Range, parse_range
from zizq.queue.records import MAX_PRIORITY, MAX_TIME_MS, STATUSES
from zizq.queue.spec import check_name

FILTER_PARAMS = (
    "id",
    "queue",
    "type",
    "status",
    "priority",
    "ready_at",
    "attempts",
    "budgets.key",
    "filter",
)
PAGE_PARAMS = ("order", "limit", "from", "before")
MAX_ATTEMPTS = 2**32 - 1  # attempts are counted in 32 bits, as the reference does
RANGE_MAXIMA = {"priority": MAX_PRIORITY, "ready_at": MAX_TIME_MS, "attempts": MAX_ATTEMPTS}

_JOB_ID = re.compile(r"[0-9a-z]{25}")  # SCRU128 as we write it: 25 lowercase base36 digits


def is_job_id(value: str) -> bool:
    return _JOB_ID.fullmatch(value) is not None


def _param(req: falcon.Request, name: str) -> str | None:
    value = req.params.get(name)
    if isinstance(value, list):  # ?queue=a&queue=b means the same as ?queue=a,b
        value = ",".join(value)
    return value


joined = _param  # for other modules: a parameter's values as one comma list


def _csv(req: falcon.Request, name: str) -> frozenset[str] | None:
    raw = _param(req, name)
    if raw is None:
        return None
    values = frozenset(part.strip() for part in raw.split(",") if part.strip())
    if not values:
        raise InvalidInput(f"{name}: must list at least one value")
    return values


def names(raw: str | None, label: str) -> frozenset[str] | None:
    """A comma list of queue or type names, each held to the rules of a stored name."""
    if raw is None:
        return None
    values = frozenset(part.strip() for part in raw.split(",") if part.strip())
    if not values:
        raise InvalidInput(f"{label}: must list at least one value")
    for value in values:
        check_name(value, label)
    return values


def reject_unknown(req: falcon.Request, allowed: tuple[str, ...]) -> None:
    for name in req.params:
        if name not in allowed:
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise InvalidInput(f"{shown}: unknown query parameter (allowed: {', '.join(allowed)})")


def job_filter(req: falcon.Request) -> JobFilter:
    statuses = _csv(req, "status")
    if statuses is not None:
        unknown = statuses.difference(STATUSES)
        if unknown:
            shown = sorted(unknown)[0][:64]
            raise InvalidInput(f"status: unknown status {shown!r} (one of {', '.join(STATUSES)})")
    ids = _csv(req, "id")
    if ids is not None:
        for job_id in ids:
            if not is_job_id(job_id):
                raise InvalidInput(
                    f"id: {job_id[:40]!r} is not a job id (25 characters of 0-9 and a-z)"
                )
    expression = _param(req, "filter")
    ranges: dict[str, Range | None] = {}
    for name, maximum in RANGE_MAXIMA.items():
        raw = _param(req, name)
        # `..` parses as Range(None, None): it matches every job, yet still counts
        # as a filter, so DELETE /jobs?priority=.. is never taken for "no filter".
        ranges[name] = None if raw is None else parse_range(name, raw, maximum)
    return JobFilter(
        ids=None if ids is None else tuple(sorted(ids)),
        queues=names(_param(req, "queue"), "queue"),
        types=names(_param(req, "type"), "type"),
        statuses=statuses,
        budget_keys=names(_param(req, "budgets.key"), "budgets.key"),
        payload=None if expression is None else PayloadFilter(expression),
        **ranges,
    )


def whole_number(raw: str, label: str, low: int, high: int) -> int:
    """A decimal integer in low..high; digits only, length-checked before int()."""
    if (
        not (raw.isascii() and raw.isdigit())
        or len(raw) > len(str(high))
        or not (low <= int(raw) <= high)
    ):
        raise InvalidInput(f"{label}: must be an integer between {low} and {high}")
    return int(raw)


def limit(req: falcon.Request, maximum: int) -> int:
    raw = _param(req, "limit")
    if raw is None:
        return 50
    return whole_number(raw, "limit", 1, maximum)


def order_desc(req: falcon.Request) -> bool:
    raw = _param(req, "order")
    if raw not in (None, "asc", "desc"):
        raise InvalidInput("order: must be asc or desc")
    return raw == "desc"


def cursors(req: falcon.Request, is_key=None) -> tuple[str | None, str | None]:
    """The `from` / `before` cursors, each checked with is_key (a job id by default)."""
    is_key = is_key or is_job_id
    after, before = _param(req, "from"), _param(req, "before")
    if after is not None and before is not None:
        raise InvalidInput("from: cannot be combined with before")
    for name, value in (("from", after), ("before", before)):
        if value is not None and not is_key(value):
            raise InvalidInput(f"{name}: not a valid cursor; use the links in pages")
    return after, before


def page_links(req: falcon.Request, order: str, page_limit: int, next_cursor, prev_cursor) -> dict:
    """Absolute paths that keep every filter; None at either end."""
    filters = [(name, _param(req, name)) for name in FILTER_PARAMS if _param(req, name) is not None]
    base = [("order", order), ("limit", str(page_limit)), *filters]

    def link(extra: list[tuple[str, str]]) -> str:
        return f"{req.path}?{urlencode(extra + base, quote_via=quote, safe=',')}"

    current = [
        (name, _param(req, name)) for name in ("from", "before") if _param(req, name) is not None
    ]
    return {
        "self": link(current),
        "next": None if next_cursor is None else link([("from", str(next_cursor))]),
        "prev": None if prev_cursor is None else link([("before", str(prev_cursor))]),
    }
