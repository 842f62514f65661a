"""Locks on unique and batch keys, held from an enqueue's decision until its write lands.

Deciding "is this key taken?" reads the store, and the write that takes the
key lands later (on the commit thread). Between the two, a second enqueue of
the same key must wait, or both would see the key free. A request takes all
of its keys at once, or waits until none of them is held: no request ever
holds some keys while waiting for others, so two bulks cannot deadlock.

The key indexes' clean-up (KeyLocks.forget) also asks here: a key held by an
enqueue in progress may be about to point at a new job and must not be
deleted on behalf of the old one. Such a skipped clean-up is remembered
(`deleting`) until the enqueue lets go: if it did not take the key after
all, it drops the entry itself, at once if the old job's delete has landed,
or once it has (an ack may still be on the commit thread; see `later`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any

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
        # Held keys whose clean-up a delete skipped: key -> the jobs being deleted.
        self._deleting: dict[bytes, set[str]] = {}
        self._later: set[asyncio.Task] = set()  # clean-ups waiting for writes to land

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

    def deleting(self, key: bytes) -> frozenset[str]:
        """Jobs deleted while this key was held, whose index clean-up was left to its holder."""
        return frozenset(self._deleting.get(key, ()))

    def later(self, clean_up: Coroutine[Any, Any, None]) -> None:
        """Run a clean-up in the background (kept referenced until it is done)."""
        task = asyncio.ensure_future(clean_up)
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    def release(self, hold: Hold) -> None:
        """Let go of the keys (the holder has already looked at `deleting` for them)."""
        for key in hold.keys:
            if self._held.get(key) is hold:
                del self._held[key]
                self._deleting.pop(key, None)
        if not hold.done.done():
            hold.done.set_result(None)

    def forget(self, store: Store, batch: WriteBatch, job_id: str, record: dict) -> None:
        """The job is being deleted: its unique and batch keys stop pointing at it.

        Only where the key still points at this very job, and no enqueue holds
        the key (that enqueue may be about to point it at another job; it is
        told through `deleting`, and cleans up when it lets go if it did not).
        """
        keys = []
        if "unique_key" in record:
            keys.append(layout.keyed_index_key(layout.INDEX_UNIQUE, record["unique_key"]))
        if "batch" in record:
            keys.append(layout.keyed_index_key(layout.INDEX_BATCH, record["batch"]["key"]))
        for key in keys:
            if key in self._held:
                self._deleting.setdefault(key, set()).add(job_id)  # its holder looks again
            elif store.get_keyed(key) == job_id:
                batch.delete_keyed(key)
