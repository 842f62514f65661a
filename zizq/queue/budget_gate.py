"""The budget gate of dispatch: a job takes its tokens, or it is parked (pro, 0.7).

The dispatcher asks `admit` about every ready job bound to budgets, right
before handing it to a stream. The job either debits its cost from every
budget it draws on (all or none, zizq.queue.budget_tokens) and goes out, or it
is *parked*: it leaves the ready index for a heap of its own, one per budget
and queue, ordered like the ready index (priority, then id = FIFO). Nothing
else waits behind it: unbudgeted jobs and jobs on other budgets keep flowing,
in the same queue too.

Parked jobs go back to the ready index when their budget can pay for them:
- a while_in_flight budget, when a job returns tokens (ack, failure,
  deletion, a dropped stream): `release`;
- a time_based budget, at the exact millisecond its drip covers the first
  parked job's cost: one timer per budget, armed only while jobs are parked
  on it (no polling: an idle or satisfied budget costs nothing);
- any budget, when its policy changes (`policy_changed`).
A wake moves back only as many jobs as the budget's free tokens could pay
for, per queue, so a budget with a thousand parked jobs and one free slot
moves one job per queue, not a thousand. A moved job that still cannot go
(another of its budgets is short, or a job ahead took the tokens) parks again.

Order within a budget and queue is kept: a job finding an earlier job of the
same queue parked on one of its budgets parks behind it rather than jumping
ahead when a token happens to be free.

Heap entries are never removed from the middle. `_where` says which entry of
a job is its live one; a job that was deleted, patched or moved back is
dropped when its stale entry reaches the top.

Event-loop only, like the dispatcher: a check followed by a debit is atomic.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Iterator

from zizq.queue.budget_policy import Policy
from zizq.queue.budget_tokens import TokenPool
from zizq.queue.indexes import ReadyIndex
from zizq.queue.records import now_ms

_Entry = tuple[int, str, int]  # (priority, job id, cost in the budget it is parked on)
SPOKEN_FOR_RECHECK_MS = 1000


class BudgetGate:
    def __init__(
        self, ready: ReadyIndex, on_wake: Callable[[], None], clock: Callable[[], int] = now_ms
    ) -> None:
        self.pool = TokenPool(clock)
        self._ready = ready
        self._on_wake = on_wake  # the dispatcher's request_pump: moved jobs are ready
        self._clock = clock
        # budget key -> queue -> heap of parked jobs
        self._parked: dict[str, dict[str, list[_Entry]]] = {}
        # job id -> (budget key, queue, priority) of its live parked entry
        self._where: dict[str, tuple[str, str, int]] = {}
        self._timers: dict[str, tuple[int, asyncio.TimerHandle]] = {}  # key -> (due ms, handle)
        self._soon: set[str] = set()  # budgets with a wake already scheduled by call_soon
        # (key, queue) -> tokens that jobs sent to the ready index (by `place` or a wake)
        # will ask for at dispatch: a hint, so that a burst of enqueues does not flood the
        # ready index with jobs the budget cannot pay for. Jobs of that queue wait behind
        # them; when they have been dispatched (the count drops to 0) the budget is woken.
        # A count left over by a job deleted meanwhile is dropped by the next wake, which
        # a timer guarantees within SPOKEN_FOR_RECHECK_MS.
        self._placed: dict[tuple[str, str], int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # -- reads ------------------------------------------------------------------

    def parked_count(self, key: str | None = None) -> int:
        """Jobs parked now (on one budget, or on any)."""
        if key is None:
            return len(self._where)
        return sum(1 for where in self._where.values() if where[0] == key)

    def is_parked(self, job_id: str) -> bool:
        return job_id in self._where

    def parked_entries(self) -> Iterator[tuple[str, int, str]]:
        """(queue, priority, id) of every parked job (saved at shutdown with the ready index)."""
        for job_id, (_, queue, priority) in self._where.items():
            yield queue, priority, job_id

    # -- dispatch ---------------------------------------------------------------

    def admit(self, job_id: str, record: dict, now: int) -> bool:
        """Take a ready job's tokens (True: dispatch it) or park it (False)."""
        self._where.pop(job_id, None)  # popped from ready: any older parked entry is stale
        pool = self.pool
        refs = [(b["key"], b["cost"]) for b in record["budgets"] if b["key"] in pool]
        if not refs:
            return True  # bound only to budgets that no longer exist: nothing to enforce
        if pool.holds(job_id):
            pool.release(job_id)  # a stale holding (cannot happen when in flight): never leak
        queue, priority = record["queue"], record["priority"]
        placed = self._placed
        for key, cost in refs:
            left = placed.get((key, queue), 0) - cost
            if left > 0:
                placed[(key, queue)] = left
            elif placed.pop((key, queue), None) is not None and self._parked_in(key, queue):
                self._wake_soon(key)  # the jobs sent ahead are through: the rest may follow
        for key, cost in refs:
            if self._waiting_ahead(key, queue, priority, job_id):
                self._park(key, queue, priority, job_id, cost, now)
                return False
        if pool.try_acquire_all(job_id, refs, now):
            return True
        key, cost = self._short(refs, now)
        self._park(key, queue, priority, job_id, cost, now)
        return False

    def place(self, job_id: str, record: dict, now: int) -> bool:
        """A job just became ready (enqueued, retried, patched, rebound): True if it
        belongs in the ready index, False if it was parked here at once.

        A job whose budget cannot pay now (or that has an earlier job of its queue
        parked on one of its budgets) is parked without ever entering the ready
        index, so dispatch passes never have to read it only to set it aside.
        Tokens are still taken only at dispatch (`admit`).
        """
        self._where.pop(job_id, None)
        pool = self.pool
        refs = [(b["key"], b["cost"]) for b in record["budgets"] if b["key"] in pool]
        if not refs:
            return True
        queue, priority = record["queue"], record["priority"]
        for key, cost in refs:
            if self._waiting_ahead(key, queue, priority, job_id):
                self._park(key, queue, priority, job_id, cost, now)
                return False
        placed = self._placed
        if pool.next_available_at(refs, now) == now and all(
            placed.get((key, queue), 0) + cost <= pool.available(key, now) for key, cost in refs
        ):
            for key, cost in refs:
                placed[(key, queue)] = placed.get((key, queue), 0) + cost
            return True
        key, cost = self._short_or_first(refs, queue, now)
        self._park(key, queue, priority, job_id, cost, now)
        return False

    def release(self, job_id: str) -> None:
        """A job left flight (or was never sent): its while_in_flight tokens come back."""
        for key in self.pool.release(job_id):
            if key in self._parked:
                self._wake(key)

    def forget_job(self, job_id: str) -> None:
        """A job was deleted: its parked entry (if any) is stale from now on."""
        self._where.pop(job_id, None)
        self.release(job_id)

    # -- policies ---------------------------------------------------------------

    def policy_changed(self, key: str, policy: Policy) -> None:
        """A budget was created or its policy changed: applies at once to waiting work."""
        self.pool.set_policy(key, policy, self._clock())
        if key in self._parked:
            self._wake(key)

    def budget_deleted(self, key: str) -> None:
        """Only finished jobs draw on a deleted budget: whatever is parked on it is stale."""
        self.pool.forget(key)
        self._cancel_timer(key)
        self._release_all(key)

    def clear(self) -> None:
        """POST /reset: no budget, no parked job, no timer."""
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._parked.clear()
        self._where.clear()
        self._placed.clear()
        self.pool.clear()

    # -- parking ------------------------------------------------------------------

    def _short_or_first(self, refs: list[tuple[str, int]], queue: str, now: int) -> tuple[str, int]:
        """The binding to park a job on at `place`: one that cannot pay, else one whose
        tokens are spoken for by jobs of its queue already sent to the ready index."""
        for key, cost in refs:
            if self.pool.next_available_at([(key, cost)], now) != now:
                return key, cost
        placed = self._placed
        for key, cost in refs:
            if placed.get((key, queue), 0) + cost > self.pool.available(key, now):
                return key, cost
        return refs[0]

    def _parked_in(self, key: str, queue: str) -> bool:
        queues = self._parked.get(key)
        return bool(queues and queues.get(queue))

    def _short(self, refs: list[tuple[str, int]], now: int) -> tuple[str, int]:
        """The binding to park on: the first whose budget cannot pay now."""
        for key, cost in refs:
            if self.pool.next_available_at([(key, cost)], now) != now:
                return key, cost
        return refs[0]

    def _waiting_ahead(self, key: str, queue: str, priority: int, job_id: str) -> bool:
        queues = self._parked.get(key)
        if not queues:
            return False
        heap = queues.get(queue)
        if not heap:
            return False
        head = self._live_head(key, queue, heap)
        return head is not None and (head[0], head[1]) < (priority, job_id)

    def _live_head(self, key: str, queue: str, heap: list[_Entry]) -> _Entry | None:
        where = self._where
        while heap:
            priority, job_id, _ = heap[0]
            if where.get(job_id) == (key, queue, priority):
                return heap[0]
            heapq.heappop(heap)  # deleted, patched or moved back since it parked
        return None

    def _park(self, key: str, queue: str, priority: int, job_id: str, cost: int, now: int) -> None:
        queues = self._parked.get(key)
        if queues is None:
            queues = self._parked[key] = {}
        heap = queues.get(queue)
        if heap is None:
            heap = queues[queue] = []
        heapq.heappush(heap, (priority, job_id, cost))
        self._where[job_id] = (key, queue, priority)
        self._arm(key, cost, now, queue)

    def _arm(self, key: str, cost: int, now: int, queue: str) -> None:
        """Make sure something wakes this budget when `cost` could be paid."""
        due = self.pool.next_available_at([(key, cost)], now)
        if due is None:
            return  # while_in_flight: a release wakes it
        if due <= now:
            if not self._placed.get((key, queue)):
                self._wake_soon(key)  # parked behind others while tokens are free
                return
            # The free tokens are spoken for by jobs of this queue sent ahead: their
            # dispatch wakes the budget; this timer only bounds a count left by a
            # job deleted before it was dispatched.
            due = now + SPOKEN_FOR_RECHECK_MS
        current = self._timers.get(key)
        if current is not None:
            if current[0] <= due:
                return
            current[1].cancel()
        loop = self._loop or asyncio.get_running_loop()
        handle = loop.call_later((due - now) / 1000.0, self._timer_fired, key)
        self._timers[key] = (due, handle)

    def _timer_fired(self, key: str) -> None:
        self._timers.pop(key, None)
        self._wake(key)

    def _wake_soon(self, key: str) -> None:
        if key in self._soon:
            return
        self._soon.add(key)
        loop = self._loop or asyncio.get_running_loop()
        loop.call_soon(self._soon_fired, key)

    def _soon_fired(self, key: str) -> None:
        self._soon.discard(key)
        self._wake(key)

    def _cancel_timer(self, key: str) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer[1].cancel()

    def _wake(self, key: str) -> None:
        """Move back to ready the parked jobs of `key` its free tokens could pay for."""
        self._cancel_timer(key)
        queues = self._parked.get(key)
        if not queues:
            return
        if key not in self.pool:
            self._release_all(key)
            return
        now = self._clock()
        free = self.pool.available(key, now)
        moved = False
        for queue in list(queues):
            heap = queues[queue]
            left = free
            while left > 0:
                head = self._live_head(key, queue, heap)
                if head is None or head[2] > left:
                    break
                heapq.heappop(heap)
                priority, job_id, cost = head
                del self._where[job_id]
                self._ready.push(queue, priority, job_id)
                moved = True
                left -= cost
            # What was sent now is what is spoken for (a stale count is dropped here).
            if left < free:
                self._placed[(key, queue)] = free - left
            else:
                self._placed.pop((key, queue), None)
            head = self._live_head(key, queue, heap)
            if head is None:
                del queues[queue]
            else:
                self._arm(key, head[2], now, queue)  # the rest wait for the next tokens
        if not queues:
            del self._parked[key]
        if moved:
            self._on_wake()

    def _release_all(self, key: str) -> None:
        """Every job parked on `key` goes back to ready (its budget no longer throttles)."""
        queues = self._parked.pop(key, None)
        if not queues:
            return
        moved = False
        for queue, heap in queues.items():
            for priority, job_id, _ in heap:
                if self._where.get(job_id) == (key, queue, priority):
                    del self._where[job_id]
                    self._ready.push(queue, priority, job_id)
                    moved = True
        if moved:
            self._on_wake()
