"""How jobs leave flight: acknowledgements (completed) and failures (retry or dead).

A mixin of the Engine. Every call is one write batch; the in-memory state
(the dispatcher's slots and budget tokens, the reaper, the scheduler, live
viewers) changes only once it has landed, and a failed write gives every
claimed job back to flight exactly as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from zizq.logs import log_event
from zizq.queue.backoff import policy_from_record, retry_delay_ms
from zizq.queue.budgets import BudgetBook
from zizq.queue.dispatch import Dispatcher, InFlightEntry
from zizq.queue.errors import NotFound
from zizq.queue.reaper import Reaper
from zizq.queue.records import COMPLETED, DEAD, READY, SCHEDULED, later, now_ms, public_view
from zizq.queue.scheduler import Scheduler
from zizq.queue.spec import FailureSpec
from zizq.store import Committer, Lane, Store, WriteBatch, index_key_of

logger = logging.getLogger("zizq.engine")

# Requests with at most this many jobs (or acks) write through a commit lane, coalesced
# with others of the same loop turn; larger ones are written on their own.
COALESCE_MAX_JOBS = 32


class JobOutcomes:
    # What the Engine provides (declared, not imported: the engine imports this module).
    store: Store
    settings: Any
    dispatcher: Dispatcher
    committer: Committer
    reaper: Reaper
    scheduler: Scheduler
    budgets: BudgetBook
    _writes_open: Callable[[], Awaitable[None]]
    _give_back: Callable[[list[tuple[str, InFlightEntry]]], None]
    _forget_keys: Callable[[WriteBatch, str, dict], None]
    _index_waiting: Callable[[str, dict], None]

    def _finish(
        self, batch: WriteBatch, job_id: str, record: dict, status: str, now: int
    ) -> dict | None:
        """Move a copy of a job to a terminal status; returns it if it is retained."""
        stored, previous = record, index_key_of(record)
        record = dict(record)
        record["status"] = status
        if status == COMPLETED:
            record["completed_at"] = now
        retention = record.get("retention", {})
        key = "completed_ms" if status == COMPLETED else "dead_ms"
        default = (
            self.settings.default_completed_retention_ms
            if status == COMPLETED
            else self.settings.default_dead_retention_ms
        )
        keep_ms = retention.get(key, default)
        if keep_ms <= 0:
            self._forget_keys(batch, job_id, record)
            batch.delete_job(job_id, stored)
            return None
        record["purge_at"] = later(now, keep_ms)
        batch.put_job(job_id, record, previous)
        return record

    async def ack(self, job_id: str) -> bool:
        """Mark one in-flight job completed; False if it is not in flight."""
        return not await self.ack_many([job_id])

    async def ack_many(self, job_ids: list[str]) -> list[str]:
        """Complete every in-flight job listed; returns the ids that were not in flight.

        Repeated ids count once. If the write fails, every claimed job is in
        flight again, exactly as before the call.
        """
        await self._writes_open()
        now = now_ms()
        lane = Lane.COMPLETE if len(job_ids) <= COALESCE_MAX_JOBS else None
        batch = self.store.batch(deferred=lane is not None)
        claimed: list[tuple[str, InFlightEntry]] = []
        retained: list[tuple[int, str]] = []
        not_found = []
        seen: set[str] = set()
        for job_id in job_ids:
            if job_id in seen:
                continue
            seen.add(job_id)
            entry = self.dispatcher.claim(job_id)
            if entry is None:
                not_found.append(job_id)
                continue
            finished = self._finish(batch, job_id, entry.record, COMPLETED, now)
            claimed.append((job_id, entry))
            if finished is not None:
                retained.append((finished["purge_at"], job_id))
        if not claimed:
            return not_found

        def landed() -> None:
            for purge_at, job_id in retained:
                self.reaper.add(purge_at, job_id)
            for job_id, entry in claimed:
                self.dispatcher.release(entry, job_id)
            self.budgets.unbound(entry.record for _, entry in claimed)
            if self.dispatcher.feed.active:  # live viewers (admin /events) show the acks
                for job_id, _ in claimed:
                    self.dispatcher.feed.finished(job_id, COMPLETED)
            if logger.isEnabledFor(logging.DEBUG):
                for job_id, entry in claimed:
                    lifecycle_debug("job acked", job_id, entry.record)

        await self.committer.commit(
            batch,
            self.settings.default_commit_mode,
            landed,
            lambda: self._give_back(claimed),
            lane=lane,
        )
        return not_found

    async def fail(self, job_id: str, failure: FailureSpec) -> dict:
        """Record a failure, then retry later, or kill. Returns the job's public view."""
        await self._writes_open()
        entry = self.dispatcher.claim(job_id)
        if entry is None:
            raise NotFound("job not found or not in flight")
        try:
            batch, record, purge_at = self._failed_record(job_id, entry.record, failure)
        except BaseException:
            self._give_back([(job_id, entry)])
            raise

        def landed() -> None:
            if purge_at is not None:
                self.reaper.add(purge_at, job_id)
            self._index_waiting(job_id, record)
            self.dispatcher.release(entry, job_id)
            if record["status"] == DEAD:
                self.budgets.unbound([record])
            self.scheduler.arm()
            if self.dispatcher.feed.active and record["status"] == DEAD:
                self.dispatcher.feed.finished(job_id, DEAD)
            if logger.isEnabledFor(logging.DEBUG):
                dead = record["status"] == DEAD
                lifecycle_debug("job dead" if dead else "job failed", job_id, record)

        await self.committer.commit(
            batch,
            self.settings.default_commit_mode,
            landed,
            lambda: self._give_back([(job_id, entry)]),
        )
        return public_view(job_id, record)

    def _failed_record(
        self, job_id: str, current: dict, failure: FailureSpec
    ) -> tuple[WriteBatch, dict, int | None]:
        """The write batch of one failure, the job's next record and its purge time if dead."""
        previous = index_key_of(current)
        record = dict(current)
        now = now_ms()
        attempts = record["attempts"] + 1
        record["attempts"] = attempts
        record["failed_at"] = now
        error = {"attempt": attempts, "message": failure.message}
        if failure.error_type is not None:
            error["error_type"] = failure.error_type
        if failure.backtrace is not None:
            error["backtrace"] = failure.backtrace
        error["dequeued_at"] = record.get("dequeued_at")
        error["failed_at"] = now
        batch = self.store.batch()
        batch.put_error(job_id, attempts, error)
        retry_limit = record.get("retry_limit", self.settings.default_retry_limit)
        # An explicit retry_at is the caller's decision: it retries even past the limit.
        if failure.kill or (failure.retry_at is None and attempts > retry_limit):
            finished = self._finish(batch, job_id, record, DEAD, now)
            if finished is None:
                record["status"] = DEAD
                return batch, record, None
            return batch, finished, finished["purge_at"]
        if failure.retry_at is not None:
            ready_at = failure.retry_at
        else:
            policy = policy_from_record(record, self.settings.default_backoff)
            ready_at = later(now, retry_delay_ms(policy, attempts))
        record["ready_at"] = ready_at
        record["status"] = SCHEDULED if ready_at > now else READY
        batch.put_job(job_id, record, previous)
        return batch, record, None


def lifecycle_debug(message: str, job_id: str, record: dict) -> None:
    """A DEBUG line for one step of a job's life (callers check the level first)."""
    log_event(
        logger,
        logging.DEBUG,
        message,
        id=job_id,
        queue=record["queue"],
        type=record["type"],
        status=record["status"],
        attempts=record["attempts"],
    )
