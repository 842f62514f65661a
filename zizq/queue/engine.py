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
import dataclasses
import logging
from dataclasses import dataclass

from zizq.config import BackoffPolicy, ServeConfig
from zizq.queue import jq_sandbox
from zizq.queue.backoff import policy_from_record, retry_delay_ms
from zizq.queue.consumer import Consumer
from zizq.queue.dispatch import Dispatcher, InFlightEntry
from zizq.queue.errors import Conflict, NotFound
from zizq.queue.ids import new_id
from zizq.queue.indexes import ReadyIndex
from zizq.queue.jq_sandbox import JqSandbox
from zizq.queue.maintenance import Maintenance
from zizq.queue.pacing import let_requests_in
from zizq.queue.patch import JobPatch, apply_patch
from zizq.queue.pools import BoundedPool
from zizq.queue.query import JobFilter, JobQuery, Page, take_page
from zizq.queue.reaper import Reaper
from zizq.queue.records import (
    COMPLETED,
    DEAD,
    DEFAULT_PRIORITY,
    IN_FLIGHT,
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
from zizq.queue.timeslice import TimeSlicer
from zizq.store import CommitMode, Committer, Store, WriteBatch, index_key_of

logger = logging.getLogger("zizq.engine")

BULK_SLICE = 250  # jobs changed per write batch by a bulk patch or delete
QUERY_THREADS = 4  # scans at once; each may wait on a jq worker process


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
    jq_workers: int = jq_sandbox.DEFAULT_WORKERS  # processes that run jq
    jq_time_limit_ms: int = jq_sandbox.DEFAULT_TIME_LIMIT_MS  # per call to a jq worker
    jq_memory_limit: int = jq_sandbox.DEFAULT_MEMORY_LIMIT  # address space of each jq worker

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
            jq_time_limit_ms=config.jq_time_limit_ms,
            jq_memory_limit=config.jq_memory_limit,
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
        # jq never runs in this process: its workers start on first use.
        self.jq = JqSandbox(
            settings.jq_workers, settings.jq_time_limit_ms, settings.jq_memory_limit
        )
        # Scans (counts, listings, bulk patch/delete walks) run here, apart from admin work.
        self.query_pool = BoundedPool("zizq-query", workers=QUERY_THREADS, max_waiting=64)
        self._reset_gate: asyncio.Future | None = None  # set while POST /reset drains writes
        # In-flight jobs whose requeue the store refused (disk full): retried every second.
        self._orphans: dict[str, dict] = {}
        self._orphan_timer: asyncio.TimerHandle | None = None

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
        self.jq.close()  # a walk still waiting on a worker fails at once

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
        """Create jobs atomically; returns their public views in input order.

        A big bulk is built in slices, letting other requests in between them;
        it stays atomic because nothing of it is visible (in the store or in
        memory) until its one write batch lands.
        """
        now = now_ms()
        batch = self.store.batch()
        created = []
        slicer = TimeSlicer()
        for index, spec in enumerate(specs):
            job_id = new_id(now)
            record = self._new_record(spec, now)
            batch.put_job(job_id, record, None)
            batch.put_payload(job_id, spec.payload)
            created.append((job_id, record))
            if index & 31 == 31 and slicer.due():
                await slicer.pause()
        if not created:
            return []

        def landed() -> None:  # runs even if this request is cancelled meanwhile
            for job_id, record in created:
                self._index_waiting(job_id, record)
            self._after_index_change()

        await self._writes_open()
        await self.committer.commit(batch, self.settings.enqueue_commit_mode, landed=landed)
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
        if returned:
            self._requeue(returned)
        return len(returned)

    def _requeue(self, jobs: list[tuple[str, dict]]) -> None:
        """Put in-flight jobs that no stream holds any more back to ready.

        If the store refuses the write (disk full), the jobs are remembered and
        the requeue is retried every second, so none is stranded in flight.
        """
        requeued = []
        try:
            batch = self.store.batch()
            for job_id, record in jobs:
                fresh = dict(record)
                fresh["status"] = READY
                fresh.pop("dequeued_at", None)
                batch.put_job(job_id, fresh, index_key_of(record))
                requeued.append((job_id, fresh))
            self.store.write(batch)
        except Exception as exc:
            logger.error("cannot return %d jobs to ready (retrying): %s", len(jobs), exc)
            self._orphans.update(jobs)
            self._retry_orphans_later()
            return
        for job_id, record in requeued:
            self._orphans.pop(job_id, None)
            self.ready.push(record["queue"], record["priority"], job_id)
        self.dispatcher.request_pump()

    def _retry_orphans_later(self) -> None:
        if self._orphan_timer is None:
            self._orphan_timer = asyncio.get_running_loop().call_later(1.0, self._retry_orphans)

    def _retry_orphans(self) -> None:
        self._orphan_timer = None
        pending = []
        for job_id in list(self._orphans):
            current = self.store.get_job(job_id)
            if (
                current is None
                or current["status"] != IN_FLIGHT
                or job_id in self.dispatcher.in_flight
            ):
                self._orphans.pop(job_id, None)  # deleted or moved on meanwhile
            else:
                pending.append((job_id, current))
        if pending:
            self._requeue(pending)

    def _give_back(self, claimed: list[tuple[str, InFlightEntry]]) -> None:
        """A write for claimed jobs failed: they are in flight again, as before the claim."""
        lost = []
        for job_id, entry in claimed:
            if entry.consumer.closed:
                lost.append((job_id, entry.record))  # its stream went away meanwhile
            else:
                self.dispatcher.in_flight[job_id] = entry
        if lost:
            self._requeue(lost)

    async def _writes_open(self) -> None:
        """Wait while a reset is in progress: it needs every write before it to have landed."""
        while self._reset_gate is not None:
            await asyncio.shield(self._reset_gate)

    # -- acks and failures -----------------------------------------------------

    def _finish(
        self, batch: WriteBatch, job_id: str, record: dict, status: str, now: int
    ) -> dict | None:
        """Move a copy of a job to a terminal status; returns it if it is retained."""
        previous = index_key_of(record)
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
            batch.delete_job(job_id, previous)
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
        batch = self.store.batch()
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

        await self.committer.commit(
            batch, self.settings.default_commit_mode, landed, lambda: self._give_back(claimed)
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
            self.scheduler.arm()

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
        if failure.kill or attempts > retry_limit:
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

    # -- visibility and control ----------------------------------------------

    async def _reap_due(self) -> None:
        """Remove expired jobs now, so counters never count a job that is already invisible."""
        if self.reaper.anything_due():
            try:
                await self.reaper.reap()
            except Exception as exc:  # the store refuses writes: still answer the read
                logger.warning("could not remove expired jobs before a count: %s", exc)

    async def count(self, job_filter: JobFilter) -> int:
        await self._reap_due()
        query = JobQuery(self.store, job_filter, self.jq)
        if job_filter.only_counted_dimensions:
            return query.count()
        if job_filter.payload is not None:
            await job_filter.payload.acheck(self.jq)  # 400 for invalid jq before any scan
        return await self.query_pool.run(query.count)  # a scan: keep the loop serving meanwhile

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
        query = JobQuery(self.store, job_filter, self.jq)
        if job_filter.payload is not None:
            await job_filter.payload.acheck(self.jq)  # 400 for invalid jq before any scan
        # A filter may scan far (a jq filter that matches little): do it off the loop.
        page = await self.query_pool.run(
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

    async def _current(self, job_id: str) -> dict | None:
        """The record the next change of this job must start from.

        An in-flight job's live record is the dispatcher's copy. A job that is
        in flight on disk but held by no stream has an ack or failure on its
        way to disk: wait for it once, so we never act on the old state.
        """
        for _ in range(2):
            entry = self.dispatcher.in_flight.get(job_id)
            if entry is not None:
                return entry.record
            record = self.store.get_job(job_id)
            if record is None or record["status"] != IN_FLIGHT or not self.committer.outstanding:
                return record
            await self.committer.drain()
        return record

    def _patched(
        self, batch: WriteBatch, job_id: str, record: dict, patch: JobPatch, now: int
    ) -> dict:
        """Add the patched copy of a record to the batch; the original stays untouched."""
        changed = dict(record)
        apply_patch(changed, patch, now)
        batch.put_job(job_id, changed, index_key_of(record))
        return changed

    def _patches_landed(self, patched: list[tuple[str, dict]]) -> None:
        for job_id, record in patched:
            entry = self.dispatcher.in_flight.get(job_id)
            if entry is not None:
                entry.record = record  # the copy the ack or failure will write back
            else:
                self._index_waiting(job_id, record)
        self._after_index_change()

    def _deletes_landed(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            self.dispatcher.drop(job_id)  # frees its stream's slot; a later ack gets 404
            self._orphans.pop(job_id, None)

    async def patch_job(self, job_id: str, patch: JobPatch) -> dict:
        await self._writes_open()
        record = await self._current(job_id) if _plausible_id(job_id) else None
        if record is None or is_purged(record, now_ms()):
            raise NotFound("job not found")
        if record["status"] in TERMINAL:
            raise Conflict(f"job is {record['status']} and can no longer be changed")
        batch = self.store.batch()
        changed = self._patched(batch, job_id, record, patch, now_ms())
        self._write_visible(batch)  # raises before anything in memory changed
        self._patches_landed([(job_id, changed)])
        return public_view(job_id, changed)

    async def delete_job(self, job_id: str) -> None:
        await self._writes_open()
        record = await self._current(job_id) if _plausible_id(job_id) else None
        if record is None or is_purged(record, now_ms()):
            raise NotFound("job not found")
        batch = self.store.batch()
        batch.delete_job(job_id, index_key_of(record))
        self._write_visible(batch)
        self._deletes_landed([job_id])

    async def _matching_slices(self, job_filter: JobFilter):
        """Yield the current (id, record) of the jobs matching a filter, a slice at a time.

        The walk (index scans, jq in its sandbox) runs on a worker thread. Each
        slice is then re-read on the loop: a job may have changed while the
        walk ran, and only its current record may be written back. Between
        receiving a slice and the caller's write there is no await, so the
        slice is applied to exactly the state it was checked against.
        """
        seen: set[str] = set()  # each job once, even if it moved between index walks
        matches = JobQuery(self.store, job_filter, self.jq).matches()
        exhausted = False
        while not exhausted:
            await self._writes_open()
            found, exhausted = await self.query_pool.run(_next_slice, matches, seen)
            if self.committer.outstanding and any(
                record["status"] == IN_FLIGHT and job_id not in self.dispatcher.in_flight
                for job_id, record in found
            ):
                await self.committer.drain()  # acks of some of these are being written
            now = now_ms()
            current = []
            for job_id, _ in found:
                entry = self.dispatcher.in_flight.get(job_id)
                record = entry.record if entry is not None else self.store.get_job(job_id)
                if (
                    record is not None
                    and not is_purged(record, now)
                    and job_filter.matches_record(record)
                ):
                    current.append((job_id, record))  # the jq verdict holds: payloads never change
            yield current
            await let_requests_in()

    async def patch_jobs(self, job_filter: JobFilter, patch: JobPatch) -> int:
        if job_filter.statuses is not None and job_filter.statuses & TERMINAL:
            raise Conflict("status: completed and dead jobs cannot be patched")
        total = 0
        async for found in self._matching_slices(job_filter):
            now = now_ms()
            batch = self.store.batch()
            changed = [
                (job_id, self._patched(batch, job_id, record, patch, now))
                for job_id, record in found
                if record["status"] not in TERMINAL  # skipped silently unless asked for by status
            ]
            if changed:
                self._write_visible(batch)
                self._patches_landed(changed)
                total += len(changed)
        return total

    async def delete_jobs(self, job_filter: JobFilter) -> int:
        if _selects_everything(job_filter):
            return await self.reset()
        total = 0
        async for found in self._matching_slices(job_filter):
            if not found:
                continue
            batch = self.store.batch()
            for job_id, record in found:
                batch.delete_job(job_id, index_key_of(record))
            self._write_visible(batch)
            self._deletes_landed([job_id for job_id, _ in found])
            total += len(found)
        if self.maintenance is not None:
            self.maintenance.note_deleted(total)
        return total

    async def reset(self) -> int:
        """Delete every job (in flight too) in one atomic batch; returns how many there were.

        Every write handed to the commit thread before the reset lands first
        (new writes wait meanwhile), so none of them can outlive the reset or
        leave the counters counting jobs the store no longer holds.
        """
        await self._writes_open()
        gate = asyncio.get_running_loop().create_future()
        self._reset_gate = gate
        try:
            await self.committer.drain()
            total = sum(self.store.counts.values())
            batch = self.store.batch()
            batch.delete_everything()
            self._write_visible(batch)
            self.dispatcher.drop_all()
            self.ready.clear()
            self.scheduler.due.clear()
            self.reaper.due.clear()
            self._orphans.clear()
        finally:
            self._reset_gate = None
            gate.set_result(None)
        if self.maintenance is not None:
            self.maintenance.note_deleted(total)
        return total


def _next_slice(matches, seen: set[str]) -> tuple[list[tuple[str, dict]], bool]:
    """Up to BULK_SLICE new matches (examining at most 4x that); True when the walk is over.

    Runs on a worker thread; the generator is only ever advanced by one thread at a time.
    """
    found: list[tuple[str, dict]] = []
    for examined, (job_id, record) in enumerate(matches, 1):
        if job_id in seen:
            continue
        seen.add(job_id)
        found.append((job_id, record))
        if len(found) >= BULK_SLICE or examined >= 4 * BULK_SLICE:
            return found, False
    return found, True


def _selects_everything(job_filter: JobFilter) -> bool:
    """True only when no filter at all was given (every field, the jq filter included, unset).

    Checked field by field rather than by equality with JobFilter(): the jq
    filter does not take part in equality, and a filter holding only a jq
    expression must never be mistaken for "every job".
    """
    return all(getattr(job_filter, f.name) is None for f in dataclasses.fields(job_filter))


def _plausible_id(job_id: str) -> bool:
    return len(job_id) == 25 and job_id.isascii() and job_id.isalnum()
