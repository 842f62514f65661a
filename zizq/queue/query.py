"""Finding jobs by filter: which index to walk, what to check, how to page and count.

The secondary index with the fewest entries for the requested values drives
the walk (known exactly from the per-(queue, type, status) counters), every
other filter is checked on the record, and the jq filter runs last, only on
jobs that passed everything else.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field

from zizq.queue.errors import InvalidInput
from zizq.queue.jq_sandbox import MATCH_BATCH, JqSandbox, check_text, default_sandbox
from zizq.queue.records import is_purged, now_ms
from zizq.store import Store, layout

FIRST_BATCH = 16  # payloads in the first jq call of a walk


@dataclass(frozen=True, slots=True)
class Range:
    """Inclusive bounds; None means unbounded on that side."""

    low: int | None
    high: int | None

    def __contains__(self, value: int) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


def parse_range(name: str, text: str, maximum: int = 2**63 - 1) -> Range:
    """`N`, `A..B`, `..B`, `A..` or `..` (inclusive), each bound an integer in 0..maximum.

    Bounds are unsigned decimal digits only (no sign, no `_`, no spaces), checked
    for length before conversion so a 5,000-digit bound is a 400, not a
    ValueError from int().
    """
    shapes = "use N, A..B, ..B, A.. or .."

    def bound(part: str) -> int | None:
        if part == "":
            return None
        if not (part.isascii() and part.isdigit()):
            raise InvalidInput(f"{name}: invalid range {text!r}; {shapes} with whole numbers")
        if len(part) > len(str(maximum)) or int(part) > maximum:
            raise InvalidInput(f"{name}: bound {part[:30]} is out of range (0..{maximum})")
        return int(part)

    if ".." in text:
        low_text, _, high_text = text.partition("..")
        low, high = bound(low_text), bound(high_text)
    else:
        low = high = bound(text)
        if low is None:
            raise InvalidInput(f"{name}: must not be empty")
    if low is not None and high is not None and low > high:
        raise InvalidInput(f"{name}: lower bound {low} exceeds upper bound {high}")
    return Range(low, high)


class PayloadFilter:
    """A jq expression on the payload; a job matches when it yields a truthy value.

    jq never runs in this process (see zizq.queue.jq_sandbox): creating a
    filter only checks its text, `check` compiles it in a worker (400 if it is
    invalid), and `matches` judges a batch of payloads in one worker call.
    """

    def __init__(self, expression: str) -> None:
        check_text(expression, "filter")
        self.expression = expression
        self._checked = False  # compiled once in a worker; a race only checks twice

    def check(self, sandbox: JqSandbox) -> None:
        """Blocking: raises InvalidInput naming `filter` unless the expression compiles."""
        if not self._checked:
            sandbox.check(self.expression, "filter")
            self._checked = True

    async def acheck(self, sandbox: JqSandbox) -> None:
        """`check` for the event loop (the wait for a worker happens on a thread)."""
        if not self._checked:
            await sandbox.acheck(self.expression, "filter")
            self._checked = True

    def matches(self, sandbox: JqSandbox, payloads: list[bytes | None]) -> list[bool]:
        """Verdicts for msgpack-encoded payloads (None: no payload, judged as null)."""
        return sandbox.match(self.expression, payloads, "filter")


@dataclass(frozen=True)
class JobFilter:
    ids: tuple[str, ...] | None = None
    queues: frozenset[str] | None = None
    types: frozenset[str] | None = None
    statuses: frozenset[str] | None = None
    priority: Range | None = None
    ready_at: Range | None = None
    attempts: Range | None = None
    budget_keys: frozenset[str] | None = None  # `budgets.key=`: jobs drawing on any of them
    payload: PayloadFilter | None = field(default=None, compare=False)

    @property
    def only_counted_dimensions(self) -> bool:
        """True when the counters alone can answer a count."""
        return (
            self.ids is None
            and self.priority is None
            and self.ready_at is None
            and self.attempts is None
            and self.budget_keys is None
            and self.payload is None
        )

    def matches_record(self, record: dict) -> bool:
        return (
            (self.queues is None or record["queue"] in self.queues)
            and (self.types is None or record["type"] in self.types)
            and (self.statuses is None or record["status"] in self.statuses)
            and (self.priority is None or record["priority"] in self.priority)
            and (self.ready_at is None or record["ready_at"] in self.ready_at)
            and (self.attempts is None or record["attempts"] in self.attempts)
            and (self.budget_keys is None or _draws_on(record, self.budget_keys))
        )


def _draws_on(record: dict, keys: frozenset[str]) -> bool:
    """Whether a job is bound to any of these budgets (there is no index: a scan decides)."""
    return any(binding["key"] in keys for binding in record.get("budgets", ()))


class JobQuery:
    """One query's walk over the store.

    It copies the counters when created, so a query may run on a worker
    thread (long scans must not stall the event loop) while the loop keeps
    changing the live counters. A jq filter is judged by `jq` (the engine's
    sandbox; the process-wide default one if not given), in batches, which
    blocks the calling thread: walk a jq-filtered query off the event loop.
    """

    def __init__(self, store: Store, job_filter: JobFilter, jq: JqSandbox | None = None) -> None:
        self._store = store
        self.filter = job_filter
        self._counts = dict(store.counts)
        self._jq = jq

    # -- counting -------------------------------------------------------------

    def _counted(self, key: tuple[str, str, str]) -> bool:
        queue, job_type, status = key
        f = self.filter
        return (
            (f.queues is None or queue in f.queues)
            and (f.types is None or job_type in f.types)
            and (f.statuses is None or status in f.statuses)
        )

    def count(self) -> int:
        if self.filter.only_counted_dimensions:
            return sum(n for key, n in self._counts.items() if self._counted(key))
        return sum(1 for _ in self.matches())

    # -- walking --------------------------------------------------------------

    def _estimate(self, position: int, values: frozenset[str]) -> int:
        return sum(n for key, n in self._counts.items() if key[position] in values)

    def _candidate_ids(self, after: str | None, backwards: bool) -> Iterator[str]:
        f = self.filter
        if f.ids is not None:
            ids = sorted(set(f.ids), reverse=backwards)
            if after is not None:
                ids = [i for i in ids if (i < after if backwards else i > after)]
            return iter(ids)
        choices = []
        for position, tag, values in (
            (0, layout.INDEX_QUEUE, f.queues),
            (1, layout.INDEX_TYPE, f.types),
            (2, layout.INDEX_STATUS, f.statuses),
        ):
            if values is not None:
                choices.append((self._estimate(position, values), tag, values))
        if not choices:
            return self._store.iter_job_ids(after, backwards)
        _, tag, values = min(choices, key=lambda choice: choice[0])
        walks = [self._store.iter_index(tag, value, after, backwards) for value in sorted(values)]
        return walks[0] if len(walks) == 1 else heapq.merge(*walks, reverse=backwards)

    def matches(
        self, after: str | None = None, backwards: bool = False
    ) -> Iterator[tuple[str, dict]]:
        """(id, record) of every visible match, in id order or reverse.

        Payloads are read only when the jq filter needs them, and judged in
        batches that grow from FIRST_BATCH to MATCH_BATCH: a page or a "is
        there one more?" probe stays cheap, a long scan makes few worker calls.
        The generator may be advanced from different threads, one at a time.
        """
        now = now_ms()
        payload_filter = self.filter.payload
        if payload_filter is not None:
            sandbox = self._jq if self._jq is not None else default_sandbox()
            payload_filter.check(sandbox)  # an invalid program is a 400 even if nothing is read
        batch: list[tuple[str, dict]] = []
        batch_size = FIRST_BATCH
        for job_id in self._candidate_ids(after, backwards):
            record = self._store.get_job(job_id)
            if record is None or is_purged(record, now) or not self.filter.matches_record(record):
                continue
            if payload_filter is None:
                yield job_id, record
                continue
            batch.append((job_id, record))
            if len(batch) >= batch_size:
                yield from self._judged(payload_filter, sandbox, batch)
                batch = []
                batch_size = min(batch_size * 2, MATCH_BATCH)
        if batch:
            yield from self._judged(payload_filter, sandbox, batch)

    def _judged(
        self, payload_filter: PayloadFilter, sandbox: JqSandbox, batch: list[tuple[str, dict]]
    ) -> Iterator[tuple[str, dict]]:
        payloads = self._store.get_payloads([job_id for job_id, _ in batch])
        verdicts = payload_filter.matches(sandbox, payloads)
        for item, matched in zip(batch, verdicts, strict=True):
            if matched:
                yield item

    def first(self, after: str | None, backwards: bool) -> str | None:
        for job_id, _ in self.matches(after, backwards):
            return job_id
        return None


@dataclass
class Page:
    items: list[tuple]  # (key, value) pairs: (id, record) or (attempt, error)
    next_after: str | None  # cursor for the following page, None at the end
    prev_before: str | None  # cursor for the preceding page, None at the start


def take_page(
    walk_forward, walk_backward, limit: int, after: str | None, before: str | None
) -> Page:
    """Cursor paging over any ordered walk.

    walk_forward(after) / walk_backward(before) yield (key, ...) tuples strictly
    past the cursor in page order / against it. `after` pages forward from a
    key; `before` pages back from one; neither starts at the beginning.
    """
    if before is not None:
        back = []
        for item in walk_backward(before):
            back.append(item)
            if len(back) > limit:
                break
        has_prev = len(back) > limit
        items = list(reversed(back[:limit]))
        has_next = True
        if items:
            has_next = _any(walk_forward(items[-1][0]))
        else:
            has_next = _any(walk_forward(before)) or _any(walk_backward(before))
        return Page(
            items, items[-1][0] if items and has_next else None, items[0][0] if has_prev else None
        )
    items = []
    for item in walk_forward(after):
        items.append(item)
        if len(items) > limit:
            break
    has_next = len(items) > limit
    items = items[:limit]
    has_prev = after is not None and _any(walk_backward(items[0][0] if items else after))
    return Page(
        items,
        items[-1][0] if has_next else None,
        (items[0][0] if items else after) if has_prev else None,
    )


def _any(iterator) -> bool:
    for _ in iterator:
        return True
    return False
