"""Commit modes: how long a write waits before the API may acknowledge it.

Large batches (a bulk enqueue) are written on the helper thread in either
mode: RocksDB releases the GIL while it inserts, so the event loop parses the
next request while the previous one lands in the memtable. Small batches are
written inline, where a thread hand-off would cost more than the write.


`buffered` hands the batch to RocksDB's WAL without syncing: it survives a
crash of our process (the OS holds the data) but not a power cut. `fsync`
syncs the WAL before acknowledging. Syncs are slow (milliseconds), so every
batch that arrives while one sync runs shares the next one (group commit),
and the syncing happens on a helper thread so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import enum
import queue
import threading

from zizq.store.db import Store, WriteBatch


class CommitMode(enum.StrEnum):
    BUFFERED = "buffered"
    FSYNC = "fsync"


OFFLOAD_MIN_WRITES = 256  # batches with at least this many writes go to the helper thread

_Pending = tuple[WriteBatch, bool, asyncio.Future, asyncio.AbstractEventLoop]


class Committer:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.syncs = 0  # number of WAL syncs performed, for tests and metrics

    async def commit(self, batch: WriteBatch, mode: CommitMode) -> None:
        sync = mode is CommitMode.FSYNC
        if not sync and batch.count < OFFLOAD_MIN_WRITES:
            self._store.write(batch)
            return
        self._ensure_thread()
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._pending.put((batch, sync, done, loop))
        await done
        self._store.applied(batch)  # counters belong to the loop thread

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
        try:
            # The WAL is sequential: syncing with the last batch makes every
            # earlier batch of the group durable too.
            sync = any(wants_sync for _, wants_sync, _, _ in group)
            for batch, _, _, _ in group[:-1]:
                self._store.write_raw(batch, sync=False)
            self._store.write_raw(group[-1][0], sync=sync)
            self.syncs += sync
            error = None
        except Exception as exc:  # surface storage errors to every waiting request
            error = exc
        for _, _, done, loop in group:
            loop.call_soon_threadsafe(_settle, done, error)

    def close(self) -> None:
        if self._thread is not None:
            self._pending.put(None)
            self._thread.join(timeout=10)
            self._thread = None


def _settle(done: asyncio.Future, error: Exception | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
