"""A worker's take stream as the engine sees it: which queues it wants, how
many unacknowledged jobs it may hold, and the jobs waiting to be written out.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Delivery:
    job_id: str
    record: dict  # the job as dispatched; its payload is read when it is written out


class ConsumerClosed(Exception):
    """The stream was closed by the engine (server shutdown)."""


class Consumer:
    def __init__(self, queues: frozenset[str] | None, prefetch: int) -> None:
        self.queues = queues  # None means every queue
        self.prefetch = prefetch
        self.in_flight: set[str] = set()
        self.closed = False
        self._outbox: deque[Delivery] = deque()
        self._wake = asyncio.Event()

    @property
    def capacity(self) -> int:
        return self.prefetch - len(self.in_flight)

    def deliver(self, deliveries: list[Delivery]) -> None:
        self._outbox.extend(deliveries)
        self._wake.set()

    @property
    def undelivered(self) -> int:
        """Jobs handed to this stream that its writer has not yet taken (not sent)."""
        return len(self._outbox)

    def take_back(self, count: int, wanted: Callable[[Delivery], bool]) -> list[Delivery]:
        """Remove up to `count` unsent deliveries that `wanted` accepts, newest first.

        Only the outbox is touched: a job the writer has already taken may be on
        the wire, so it stays with the stream. The caller owns the jobs after this.
        """
        taken: list[Delivery] = []
        kept: list[Delivery] = []
        for delivery in reversed(self._outbox):
            if len(taken) < count and wanted(delivery):
                taken.append(delivery)
            else:
                kept.append(delivery)
        if taken:
            kept.reverse()
            self._outbox = deque(kept)
        return taken

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def next_deliveries(self, timeout: float, limit: int = 0) -> list[Delivery]:
        """Jobs to write out now (at most `limit`, 0 = all); an empty list means
        `timeout` passed (send a heartbeat). Jobs left in the outbox stay there, so
        the dispatcher can still take them back if the client stops reading."""
        if not self._outbox and not self.closed:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return []
        if self.closed:
            raise ConsumerClosed
        outbox = self._outbox
        if limit <= 0 or len(outbox) <= limit:
            self._wake.clear()
            out = list(outbox)
            outbox.clear()
            return out
        return [outbox.popleft() for _ in range(limit)]  # the rest: wake stays set
