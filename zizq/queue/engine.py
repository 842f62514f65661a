"""The job engine: every state change of a job goes through here.

Rules that keep it correct:
- A change becomes visible in the in-memory indexes only after its write
  batch is committed, so nothing is dispatched that a crash could lose, and a
  write waiting for an fsync is never overtaken by a later write to the same job.
- Every API call is one write batch (enqueue, bulk enqueue, ack, bulk ack,
  failure, single patch or delete). Bulk patch and delete by filter commit
  one batch per slice, so each job changes atomically and other requests run
  between slices.
- The indexes are caches of the store: stale entries are detected against the
  stored record, never trusted blindly.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from zizq.config import BackoffPolicy, ServeConfig
from zizq.queue.backoff import policy_from_record, retry_delay_ms
from zizq.queue.consumer import Consumer
from zizq.queue.dispatch import Dispatcher, InFlightEntry
from zizq.queue.errors import Conflict, NotFound
from zizq.queue.ids import new_id
from zizq.queue.indexes import ReadyIndex
from zizq.queue.maintenance import Maintenance
from zizq.queue.pacing import let_requests_in
from zizq.queue.patch import JobPatch, apply_patch
from zizq.queue.query import JobFilter, JobQuery, Page, take_page
from zizq.queue.reaper import Reaper
from zizq.queue.records import (
    COMPLETED,
    DEAD,
    DEFAULT_PRIORITY,
    READY,
    SCHEDULED,
    TERMINAL,
    is_purged,
    later,
    now_ms,
    public_view,
)
from zizq.queue.recovery import recover
from zizq.queue.scheduler import Scheduler
from zizq.queue.spec import FailureSpec, JobSpec
from zizq.store import CommitMode, Committer, Store, WriteBatch, index_key_of

logger = logging.getLogger("zizq.engine")

BULK_SLICE = 250  # jobs changed per write batch by a bulk patch or delete


@dataclass(frozen=True)
class EngineSettings:
    heartbeat_interval_ms: int = 3000
    global_in_flight_limit: int = 1024
    default_retry_limit: int = 25
    default_backoff: BackoffPolicy = BackoffPolicy(15000, 4.0, 30000)
    default_completed_retention_ms: int = 0
    default_dead_retention_ms: int = 7 * 24 * 3600 * 1000
    reaper_check_interval_ms: int = 30000
    default_commit_mode: CommitMode = CommitMode.BUFFERED
    enqueue_commit_mode: CommitMode = CommitMode.BUFFERED

    @classmethod
    def from_config(cls, config: ServeConfig) -> EngineSettings:
        return cls(
            heartbeat_interval_ms=config.heartbeat_interval_ms,
            global_in_flight_limit=config.global_in_flight_limit,
            default_retry_limit=config.default_retry_limit,
            default_backoff=config.default_backoff,
            default_completed_retention_ms=config.default_completed_retention_ms,
            default_dead_retention_ms=config.default_dead_retention_ms,
            reaper_check_interval_ms=config.reaper_check_interval_ms,
            default_commit_mode=CommitMode(config.default_commit_mode),
            enqueue_commit_mode=CommitMode(config.enqueue_commit_mode),
        )


class Engine:
    def __init__(self, store: Store, settings: EngineSettings) -> None:
        self.store = store
        self.settings = settings
        self.committer = Committer(store)
        self.ready = ReadyIndex()
        self.dispatcher = Dispatcher(store, self.ready, settings.global_in_flight_limit)
        self.scheduler = Scheduler(store, self.ready, self.dispatcher)
        self.reaper = Reaper(store, settings.reaper_check_interval_ms)
        self.maintenance: Maintenance | None = None  # set by the server: backups, compaction

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.dispatcher.bind(loop)
        found = recover(self.store)
        self.ready.load(found.ready)
        self.scheduler.due.load(found.scheduled)
        self.reaper.due.load(found.retained)
        self.scheduler.start(loop)
        self.reaper.start()

    async def stop(self) -> None:
        """Close every take stream and return their jobs to ready; stop timers."""
        for consumer in self.dispatcher.consumers():
            consumer.close()
            self.close_consumer(consumer)
        self.scheduler.stop()
        await self.reaper.stop()
        self.committer.close()

    # -- enqueue ---------------------------------------------------------------

    def _new_record(self, spec: JobSpec, now: int) -> dict:
        ready_at = now if spec.ready_at is None else spec.ready_at
        record = {
            "queue": spec.queue,
            "type": spec.type,
            "priority": DEFAULT_PRIORITY if spec.priority is None else spec.priority,
            "status": SCHEDULED if ready_at > now else READY,
            "ready_at": ready_at,
            "attempts": 0,
        }
        if spec.retry_limit is not None:
            record["retry_limit"] = spec.retry_limit
        if spec.backoff is not None:
            record["backoff"] = spec.backoff
        if spec.retention is not None:
            record["retention"] = spec.retention
        return record

    async def enqueue(self, specs: list[JobSpec]) -> list[dict]:
        """Create jobs atomically; returns their public views in input order."""
        now = now_ms()
        batch = self.store.batch()
        created = []
        for spec in specs:
            job_id = new_id(now)
            record = self._new_record(spec, now)
            batch.put_job(job_id, record, None)
            batch.put_payload(job_id, spec.payload)
            created.append((job_id, record))
        if created:
            await self.committer.commit(batch, self.settings.enqueue_commit_mode)
        for job_id, record in created:
            self._index_waiting(job_id, record)
        self._after_index_change()
        return [public_view(job_id, record, duplicate=False) for job_id, record in created]

    def _index_waiting(self, job_id: str, record: dict) -> None:
        if record["status"] == READY:
            self.ready.push(record["queue"], record["priority"], job_id)
        elif record["status"] == SCHEDULED:
            self.scheduler.add(record["ready_at"], job_id)

    def _after_index_change(self) -> None:
        self.dispatcher.request_pump()
        self.scheduler.arm()

    # -- reads -----------------------------------------------------------------

    def get_job(self, job_id: str) -> tuple[dict, bytes | None]:
        record = self.store.get_job(job_id) if _plausible_id(job_id) else None
        if record is None or is_purged(record, now_ms()):
            raise NotFound("job not found")
        return record, self.store.get_payload(job_id)

    # -- take streams ----------------------------------------------------------

    def open_consumer(self, queues: frozenset[str] | None, prefetch: int) -> Consumer:
        consumer = Consumer(queues, prefetch)
        self.dispatcher.add(consumer)
        return consumer

    def close_consumer(self, consumer: Consumer) -> int:
        """The stream is gone: its unacknowledged jobs become ready at once, attempts unchanged."""
        returned = self.dispatcher.remove(consumer)
        if not returned:
            return 0
        batch = self.store.batch()
        for job_id, record in returned:
            previous = index_key_of(record)
            record["status"] = READY
            record.pop("dequeued_at", None)
            batch.put_job(job_id, record, previous)
        self.store.write(batch)
        for job_id, record in returned:
            self.ready.push(record["queue"], record["priority"], job_id)
        self.dispatcher.request_pump()
        return len(returned)

    # -- acks and failures -----------------------------------------------------

    def _finish(
        self, batch: WriteBatch, job_id: str, record: dict, status: str, now: int
    ) -> int | None:
        """Move a job to a terminal status; returns its purge time if it is retained."""
        previous = index_key_of(record)
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
            batch.delete_job(job_id, previous)
            return None
        record["purge_at"] = later(now, keep_ms)
        batch.put_job(job_id, record, previous)
        return record["purge_at"]

    async def ack(self, job_id: str) -> bool:
        """Mark one in-flight job completed; False if it is not in flight."""
        return not await self.ack_many([job_id])

    async def ack_many(self, job_ids: list[str]) -> list[str]:
        """Complete every in-flight job listed; returns the ids that were not in flight."""
        now = now_ms()
        batch = self.store.batch()
        claimed: list[tuple[str, InFlightEntry, int | None]] = []
        not_found = []
        for job_id in job_ids:
            entry = self.dispatcher.claim(job_id)
            if entry is None:
                not_found.append(job_id)
                continue
            purge_at = self._finish(batch, job_id, entry.record, COMPLETED, now)
            claimed.append((job_id, entry, purge_at))
        if claimed:
            await self.committer.commit(batch, self.settings.default_commit_mode)
        for job_id, entry, purge_at in claimed:
            if purge_at is not None:
                self.reaper.add(purge_at, job_id)
            self.dispatcher.release(entry, job_id)
        return not_found

    async def fail(self, job_id: str, failure: FailureSpec) -> dict:
        """Record a failure, then retry later, or kill. Returns the job's public view."""
        entry = self.dispatcher.claim(job_id)
        if entry is None:
            raise NotFound("job not found or not in flight")
        record = entry.record
        previous = index_key_of(record)
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
        purge_at = None
        if failure.kill or attempts > retry_limit:
            purge_at = self._finish(batch, job_id, record, DEAD, now)
        else:
            if failure.retry_at is not None:
                ready_at = failure.retry_at
            else:
                policy = policy_from_record(record, self.settings.default_backoff)
                ready_at = later(now, retry_delay_ms(policy, attempts))
            record["ready_at"] = ready_at
            record["status"] = SCHEDULED if ready_at > now else READY
            batch.put_job(job_id, record, previous)
        await self.committer.commit(batch, self.settings.default_commit_mode)
        if purge_at is not None:
            self.reaper.add(purge_at, job_id)
        self._index_waiting(job_id, record)
        self.dispatcher.release(entry, job_id)
        self.scheduler.arm()
        return public_view(job_id, record)

    # -- visibility and control ----------------------------------------------

    async def _reap_due(self) -> None:
        """Remove expired jobs now, so counters never count a job that is already invisible."""
        if self.reaper.anything_due():
            await self.reaper.reap()

    async def count(self, job_filter: JobFilter) -> int:
        await self._reap_due()
        query = JobQuery(self.store, job_filter)
        if job_filter.only_counted_dimensions:
            return query.count()
        return await asyncio.to_thread(query.count)  # a scan: keep the loop serving meanwhile

    async def queues(self) -> list[str]:
        await self._reap_due()
        return sorted({queue for queue, _, _ in self.store.counts})

    async def list_jobs(
        self,
        job_filter: JobFilter,
        limit: int,
        order_desc: bool,
        after: str | None,
        before: str | None,
    ) -> Page:
        query = JobQuery(self.store, job_filter)
        # A filter may scan far (a jq filter that matches little): do it off the loop.
        page = await asyncio.to_thread(
            take_page,
            lambda cursor: query.matches(cursor, order_desc),
            lambda cursor: query.matches(cursor, not order_desc),
            limit,
            after,
            before,
        )
        payloads = self.store.get_payloads([job_id for job_id, _ in page.items])
        page.items = [
            (job_id, record, payload)
            for (job_id, record), payload in zip(page.items, payloads, strict=True)
        ]
        return page

    def list_errors(
        self, job_id: str, limit: int, order_desc: bool, after: int | None, before: int | None
    ) -> Page:
        self.get_job(job_id)  # 404 for an unknown job
        store = self.store
        return take_page(
            lambda cursor: store.iter_errors(job_id, cursor, order_desc),
            lambda cursor: store.iter_errors(job_id, cursor, not order_desc),
            limit,
            after,
            before,
        )

    def get_error(self, job_id: str, attempt: int) -> dict:
        self.get_job(job_id)
        error = self.store.get_error(job_id, attempt)
        if error is None:
            raise NotFound(f"job has no error for attempt {attempt}")
        return error

    def _write_visible(self, batch: WriteBatch) -> None:
        """Commit a change to jobs other requests can see, without yielding.

        Patches and deletes touch jobs that the dispatcher, scheduler and acks
        may touch too; committing before the next await means no one reads the
        old record in between. In fsync mode this syncs on the loop thread,
        which is acceptable for these rare administrative writes.
        """
        self.store.write(batch, sync=self.settings.default_commit_mode is CommitMode.FSYNC)

    def _patch_one(
        self, batch: WriteBatch, job_id: str, record: dict, patch: JobPatch, now: int
    ) -> dict:
        entry = self.dispatcher.in_flight.get(job_id)
        if entry is not None:
            record = entry.record  # the in-memory copy the ack will write back
        previous = index_key_of(record)
        apply_patch(record, patch, now)
        batch.put_job(job_id, record, previous)
        return record

    def _after_patch(self, patched: list[tuple[str, dict]]) -> None:
        for job_id, record in patched:
            self._index_waiting(job_id, record)
        self._after_index_change()

    async def patch_job(self, job_id: str, patch: JobPatch) -> dict:
        record, _ = self.get_job(job_id)
        if record["status"] in TERMINAL:
            raise Conflict(f"job is {record['status']} and can no longer be changed")
        batch = self.store.batch()
        record = self._patch_one(batch, job_id, record, patch, now_ms())
        self._write_visible(batch)
        self._after_patch([(job_id, record)])
        return public_view(job_id, record)

    async def _in_slices(self, job_filter: JobFilter, apply) -> int:
        """Run `apply(batch, id, record)` on every match, BULK_SLICE jobs per write batch,
        yielding to other requests between slices. Returns how many were applied."""
        total = 0
        seen: set[str] = set()  # each job once, even if it moved between index walks
        matches = JobQuery(self.store, job_filter).matches()
        exhausted = False
        while not exhausted:
            batch = self.store.batch()
            changed = []
            exhausted = True
            for examined, (job_id, record) in enumerate(matches, 1):
                if job_id in seen:
                    continue
                seen.add(job_id)
                result = apply(batch, job_id, record)
                if result is not None:
                    changed.append((job_id, result))
                if len(changed) >= BULK_SLICE or examined >= 4 * BULK_SLICE:
                    exhausted = False
                    break
            if changed:
                self._write_visible(batch)
                total += len(changed)
                self._after_patch([(job_id, r) for job_id, r in changed if isinstance(r, dict)])
            await let_requests_in()
        return total

    async def patch_jobs(self, job_filter: JobFilter, patch: JobPatch) -> int:
        if job_filter.statuses is not None and job_filter.statuses & TERMINAL:
            raise Conflict("status: completed and dead jobs cannot be patched")
        now = now_ms()

        def apply(batch: WriteBatch, job_id: str, record: dict) -> dict | None:
            if record["status"] in TERMINAL:
                return None  # skipped silently unless asked for by status
            return self._patch_one(batch, job_id, record, patch, now)

        return await self._in_slices(job_filter, apply)

    def _delete_one(self, batch: WriteBatch, job_id: str, record: dict) -> bool:
        batch.delete_job(job_id, index_key_of(record))
        self.dispatcher.drop(job_id)  # a later ack of it gets 404
        return True

    async def delete_job(self, job_id: str) -> None:
        record, _ = self.get_job(job_id)
        batch = self.store.batch()
        self._delete_one(batch, job_id, record)
        self._write_visible(batch)

    async def delete_jobs(self, job_filter: JobFilter) -> int:
        if job_filter == JobFilter():
            return await self.reset()
        deleted = await self._in_slices(job_filter, self._delete_one)
        if self.maintenance is not None:
            self.maintenance.note_deleted(deleted)
        return deleted

    async def reset(self) -> int:
        """Delete every job (in flight too) in one atomic batch; returns how many there were."""
        await self._reap_due()
        total = sum(self.store.counts.values())
        batch = self.store.batch()
        batch.delete_everything()
        self._write_visible(batch)
        self.dispatcher.drop_all()
        self.ready.clear()
        self.scheduler.due.clear()
        self.reaper.due.clear()
        if self.maintenance is not None:
            self.maintenance.note_deleted(total)
        return total


def _plausible_id(job_id: str) -> bool:
    return len(job_id) == 25 and job_id.isascii() and job_id.isalnum()
