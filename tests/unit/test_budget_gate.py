"""The budget gate alone, on a fake clock: rate limits hold and parked jobs never stall.

A small model of dispatch drives it: jobs are pushed into a real ReadyIndex,
a "pass" pops them and asks the gate, and time moves only when the test says
so; the gate's timers are fired by hand once the fake clock passes them.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from zizq.queue.budget_gate import BudgetGate
from zizq.queue.budget_policy import Policy
from zizq.queue.indexes import ReadyIndex


class Model:
    def __init__(self, policy: Policy) -> None:
        self.now = 1_000_000
        self.loop = asyncio.new_event_loop()  # timers are registered, never run by the loop
        self.ready = ReadyIndex()
        self.wakes = 0
        self.gate = BudgetGate(self.ready, self._woken, clock=lambda: self.now)
        self.gate.bind(self.loop)
        self.gate.policy_changed("k", policy)
        self.records: dict[str, dict] = {}
        self.dispatched: list[tuple[int, str, int]] = []  # (time, id, cost)
        self._next = 0

    def _woken(self) -> None:
        self.wakes += 1

    def close(self) -> None:
        for _, handle in self.gate._timers.values():
            handle.cancel()
        self.loop.close()

    def enqueue(self, cost: int, budgeted: bool = True, priority: int = 5) -> str:
        self._next += 1
        job_id = f"{self._next:025d}"
        record = {"queue": "q", "priority": priority}
        if budgeted:
            record["budgets"] = [{"key": "k", "cost": cost}]
        self.records[job_id] = record
        # As the engine does when a job becomes ready: park it at once if it cannot go.
        if "budgets" not in record or self.gate.place(job_id, record, self.now):
            self.ready.push("q", priority, job_id)
        return job_id

    def dispatch_pass(self) -> list[str]:
        out = []
        while (entry := self.ready.pop_best(None)) is not None:
            _, _, job_id = entry
            record = self.records[job_id]
            if "budgets" not in record or self.gate.admit(job_id, record, self.now):
                cost = record["budgets"][0]["cost"] if "budgets" in record else 0
                self.dispatched.append((self.now, job_id, cost))
                out.append(job_id)
        return out

    def advance(self, ms: int) -> None:
        self.now += ms
        for key, (due, _) in list(self.gate._timers.items()):
            if due <= self.now:
                self.gate._timer_fired(key)
        for key in list(self.gate._soon):
            self.gate._soon_fired(key)
        self.dispatch_pass()


@settings(max_examples=60, deadline=None)
@given(
    allocation=st.integers(1, 8),
    duration=st.integers(50, 2000),
    burst=st.one_of(st.none(), st.integers(1, 12)),
    steps=st.lists(
        st.tuples(st.integers(0, 300), st.integers(0, 4), st.integers(1, 3)),
        min_size=1,
        max_size=40,
    ),
)
def test_property_rate_limit_never_exceeded_and_never_stalls(allocation, duration, burst, steps):
    policy = Policy(allocation, "time_based", duration, burst)
    capacity = policy.capacity
    model = Model(policy)
    try:
        start = model.now
        for advance, new_jobs, cost in steps:
            for _ in range(new_jobs):
                model.enqueue(min(cost, capacity))
                model.enqueue(1, budgeted=False)
            model.dispatch_pass()
            model.advance(advance)
            # Safety: tokens spent never exceed burst + rate x elapsed.
            spent = sum(c for _, _, c in model.dispatched)
            elapsed = model.now - start
            assert spent * duration <= capacity * duration + allocation * elapsed
            # Unbudgeted jobs never wait.
            waiting = [j for j, r in model.records.items() if "budgets" not in r]
            sent = {j for _, j, _ in model.dispatched}
            assert all(j in sent for j in waiting)
            # Liveness: a parked job always has a timer (or an immediate wake) for when it can go.
            if model.gate.parked_count("k"):
                assert "k" in model.gate._timers or "k" in model.gate._soon
        # Given enough time, everything goes.
        model.advance(duration * 1000)
        for _ in range(200):
            if not model.gate.parked_count("k"):
                break
            model.advance(duration)
        assert model.gate.parked_count("k") == 0
        assert len(model.dispatched) == len(model.records)
    finally:
        model.close()


def test_parked_jobs_keep_fifo_order_on_a_rate_limit():
    model = Model(Policy(1, "time_based", 100, 1))
    try:
        ids = [model.enqueue(1) for _ in range(5)]
        assert model.dispatch_pass() == ids[:1]
        for expected in ids[1:]:
            model.advance(99)
            assert model.dispatched[-1][1] != expected  # one ms too early
            model.advance(1)
            assert model.dispatched[-1][1] == expected
    finally:
        model.close()


def test_a_newcomer_does_not_overtake_a_parked_job():
    model = Model(Policy(2, "time_based", 1000, 2))
    try:
        first = model.enqueue(2)
        model.dispatch_pass()  # full bucket: it goes
        second = model.enqueue(2)  # needs a whole second
        model.dispatch_pass()
        model.advance(600)
        third = model.enqueue(1)  # one token is there, but the parked job came first
        model.dispatch_pass()
        assert [j for _, j, _ in model.dispatched] == [first]
        model.advance(400)
        assert [j for _, j, _ in model.dispatched] == [first, second]
        model.advance(500)
        assert [j for _, j, _ in model.dispatched] == [first, second, third]
    finally:
        model.close()


def test_deleting_a_budget_releases_what_is_parked_on_it():
    model = Model(Policy(1, "while_in_flight"))
    try:
        first, second = model.enqueue(1), model.enqueue(1)
        assert model.dispatch_pass() == [first]
        model.gate.budget_deleted("k")
        assert model.dispatch_pass() == [second]
    finally:
        model.close()
