"""Query-string parsing shared by the listing, counting and bulk endpoints."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import falcon

from zizq.queue import InvalidInput
from zizq.queue.query import JobFilter, PayloadFilter, parse_range
from zizq.queue.records import STATUSES

FILTER_PARAMS = ("id", "queue", "type", "status", "priority", "ready_at", "attempts", "filter")
PAGE_PARAMS = ("order", "limit", "from", "before")


def _param(req: falcon.Request, name: str) -> str | None:
    value = req.params.get(name)
    if isinstance(value, list):  # ?queue=a&queue=b means the same as ?queue=a,b
        value = ",".join(value)
    return value


def _csv(req: falcon.Request, name: str) -> frozenset[str] | None:
    raw = _param(req, name)
    if raw is None:
        return None
    values = frozenset(part.strip() for part in raw.split(",") if part.strip())
    if not values:
        raise InvalidInput(f"{name}: must list at least one value")
    return values


def reject_unknown(req: falcon.Request, allowed: tuple[str, ...]) -> None:
    for name in req.params:
        if name not in allowed:
            raise InvalidInput(f"{name}: unknown query parameter (allowed: {', '.join(allowed)})")


def job_filter(req: falcon.Request) -> JobFilter:
    statuses = _csv(req, "status")
    if statuses is not None:
        unknown = statuses.difference(STATUSES)
        if unknown:
            raise InvalidInput(
                f"status: unknown status {sorted(unknown)[0]!r} (one of {', '.join(STATUSES)})"
            )
    ids = _csv(req, "id")
    expression = _param(req, "filter")
    ranges = {}
    for name in ("priority", "ready_at", "attempts"):
        raw = _param(req, name)
        ranges[name] = None if raw is None else parse_range(name, raw)
    return JobFilter(
        ids=None if ids is None else tuple(sorted(ids)),
        queues=_csv(req, "queue"),
        types=_csv(req, "type"),
        statuses=statuses,
        payload=None if expression is None else PayloadFilter(expression),
        **ranges,
    )


def limit(req: falcon.Request, maximum: int) -> int:
    raw = _param(req, "limit")
    if raw is None:
        return 50
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise InvalidInput(f"limit: must be an integer between 1 and {maximum}")
    return int(raw)


def order_desc(req: falcon.Request) -> bool:
    raw = _param(req, "order")
    if raw not in (None, "asc", "desc"):
        raise InvalidInput("order: must be asc or desc")
    return raw == "desc"


def cursors(req: falcon.Request, is_key=None) -> tuple[str | None, str | None]:
    """The `from` / `before` cursors, each checked with is_key (a job id by default)."""
    is_key = is_key or _is_job_id
    after, before = _param(req, "from"), _param(req, "before")
    if after is not None and before is not None:
        raise InvalidInput("from: cannot be combined with before")
    for name, value in (("from", after), ("before", before)):
        if value is not None and not is_key(value):
            raise InvalidInput(f"{name}: not a valid cursor; use the links in pages")
    return after, before


def _is_job_id(value: str) -> bool:
    return len(value) == 25 and value.isascii() and value.isalnum()


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
