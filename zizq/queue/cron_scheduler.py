"""Fires cron entries when they are due: one timer for the earliest, no polling.

A firing enqueues the entry's job in the same write batch that advances the
entry's `next_enqueue_at` (and `last_enqueue_at`), so a crash can neither skip
nor double it: before the batch lands the entry is still due and fires after
the restart, after it the job exists and the entry has moved on.

The next fire time is always computed from the moment of firing, so after
downtime (or a paused license) an entry fires once for the whole missed
period, never a burst. A paused entry, or an entry of a paused group, still
advances at each fire time but enqueues nothing.

Plain templates due at the same moment are enqueued together in one bulk;
templates with unique or batch keys fire one by one (a fold failing at fire
time skips that firing, logged, and the entry moves on). If the store refuses
the write (disk full) nothing advances and the firing is retried a second later.
Without a license that allows cron, nothing fires (logged once); a license
rotated in resumes firing at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from zizq.license import Feature, LicenseRequired, LicenseState
from zizq.logs import log_event
from zizq.queue.cron import CronEntry, Crons, effective_zone_name, zone_for
from zizq.queue.errors import EngineError
from zizq.queue.spec import MAX_BULK_JOBS, JobSpec
from zizq.store import WriteBatch

logger = logging.getLogger("zizq.cron")

Enqueue = Callable[..., Awaitable[list[dict]]]  # Engine.enqueue(specs, bulk, also)
RETRY_S = 1.0  # after the store refused a firing
# The timer is monotonic, cron is wall-clock: wake at least this often to notice a clock
# step (the wake is a heap peek when nothing is due).
MAX_SLEEP_S = 60.0


def fresh_spec(spec: JobSpec) -> JobSpec:
    """A copy of a template's spec for one job: its dicts must not be shared by jobs."""
    return replace(
        spec,
        backoff=None if spec.backoff is None else dict(spec.backoff),
        retention=None if spec.retention is None else dict(spec.retention),
        batch=None if spec.batch is None else dict(spec.batch),
    )


class CronScheduler:
    def __init__(self, crons: Crons, enqueue: Enqueue, license: LicenseState) -> None:
        self._crons = crons
        self._enqueue = enqueue
        self._license = license
        self._heap: list[tuple[int, int, CronEntry]] = []  # (next_enqueue_at, seq, entry)
        self._seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: int | None = None
        self._task: asyncio.Task | None = None
        self._stopped = False
        self._licensed = True  # as last seen; a change is logged
        self.fired = 0  # jobs enqueued by firings since start (for tests and benchmarks)
        crons.scheduler = self
        license.on_change(self.arm)

    # -- lifecycle -------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for group in self._crons.groups.values():
            for entry in group.entries.values():
                self._push(entry)
        self.arm()

    async def stop(self) -> None:
        self._stopped = True
        self._cancel_timer()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    # -- the timer -------------------------------------------------------------

    def _push(self, entry: CronEntry) -> None:
        if entry.next_enqueue_at is not None:
            heapq.heappush(self._heap, (entry.next_enqueue_at, next(self._seq), entry))

    def add(self, entry: CronEntry) -> None:
        """A changed or new entry (already installed in the book)."""
        self._push(entry)
        if len(self._heap) > 2 * self._crons.entry_count + 1024:
            self._compact()
        self.arm()

    def _live(self, entry: CronEntry, at: int) -> bool:
        """Whether a heap item is still the entry's current fire time (else it is stale)."""
        return self._crons.lookup(entry.group, entry.name) is entry and entry.next_enqueue_at == at

    def _compact(self) -> None:
        """Drop stale heap items (entries replaced by PUTs that did not fire)."""
        self._heap = [item for item in self._heap if self._live(item[2], item[0])]
        heapq.heapify(self._heap)

    def _next_due(self) -> int | None:
        while self._heap:
            at, _, entry = self._heap[0]
            if self._live(entry, at):
                return at
            heapq.heappop(self._heap)
        return None

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_due = None

    def _allowed(self) -> bool:
        licensed = self._license.allows(Feature.CRON_SCHEDULING)
        if licensed != self._licensed:
            self._licensed = licensed
            if licensed:
                log_event(logger, logging.INFO, "cron firing resumed: the license allows it")
            elif self._crons.entry_count:
                log_event(
                    logger,
                    logging.WARNING,
                    "cron firing stopped: the license in force does not allow cron scheduling",
                    entries=self._crons.entry_count,
                )
        return licensed

    def arm(self) -> None:
        """(Re)set the timer for the earliest due entry; nothing at all if none or unlicensed."""
        if self._loop is None or self._stopped:
            return
        if self._task is not None and not self._task.done():
            return  # the firing task re-arms when it finishes
        if not self._allowed():
            self._cancel_timer()
            return
        due = self._next_due()
        if due is None:
            self._cancel_timer()
            return
        if self._timer is not None and self._timer_due == due:
            return
        self._cancel_timer()
        delay = min(MAX_SLEEP_S, max(0.0, (due - self._crons.clock()) / 1000))
        self._timer = self._loop.call_later(delay, self._wake)
        self._timer_due = due

    def _retry_later(self) -> None:
        self._cancel_timer()
        if self._loop is not None and not self._stopped:
            self._timer = self._loop.call_later(RETRY_S, self._wake)
            self._timer_due = -1

    def _wake(self) -> None:
        self._timer = None
        self._timer_due = None
        if self._stopped or (self._task is not None and not self._task.done()):
            return
        self._task = self._loop.create_task(self._run())

    async def _run(self) -> None:
        retry = False
        try:
            retry = await self.fire_due()
        except Exception:  # never let the timer die: log, retry shortly
            logger.exception("cron firing failed; retrying")
            retry = True
        finally:
            self._task = None
        if retry:
            self._retry_later()
        else:
            self.arm()

    # -- firing ------------------------------------------------------------------

    def _pop_due(self, now: int) -> list[CronEntry]:
        due: list[CronEntry] = []
        while self._heap and self._heap[0][0] <= now and len(due) < MAX_BULK_JOBS:
            at, _, entry = heapq.heappop(self._heap)
            if self._live(entry, at):
                due.append(entry)
        return due

    async def fire_due(self) -> bool:
        """Fire every entry due now; True if the store refused and a retry is needed."""
        if not self._allowed():
            return False
        async with self._crons.lock:
            while True:
                now = self._crons.clock()
                due = self._pop_due(now)
                if not due:
                    return False
                if not await self._fire(due, now):
                    for entry in due:  # not advanced: due again on the retry
                        self._push(entry)
                    return True
                if len(due) < MAX_BULK_JOBS:
                    return False

    def _advance(self, due: list[CronEntry], now: int) -> list[tuple[CronEntry, bool]]:
        """Each entry moved to its next fire time after `now`, and whether it enqueues."""
        memo: dict[tuple[str, str | None], int | None] = {}
        moved = []
        for entry in due:
            group = self._crons.groups[entry.group]
            zone = effective_zone_name(entry.timezone, group.timezone)
            key = (entry.schedule.text, zone)
            if key not in memo:  # 10,000 entries on one expression: computed once
                memo[key] = entry.schedule.next_after(now, zone_for(zone))
            enqueues = not (group.paused or entry.paused) and entry.spec is not None
            moved.append(
                (
                    replace(
                        entry,
                        next_enqueue_at=memo[key],
                        last_enqueue_at=now if enqueues else entry.last_enqueue_at,
                    ),
                    enqueues,
                )
            )
        return moved

    async def _fire(self, due: list[CronEntry], now: int) -> bool:
        """Enqueue and advance; False if the store refused (nothing advanced then)."""
        moved = self._advance(due, now)
        together = [(e, fires) for e, fires in moved if not (fires and e.spec.keyed)]
        alone = [e for e, fires in moved if fires and e.spec.keyed]
        if together:
            entries = [e for e, _ in together]
            specs = [fresh_spec(e.spec) for e, fires in together if fires]

            def also(batch: WriteBatch) -> None:
                for entry in entries:
                    batch.put_cron(entry.key, entry.record())

            try:
                await self._enqueue(specs, bulk=True, also=also)
            except EngineError as exc:  # cannot happen for plain templates; never loop on it
                logger.error("cron firing of %d entries refused: %s", len(entries), exc)
            except Exception as exc:
                logger.error("cron firing of %d entries failed (retrying): %s", len(entries), exc)
                return False
            self._crons.advanced(entries)
            self.fired += len(specs)
            for entry in entries:
                self._push(entry)
        for entry in alone:
            if not await self._fire_keyed(entry):
                return False  # the caller puts the entries not advanced back on the heap
            self._push(self._crons.lookup(entry.group, entry.name) or entry)
        return True

    async def _fire_keyed(self, entry: CronEntry) -> bool:
        """One template with a unique or batch key; False if it must wait (nothing written)."""

        def also(batch: WriteBatch) -> None:
            batch.put_cron(entry.key, entry.record())

        try:
            await self._enqueue([fresh_spec(entry.spec)], also=also)
        except LicenseRequired:
            self._allowed()
            return False
        except EngineError as exc:
            # e.g. the batch fold fails on the open job's payload: skip this firing, move on.
            log_event(
                logger,
                logging.WARNING,
                "cron firing skipped",
                group=entry.group,
                entry=entry.name,
                error=str(exc),
            )
            return self._skip(entry)
        except Exception as exc:
            logger.error("cron firing of %r failed (retrying): %s", entry.name, exc)
            return False
        self.fired += 1
        self._crons.advanced([entry])
        return True

    def _skip(self, entry: CronEntry) -> bool:
        """Advance an entry whose job could not be enqueued (its last enqueue stays)."""
        before = self._crons.lookup(entry.group, entry.name)
        skipped = replace(entry, last_enqueue_at=None if before is None else before.last_enqueue_at)
        try:
            batch = self._crons.store.batch()
            batch.put_cron(skipped.key, skipped.record())
            self._crons.store.write(batch)
        except Exception as exc:
            logger.error("cron entry %r cannot advance (retrying): %s", entry.name, exc)
            return False
        self._crons.advanced([skipped])
        return True
