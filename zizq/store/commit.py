"""Commit modes: how long a write waits before the API may acknowledge it.

Large batches (a bulk enqueue) are written on the helper thread in either
mode: RocksDB releases the GIL while it inserts, so the event loop parses the
next request while the previous one lands in the memtable. Small batches are
written inline, where a thread hand-off would cost more than the write.


Counters follow the store in commit order: a batch's counter deltas are
applied on the loop thread at the moment its write is reported done (or at
once for an inline write), before any waiting request resumes, so that after
`drain()` the counters include every write that has landed.

Lanes (buffered mode): small writes of one kind (enqueues, acks) that arrive
in the same turn of the event loop are coalesced into one RocksDB write, at
most `batch_size` requests each (a bulk counts as one; 1 turns it off). A
request joins its lane with a deferred batch (a recording, zizq.store.batch.OpLog),
so one that never commits leaves nothing in the shared write. The write
happens before the loop turns again (or at once when the lane is full); each
request's `landed` runs in the order they joined, then its answer goes out.
All of them land or none does: they are one atomic write. A 2xx still means
stored, and nothing of a request is visible before its write.

`buffered` hands the batch to RocksDB's WAL without syncing: it survives a
crash of our process (the OS holds the data) but not a power cut. `fsync`
syncs the WAL before acknowledging. Syncs are slow (milliseconds), so every
batch that arrives while one sync runs shares the next one (group commit),
and the syncing happens on a helper thread so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import queue
import threading
from collections.abc import Callable

from zizq.store.batch import OpLog, WriteBatch, replay
from zizq.store.db import Store, StoreUnavailable

logger = logging.getLogger("zizq.store")


def _run(callback: Callable[[], None] | None) -> None:
    """Run an in-memory follow-up of a write; a bug in one must not stop the others."""
    if callback is None:
        return
    try:
        callback()
    except Exception:
        logger.exception("in-memory update after a write failed")


class CommitMode(enum.StrEnum):
    BUFFERED = "buffered"
    FSYNC = "fsync"


class Lane(enum.StrEnum):
    """Kinds of small writes coalesced together (each with its own batch size)."""

    ENQUEUE = "enqueue"
    COMPLETE = "complete"


DEFAULT_BATCH_SIZE = 1000  # requests per coalesced write (--enqueue/--complete-batch-size)


class _Joined:
    """One lane's write in the making: the requests that joined it this loop turn."""

    __slots__ = ("ops", "batches", "waiting", "generation")

    def __init__(self, generation: int) -> None:
        self.ops: list[tuple] = []
        self.batches: list[WriteBatch] = []
        self.waiting: list[
            tuple[asyncio.Future, Callable[[], None] | None, Callable[[], None] | None]
        ] = []
        self.generation = generation


OFFLOAD_MIN_WRITES = 256  # batches with at least this many writes go to the helper thread

_Pending = tuple[
    WriteBatch,
    bool,
    asyncio.Future,
    asyncio.AbstractEventLoop,
    Callable[[], None] | None,
    Callable[[], None] | None,
]


class Committer:
    def __init__(self, store: Store, batch_sizes: dict[Lane, int] | None = None) -> None:
        self._store = store
        self._batch_sizes = {lane: DEFAULT_BATCH_SIZE for lane in Lane}
        self._batch_sizes.update(batch_sizes or {})
        self._joined: dict[Lane, _Joined] = {}
        self.coalesced_writes = 0  # lane writes done, for tests and metrics
        self._pending: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.syncs = 0  # number of WAL syncs performed, for tests and metrics
        self._outstanding = 0  # batches handed to the thread and not yet settled
        self._idle: asyncio.Event | None = None

    async def commit(
        self,
        batch: WriteBatch,
        mode: CommitMode,
        landed: Callable[[], None] | None = None,
        failed: Callable[[], None] | None = None,
        lane: Lane | None = None,
    ) -> None:
        """Write a batch durably enough for `mode`; raises what the store raised.

        With a `lane` (and a deferred batch), a small buffered write is
        coalesced with the lane's other writes of this loop turn.

        `landed` runs on the loop thread as soon as the batch is in the store
        (in write order, right after its counters), `failed` instead when it is
        not. They run even if the awaiting request was cancelled meanwhile, so
        the in-memory state can never miss a write that happened or keep a
        change that did not. A batch can land and still raise, when a later
        WAL sync fails: then `landed` runs and the caller gets the error.
        """
        sync = mode is CommitMode.FSYNC
        if lane is not None and not sync and batch.count < OFFLOAD_MIN_WRITES:
            await self._join(lane, batch, landed, failed)
            return
        if not sync and batch.count < OFFLOAD_MIN_WRITES:
            self._write_inline(batch, landed, failed)
            return
        batch.materialize()  # the commit thread writes real batches only
        self._ensure_thread()
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._outstanding += 1
        if self._idle is not None:
            self._idle.clear()
        self._pending.put((batch, sync, done, loop, landed, failed))
        await done

    def _write_inline(
        self,
        batch: WriteBatch,
        landed: Callable[[], None] | None,
        failed: Callable[[], None] | None,
    ) -> None:
        """A small buffered write on the loop thread, where a hand-off would cost more."""
        try:
            self._store.write(batch, sync=False)
        except BaseException:
            _run(failed)
            raise
        _run(landed)

    async def _join(
        self,
        lane: Lane,
        batch: WriteBatch,
        landed: Callable[[], None] | None,
        failed: Callable[[], None] | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        joined = self._joined.get(lane)
        if joined is None:
            joined = self._joined[lane] = _Joined(batch.generation)
            loop.call_soon(self._flush, lane, joined)
        raw = batch.raw
        if not isinstance(raw, OpLog) or batch.generation != joined.generation:
            # Not recorded (a caller's plain batch), or from before a reopen: alone.
            self._write_inline(batch, landed, failed)
            return
        joined.ops.extend(raw.ops)
        joined.batches.append(batch)
        done = loop.create_future()
        joined.waiting.append((done, landed, failed))
        self._outstanding += 1
        if self._idle is not None:
            self._idle.clear()
        if len(joined.waiting) >= self._batch_sizes[lane]:
            self._flush(lane, joined)
        await done

    def _flush(self, lane: Lane, joined: _Joined) -> None:
        """Write what joined a lane as one batch, then settle each request in order."""
        if self._joined.get(lane) is joined:
            del self._joined[lane]
        if not joined.waiting:
            return  # flushed already (the lane filled up)
        waiting, joined.waiting = joined.waiting, []
        error: BaseException | None = None
        try:
            combined = self._store.batch()
            if combined.generation != joined.generation:
                raise StoreUnavailable("the store was reopened while this write was prepared")
            replay(joined.ops, combined.raw, self._store)
            self._store.write_raw(combined, sync=False)
        except Exception as exc:  # every request of the write gets it
            error = exc
        self.coalesced_writes += error is None
        for batch, (done, landed, failed) in zip(joined.batches, waiting, strict=True):
            self._outstanding -= 1
            if error is None:
                self._store.applied(batch)
                _run(landed)
                if not done.done():
                    done.set_result(None)
            else:
                _run(failed)
                if not done.done():
                    done.set_exception(error)
        if not self._outstanding and self._idle is not None:
            self._idle.set()

    @property
    def outstanding(self) -> int:
        return self._outstanding

    async def drain(self) -> None:
        """Wait until every batch handed to the thread so far has landed (or failed)."""
        while self._outstanding:
            if self._idle is None:
                self._idle = asyncio.Event()
            await self._idle.wait()

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="zizq-commit", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._pending.get()
            if first is None:
                return
            group = [first]
            stop = False
            while True:  # take everything that queued up during the previous sync
                try:
                    item = self._pending.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
            self._write_group(group)
            if stop:
                return

    def _write_group(self, group: list[_Pending]) -> None:
        # The WAL is sequential: syncing with the last batch makes every
        # earlier batch of the group durable too. Each batch lands or fails on
        # its own, so one failure never misreports the others.
        sync = any(item[1] for item in group)
        outcomes: list[tuple[bool, BaseException | None]] = []
        for position, item in enumerate(group):
            last = position == len(group) - 1
            try:
                self._store.write_raw(item[0], sync=sync and last)
                outcomes.append((True, None))
            except Exception as exc:  # surfaced to the waiting request
                outcomes.append((False, exc))
        if sync and not outcomes[-1][0] and any(ok for ok, _ in outcomes):
            # The syncing write failed: the earlier batches are in the store
            # but not yet durable. Sync them on their own; if that fails too,
            # they stay applied and their requests get the error.
            try:
                self._store.sync_wal()
            except Exception as exc:
                outcomes = [(ok, exc if ok else error) for ok, error in outcomes]
        self.syncs += sync
        for (batch, _, done, loop, landed, failed), (ok, error) in zip(
            group, outcomes, strict=True
        ):
            loop.call_soon_threadsafe(self._settle, batch, done, ok, error, landed, failed)

    def _settle(
        self,
        batch: WriteBatch,
        done: asyncio.Future,
        applied: bool,
        error: BaseException | None,
        landed: Callable[[], None] | None,
        failed: Callable[[], None] | None,
    ) -> None:
        """On the loop thread, in write order: count the batch, update memory, wake the request."""
        self._outstanding -= 1
        if applied:
            self._store.applied(batch)
            _run(landed)
        else:
            _run(failed)
        if not self._outstanding and self._idle is not None:
            self._idle.set()
        if done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def close(self) -> None:
        if self._thread is not None:
            self._pending.put(None)
            self._thread.join(timeout=10)
            self._thread = None
