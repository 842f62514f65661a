"""Hands ready jobs to waiting take streams.

One pass (`pump`) runs whenever something may have changed: a job became
ready, or a stream gained capacity. Passes are coalesced with call_soon so a
burst of enqueues costs one pass. Within a pass, streams take turns one job at
a time, and the first stream served rotates after each pass that assigned
jobs, so waiting workers are served in turn. Each pass ends with a single write batch marking
its jobs in flight and a single multi-get of their payloads.

Fair shares of the global in-flight limit L (when L > 0), with n open streams:
- no stream ever holds more than ceil(L / 2) jobs, so a stream that takes
  jobs and never acknowledges them (a stuck or hostile worker with a huge
  prefetch) leaves at least half of the limit to the others, including
  streams that connect later;
- a pass first serves streams holding fewer than their fair share
  ceil(L / n), and only then lets streams borrow the slots left over, up to
  the ceil(L / 2) cap. Slots freed by acks therefore go first to streams below
  their share (a worker that just connected), not back to the stream that
  holds the most. A stream whose client is not reading (jobs still in its
  outbox) is lent nothing;
- when the limit is full and a stream below its share waits, jobs that other
  streams above their share were handed but never sent (still in their
  outbox: the client stopped reading and the socket is full) go back to
  ready for it. Jobs already written to a socket are never taken back.
Both rules are integer comparisons per stream and pass; the hot path is
unchanged while every stream is below its share.

Jobs bound to budgets (pro) pass the budget gate (zizq.queue.budget_gate) as
they are picked: they take their tokens or are parked apart, so nothing waits
behind them. A pass parks at most PARKS_PER_PASS jobs, then yields the loop and
continues in a new pass.

A pass whose store write fails is undone (jobs back in the ready heap,
streams' in-flight sets restored), logged once per outage, and retried by a
later pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from zizq.logs import log_event
from zizq.queue.budget_gate import BudgetGate
from zizq.queue.consumer import Consumer, Delivery
from zizq.queue.feed import ChangeFeed
from zizq.queue.indexes import ReadyIndex
from zizq.queue.records import IN_FLIGHT, READY, now_ms
from zizq.store import Store, WriteBatch, index_key_of

logger = logging.getLogger("zizq.dispatch")

UNLIMITED = 1 << 62
RETRY_AFTER_FAILED_WRITE_S = 1.0  # a failed store write is retried by a later pass
PARKS_PER_PASS = 2000  # jobs a pass may park before it lets other work run
_ABSENT = object()


class InFlightEntry:
    __slots__ = ("record", "consumer")

    def __init__(self, record: dict, consumer: Consumer) -> None:
        self.record = record
        self.consumer = consumer


def stream_limits(global_limit: int, streams: int) -> tuple[int, int]:
    """(fair share, hard cap) of the in-flight jobs one stream may hold this pass.

    The share is ceil(L / n); the cap is ceil(L / 2): half of the limit always
    stays available to other streams, present or future. Both are at least 1
    so that small limits never starve everyone (L=1 with three streams: each
    may hold the one slot in turn).
    """
    if global_limit <= 0:
        return UNLIMITED, UNLIMITED
    cap = max(1, (global_limit + 1) // 2)
    share = max(1, -(-global_limit // max(1, streams)))
    return min(share, cap), cap


class Dispatcher:
    def __init__(self, store: Store, ready: ReadyIndex, global_limit: int) -> None:
        self._store = store
        self._ready = ready
        self._global_limit = global_limit  # 0 = unlimited
        self.in_flight: dict[str, InFlightEntry] = {}
        self._consumers: deque[Consumer] = deque()
        self._pump_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._write_failing = False  # log a failed dispatch write once per outage
        self._retry: asyncio.TimerHandle | None = None
        # Ready jobs a fold is rewriting (zizq.queue.keyed): not dispatched until released.
        # The value says whether a pass skipped the job (its heap entry was dropped).
        self._held: dict[str, bool] = {}
        # Called for each dispatched job with a batch config, to seal its batch in the pass.
        self.on_dispatch_batched: Callable[[WriteBatch, str, dict], None] | None = None
        self.feed = ChangeFeed()  # live viewers (admin /events) learn here that lists changed
        # Budgets (pro): ready jobs whose budgets lack tokens wait here, not in the ready index.
        self.gate = BudgetGate(ready, self.request_pump)
        self._parks = 0  # jobs parked by the running pass

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Passes run on this loop (the engine's), whoever asks for one."""
        self._loop = loop
        self.gate.bind(loop)

    # -- stream registration -------------------------------------------

    def add(self, consumer: Consumer) -> None:
        self._consumers.append(consumer)
        self.request_pump()

    def remove(self, consumer: Consumer) -> list[tuple[str, dict]]:
        """Forget a stream; return its unacknowledged jobs for the caller to requeue."""
        with contextlib.suppress(ValueError):
            self._consumers.remove(consumer)
        returned = []
        for job_id in consumer.in_flight:
            entry = self.in_flight.get(job_id)
            if entry is not None and entry.consumer is consumer:
                del self.in_flight[job_id]
                returned.append((job_id, entry.record))
                self.gate.release(job_id)
        consumer.in_flight.clear()
        return returned

    def consumers(self) -> list[Consumer]:
        return list(self._consumers)

    # -- fold holds ----------------------------------------------------------

    def held_jobs(self) -> list[tuple[str, bool]]:
        """(id, whether a pass dropped its ready entry) of jobs held for a fold."""
        return list(self._held.items())

    def hold(self, job_id: str) -> None:
        self._held.setdefault(job_id, False)

    def release_hold(self, job_id: str) -> None:
        """The fold is written or abandoned: the job may go out (its entry returns if dropped)."""
        skipped = self._held.pop(job_id, None)
        if skipped:
            record = self._store.get_job(job_id)
            if record is not None and record["status"] == READY:
                self._ready.push(record["queue"], record["priority"], job_id)
                self.request_pump()

    # -- acks --------------------------------------------------------------

    def claim(self, job_id: str) -> InFlightEntry | None:
        """Take a job out of flight for an ack or failure; None if it is not in flight."""
        return self.in_flight.pop(job_id, None)

    def drop(self, job_id: str) -> bool:
        """Forget an in-flight job that was deleted; its stream may take another."""
        entry = self.in_flight.pop(job_id, None)
        if entry is None:
            return False
        self.release(entry, job_id)
        return True

    def drop_all(self) -> None:
        for job_id in list(self.in_flight):
            self.drop(job_id)

    def release(self, entry: InFlightEntry, job_id: str) -> None:
        """The stream that held a claimed job may take another one; its tokens come back."""
        entry.consumer.in_flight.discard(job_id)
        self.gate.release(job_id)
        self.request_pump()

    # -- dispatch ------------------------------------------------------------

    def request_pump(self) -> None:
        if self.feed.active:  # every change of a list asks for a pass: tell viewers too
            self.feed.changed()
        if not self._pump_scheduled and self._consumers:
            self._pump_scheduled = True
            loop = self._loop or asyncio.get_running_loop()
            loop.call_soon(self._pump)

    def _pop_valid(self, queues: frozenset[str] | None, now: int) -> tuple[str, dict] | None:
        """Best ready job for these queues, skipping stale index entries and parking jobs
        whose budgets lack tokens (None once the pass has parked its share)."""
        while True:
            if self._parks >= PARKS_PER_PASS:
                return None
            entry = self._ready.pop_best(queues)
            if entry is None:
                return None
            queue, priority, job_id = entry
            if job_id in self._held:
                self._held[job_id] = True  # pushed back when the fold releases it
                continue
            if job_id in self.in_flight:
                # A duplicate entry (left by a patch) of a job this very pass
                # assigned: the store does not say in_flight until the pass writes.
                continue
            record = self._store.get_job(job_id)
            if (
                record is not None
                and record["status"] == READY
                and record["queue"] == queue
                and record["priority"] == priority
            ):
                if "budgets" in record and not self.gate.admit(job_id, record, now):
                    self._parks += 1
                    continue
                return job_id, record

    def _serve(
        self, ceiling: int, free: int, now: int, batch: WriteBatch, pass_: _Pass, lending: bool
    ) -> int:
        """Round-robin one job at a time to streams holding fewer than `ceiling` jobs.

        Returns the global slots still free. Sets `pass_.held_back` when a
        stream that could take more was stopped by the ceiling alone. When
        lending, a stream that has not sent what it already has (its client
        is not reading) gets nothing more.
        """
        progress = True
        while progress and free > 0:
            progress = False
            for consumer in self._consumers:
                held = len(consumer.in_flight)
                if consumer.closed or held >= consumer.prefetch:
                    continue
                if held >= ceiling:
                    pass_.held_back = True
                    continue
                if lending and consumer.undelivered:
                    continue
                picked = self._pop_valid(consumer.queues, now)
                if picked is None:
                    continue
                job_id, record = picked
                previous = index_key_of(record)
                pass_.undo.append((job_id, record, record.get("dequeued_at", _ABSENT)))
                record["status"] = IN_FLIGHT
                record["dequeued_at"] = now
                batch.put_job(job_id, record, previous)
                if "batch" in record and self.on_dispatch_batched is not None:
                    self.on_dispatch_batched(batch, job_id, record)
                self.in_flight[job_id] = InFlightEntry(record, consumer)
                consumer.in_flight.add(job_id)
                jobs = pass_.assigned.get(consumer)
                if jobs is None:
                    jobs = pass_.assigned[consumer] = []
                jobs.append((job_id, record))
                progress = True
                free -= 1
                if free <= 0:
                    break
        return free

    def _pump(self) -> None:
        self._pump_scheduled = False
        if not self._consumers:
            return
        self._parks = 0
        try:
            self._pass()
        finally:
            if self._parks >= PARKS_PER_PASS:
                self.request_pump()  # more jobs to look at: after other work had its turn

    def _pass(self) -> None:
        limit = self._global_limit
        free = limit - len(self.in_flight) if limit > 0 else UNLIMITED
        share, cap = stream_limits(limit, len(self._consumers))
        if free <= 0:
            if not self._reclaim_unsent(share):
                return
            free = limit - len(self.in_flight)
        now = now_ms()
        batch = self._store.batch()
        pass_ = _Pass()
        free = self._serve(share, free, now, batch, pass_, lending=False)
        if pass_.held_back and free > 0 and cap > share:
            # Every stream below its share has been served: lend what is left.
            pass_.held_back = False
            self._serve(cap, free, now, batch, pass_, lending=True)
        if not pass_.assigned:
            return
        self._consumers.rotate(-1)
        try:
            self._store.write(batch)
        except Exception:
            self._undo(pass_)
            return
        if self.feed.active:
            self.feed.changed()
        if self._write_failing:
            self._write_failing = False
            logger.info("dispatch writes succeed again")
        for consumer, jobs in pass_.assigned.items():
            # Payloads are read when the stream writes the job out (Consumer docs),
            # so jobs waiting for a slow client hold only their small records.
            consumer.deliver([Delivery(job_id, dict(record)) for job_id, record in jobs])
            if logger.isEnabledFor(logging.DEBUG):
                for job_id, record in jobs:
                    log_event(
                        logger,
                        logging.DEBUG,
                        "job dispatched",
                        id=job_id,
                        queue=record["queue"],
                        attempts=record["attempts"],
                    )

    def _reclaim_unsent(self, share: int) -> int:
        """The limit is full: give a hungry stream the jobs others hold but never sent.

        A stream whose client does not read stops taking its outbox once the
        socket buffers are full; jobs handed to it after that never left the
        server. When a stream below its fair share waits, such jobs of streams
        above their share go back to ready (attempts unchanged, as for a
        dropped stream), but only jobs the hungry streams would take, so they
        cannot bounce back to where they came from. Returns how many.
        """
        hungry = [
            c for c in self._consumers if not c.closed and len(c.in_flight) < min(share, c.prefetch)
        ]
        if not hungry:
            return 0
        wanted_total = sum(min(share, c.prefetch) - len(c.in_flight) for c in hungry)
        any_queue = any(c.queues is None for c in hungry)
        queues = frozenset().union(*(c.queues for c in hungry if c.queues is not None))

        in_flight = self.in_flight
        batch = self._store.batch()
        taken: list[tuple[Consumer, list[Delivery]]] = []
        for consumer in self._consumers:
            excess = len(consumer.in_flight) - share
            if excess <= 0 or not consumer.undelivered or wanted_total <= 0:
                continue

            def wanted(delivery: Delivery, holder: Consumer = consumer) -> bool:
                # The in-flight entry is the truth: the job may have been acked,
                # deleted or patched to another queue since it was handed out.
                entry = in_flight.get(delivery.job_id)
                return (
                    entry is not None
                    and entry.consumer is holder
                    and (any_queue or entry.record["queue"] in queues)
                )

            deliveries = consumer.take_back(min(excess, wanted_total), wanted)
            if not deliveries:
                continue
            wanted_total -= len(deliveries)
            taken.append((consumer, deliveries))
            for delivery in deliveries:
                record = in_flight[delivery.job_id].record
                ready = dict(record, status=READY)
                ready.pop("dequeued_at", None)
                batch.put_job(delivery.job_id, ready, index_key_of(record))
        if not taken:
            return 0
        try:
            self._store.write(batch)
        except Exception:
            for consumer, deliveries in taken:  # unsent still: hand them back untouched
                consumer.deliver(deliveries[::-1])
            self._note_write_failure(sum(len(d) for _, d in taken))
            return 0
        count = 0
        for consumer, deliveries in taken:
            for delivery in deliveries:
                entry = self.in_flight.pop(delivery.job_id)
                consumer.in_flight.discard(delivery.job_id)
                record = entry.record
                record["status"] = READY
                record.pop("dequeued_at", None)
                self._ready.push(record["queue"], record["priority"], delivery.job_id)
                self.gate.release(delivery.job_id)
                count += 1
        logger.info("dispatch: took back %d unsent jobs for streams below their share", count)
        return count

    def _note_write_failure(self, jobs: int) -> None:
        if not self._write_failing:
            self._write_failing = True
            logger.exception("dispatch: a write for %d jobs failed; they stay as they were", jobs)
        if self._retry is None:
            loop = self._loop or asyncio.get_running_loop()
            self._retry = loop.call_later(RETRY_AFTER_FAILED_WRITE_S, self._retry_pump)

    def _undo(self, pass_: _Pass) -> None:
        """The pass's write failed: put every job and stream back as the pass found them.

        Nothing reached the store or a stream, so the jobs are ready again in
        memory exactly as on disk; a later pass (the next event, or a retry
        timer) dispatches them once writes succeed.
        """
        for consumer, jobs in pass_.assigned.items():
            for job_id, _ in jobs:
                consumer.in_flight.discard(job_id)
                self.in_flight.pop(job_id, None)
                self.gate.release(job_id)
        for job_id, record, dequeued_at in pass_.undo:
            record["status"] = READY
            if dequeued_at is _ABSENT:
                record.pop("dequeued_at", None)
            else:
                record["dequeued_at"] = dequeued_at
            self._ready.push(record["queue"], record["priority"], job_id)
        self._note_write_failure(len(pass_.undo))

    def _retry_pump(self) -> None:
        self._retry = None
        self.request_pump()


class _Pass:
    """What one dispatch pass assigned, and how to take it back."""

    __slots__ = ("assigned", "undo", "held_back")

    def __init__(self) -> None:
        self.assigned: dict[Consumer, list[tuple[str, dict]]] = {}
        self.undo: list[tuple[str, dict, object]] = []
        self.held_back = False
