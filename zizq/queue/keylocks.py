"""Locks on unique and batch keys, held from an enqueue's decision until its write lands.

Deciding "is this key taken?" reads the store, and the write that takes the
key lands later (on the commit thread). Between the two, a second enqueue of
the same key must wait, or both would see the key free. A request takes all
of its keys at once, or waits until none of them is held: no request ever
holds some keys while waiting for others, so two bulks cannot deadlock.

The key indexes' clean-up (zizq.queue.unique.forget) also asks here: a key
held by an enqueue in progress is about to point at a new job and must not
be deleted on behalf of the old one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from zizq.store import Store, WriteBatch, layout


class Hold:
    """The keys one request holds; `done` resolves when it lets go of them."""

    __slots__ = ("keys", "done")

    def __init__(self, keys: set[bytes], done: asyncio.Future) -> None:
        self.keys = keys
        self.done = done


class KeyLocks:
    def __init__(self) -> None:
        self._held: dict[bytes, Hold] = {}

    def held(self, key: bytes) -> bool:
        return key in self._held

    async def acquire(self, keys: Iterable[bytes]) -> Hold:
        """Hold every key (waiting while any of them is held); `release` lets go."""
        wanted = set(keys)
        while True:
            busy = {self._held[key].done for key in wanted if key in self._held}
            if not busy:
                break
            # Shielded: a cancelled waiter must not cancel the holder's future.
            await asyncio.wait([asyncio.shield(done) for done in busy])
        hold = Hold(wanted, asyncio.get_running_loop().create_future())
        for key in wanted:
            self._held[key] = hold
        return hold

    def release(self, hold: Hold) -> None:
        for key in hold.keys:
            if self._held.get(key) is hold:
                del self._held[key]
        if not hold.done.done():
            hold.done.set_result(None)

    def forget(self, store: Store, batch: WriteBatch, job_id: str, record: dict) -> None:
        """The job is being deleted: its unique and batch keys stop pointing at it.

        Only where the key still points at this very job, and no enqueue holds
        the key (that enqueue is about to point it at another job).
        """
        keys = []
        if "unique_key" in record:
            keys.append(layout.keyed_index_key(layout.INDEX_UNIQUE, record["unique_key"]))
        if "batch" in record:
            keys.append(layout.keyed_index_key(layout.INDEX_BATCH, record["batch"]["key"]))
        for key in keys:
            if key not in self._held and store.get_keyed(key) == job_id:
                batch.delete_keyed(key)
