"""Read-only views of the job lists for live viewers (the admin `/events` stream).

`Lists`: windows (a slice of a list around an anchor) and `find` (the next job
matching a query) over the engine's in-memory indexes: the ready heaps
(priority, id), the in-flight table (dequeued_at, id) and the scheduled timer
heap (ready_at, id). Viewers learn *that* something changed from the change
feed (zizq.queue.feed) and recompute their windows here at their own pace.
Nothing here costs anything while no one watches.

Positions are ranks among the index entries. The heaps keep stale entries (a
job patched or deleted while waiting) until they reach the top; rows are
checked against the stored record before they are shown, but such an entry
still counts in positions until it is dropped. Windows near the head (the
common case, and all the free tier sees) walk the heaps lazily and cost
O(k log k) for k rows. A window deeper in a long list reads a sorted snapshot
of the list's entries (`HeapSnapshot`), kept while someone watches and shared
by every viewer: when nothing changed it is reused as is (a bisect and a
slice), and when something did it is brought up to date from what changed in
the heaps (a pointer comparison of each heap with its copy, then O(changes)
edits), not sorted again. Without viewers nothing is kept.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zizq.queue.observe_snapshots import Entry, HeapSnapshot, SortedSnapshot
from zizq.queue.records import IN_FLIGHT, READY, SCHEDULED

if TYPE_CHECKING:
    from zizq.queue.engine import Engine

READY_LIST = "ready"
IN_FLIGHT_LIST = "in_flight"
SCHEDULED_LIST = "scheduled"
LIST_NAMES = (READY_LIST, IN_FLIGHT_LIST, SCHEDULED_LIST)
_LIST_STATUS = {READY_LIST: READY, IN_FLIGHT_LIST: IN_FLIGHT, SCHEDULED_LIST: SCHEDULED}

PREFIX_MAX = 4096  # windows and walks within this many entries of the head are lazy walks
MAX_LIMIT = 1000  # rows one window may carry
FIND_MAX_EXAMINED = 20_000  # records a find reads before it gives up (no match)

Row = tuple[str, dict]  # (job id, record)


# -- anchors, queries, results -------------------------------------------------------


@dataclass(frozen=True)
class Anchor:
    """Where a window sits: `head`, `tail`, `offset` (a depth) or `around` (a job id)."""

    kind: str = "head"
    offset: int = 0
    job_id: str | None = None
    fallback: str = "nowhere"  # for `around` when the job is not in the list: head|tail|nowhere


@dataclass(frozen=True)
class Query:
    """Substring match: any of `queues` (or none given) and any of `types` (or none given)."""

    queues: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    def matches(self, record: dict) -> bool:
        if self.queues and not any(q in record["queue"] for q in self.queues):
            return False
        return not self.types or any(t in record["type"] for t in self.types)


@dataclass
class Window:
    items: list[Row] = field(default_factory=list)
    first_position: int = 0
    total: int = 0
    resolved_anchor: str | None = None


@dataclass
class Found:
    matched_position: int | None
    window: Window


# -- sorted snapshots: deep positions while someone watches ----------------------------


# -- sources: one per list -----------------------------------------------------------


class _Source:
    """The entries of one list, in order, and the check of an entry against the store."""

    cached = False  # True when `ordered` reads a snapshot kept between calls

    def entries(self) -> Iterable[Entry]:  # unordered
        raise NotImplementedError

    def size(self) -> int:
        raise NotImplementedError

    def ascending(self) -> Iterator[Entry]:  # lazy, in list order
        raise NotImplementedError

    def ordered(self) -> list[Entry]:  # every entry in list order (do not change it)
        return sorted(self.entries())

    def row(self, entry: Entry) -> dict | None:  # the record if the entry is current
        raise NotImplementedError

    def key_of(self, job_id: str) -> Entry | None:  # the entry of a job in this list
        raise NotImplementedError


def _heap_walk(heaps: list[list]) -> Iterator[tuple[Any, int]]:
    """Entries of several binary heaps in ascending order, lazily, without changing them.

    A frontier heap holds the candidates (a node is a candidate once its parent
    was yielded), so the first k entries cost O(k log k) whatever the heap sizes.
    The caller must not change the heaps while it iterates (all on the loop thread).
    """
    frontier = [(heap[0], h, 0) for h, heap in enumerate(heaps) if heap]
    heapq.heapify(frontier)
    while frontier:
        entry, h, i = heapq.heappop(frontier)
        yield entry, h
        heap = heaps[h]
        child = 2 * i + 1
        if child < len(heap):
            heapq.heappush(frontier, (heap[child], h, child))
            if child + 1 < len(heap):
                heapq.heappush(frontier, (heap[child + 1], h, child + 1))


class _HeapSource(_Source):
    """A list kept as binary heaps of entries (ready: one per queue; scheduled: one)."""

    def __init__(self, engine: Engine, snapshot: HeapSnapshot | None) -> None:
        self._store = engine.store
        self._version = engine.dispatcher.feed.version
        self._snapshot = snapshot
        self.cached = snapshot is not None

    def _heaps(self) -> list[list]:
        raise NotImplementedError

    def entries(self) -> Iterable[Entry]:
        return itertools.chain.from_iterable(self._heaps())

    def size(self) -> int:
        return sum(map(len, self._heaps()))

    def ascending(self) -> Iterator[Entry]:
        return (entry for entry, _ in _heap_walk(self._heaps()))

    def ordered(self) -> list[Entry]:
        if self._snapshot is None:
            return sorted(self.entries())
        return self._snapshot.ordered(self._heaps(), self._version)


class _ReadySource(_HeapSource):
    def _heaps(self) -> list[list]:
        # ReadyIndex keeps one heap of (priority, id) per queue; we only read them.
        return list(self._engine_heaps.values())

    def __init__(self, engine: Engine, snapshot: HeapSnapshot | None = None) -> None:
        super().__init__(engine, snapshot)
        self._engine_heaps: dict[str, list[tuple[int, str]]] = engine.ready.heaps()

    def row(self, entry: Entry) -> dict | None:
        record = self._store.get_job(entry[-1])
        if record is None or record["status"] != READY or record["priority"] != entry[0]:
            return None
        return record

    def key_of(self, job_id: str) -> Entry | None:
        record = self._store.get_job(job_id)
        if record is None or record["status"] != READY:
            return None
        return (record["priority"], job_id)


class _ScheduledSource(_HeapSource):
    def __init__(self, engine: Engine, snapshot: HeapSnapshot | None = None) -> None:
        super().__init__(engine, snapshot)
        self._heap: list[tuple[int, str]] = engine.scheduler.due.entries()  # (ready_at, id)

    def _heaps(self) -> list[list]:
        return [self._heap]

    def row(self, entry: Entry) -> dict | None:
        record = self._store.get_job(entry[-1])
        if record is None or record["status"] != SCHEDULED or record["ready_at"] != entry[0]:
            return None
        return record

    def key_of(self, job_id: str) -> Entry | None:
        record = self._store.get_job(job_id)
        if record is None or record["status"] != SCHEDULED:
            return None
        return (record["ready_at"], job_id)


class _InFlightSource(_Source):
    """The dispatcher's table: bounded by the in-flight limit, records in memory."""

    def __init__(self, engine: Engine, snapshot: SortedSnapshot | None = None) -> None:
        self._table = engine.dispatcher.in_flight
        self._version = engine.dispatcher.feed.version
        self._snapshot = snapshot
        self.cached = snapshot is not None
        self._sorted: list[Entry] | None = None

    def _pairs(self) -> Iterator[Entry]:
        return (
            (entry.record.get("dequeued_at", 0), job_id) for job_id, entry in self._table.items()
        )

    def ordered(self) -> list[Entry]:
        if self._sorted is None:
            if self._snapshot is None:
                self._sorted = sorted(self._pairs())
            else:
                self._sorted = self._snapshot.ordered(
                    self._pairs(), len(self._table), self._version
                )
        return self._sorted

    def entries(self) -> Iterable[Entry]:
        return self.ordered()

    def size(self) -> int:
        return len(self._table)

    def ascending(self) -> Iterator[Entry]:
        return iter(self.ordered())

    def row(self, entry: Entry) -> dict | None:
        held = self._table.get(entry[-1])
        return None if held is None else held.record

    def key_of(self, job_id: str) -> Entry | None:
        held = self._table.get(job_id)
        return None if held is None else (held.record.get("dequeued_at", 0), job_id)


# -- windows and finds ---------------------------------------------------------------


class Lists:
    """Windows and finds over one engine's lists, computed on demand (on the loop thread).

    `cap` (the free tier's rule) limits every window and walk to the first
    `cap` entries of a list; totals stay the real ones.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._feed = engine.dispatcher.feed
        # Sorted snapshots for deep positions, per list, shared by every viewer; kept only
        # while someone watches (the feed's version says nothing about unwatched changes).
        self._snapshots: dict[str, Any] = {}

    def forget(self) -> None:
        """Drop the snapshots (the last viewer left)."""
        self._snapshots.clear()

    def _snapshot(self, name: str, kind: type) -> Any:
        if not self._feed.active:
            self._snapshots.clear()
            return None
        snapshot = self._snapshots.get(name)
        if snapshot is None:
            snapshot = self._snapshots[name] = kind()
        return snapshot

    def totals(self) -> dict[str, int]:
        """Jobs per list from the store's counters (per queue, type and status): no scan."""
        totals = dict.fromkeys(LIST_NAMES, 0)
        by_status = {status: name for name, status in _LIST_STATUS.items()}
        for (_, _, status), count in self._engine.store.counts.items():
            name = by_status.get(status)
            if name is not None:
                totals[name] += count
        return totals

    def _source(self, name: str) -> _Source:
        if name == READY_LIST:
            return _ReadySource(self._engine, self._snapshot(name, HeapSnapshot))
        if name == IN_FLIGHT_LIST:
            return _InFlightSource(self._engine, self._snapshot(name, SortedSnapshot))
        if name == SCHEDULED_LIST:
            return _ScheduledSource(self._engine, self._snapshot(name, HeapSnapshot))
        raise ValueError(f"unknown list {name!r}")

    def window(self, name: str, anchor: Anchor, limit: int, cap: int | None = None) -> Window:
        source = self._source(name)
        total = self.totals()[name]
        span = _span(source, cap)
        limit = _limit(limit, cap)
        last_start = max(0, span - limit)
        resolved = None
        if anchor.kind == "head":
            start = 0
        elif anchor.kind == "tail":
            start = last_start
        elif anchor.kind == "offset":
            start = min(max(0, anchor.offset), last_start)
        elif anchor.kind == "around":
            position = _position(source, anchor.job_id, span)
            if position is not None:
                resolved = anchor.job_id
                start = _centered(position, limit, span)
            elif anchor.fallback == "head":
                start = 0
            elif anchor.fallback == "tail":
                start = last_start
            else:
                return Window([], 0, total, None)
        else:
            raise ValueError(f"unknown anchor kind {anchor.kind!r}")
        start, items = _filled_rows(source, start, limit, span)
        return Window(items, start if items else 0, total, resolved)

    def find(
        self,
        name: str,
        start: str,
        direction: str,
        query: Query,
        limit: int,
        job_id: str | None = None,
        cap: int | None = None,
    ) -> Found:
        """The first match walking from `start` (`job_id`, `start`, `end`) in `direction`.

        `forward`/`backward` skip the anchor job itself; an anchor job no longer
        in the list walks from the start (forward) or the end (backward).
        `locate` only finds where the anchor job is now (the query is ignored).
        """
        source = self._source(name)
        total = self.totals()[name]
        span = _span(source, cap)
        limit = _limit(limit, cap)
        nothing = Found(None, Window([], 0, total, None))
        if (start, direction) in (("start", "backward"), ("end", "forward")):
            return nothing
        anchor = _position(source, job_id, span) if start == "job_id" else None
        if direction == "locate":
            if anchor is None:
                return nothing
            matched: Row | None = (job_id, {})
            position = anchor
        elif direction == "forward":
            first = 0 if anchor is None else anchor + 1
            position, matched = _walk(source, _ascending_from(source, first), first, 1, span, query)
        elif direction == "backward":
            if anchor == 0:
                return nothing
            last = span - 1 if anchor is None else anchor - 1
            position, matched = _walk(source, _descending_from(source, last), last, -1, span, query)
        else:
            raise ValueError(f"unknown direction {direction!r}")
        if matched is None or position is None:
            return nothing
        first, items = _filled_rows(source, _centered(position, limit, span), limit, span)
        return Found(position, Window(items, first if items else 0, total, matched[0]))


def _span(source: _Source, cap: int | None) -> int:
    size = source.size()
    return size if cap is None else min(size, cap)


def _limit(limit: int, cap: int | None) -> int:
    limit = max(1, min(limit, MAX_LIMIT))
    return limit if cap is None else min(limit, cap)


def _centered(position: int, limit: int, span: int) -> int:
    return max(0, min(position - limit // 2, span - limit))


def _position(source: _Source, job_id: str | None, span: int) -> int | None:
    """Rank of a job among the entries (None when it is not in the list, or past `span`)."""
    if job_id is None:
        return None
    key = source.key_of(job_id)
    if key is None:
        return None
    if span <= PREFIX_MAX:  # walk the head: cheaper than a full pass, and exact
        for position, entry in enumerate(itertools.islice(source.ascending(), span)):
            if entry == key:
                return position
        return None
    if source.cached:
        position = bisect.bisect_left(source.ordered(), key)
    else:
        position = sum(map(key.__gt__, source.entries()))
    return position if position < span else None


def _ascending_from(source: _Source, first: int) -> Iterator[Entry]:
    if first <= PREFIX_MAX:
        return itertools.islice(source.ascending(), first, None)
    if source.cached:
        ordered = source.ordered()
        return map(ordered.__getitem__, range(first, len(ordered)))
    size = source.size()
    if size - first <= PREFIX_MAX:
        return iter(heapq.nlargest(size - first, source.entries())[::-1])
    return iter(source.ordered()[first:])


def _descending_from(source: _Source, last: int) -> Iterator[Entry]:
    if last < 0:
        return iter(())
    if last < PREFIX_MAX:
        return reversed(list(itertools.islice(source.ascending(), last + 1)))
    ordered = source.ordered()
    return map(ordered.__getitem__, range(min(last, len(ordered) - 1), -1, -1))


def _rows(source: _Source, start: int, limit: int, span: int) -> list[Row]:
    """Up to `limit` current rows from position `start`, not past position `span`."""
    rows: list[Row] = []
    seen: set[str] = set()
    for entry in itertools.islice(_ascending_from(source, start), max(0, span - start)):
        job_id = entry[-1]
        if job_id in seen:
            continue  # a patch that kept the sort key left a twin entry
        record = source.row(entry)
        if record is None:
            continue
        seen.add(job_id)
        rows.append((job_id, record))
        if len(rows) >= limit:
            break
    return rows


def _filled_rows(source: _Source, start: int, limit: int, span: int) -> tuple[int, list[Row]]:
    """`_rows`, completed with rows from before `start` when stale entries left it short.

    Stale entries cluster where jobs left (a patched job's old place), so a tail
    window can be made of them; it then takes the nearest current rows before
    it, looking back twice as far each time. Returns the window's start.
    """
    items = _rows(source, start, limit, span)
    step = limit
    while len(items) < limit and start > 0 and step <= 64 * limit:
        earlier = max(0, start - step)
        shown = {job_id for job_id, _ in items}
        before = [
            row for row in _rows(source, earlier, start - earlier, start) if row[0] not in shown
        ]
        taken = before[len(before) - min(len(before), limit - len(items)) :]
        items = taken + items
        start = earlier if len(taken) == len(before) else max(earlier, start - len(taken))
        step *= 2
    return start, items


def _walk(
    source: _Source,
    entries: Iterator[Entry],
    position: int,
    step: int,
    span: int,
    query: Query,
) -> tuple[int | None, Row | None]:
    """The first current entry matching `query`, and its position; gives up after a bound."""
    for examined, entry in enumerate(entries):
        if position < 0 or position >= span or examined >= FIND_MAX_EXAMINED:
            break
        record = source.row(entry)
        if record is not None and query.matches(record):
            return position, (entry[-1], record)
        position += step
    return None, None


def job_view(job_id: str, record: dict, detail: bool, payload: Any = None) -> dict:
    """A job as the viewer sees it (the reference's AdminJob shape)."""
    view: dict[str, Any] = {
        "id": job_id,
        "queue": record["queue"],
        "job_type": record["type"],
        "priority": record["priority"],
        "ready_at": record["ready_at"],
        "attempts": record["attempts"],
    }
    for name in ("dequeued_at", "failed_at"):
        if name in record:
            view[name] = record[name]
    if detail:
        view["status"] = record["status"]
        for name in ("retry_limit", "backoff", "retention", "unique_key", "unique_while"):
            if name in record:
                view[name] = record[name]
        if "batch" in record:
            view["batch_key"] = record["batch"].get("key")
        view["payload"] = payload
    return view
