"""In-memory indexes rebuilt from disk at start.

They hold only what ordering needs (priority, id, times); the records stay in
RocksDB. Entries are never removed from the middle of a heap: when a job
leaves a state by another route (ack, patch, delete), its entry goes stale and
is dropped when it reaches the top, after checking the stored record. That
keeps every change O(log n) and the memory per job small.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable


class ReadyIndex:
    """Ready jobs per queue, ordered by (priority, id): priority first, then FIFO."""

    def __init__(self) -> None:
        self._heaps: dict[str, list[tuple[int, str]]] = {}

    def push(self, queue: str, priority: int, job_id: str) -> None:
        heap = self._heaps.get(queue)
        if heap is None:
            heap = self._heaps[queue] = []
        heapq.heappush(heap, (priority, job_id))

    def adopt(self, heaps: dict[str, list[tuple[int, str]]]) -> None:
        """Take per-queue lists of (priority, id) as they are (start-up: no copy), heapified."""
        for queue, entries in heaps.items():
            heap = self._heaps.get(queue)
            if heap:
                heap.extend(entries)
            else:
                self._heaps[queue] = heap = entries
            heapq.heapify(heap)

    def pop_best(self, queues: frozenset[str] | None) -> tuple[str, int, str] | None:
        """Remove and return the best (queue, priority, id) among `queues` (None = all)."""
        best_queue = None
        best: tuple[int, str] | None = None
        names = self._heaps.keys() if queues is None else queues
        for name in names:
            heap = self._heaps.get(name)
            if heap and (best is None or heap[0] < best):
                best = heap[0]
                best_queue = name
        if best_queue is None:
            return None
        heap = self._heaps[best_queue]
        priority, job_id = heapq.heappop(heap)
        if not heap:
            del self._heaps[best_queue]
        return best_queue, priority, job_id

    def __len__(self) -> int:
        return sum(len(heap) for heap in self._heaps.values())

    def heaps(self) -> dict[str, list[tuple[int, str]]]:
        """The live heaps per queue, for read-only viewers (zizq.queue.observe): never mutate."""
        return self._heaps

    def clear(self) -> None:
        self._heaps.clear()


class TimerHeap:
    """Jobs keyed by a due time in ms: scheduled jobs by ready_at, finished jobs by purge_at."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []

    def push(self, due_ms: int, job_id: str) -> None:
        heapq.heappush(self._heap, (due_ms, job_id))

    def load(self, entries: Iterable[tuple[int, str]]) -> None:
        self._heap.extend(entries)
        heapq.heapify(self._heap)

    def next_due(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now_ms: int, limit: int) -> list[tuple[int, str]]:
        due = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms and len(due) < limit:
            due.append(heapq.heappop(heap))
        return due

    def __len__(self) -> int:
        return len(self._heap)

    def entries(self) -> list[tuple[int, str]]:
        """The live heap of (due, id), for read-only viewers (zizq.queue.observe): never mutate."""
        return self._heap

    def clear(self) -> None:
        self._heap.clear()
