"""The start-up index: saved at a clean shutdown, used only when it is exact.

Each test compares what a start from the index gives with what the full scan
(zizq.queue.recovery) gives on the same store: the same counters, the same
ready jobs per queue, the same scheduled and retained jobs, the same budget
draws. A stale, cut-off or foreign file is never used, and is always removed.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from tests.unit.test_unique_engine import pro
from zizq.queue import Engine, EngineSettings, startup_index
from zizq.queue.budget_policy import Policy
from zizq.queue.recovery import recover
from zizq.queue.spec import FailureSpec, parse_job
from zizq.store import Store, index_key_of


def job(queue="q", priority=None, ready_at=None, budgets=None, retention=None):
    body: dict = {"queue": queue, "type": "t", "payload": {"q": queue}}
    for name, value in (
        ("priority", priority),
        ("ready_at", ready_at),
        ("budgets", budgets),
        ("retention", retention),
    ):
        if value is not None:
            body[name] = value
    return parse_job(body)


async def settle(engine: Engine) -> None:
    for _ in range(4):
        await engine.committer.drain()
        await asyncio.sleep(0.002)


def started(store: Store, run) -> Engine:
    engine = Engine(store, EngineSettings(), license=pro())
    run(engine.start())
    return engine


def populate(engine: Engine, run) -> None:
    async def body():
        engine.budgets.create("one", Policy(1, "while_in_flight"))
        engine.budgets.create("hourly", Policy(1, "time_based", 3_600_000, 1))
        await engine.enqueue([job("a", priority=p) for p in (5, 1, 9)])
        await engine.enqueue([job("b") for _ in range(3)])
        await engine.enqueue([job("later", ready_at=int(time.time() * 1000) + 3_600_000)])
        await engine.enqueue([job("c", budgets=[{"key": "one"}]) for _ in range(3)])
        await engine.enqueue([job("dead", retention={"dead_ms": 3_600_000})])
        await engine.enqueue([job("h", budgets=[{"key": "hourly"}]) for _ in range(3)])
        worker = engine.open_consumer(frozenset({"dead", "c", "h"}), 10)
        await settle(engine)
        dead = next(j for j in worker.in_flight if engine.store.get_job(j)["queue"] == "dead")
        await engine.fail(dead, FailureSpec("x", kill=True))
        await settle(engine)
        hourly = [j for j in worker.in_flight if engine.store.get_job(j)["queue"] == "h"]
        assert len(hourly) == 1 and await engine.ack(hourly[0])
        await settle(engine)
        assert engine.dispatcher.gate.parked_count("hourly") == 2  # parked at shutdown too
        # The stream stays open: stop() returns its jobs to ready.

    run(body())


def view(engine: Engine) -> dict:
    """What the indexes hold, live entries only, in a comparable form."""
    store = engine.store
    ready = set()
    for queue, heap in engine.ready.heaps().items():
        for priority, job_id in heap:
            record = store.get_job(job_id)
            if record and record["status"] == "ready" and record["priority"] == priority:
                ready.add((queue, priority, job_id))
    for queue, priority, job_id in engine.dispatcher.gate.parked_entries():
        ready.add((queue, priority, job_id))
    return {
        "counts": dict(store.counts),
        "ready": ready,
        "scheduled": sorted(engine.scheduler.due.entries()),
        "retained": sorted(engine.reaper.due.entries()),
        "costs": sorted(engine.budgets.cost_rows()),
    }


def scanned(store: Store) -> dict:
    found = recover(store)
    ready = {(q, p, j) for q, heap in found.ready.items() for p, j in heap}
    return {
        "counts": dict(store.counts),
        "ready": ready,
        "scheduled": sorted(found.scheduled),
        "retained": sorted(found.retained),
        "costs": sorted(found.costs),
    }


def test_a_clean_restart_loads_what_a_scan_would_find(store, run):
    engine = started(store, run)
    populate(engine, run)
    run(engine.stop())
    assert engine.save_startup_index()
    assert startup_index.path_of(store).exists()
    expected = scanned(store)
    again = started(store, run)
    try:
        assert not startup_index.path_of(store).exists()  # removed before any write
        assert view(again) == expected
        assert dict(store.counts) == dict(Counter(index_key_of(r) for _, r in store.iter_jobs()))
        worker = again.open_consumer(frozenset({"a"}), 10)
        run(settle(again))
        priorities = sorted(store.get_job(j)["priority"] for j in worker.in_flight)
        assert priorities == [1, 5, 9]
        with_budget = again.open_consumer(frozenset({"c"}), 10)
        run(settle(again))
        assert len(with_budget.in_flight) == 1  # the budget still allows one at a time
    finally:
        run(again.stop())


def test_a_write_after_saving_makes_it_stale(store, run):
    engine = started(store, run)
    populate(engine, run)
    run(engine.stop())
    assert engine.save_startup_index()
    other = started(store, run)  # uses the index, then writes: the file is gone already
    run(other.enqueue([job("late")]))
    run(other.stop())
    # A file saved before that write is stale even if it were still there.
    stale = startup_index.path_of(store)
    assert not stale.exists()
    assert other.save_startup_index()
    batch = store.batch()  # a tool writing a job after the save
    record = {"queue": "tool", "type": "t", "priority": 1, "status": "ready", "ready_at": 1}
    batch.put_job("0" * 25, record, None)
    batch.put_payload("0" * 25, b"\x90")
    store.write(batch)
    expected = scanned(store)
    again = started(store, run)
    try:
        assert not stale.exists()
        assert view(again) == expected
    finally:
        run(again.stop())


def test_a_cut_off_or_garbled_file_is_not_used(store, run):
    engine = started(store, run)
    populate(engine, run)
    run(engine.stop())
    path = startup_index.path_of(store)
    for damage in (lambda data: data[: len(data) // 2], lambda data: b"\xc1" + data[1:]):
        assert engine.save_startup_index()
        path.write_bytes(damage(path.read_bytes()))
        expected = scanned(store)
        again = started(store, run)
        try:
            assert not path.exists()
            assert view(again) == expected
        finally:
            run(again.stop())


def test_nothing_is_saved_while_a_write_could_be_missing(store, run):
    engine = started(store, run)
    run(engine.enqueue([job()]))
    engine.open_consumer(None, 1)
    run(settle(engine))
    assert not engine.save_startup_index()  # a job is in flight: not a clean shutdown
    run(engine.stop())
    assert engine.save_startup_index()
