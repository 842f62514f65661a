"""Hands ready jobs to waiting take streams.

One pass (`pump`) runs whenever something may have changed: a job became
ready, or a stream gained capacity. Passes are coalesced with call_soon so a
burst of enqueues costs one pass. Within a pass, streams take turns one job at
a time, and the first stream served rotates between passes, so waiting
workers are served fairly. Each pass ends with a single write batch marking
its jobs in flight and a single multi-get of their payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from zizq.queue.consumer import Consumer, Delivery
from zizq.queue.indexes import ReadyIndex
from zizq.queue.records import IN_FLIGHT, READY, now_ms
from zizq.store import Store, index_key_of


class InFlightEntry:
    __slots__ = ("record", "consumer")

    def __init__(self, record: dict, consumer: Consumer) -> None:
        self.record = record
        self.consumer = consumer


class Dispatcher:
    def __init__(self, store: Store, ready: ReadyIndex, global_limit: int) -> None:
        self._store = store
        self._ready = ready
        self._global_limit = global_limit  # 0 = unlimited
        self.in_flight: dict[str, InFlightEntry] = {}
        self._consumers: deque[Consumer] = deque()
        self._pump_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Passes run on this loop (the engine's), whoever asks for one."""
        self._loop = loop

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
        consumer.in_flight.clear()
        return returned

    def consumers(self) -> list[Consumer]:
        return list(self._consumers)

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
        """The stream that held a claimed job may take another one."""
        entry.consumer.in_flight.discard(job_id)
        self.request_pump()

    # -- dispatch ------------------------------------------------------------

    def request_pump(self) -> None:
        if not self._pump_scheduled and self._consumers:
            self._pump_scheduled = True
            loop = self._loop or asyncio.get_running_loop()
            loop.call_soon(self._pump)

    def _at_global_limit(self) -> bool:
        return self._global_limit > 0 and len(self.in_flight) >= self._global_limit

    def _pop_valid(self, queues: frozenset[str] | None) -> tuple[str, dict] | None:
        """Best ready job for these queues, skipping stale index entries."""
        while True:
            entry = self._ready.pop_best(queues)
            if entry is None:
                return None
            queue, priority, job_id = entry
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
                return job_id, record

    def _pump(self) -> None:
        self._pump_scheduled = False
        if not self._consumers:
            return
        now = now_ms()
        batch = self._store.batch()
        assigned: dict[Consumer, list[tuple[str, dict]]] = {}
        progress = True
        while progress and not self._at_global_limit():
            progress = False
            for consumer in self._consumers:
                if consumer.closed or consumer.capacity <= 0:
                    continue
                if self._at_global_limit():
                    break
                picked = self._pop_valid(consumer.queues)
                if picked is None:
                    continue
                job_id, record = picked
                previous = index_key_of(record)
                record["status"] = IN_FLIGHT
                record["dequeued_at"] = now
                batch.put_job(job_id, record, previous)
                self.in_flight[job_id] = InFlightEntry(record, consumer)
                consumer.in_flight.add(job_id)
                assigned.setdefault(consumer, []).append((job_id, record))
                progress = True
        self._consumers.rotate(-1)
        if not assigned:
            return
        self._store.write(batch)
        for consumer, jobs in assigned.items():
            payloads = self._store.get_payloads([job_id for job_id, _ in jobs])
            consumer.deliver(
                [
                    Delivery(job_id, dict(record), payload)
                    for (job_id, record), payload in zip(jobs, payloads, strict=True)
                ]
            )
