"""Promotes scheduled jobs to ready when their ready_at arrives.

One timer, set for the earliest due job and re-armed when an earlier one
appears: no polling, and a due job is promoted within about a millisecond.
"""

from __future__ import annotations

import asyncio
import logging

from zizq.queue.dispatch import Dispatcher
from zizq.queue.indexes import ReadyIndex, TimerHeap
from zizq.queue.pacing import YIELD_S
from zizq.queue.records import READY, SCHEDULED, now_ms
from zizq.store import Store, index_key_of

PROMOTE_SLICE = 2000  # scheduled jobs promoted per loop iteration
RETRY_S = 1.0  # after the store refused a promotion

logger = logging.getLogger("zizq.scheduler")


class Scheduler:
    def __init__(self, store: Store, ready: ReadyIndex, dispatcher: Dispatcher) -> None:
        self._store = store
        self._ready = ready
        self._dispatcher = dispatcher
        self.due = TimerHeap()  # (ready_at, id) of scheduled jobs
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_due = None

    def add(self, ready_at: int, job_id: str) -> None:
        self.due.push(ready_at, job_id)

    def arm(self) -> None:
        """Sleep until the next scheduled job is due."""
        due = self.due.next_due()
        if due is None or self._loop is None:
            return
        if self._timer is not None and self._timer_due is not None and self._timer_due <= due:
            return
        if self._timer is not None:
            self._timer.cancel()
        # +1 ms so the timer never fires in the millisecond before the job is due.
        delay = max(0.0, (due - now_ms() + 1) / 1000)
        self._timer = self._loop.call_later(delay, self._promote_due)
        self._timer_due = due

    def _promote_due(self) -> None:
        self._timer = None
        self._timer_due = None
        due = self.due.pop_due(now_ms(), PROMOTE_SLICE)
        try:
            promoted = self._write_promotions(due)
        except Exception as exc:  # the store refused (disk full): keep them, retry soon
            logger.error("cannot promote %d scheduled jobs (retrying): %s", len(due), exc)
            self.due.load(due)
            self._timer = self._loop.call_later(RETRY_S, self._promote_due)
            self._timer_due = now_ms() + int(RETRY_S * 1000)
            return
        if promoted:
            for job_id, record in promoted:
                self._ready.push(record["queue"], record["priority"], job_id)
            self._dispatcher.request_pump()
        if len(due) == PROMOTE_SLICE:
            # More are due: continue shortly, letting requests in between slices.
            self._loop.call_later(YIELD_S, self._promote_due)
        else:
            self.arm()

    def _write_promotions(self, due: list[tuple[int, str]]) -> list[tuple[str, dict]]:
        """Mark the due jobs ready in one write; returns them (stale entries skipped)."""
        batch = self._store.batch()
        promoted = []
        seen = set()  # a patch may have left duplicate entries; promote each job once
        for ready_at, job_id in due:
            if job_id in seen:
                continue
            seen.add(job_id)
            record = self._store.get_job(job_id)
            if record is None or record["status"] != SCHEDULED or record["ready_at"] != ready_at:
                continue  # stale: the job was patched, deleted or already moved on
            previous = index_key_of(record)
            record["status"] = READY
            batch.put_job(job_id, record, previous)
            promoted.append((job_id, record))
        if promoted:
            self._store.write(batch)
        return promoted
