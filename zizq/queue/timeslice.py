"""Long loop work (a 10,000-job bulk) cut into slices, so requests keep flowing.

Checking the clock is cheap (~50 ns), so callers ask `due()` after every item;
a pause happens only once a slice has used its budget, which keeps ordinary
requests (a 1,000-job bulk takes a few milliseconds) free of any pause at all.
"""

from __future__ import annotations

import time

from zizq.queue.pacing import let_requests_in

SLICE_BUDGET_S = 0.010  # loop time one slice may take before waiting requests get a turn


class TimeSlicer:
    __slots__ = ("_budget", "_since")

    def __init__(self, budget_s: float = SLICE_BUDGET_S) -> None:
        self._budget = budget_s
        self._since = time.perf_counter()

    def due(self) -> bool:
        """True once this slice has run for its budget (a plain call: no coroutine per item)."""
        return time.perf_counter() - self._since >= self._budget

    async def pause(self) -> None:
        """Let waiting requests in, then start the next slice."""
        await let_requests_in()
        self._since = time.perf_counter()

    async def maybe_pause(self) -> None:
        if self.due():
            await self.pause()
