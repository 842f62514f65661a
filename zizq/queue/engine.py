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
import time
from collections.abc import Callable
from dataclasses import dataclass

from zizq.config import BackoffPolicy, ServeConfig
from zizq.license import LicenseState
from zizq.queue import batching, jq_sandbox, startup_index
from zizq.queue.batching import BatchExpressions
from zizq.queue.budgets import DEFAULT_MAX_BUDGETS, BudgetBook
from zizq.queue.consumer import Consumer
from zizq.queue.control import JobControl
from zizq.queue.cron import Crons
from zizq.queue.cron_scheduler import CronScheduler
from zizq.queue.dispatch import Dispatcher, InFlightEntry
from zizq.queue.errors import NotFound
from zizq.queue.ids import new_id, plausible_id
from zizq.queue.indexes import ReadyIndex
from zizq.queue.job_budgets import JobBudgets
from zizq.queue.jq_sandbox import JqSandbox
from zizq.queue.keyed import KeyedJobs
from zizq.queue.keylocks import KeyLocks
from zizq.queue.maintenance import Maintenance
from zizq.queue.outcomes import COALESCE_MAX_JOBS, JobOutcomes, lifecycle_debug
from zizq.queue.pools import BoundedPool
from zizq.queue.reaper import Reaper
from zizq.queue.records import (
    DEFAULT_PRIORITY,
    IN_FLIGHT,
    READY,
    SCHEDULED,
    is_purged,
    now_ms,
    public_view,
)
from zizq.queue.recovery import recover
from zizq.queue.scheduler import Scheduler
from zizq.queue.spec import JobSpec
from zizq.queue.timeslice import TimeSlicer
from zizq.store import (
    DEFAULT_BATCH_SIZE,
    CommitMode,
    Committer,
    Lane,
    Store,
    WriteBatch,
    index_key_of,
)

WriteAlso = Callable[[WriteBatch], None]  # adds more writes to an enqueue's batch

logger = logging.getLogger("zizq.engine")

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
    max_budgets: int = DEFAULT_MAX_BUDGETS
    enqueue_batch_size: int = DEFAULT_BATCH_SIZE  # enqueue requests per coalesced write
    complete_batch_size: int = DEFAULT_BATCH_SIZE  # ack requests per coalesced write

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
            max_budgets=config.max_budgets,
            enqueue_batch_size=config.enqueue_batch_size,
            complete_batch_size=config.complete_batch_size,
        )


class Engine(JobControl, KeyedJobs, JobBudgets, JobOutcomes):
    def __init__(
        self, store: Store, settings: EngineSettings, license: LicenseState | None = None
    ) -> None:
        self.store = store
        # Pro features ask it at the moment they are used (an expired license is free tier).
        self.license = license if license is not None else LicenseState()
        self.settings = settings
        self.committer = Committer(
            store,
            {
                Lane.ENQUEUE: settings.enqueue_batch_size,
                Lane.COMPLETE: settings.complete_batch_size,
            },
        )
        store.sync_writes = settings.default_commit_mode is CommitMode.FSYNC
        self.ready = ReadyIndex()
        # Unique and batch keys: locks held by enqueues deciding about them.
        self.locks = KeyLocks()
        self.dispatcher = Dispatcher(store, self.ready, settings.global_in_flight_limit)
        self.dispatcher.on_dispatch_batched = self._seal_on_dispatch
        self.scheduler = Scheduler(store, self.ready, self.dispatcher)
        # Budgets (pro): policies and what draws on them; tokens and parking are the
        # dispatcher's gate.
        self.budgets = BudgetBook(store, self.dispatcher.gate, self.license, settings.max_budgets)
        self.reaper = Reaper(store, settings.reaper_check_interval_ms, self._forget_keys)
        self.maintenance: Maintenance | None = None  # set by the server: backups, compaction
        # jq never runs in this process: its workers start on first use.
        self.jq = JqSandbox(
            settings.jq_workers, settings.jq_time_limit_ms, settings.jq_memory_limit
        )
        # Scans (counts, listings, bulk patch/delete walks) run here, apart from admin work.
        self.batches = BatchExpressions(self.jq)
        # Cron groups (pro): definitions in memory and in the store, fired by their own timer.
        self.crons = Crons(store, self.license, self.batches)
        self.cron_scheduler = CronScheduler(self.crons, self.enqueue, self.license)
        self.crons.budgets = self.budgets  # templates create the budgets they draw on
        self.budgets.cron_draws = self.crons.budget_draws
        self.query_pool = BoundedPool("zizq-query", workers=QUERY_THREADS, max_waiting=64)
        self._reset_gate: asyncio.Future | None = None  # set while POST /reset drains writes
        # In-flight jobs whose requeue the store refused (disk full): retried every second.
        self._orphans: dict[str, dict] = {}
        self._orphan_timer: asyncio.TimerHandle | None = None
        # When start() ran (time.monotonic()): the uptime live viewers show.
        self.started_monotonic: float | None = None

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.started_monotonic = time.monotonic()
        self.dispatcher.bind(loop)
        self.budgets.load()
        # A clean shutdown saved the indexes; otherwise (or if the store changed since) scan.
        found = startup_index.load(self.store) or recover(self.store)
        self.budgets.add_cost_rows(found.costs)
        self.ready.adopt(found.ready)
        self.scheduler.due.load(found.scheduled)
        self.reaper.due.load(found.retained)
        self.scheduler.start(loop)
        self.reaper.start()
        self.crons.load()
        self.cron_scheduler.start(loop)

    async def stop(self) -> None:
        """Close every take stream and return their jobs to ready; stop timers."""
        for consumer in self.dispatcher.consumers():
            consumer.close()
            self.close_consumer(consumer)
        self.scheduler.stop()
        await self.cron_scheduler.stop()
        await self.reaper.stop()
        self.committer.close()
        self.jq.close()  # a walk still waiting on a worker fails at once

    def save_startup_index(self) -> bool:
        """At a clean shutdown (after stop, with nothing left to write): save the indexes
        for the next start (zizq.queue.startup_index). False when it cannot be exact."""
        if (
            self._orphans
            or self.dispatcher.in_flight
            or self.committer.outstanding
            or self.store.failure is not None
            or not self.store.writable
        ):
            return False
        ready = {queue: list(heap) for queue, heap in self.ready.heaps().items() if heap}
        waiting = list(self.dispatcher.gate.parked_entries())
        for job_id, skipped in self.dispatcher.held_jobs():
            record = self.store.get_job(job_id) if skipped else None
            if record is not None and record["status"] == READY:
                waiting.append((record["queue"], record["priority"], job_id))
        for queue, priority, job_id in waiting:
            ready.setdefault(queue, []).append((priority, job_id))
        return startup_index.save(
            self.store,
            ready,
            self.scheduler.due.entries(),
            self.reaper.due.entries(),
            self.budgets.cost_rows(),
        )

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
        if spec.unique_key is not None:
            record["unique_key"] = spec.unique_key
            record["unique_while"] = spec.unique_while
        if spec.batch is not None:
            record["batch"] = spec.batch
        if spec.budgets:
            record["budgets"] = [{"key": b.key, "cost": b.cost} for b in spec.budgets]
        return record

    async def enqueue(
        self, specs: list[JobSpec], bulk: bool = False, also: WriteAlso | None = None
    ) -> list[dict]:
        """Create jobs atomically; returns their public views in input order.

        A big bulk is built in slices, letting other requests in between them;
        it stays atomic because nothing of it is visible (in the store or in
        memory) until its one write batch lands. Jobs with unique or batch keys
        take the locked path (zizq.queue.keyed); `bulk` only words its errors.
        `also` adds other writes to the same batch (the cron scheduler advances
        an entry in the batch that enqueues its job); it is written even when
        every job turns out to be a duplicate.

        Jobs bound to budgets are checked first (zizq.queue.budgets: 403
        without a license, 422 for a budget that does not exist or a cost it
        can never pay); budgets created by `create_with` go in the same batch.
        """
        claim = self.budgets.claim(specs, bulk)
        if claim is None:
            return await self._enqueue(specs, bulk, also)
        if claim.created:
            also = _both(also, claim.write)
        try:
            views = await self._enqueue(specs, bulk, also)
            claim.succeeded()
            return views
        finally:
            claim.done()

    async def _enqueue(
        self, specs: list[JobSpec], bulk: bool, also: WriteAlso | None
    ) -> list[dict]:
        for spec in specs:
            if spec.keyed:
                return await self._enqueue_keyed(specs, bulk, also)
        now = now_ms()
        lane = Lane.ENQUEUE if len(specs) <= COALESCE_MAX_JOBS else None
        batch = self.store.batch(deferred=lane is not None)
        if also is not None:
            also(batch)
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
        if not created and also is None:
            return []

        def landed() -> None:  # runs even if this request is cancelled meanwhile
            for job_id, record in created:
                self._index_waiting(job_id, record)
            self.budgets.bound(record for _, record in created)
            self._after_index_change()
            if logger.isEnabledFor(logging.DEBUG):
                for job_id, record in created:
                    lifecycle_debug("job enqueued", job_id, record)

        await self._writes_open()
        await self.committer.commit(
            batch, self.settings.enqueue_commit_mode, landed=landed, lane=lane
        )
        return [public_view(job_id, record, duplicate=False) for job_id, record in created]

    def _forget_keys(self, batch: WriteBatch, job_id: str, record: dict) -> None:
        """A job is being deleted: its unique or batch key stops pointing at it."""
        if "unique_key" in record or "batch" in record:
            self.locks.forget(self.store, batch, job_id, record)

    def _seal_on_dispatch(self, batch: WriteBatch, job_id: str, record: dict) -> None:
        """Dispatch seals a batch: its open job takes no more folds, even if retried later.

        Whatever holds the key's lock writes synchronously after this, so the
        key is cleared even while locked (a fold target is held back from
        dispatch, so it cannot be this job).
        """
        key = batching.index_key(record["batch"]["key"])
        if self.store.get_keyed(key) == job_id:
            batch.delete_keyed(key)

    def _index_waiting(self, job_id: str, record: dict) -> None:
        if record["status"] == READY:
            if "budgets" in record and not self.dispatcher.gate.place(job_id, record, now_ms()):
                return  # parked on a budget that cannot pay now (zizq.queue.budget_gate)
            self.ready.push(record["queue"], record["priority"], job_id)
        elif record["status"] == SCHEDULED:
            self.scheduler.add(record["ready_at"], job_id)

    def _after_index_change(self) -> None:
        self.dispatcher.request_pump()
        self.scheduler.arm()

    # -- reads -----------------------------------------------------------------

    def get_job(self, job_id: str) -> tuple[dict, bytes | None]:
        record = self.store.get_job(job_id) if plausible_id(job_id) else None
        if record is None or is_purged(record, now_ms()):
            raise NotFound("job not found")
        return record, self.store.get_payload(job_id)

    def payloads_of(self, job_ids: list[str]) -> list[bytes | None]:
        """Stored payloads (msgpack) of these jobs, in order; None for a job that is gone."""
        return self.store.get_payloads(job_ids) if job_ids else []

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


def _both(first: WriteAlso | None, second: WriteAlso) -> WriteAlso:
    """Two sets of extra writes for one enqueue's batch."""
    if first is None:
        return second

    def both(batch: WriteBatch) -> None:
        first(batch)
        second(batch)

    return both
