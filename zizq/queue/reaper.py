"""Deletes finished jobs whose retention has ended.

Such jobs are already invisible to the API (records.is_purged); reaping only
reclaims their space, so it runs every reaper interval, in slices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from zizq.logs import log_event
from zizq.queue.indexes import TimerHeap
from zizq.queue.pacing import let_requests_in
from zizq.queue.records import TERMINAL, now_ms
from zizq.store import Store, WriteBatch

logger = logging.getLogger("zizq.reaper")

REAP_SLICE = 1000  # expired jobs deleted per write batch


# Called for each purged job in the purge's write batch (the engine clears its keys).
ForgetKeys = Callable[[WriteBatch, str, dict], None]


class Reaper:
    def __init__(
        self, store: Store, interval_ms: int, forget_keys: ForgetKeys | None = None
    ) -> None:
        self._store = store
        self._forget_keys = forget_keys
        self._interval = interval_ms / 1000
        self.due = TimerHeap()  # (purge_at, id) of retained finished jobs
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._forever(), name="zizq-reaper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def add(self, purge_at: int, job_id: str) -> None:
        self.due.push(purge_at, job_id)

    def anything_due(self) -> bool:
        due = self.due.next_due()
        return due is not None and due <= now_ms()

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.reap()
            except Exception:  # keep reaping on the next tick; never kill the server
                logger.exception("reaper pass failed")

    async def reap(self) -> int:
        """Delete every job whose retention has ended; returns how many."""
        removed = 0
        while True:
            due = self.due.pop_due(now_ms(), REAP_SLICE)
            if not due:
                return removed
            batch = self._store.batch()
            unique = {job_id: due_at for due_at, job_id in due}  # each job once
            for job_id, purge_at in unique.items():
                record = self._store.get_job(job_id)
                if (
                    record is not None
                    and record["status"] in TERMINAL
                    and record.get("purge_at") == purge_at
                ):
                    if self._forget_keys is not None:
                        self._forget_keys(batch, job_id, record)
                    batch.delete_job(job_id, record)
                    removed += 1
                    if logger.isEnabledFor(logging.DEBUG):
                        log_event(logger, logging.DEBUG, "job purged", id=job_id)
            try:
                self._store.write(batch)
            except Exception:
                self.due.load(due)  # still expired (and invisible): reaped on a later pass
                raise
            await let_requests_in()
