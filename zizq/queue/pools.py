"""Bounded thread pools: one per kind of blocking work, so one kind cannot starve another.

asyncio's default executor is shared by everything that calls to_thread; a
few slow jobs of one kind (backups streaming to clients that stopped reading)
then hold every thread and queries queue behind them forever. Each pool here
has its own threads and a cap on waiting work: past the cap, `run` raises
PoolBusy at once instead of queueing without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_pools: weakref.WeakSet[BoundedPool] = weakref.WeakSet()


class PoolBusy(Exception):
    """The pool's threads are busy and its waiting line is full (the API answers 503)."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds, for the Retry-After header


class BoundedPool:
    """`workers` threads and at most `max_waiting` calls waiting for one of them.

    Bookkeeping happens on the event loop thread only (run() is a coroutine),
    so the counters need no lock.
    """

    def __init__(
        self, name: str, workers: int, max_waiting: int = 0, uses_store: bool = True
    ) -> None:
        self.name = name
        # Whether calls may hold the live database open (iterators, checkpoints):
        # a reopen of the store waits until such pools are idle.
        self.uses_store = uses_store
        self.workers = workers
        self.max_waiting = max_waiting
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self.active = 0  # calls submitted and not finished (running or waiting)
        _pools.add(self)

    @property
    def capacity(self) -> int:
        return self.workers + self.max_waiting

    def has_room(self) -> bool:
        return self.active < self.capacity

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run fn on one of this pool's threads; PoolBusy if the pool is full."""
        if not self.has_room():
            raise PoolBusy(
                f"the server is busy ({self.name}: {self.active} calls running or waiting)"
            )
        loop = asyncio.get_running_loop()
        work = self._executor.submit(functools.partial(fn, *args, **kwargs))
        self.active += 1
        # Released when the call really ends: a cancelled caller does not stop
        # a running thread, and that thread still holds its slot.
        work.add_done_callback(lambda _w: self._finished_in(loop))
        return await asyncio.wrap_future(work)

    def _finished_in(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody counts
            loop.call_soon_threadsafe(self._finished)

    def _finished(self) -> None:
        self.active -= 1

    def shutdown(self) -> None:
        """Stop taking work; running calls finish on their own (threads are not joined)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def store_idle() -> bool:
    """No pool that touches the store has a call running or waiting."""
    return all(pool.active == 0 for pool in list(_pools) if pool.uses_store)
