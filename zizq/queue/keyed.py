"""Enqueues with unique keys or batch keys (pro): decided under key locks.

A mixin of the Engine. Plain enqueues never come here (Engine.enqueue).

One call, single or bulk, goes like this:
1. the license allows the features asked for (403 otherwise), and every
   batched job's expressions dry-run on its own payload (422 otherwise);
2. all the call's keys are locked (zizq.queue.keylocks), so no other enqueue
   can decide about them until this call's write has landed or failed;
3. each job is decided in input order against the store and against the jobs
   decided before it in the same call: a duplicate of the key's holder, a fold
   into the batch's open job, or a new job (which takes the key);
4. everything is written in one batch, so the call is all-or-nothing, and the
   in-memory indexes change only once it has landed.

Folding reads the open job's payload and writes the merged one back. While
the expressions run, the dispatcher must not send that job with its old
payload: it is put on the dispatcher's hold list and skipped until the write
lands. A patch or delete may still change it meanwhile; the targets are
checked again, without an await, right before the write, and the decision is
redone if one changed. Calls with batch keys are written synchronously on the
loop (as patches are): between that last check and the write nothing else
runs. Calls with unique keys alone go through the commit thread like any
enqueue; their locks are held until the write has landed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from zizq.license import Feature, LicenseState
from zizq.queue import batching, unique
from zizq.queue.batching import BatchExpressions
from zizq.queue.budgets import BudgetBook
from zizq.queue.dispatch import Dispatcher
from zizq.queue.errors import Conflict
from zizq.queue.ids import new_id
from zizq.queue.indexes import ReadyIndex
from zizq.queue.keylocks import KeyLocks
from zizq.queue.records import READY, is_purged, now_ms, public_view
from zizq.queue.spec import JobSpec
from zizq.queue.timeslice import TimeSlicer
from zizq.store import CommitMode, Committer, Store, WriteBatch

logger = logging.getLogger("zizq.engine")

MAX_DECISIONS = 8  # a fold target patched or deleted mid-decision: decide again, this often


@dataclass(slots=True)
class _Open:
    """A batch's open job as this call sees it."""

    job_id: str
    record: dict
    value: Any  # its payload, as folded so far by this call
    packed: bytes
    stored: bool  # it existed before this call (else this call creates it)


@dataclass
class _Plan:
    """Everything one call decided, to be written as one batch."""

    results: list[dict] = field(default_factory=list)  # public views in input order
    created: dict[str, dict] = field(default_factory=dict)  # job id -> record
    payloads: dict[str, bytes] = field(default_factory=dict)  # new jobs and folded targets
    keyed: dict[bytes, str] = field(default_factory=dict)  # index key -> job id it takes
    targets: dict[str, dict] = field(default_factory=dict)  # stored open jobs read: id -> record


class KeyedJobs:
    # What the Engine provides (declared, not imported: the engine imports this module).
    store: Store
    settings: Any
    dispatcher: Dispatcher
    committer: Committer
    ready: ReadyIndex
    license: LicenseState
    locks: KeyLocks
    batches: BatchExpressions
    budgets: BudgetBook
    _new_record: Callable[[JobSpec, int], dict]
    _index_waiting: Callable[[str, dict], None]
    _after_index_change: Callable[[], None]
    _writes_open: Callable[[], Awaitable[None]]

    async def _enqueue_keyed(
        self, specs: list[JobSpec], bulk: bool, also: Callable[[WriteBatch], None] | None = None
    ) -> list[dict]:
        if any(spec.unique_key is not None for spec in specs):
            self.license.require(Feature.UNIQUE_JOBS)
        batched = [(i, spec) for i, spec in enumerate(specs) if spec.batch is not None]
        if batched:
            self.license.require(Feature.BATCHED_JOBS)
            if len(specs) > 1:
                # A bulk dry-runs all its jobs up front, grouped by config (few jq calls);
                # a single enqueue does it in the same jq call as its fold (_decide_batched).
                await self.batches.dry_run(
                    [(_where(i, bulk), spec.batch, spec.value) for i, spec in batched]
                )
        if not batched:
            return await self._enqueue_unique(specs, also)
        keys = {_lock_key(spec) for spec in specs if spec.keyed}
        hold = await self.locks.acquire(keys)
        submitted = False
        try:
            for _ in range(MAX_DECISIONS):
                await self._writes_open()
                plan = _Plan()
                try:
                    await self._decide(specs, plan, bulk)
                    if batched and self.committer.outstanding:
                        # Earlier writes on the commit thread land first: our synchronous
                        # write must not overtake them (one may clear a key we now set).
                        await self.committer.drain()
                    if self._targets_unchanged(plan):
                        break
                except BaseException:
                    self._unhold(plan)
                    raise
                self._unhold(plan)
            else:
                raise Conflict("batch: the open batch job kept changing meanwhile; retry")
            batch = self._write_batch(plan)
            if also is not None:
                also(batch)

            def landed() -> None:
                for job_id, record in plan.created.items():
                    self._index_waiting(job_id, record)
                self.budgets.bound(plan.created.values())
                self._unhold(plan)
                self._after_index_change()
                self._drop_ghost_keys(hold.keys - plan.keyed.keys())
                self.locks.release(hold)

            def failed() -> None:
                self._unhold(plan)
                self._drop_ghost_keys(hold.keys)
                self.locks.release(hold)

            submitted = True
            if batched:
                # Synchronously: see the module docstring. Synced as the enqueue mode says.
                sync = self.store.sync_writes or (
                    self.settings.enqueue_commit_mode is CommitMode.FSYNC
                )
                try:
                    self.store.write(batch, sync=sync)
                except BaseException:
                    failed()
                    raise
                landed()
            else:
                await self.committer.commit(
                    batch, self.settings.enqueue_commit_mode, landed=landed, failed=failed
                )
        finally:
            if not submitted:
                self._drop_ghost_keys(hold.keys)
                self.locks.release(hold)
        return plan.results

    async def _enqueue_unique(
        self, specs: list[JobSpec], also: Callable[[WriteBatch], None] | None = None
    ) -> list[dict]:
        """Unique keys only (no folds, so nothing to hold back or re-check): one pass that
        decides and builds the write batch, through the commit thread like any enqueue."""
        keys = [None if s.unique_key is None else unique.index_key(s.unique_key) for s in specs]
        hold = await self.locks.acquire(key for key in keys if key is not None)
        submitted = False
        try:
            now = now_ms()
            batch = self.store.batch()
            if also is not None:
                also(batch)
            results: list[dict] = []
            created: list[tuple[str, dict]] = []
            taken: dict[bytes, tuple[str, dict]] = {}  # keys taken by this call
            slicer = TimeSlicer()
            for index, spec in enumerate(specs):
                if index & 31 == 31 and slicer.due():
                    await slicer.pause()  # a 10k bulk: other requests (not on our keys) run
                key = keys[index]
                if key is not None:
                    holder = taken.get(key) or self._unique_holder(key, now)
                    if holder is not None:
                        results.append(public_view(*holder, duplicate=True, folded=False))
                        continue
                job_id = new_id(now)
                record = self._new_record(spec, now)
                batch.put_job(job_id, record, None)
                batch.put_payload(job_id, spec.payload)
                if key is not None:
                    batch.put_keyed(key, job_id)
                    taken[key] = (job_id, record)
                created.append((job_id, record))
                results.append(public_view(job_id, record, duplicate=False, folded=False))
            await self._writes_open()

            def landed() -> None:
                for job_id, record in created:
                    self._index_waiting(job_id, record)
                self.budgets.bound(record for _, record in created)
                self._after_index_change()
                self._drop_ghost_keys(hold.keys - taken.keys())
                self.locks.release(hold)

            def failed() -> None:
                self._drop_ghost_keys(hold.keys)
                self.locks.release(hold)

            if not created and also is None:  # every job a duplicate: nothing to write
                submitted = True
                landed()
                return results
            submitted = True
            await self.committer.commit(
                batch, self.settings.enqueue_commit_mode, landed=landed, failed=failed
            )
        finally:
            if not submitted:
                self._drop_ghost_keys(hold.keys)
                self.locks.release(hold)
        return results

    # -- deciding ------------------------------------------------------------------

    async def _decide(self, specs: list[JobSpec], plan: _Plan, bulk: bool) -> None:
        now = now_ms()
        taken: dict[bytes, tuple[str, dict]] = {}  # unique keys taken by this call
        open_jobs: dict[bytes, _Open] = {}  # batch keys' open jobs, as this call sees them
        slicer = TimeSlicer()
        for index, spec in enumerate(specs):
            if index & 31 == 31 and slicer.due():
                # Other requests run meanwhile (a 10k bulk); they cannot touch our keys.
                await slicer.pause()
            if spec.unique_key is not None:
                key = unique.index_key(spec.unique_key)
                holder = taken.get(key) or self._unique_holder(key, now)
                if holder is not None:
                    plan.results.append(public_view(*holder, duplicate=True, folded=False))
                    continue
                job_id, record = self._create(spec, now, plan, spec.payload)
                plan.keyed[key] = job_id
                taken[key] = (job_id, record)
            elif spec.batch is not None:
                await self._decide_batched(
                    spec, _where(index, bulk), now, plan, open_jobs, dry_run=len(specs) == 1
                )
            else:
                self._create(spec, now, plan, spec.payload)

    async def _decide_batched(
        self,
        spec: JobSpec,
        where: str,
        now: int,
        plan: _Plan,
        open_jobs: dict[bytes, _Open],
        dry_run: bool,
    ) -> None:
        """`dry_run`: this job's own expressions still have to be dry-run (422s)."""
        new = (spec.value, spec.value)
        if spec.ready_at is not None and spec.ready_at > now:
            if dry_run:
                (outcome,) = await self.batches.evaluate(spec.batch, [new], where)
                self.batches.check_dry_run(outcome, where)
            # Scheduled: kept with its config for observability, never folded in either
            # direction (a fold would silently drop one side's ready_at).
            self._create(spec, now, plan, spec.payload)
            return
        key = batching.index_key(spec.batch["key"])
        target = open_jobs.get(key)
        if target is None:
            target = self._stored_open_job(key, now, plan)
            if target is not None:
                # Later copies in this call fold into what this call made of it, not
                # into the stored payload again (that would drop this fold).
                open_jobs[key] = target
        config = target.record["batch"] if target is not None else spec.batch
        same = config["when"] == spec.batch["when"] and config["fold"] == spec.batch["fold"]
        if dry_run and not (target is not None and same):
            (outcome,) = await self.batches.evaluate(spec.batch, [new], where)
            self.batches.check_dry_run(outcome, where)
            dry_run = False
        if target is not None:
            pair = (target.value, spec.value)
            if dry_run:  # the same config: dry run and fold in one jq call
                checked, outcome = await self.batches.evaluate(config, [new, pair], where)
                self.batches.check_dry_run(checked, where)
            else:
                (outcome,) = await self.batches.evaluate(config, [pair], where)
            folded = self.batches.folded_payload(outcome, where) if outcome.folds else None
            if folded is not None:
                target.value, target.packed = folded
                plan.payloads[target.job_id] = target.packed
                plan.results.append(
                    public_view(target.job_id, target.record, duplicate=False, folded=True)
                )
                return
        # No open job, `when` said no, or the fold would be too large: seal, start anew.
        job_id, record = self._create(spec, now, plan, spec.payload)
        plan.keyed[key] = job_id
        open_jobs[key] = _Open(job_id, record, spec.value, spec.payload, stored=False)

    def _create(self, spec: JobSpec, now: int, plan: _Plan, payload: bytes) -> tuple[str, dict]:
        job_id = new_id(now)
        record = self._new_record(spec, now)
        plan.created[job_id] = record
        plan.payloads[job_id] = payload
        plan.results.append(public_view(job_id, record, duplicate=False, folded=False))
        return job_id, record

    def _live_record(self, job_id: str) -> dict | None:
        entry = self.dispatcher.in_flight.get(job_id)
        return entry.record if entry is not None else self.store.get_job(job_id)

    def _unique_holder(self, key: bytes, now: int) -> tuple[str, dict] | None:
        job_id = self.store.get_keyed(key)
        if job_id is None:
            return None
        record = self._live_record(job_id)
        return (job_id, record) if unique.holds_key(record, now) else None

    def _stored_open_job(self, key: bytes, now: int, plan: _Plan) -> _Open | None:
        """The batch key's open job in the store, held back from dispatch; None if sealed."""
        job_id = self.store.get_keyed(key)
        if job_id is None or job_id in self.dispatcher.in_flight:
            return None
        record = self.store.get_job(job_id)
        if not _foldable(record, now):
            return None
        packed = self.store.get_payload(job_id)
        if packed is None:
            return None
        self.dispatcher.hold(job_id)
        plan.targets[job_id] = record
        return _Open(job_id, record, msgpack.unpackb(packed), packed, stored=True)

    def _targets_unchanged(self, plan: _Plan) -> bool:
        now = now_ms()
        for job_id, seen in plan.targets.items():
            record = self.store.get_job(job_id)
            if job_id in self.dispatcher.in_flight or not _foldable(record, now):
                return False
            if record != seen:  # patched meanwhile: the views we return would be stale
                return False
        return True

    def _unhold(self, plan: _Plan) -> None:
        for job_id in plan.targets:
            self.dispatcher.release_hold(job_id)

    def _drop_ghost_keys(self, keys: set[bytes]) -> None:
        """Keys this call held but did not point at a new job: drop any naming a deleted job.

        A delete leaves a locked key alone (KeyLocks.forget: the holder was about to
        point it elsewhere); when the holder then did not (a duplicate, a fold, a
        scheduled job, or a failed call), the entry would outlive its job. Rare, and
        cheap to look for: two point reads per key. A delete still on the commit
        thread (an ack or a kill without retention) is looked at again once it landed.
        """
        ghosts = []
        pending: dict[bytes, str] = {}
        for key in keys:
            job_id = self.store.get_keyed(key)
            if job_id is None:
                continue
            if self._live_record(job_id) is None:
                ghosts.append(key)
            elif job_id in self.locks.deleting(key):
                pending[key] = job_id
        if pending:
            self.locks.later(self._drop_ghosts_once_written(pending))
        if not ghosts:
            return
        batch = self.store.batch()
        for key in ghosts:
            batch.delete_keyed(key)
        try:
            self.store.write(batch)
        except Exception:  # the disk refuses writes: the start-up check drops them later
            logger.warning("could not drop %d key index entries of deleted jobs", len(ghosts))

    async def _drop_ghosts_once_written(self, pending: dict[bytes, str]) -> None:
        """After the deletes in flight have landed: drop the entries still naming them.

        A key locked again meanwhile is left to that enqueue, which looks at it
        when it lets go (the job is gone by then). A delete that failed leaves
        its job, and so its entry, in place.
        """
        try:
            await self.committer.drain()
            self._drop_ghost_keys(
                {
                    key
                    for key, job_id in pending.items()
                    if not self.locks.held(key) and self.store.get_keyed(key) == job_id
                }
            )
        except Exception as exc:  # the store closed meanwhile: the start-up check cleans up
            logger.debug("key index clean-up skipped: %s", exc)

    # -- writing -------------------------------------------------------------------

    def _write_batch(self, plan: _Plan):
        batch = self.store.batch()
        for job_id, record in plan.created.items():
            batch.put_job(job_id, record, None)
        for job_id, packed in plan.payloads.items():
            batch.put_payload(job_id, packed)
        for key, job_id in plan.keyed.items():
            batch.put_keyed(key, job_id)
        return batch


def _foldable(record: dict | None, now: int) -> bool:
    return (
        record is not None
        and record["status"] == READY
        and "batch" in record
        and not is_purged(record, now)
    )


def _lock_key(spec: JobSpec) -> bytes:
    if spec.unique_key is not None:
        return unique.index_key(spec.unique_key)
    return batching.index_key(spec.batch["key"])


def _where(index: int, bulk: bool) -> str:
    return f"jobs[{index}]." if bulk else ""
