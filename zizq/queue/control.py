"""Visibility and control: counting, listing, patching and deleting jobs by id or filter.

A mixin of the Engine (which provides the store, the dispatcher, the commit
queue and the in-memory indexes): these calls read far and write in slices,
so they follow two rules of their own.
- Walks (index scans, jq in its sandbox) run on the query pool's threads;
  what they found is re-read on the loop before anything is written, and
  there is no await between that re-read and the write.
- A change never starts from a stale record: a job whose ack or failure is
  still being written is waited for (`_current`), and `reset` lets every
  write already handed to the commit thread land first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from zizq.logs import log_event
from zizq.queue.budgets import BudgetBook
from zizq.queue.dispatch import Dispatcher
from zizq.queue.errors import Conflict, NotFound
from zizq.queue.ids import plausible_id
from zizq.queue.indexes import ReadyIndex
from zizq.queue.jq_sandbox import JqSandbox
from zizq.queue.maintenance import Maintenance
from zizq.queue.pacing import let_requests_in
from zizq.queue.patch import JobPatch, apply_patch
from zizq.queue.pools import BoundedPool
from zizq.queue.query import JobFilter, JobQuery, Page, take_page
from zizq.queue.reaper import Reaper
from zizq.queue.records import IN_FLIGHT, TERMINAL, is_purged, now_ms, public_view
from zizq.queue.scheduler import Scheduler
from zizq.store import Committer, Store, WriteBatch, index_key_of

logger = logging.getLogger("zizq.engine")

BULK_SLICE = 250  # jobs changed per write batch by a bulk patch or delete
PAGE_PAYLOAD_BYTES = 16 * 1024 * 1024  # payload bytes one listing page may carry
PAYLOAD_READ_CHUNK = 16  # payloads read per multi-get while building a page


class JobControl:
    """Engine calls behind GET/PATCH/DELETE /jobs, /jobs/count, /queues, errors and reset."""

    # What the Engine this is mixed into provides (declared here, not imported:
    # the engine imports this module).
    store: Store
    settings: object
    dispatcher: Dispatcher
    committer: Committer
    jq: JqSandbox
    query_pool: BoundedPool
    reaper: Reaper
    scheduler: Scheduler
    ready: ReadyIndex
    maintenance: Maintenance | None
    _reset_gate: asyncio.Future | None
    _orphans: dict[str, dict]
    get_job: Callable[[str], tuple[dict, bytes | None]]
    _writes_open: Callable[[], Awaitable[None]]
    _index_waiting: Callable[[str, dict], None]
    _after_index_change: Callable[[], None]
    _forget_keys: Callable[[WriteBatch, str, dict], None]
    budgets: BudgetBook

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
        return await self.query_pool.run(_attach_payloads, self.store, page, before is not None)

    def list_errors(
        self,
        job_id: str,
        limit: int,
        order_desc: bool,
        after: int | None,
        before: int | None,
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
        self.store.write(batch)  # synced in the fsync commit mode (Store.sync_writes)

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

    def _deletes_landed(self, deleted: list[tuple[str, dict]]) -> None:
        for job_id, _ in deleted:
            self.dispatcher.drop(job_id)  # frees its stream's slot (and budget tokens)
            self.dispatcher.gate.forget_job(job_id)  # if it was parked, it is no more
            self._orphans.pop(job_id, None)
        self.budgets.unbound(record for _, record in deleted if record["status"] not in TERMINAL)
        if self.dispatcher.feed.active:  # a deleted ready or scheduled job leaves viewers' lists
            self.dispatcher.feed.changed()

    async def patch_job(self, job_id: str, patch: JobPatch) -> dict:
        await self._writes_open()
        record = await self._current(job_id) if plausible_id(job_id) else None
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
        record = await self._current(job_id) if plausible_id(job_id) else None
        if record is None or is_purged(record, now_ms()):
            raise NotFound("job not found")
        batch = self.store.batch()
        self._forget_keys(batch, job_id, record)
        batch.delete_job(job_id, record)
        self._write_visible(batch)
        self._deletes_landed([(job_id, record)])

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
                    # The jq verdict holds: a payload changes only by a batch fold, which
                    # only merges more in (and an open batch job is rarely bulk-changed).
                    current.append((job_id, record))
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
        if self.maintenance is not None:
            self.maintenance.note_patched(total)  # rewritten records leave garbage too
        log_event(logger, logging.INFO, "jobs patched by filter", patched=total)
        return total

    async def delete_jobs(self, job_filter: JobFilter) -> int:
        if _selects_everything(job_filter):
            return await self.delete_every_job()
        total = 0
        async for found in self._matching_slices(job_filter):
            if not found:
                continue
            batch = self.store.batch()
            for job_id, record in found:
                self._forget_keys(batch, job_id, record)
                batch.delete_job(job_id, record)
            self._write_visible(batch)
            self._deletes_landed(found)
            total += len(found)
        if self.maintenance is not None:
            self.maintenance.note_deleted(total)
        log_event(logger, logging.INFO, "jobs deleted by filter", deleted=total)
        return total

    async def reset(self) -> int:
        """POST /reset: every job (in flight too) and every budget; returns how many jobs
        there were."""
        return await self._delete_everything(budgets_too=True)

    async def delete_every_job(self) -> int:
        """DELETE /jobs without a filter: every job (in flight too); budgets stay, with
        nothing drawing on them. Returns how many jobs there were."""
        return await self._delete_everything(budgets_too=False)

    async def _delete_everything(self, budgets_too: bool) -> int:
        """One atomic batch deleting every job, and every budget if `budgets_too`.

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
            if budgets_too:
                self.budgets.reset(batch)
            self._write_visible(batch)
            self.dispatcher.drop_all()
            if budgets_too:
                self.budgets.cleared()
            else:
                self.budgets.jobs_cleared()
            self.ready.clear()
            self.scheduler.due.clear()
            self.reaper.due.clear()
            self._orphans.clear()
            if self.dispatcher.feed.active:
                self.dispatcher.feed.changed()
        finally:
            self._reset_gate = None
            gate.set_result(None)
        if self.maintenance is not None:
            self.maintenance.note_deleted(total)
        log_event(logger, logging.INFO, "reset: every job deleted", deleted=total)
        return total


def _attach_payloads(store: Store, page: Page, backward: bool) -> Page:
    """Read each listed job's payload, ending the page early past PAGE_PAYLOAD_BYTES.

    A page of 2,000 jobs with 2 MiB payloads would otherwise hold 4 GB in one
    response. The page keeps the jobs nearest its cursor (its end when paging
    back with `before`) and its cursor links lead to the jobs left out, so
    paging still visits every job exactly once.
    """
    listed = page.items[::-1] if backward else page.items
    kept: list[tuple] = []
    total = 0
    shortened = False
    for start in range(0, len(listed), PAYLOAD_READ_CHUNK):
        chunk = listed[start : start + PAYLOAD_READ_CHUNK]
        payloads = store.get_payloads([job_id for job_id, _ in chunk])
        for (job_id, record), payload in zip(chunk, payloads, strict=True):
            size = len(payload or b"")
            if kept and total + size > PAGE_PAYLOAD_BYTES:
                shortened = True
                break
            total += size
            kept.append((job_id, record, payload))
        if shortened:
            break
    if backward:
        kept.reverse()
        if shortened:
            page.prev_before = kept[0][0]
    elif shortened:
        page.next_after = kept[-1][0]
    page.items = kept
    return page


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
