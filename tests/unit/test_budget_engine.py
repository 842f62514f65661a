"""Budgets in the engine, in-process against a real store: parking, tokens, the book.

The invariants of issue 13 are checked here under random operations
(hypothesis): a while_in_flight budget never has more than its allocation in
flight (an allocation cut settles down, never up), a parked job never holds
back an unbudgeted one, a parked job whose budget can pay is never left
waiting while a stream could take it, and what the book counts as drawing on
each budget always equals a scan of the store.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_unique_engine import SharedStore, assert_store_consistent
from zizq.queue import Engine
from zizq.queue.budget_policy import Policy
from zizq.queue.errors import AlreadyExists, Conflict, NotFound, Unprocessable
from zizq.queue.records import IN_FLIGHT, READY, TERMINAL
from zizq.queue.spec import FailureSpec, parse_job
from zizq.store import Store


@pytest.fixture(scope="module")
def shared():
    shared = SharedStore()
    yield shared
    shared.close()


def job(queue: str = "q", budgets: list | None = None, priority: int | None = None):
    body: dict = {"queue": queue, "type": "t", "payload": {}}
    if budgets is not None:
        body["budgets"] = budgets
    if priority is not None:
        body["priority"] = priority
    return parse_job(body)


def slots(allocation: int) -> Policy:
    return Policy(allocation, "while_in_flight")


def rate(allocation: int, duration_ms: int, burst: int | None = None) -> Policy:
    return Policy(allocation, "time_based", duration_ms, burst)


async def settle(engine: Engine) -> None:
    for _ in range(4):
        await engine.committer.drain()
        await asyncio.sleep(0.002)


def held_by(engine: Engine, key: str) -> int:
    """Tokens of `key` held by jobs in flight, from their records."""
    total = 0
    for entry in engine.dispatcher.in_flight.values():
        for binding in entry.record.get("budgets", ()):
            if binding["key"] == key:
                total += binding["cost"]
    return total


def assert_book_matches_scan(engine: Engine, store: Store) -> None:
    scanned: dict[str, Counter] = {}
    for _, record in store.iter_jobs():
        if record["status"] in TERMINAL:
            continue
        for binding in record.get("budgets", ()):
            scanned.setdefault(binding["key"], Counter())[binding["cost"]] += 1
    assert {k: dict(v) for k, v in engine.budgets._costs.items()} == {
        k: dict(v) for k, v in scanned.items()
    }, "what draws on each budget differs from a scan"
    stored = {key for key, _ in store.iter_budgets()}
    assert stored == set(engine.budgets.budgets), "budgets in memory differ from the store"
    for key in scanned:
        assert key in stored, f"jobs draw on budget {key!r}, which does not exist"


# -- while_in_flight ---------------------------------------------------------------------


def test_concurrency_limit_parks_without_blocking_others(shared):
    async def body(engine: Engine, store: Store):
        engine.budgets.create("db", slots(2))
        await engine.enqueue([job(budgets=[{"key": "db"}]) for _ in range(6)])
        await engine.enqueue([job() for _ in range(5)])  # behind them, same queue
        worker = engine.open_consumer(None, 100)
        await settle(engine)
        assert held_by(engine, "db") == 2
        assert len(worker.in_flight) == 2 + 5  # the unbudgeted five were not held back
        assert engine.dispatcher.gate.parked_count("db") == 4
        budgeted = [j for j in worker.in_flight if "budgets" in store.get_job(j)]
        assert await engine.ack(budgeted[0])
        await settle(engine)
        assert held_by(engine, "db") == 2  # the freed slot went out at once
        assert engine.dispatcher.gate.parked_count("db") == 3
        assert_store_consistent(engine, store)
        assert_book_matches_scan(engine, store)

    shared.run(body)


def test_parked_jobs_go_in_priority_then_fifo_order(shared):
    async def body(engine: Engine, store: Store):
        engine.budgets.create("one", slots(1))
        ids = []
        for priority in (5, 9, 1, 5):
            (view,) = await engine.enqueue([job(budgets=[{"key": "one"}], priority=priority)])
            ids.append(view["id"])
        worker = engine.open_consumer(None, 10)
        order = []
        for _ in range(4):
            await settle(engine)
            (held,) = worker.in_flight
            order.append(held)
            assert await engine.ack(held)
        assert order == [ids[2], ids[0], ids[3], ids[1]]

    shared.run(body)


def test_tokens_return_on_failure_deletion_and_disconnect(shared):
    async def body(engine: Engine, store: Store):
        engine.budgets.create("one", slots(1))
        await engine.enqueue([job(budgets=[{"key": "one"}]) for _ in range(4)])
        worker = engine.open_consumer(None, 10)
        await settle(engine)
        (first,) = worker.in_flight
        await engine.fail(first, FailureSpec("boom", kill=True))
        await settle(engine)
        (second,) = worker.in_flight
        assert second != first
        await engine.delete_job(second)
        await settle(engine)
        (third,) = worker.in_flight
        worker.close()
        engine.close_consumer(worker)  # a dropped stream: its job is ready again
        other = engine.open_consumer(None, 10)
        await settle(engine)
        assert len(other.in_flight) == 1 and held_by(engine, "one") == 1
        assert_book_matches_scan(engine, store)

    shared.run(body)


def test_an_allocation_cut_settles_down_and_a_raise_releases_at_once(shared):
    async def body(engine: Engine, store: Store):
        engine.budgets.create("b", slots(6))
        await engine.enqueue([job(budgets=[{"key": "b"}]) for _ in range(20)])
        worker = engine.open_consumer(None, 100)
        await settle(engine)
        assert held_by(engine, "b") == 6
        engine.budgets.patch("b", {"allocation": 1})
        for expected in (5, 4, 3, 2, 1, 1):
            assert await engine.ack(next(iter(worker.in_flight)))
            await settle(engine)
            assert held_by(engine, "b") == expected  # returned slots are surrendered
        engine.budgets.patch("b", {"allocation": 4})
        await settle(engine)
        assert held_by(engine, "b") == 4

    shared.run(body)


def test_a_job_on_two_budgets_takes_from_both_or_neither(shared):
    async def body(engine: Engine, store: Store):
        engine.budgets.create("a", slots(2))
        engine.budgets.create("b", slots(1))
        await engine.enqueue([job(budgets=[{"key": "a"}, {"key": "b"}]) for _ in range(3)])
        await engine.enqueue([job(budgets=[{"key": "a"}])])
        engine.open_consumer(None, 10)
        await settle(engine)
        assert held_by(engine, "b") == 1
        assert held_by(engine, "a") == 2  # the single-budget job used a's second slot

    shared.run(body)


def test_a_costly_job_is_not_starved_by_cheaper_ones_behind_it(shared):
    async def body(engine: Engine, store: Store):
        engine.budgets.create("a", slots(3))
        first, costly, cheap = await engine.enqueue(
            [job(budgets=[{"key": "a", "cost": c}]) for c in (1, 3, 1)]
        )
        worker = engine.open_consumer(None, 10)
        await settle(engine)
        # One slot is taken and two are free, but order in a budget and queue is strict.
        assert worker.in_flight == {first["id"]}
        assert await engine.ack(first["id"])
        await settle(engine)
        assert worker.in_flight == {costly["id"]}
        assert await engine.ack(costly["id"])
        await settle(engine)
        assert worker.in_flight == {cheap["id"]}

    shared.run(body)


def test_a_deleted_parked_job_does_not_hold_back_the_next(shared):
    async def body(engine: Engine, store: Store):
        engine.budgets.create("one", slots(1))
        (blocker,) = await engine.enqueue([job(budgets=[{"key": "one"}])])
        (parked,) = await engine.enqueue([job(budgets=[{"key": "one"}])])
        worker = engine.open_consumer(None, 10)
        await settle(engine)
        assert worker.in_flight == {blocker["id"]}
        await engine.delete_job(parked["id"])
        await engine.delete_job(blocker["id"])
        (fresh,) = await engine.enqueue([job(budgets=[{"key": "one"}])])
        await settle(engine)
        assert worker.in_flight == {fresh["id"]}

    shared.run(body)


# -- time_based ------------------------------------------------------------------------


def test_a_rate_limit_bursts_then_drips(shared):
    async def body(engine: Engine, store: Store):
        engine.budgets.create("r", rate(4, 400))  # 4 per 400 ms: one per 100 ms
        await engine.enqueue([job(budgets=[{"key": "r"}]) for _ in range(40)])
        worker = engine.open_consumer(None, 100)
        started = time.monotonic()
        await settle(engine)
        assert len(worker.in_flight) == 4  # a new bucket starts full
        await asyncio.sleep(0.55)
        dispatched = len(worker.in_flight)
        elapsed_ms = (time.monotonic() - started) * 1000
        assert dispatched <= 4 + elapsed_ms / 100 + 1
        assert dispatched >= 4 + 2  # the timer woke it without any other event

    shared.run(body)


def test_speeding_up_a_rate_rearms_at_once(shared):
    async def body(engine: Engine, store: Store):
        engine.budgets.create("slow", rate(1, 3_600_000, burst=1))
        await engine.enqueue([job(budgets=[{"key": "slow"}]) for _ in range(3)])
        worker = engine.open_consumer(None, 10)
        await settle(engine)
        assert len(worker.in_flight) == 1  # the next token is an hour away
        engine.budgets.patch("slow", {"strategy": {"duration_ms": 50}})
        await asyncio.sleep(0.3)
        assert len(worker.in_flight) == 3

    shared.run(body)


# -- the book --------------------------------------------------------------------------


def test_enqueue_checks_and_create_with(shared):
    async def body(engine: Engine, store: Store):
        with pytest.raises(Unprocessable, match="does not exist"):
            await engine.enqueue([job(budgets=[{"key": "nope"}])])
        policy = {"allocation": 3, "strategy": {"type": "while_in_flight"}}
        await engine.enqueue([job(budgets=[{"key": "made", "create_with": policy}])])
        assert engine.budgets.get("made").policy == slots(3)
        # create_with is ignored once the budget exists; the cost must still fit.
        bigger = {"allocation": 9, "strategy": {"type": "while_in_flight"}}
        with pytest.raises(Unprocessable, match="can ever pay"):
            await engine.enqueue(
                [job(budgets=[{"key": "made", "cost": 4, "create_with": bigger}])], bulk=True
            )
        with pytest.raises(Unprocessable, match=r"jobs\[1\]\.budgets\[0\]\.key"):
            await engine.enqueue([job(), job(budgets=[{"key": "gone"}])], bulk=True)
        assert engine.budgets.get("made").policy == slots(3)
        assert_book_matches_scan(engine, store)

    shared.run(body)


def test_concurrent_create_with_makes_one_budget(shared):
    async def body(engine: Engine, store: Store):
        policy = {"allocation": 2, "strategy": {"type": "time_based", "duration_ms": 1000}}
        results = await asyncio.gather(
            *(
                engine.enqueue([job(budgets=[{"key": "shared", "create_with": policy}])])
                for _ in range(20)
            )
        )
        assert len(results) == 20
        assert [key for key, _ in store.iter_budgets()] == ["shared"]
        assert engine.budgets.draws_over("shared", -1)[0] == 20
        assert_book_matches_scan(engine, store)

    shared.run(body)


def test_delete_and_shrink_are_refused_while_jobs_draw(shared):
    async def body(engine: Engine, store: Store):
        engine.budgets.create("b", slots(5))
        (view,) = await engine.enqueue([job(budgets=[{"key": "b", "cost": 3}])])
        with pytest.raises(AlreadyExists, match="1 unfinished job"):
            engine.budgets.delete("b")
        with pytest.raises(Unprocessable, match="draw up to 3"):
            engine.budgets.patch("b", {"allocation": 2})
        engine.budgets.patch("b", {"allocation": 3})
        worker = engine.open_consumer(None, 10)
        await settle(engine)
        assert await engine.ack(view["id"])
        await settle(engine)
        engine.budgets.delete("b")  # only finished jobs drew on it
        with pytest.raises(NotFound):
            engine.budgets.get("b")
        worker.close()
        engine.close_consumer(worker)

    shared.run(body)


def test_rebinding_a_parked_job_frees_it_and_in_flight_is_refused(shared):
    async def body(engine: Engine, store: Store):
        engine.budgets.create("one", slots(1))
        engine.budgets.create("wide", slots(10))
        first, second = await engine.enqueue([job(budgets=[{"key": "one"}]) for _ in range(2)])
        worker = engine.open_consumer(None, 10)
        await settle(engine)
        assert worker.in_flight == {first["id"]}
        with pytest.raises(Conflict, match="in_flight"):
            await engine.set_job_budgets(first["id"], [])
        changed = await engine.set_job_budgets(
            second["id"], engine_bindings([{"key": "wide", "cost": 2}])
        )
        assert changed["budgets"] == [{"key": "wide", "cost": 2}]
        await settle(engine)
        assert worker.in_flight == {first["id"], second["id"]}
        assert_book_matches_scan(engine, store)

    shared.run(body)


def engine_bindings(raw: list) -> list:
    from zizq.queue.budget_policy import parse_bindings

    return parse_bindings(raw)


def test_restart_keeps_policies_and_bindings_and_refills(tmp_path, run):
    from tests.unit.test_unique_engine import pro
    from zizq.queue import EngineSettings

    store = Store(tmp_path / "root", cache_size=4 * 1024 * 1024)
    try:
        engine = Engine(store, EngineSettings(), license=pro())
        run(engine.start())
        engine.budgets.create("b", slots(1))
        run(engine.enqueue([job(budgets=[{"key": "b"}]) for _ in range(3)]))
        worker = engine.open_consumer(None, 10)
        run(settle(engine))
        assert len(worker.in_flight) == 1
        run(engine.stop())
        again = Engine(store, EngineSettings(), license=pro())
        run(again.start())
        assert again.budgets.get("b").policy == slots(1)
        assert again.budgets.draws_over("b", -1)[0] == 3
        with pytest.raises(AlreadyExists):
            again.budgets.delete("b")
        worker = again.open_consumer(None, 10)
        run(settle(again))
        assert len(worker.in_flight) == 1  # the in-flight one came back; one slot again
        run(again.stop())
    finally:
        store.close()


def test_reset_clears_budgets_but_delete_all_jobs_keeps_them(shared):
    async def body(engine: Engine, store: Store):
        engine.budgets.create("b", slots(1))
        await engine.enqueue([job(budgets=[{"key": "b"}])])
        from zizq.queue.query import JobFilter

        await engine.delete_jobs(JobFilter())
        assert engine.budgets.get("b")
        await engine.reset()
        assert engine.budgets.list() == []
        assert list(store.iter_budgets()) == []

    shared.run(body)


# -- properties --------------------------------------------------------------------------

_op = st.one_of(
    st.tuples(st.just("enqueue"), st.sampled_from(["a", "b", None]), st.integers(1, 3)),
    st.tuples(st.just("ack"), st.integers(0, 50)),
    st.tuples(st.just("fail"), st.integers(0, 50)),
    st.tuples(st.just("delete"), st.integers(0, 50)),
    st.tuples(st.just("reconnect"), st.integers(1, 30)),
    st.tuples(st.just("allocation"), st.sampled_from(["a", "b"]), st.integers(1, 6)),
    st.tuples(st.just("rebind"), st.integers(0, 50), st.sampled_from(["a", "b", None])),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(_op, min_size=1, max_size=25))
def test_property_concurrency_never_exceeded_and_nothing_stalls(shared, ops):
    async def body(engine: Engine, store: Store):
        engine.budgets.create("a", slots(3))
        engine.budgets.create("b", slots(4))
        ceiling = {"a": 3, "b": 4}
        worker = engine.open_consumer(None, 20)
        for op in ops:
            kind = op[0]
            try:
                if kind == "enqueue":
                    _, key, cost = op
                    budgets = None if key is None else [{"key": key, "cost": cost}]
                    await engine.enqueue([job(budgets=budgets)])
                elif kind in ("ack", "fail"):
                    held = sorted(worker.in_flight)
                    if held:
                        chosen = held[op[1] % len(held)]
                        if kind == "ack":
                            await engine.ack(chosen)
                        else:
                            await engine.fail(chosen, FailureSpec("x", retry_at=0))
                elif kind == "delete":
                    ids = sorted(j for j, r in store.iter_jobs() if r["status"] not in TERMINAL)
                    if ids:
                        await engine.delete_job(ids[op[1] % len(ids)])
                elif kind == "reconnect":
                    worker.close()
                    engine.close_consumer(worker)
                    worker = engine.open_consumer(None, op[1])
                elif kind == "allocation":
                    _, key, allocation = op
                    engine.budgets.patch(key, {"allocation": allocation})
                    ceiling[key] = max(allocation, held_by(engine, key))
                elif kind == "rebind":
                    ids = sorted(j for j, r in store.iter_jobs() if r["status"] == READY)
                    if ids:
                        new = [] if op[2] is None else [{"key": op[2]}]
                        await engine.set_job_budgets(ids[op[1] % len(ids)], engine_bindings(new))
            except (Conflict, Unprocessable, NotFound):
                pass  # refused (a shrink below a cost, an in-flight rebind): nothing changed
            await settle(engine)
            for key in ("a", "b"):
                held = held_by(engine, key)
                assert held <= ceiling[key], f"{key}: {held} in flight over {ceiling[key]}"
                ceiling[key] = max(engine.budgets.get(key).policy.allocation, held)
            _assert_nothing_stalls(engine, store, worker)
            assert_book_matches_scan(engine, store)
        assert_store_consistent(engine, store)

    shared.run(body)


def _assert_nothing_stalls(engine: Engine, store: Store, worker) -> None:
    """With room in the stream, no ready job is left that could go now.

    Order within a budget and queue is strict (a costly job is not starved by
    cheaper ones behind it), so a job waits legitimately behind an earlier
    ready job of its queue that draws on one of its budgets.
    """
    if len(worker.in_flight) >= worker.prefetch:
        return
    ready = sorted(
        ((r["queue"], r["priority"], job_id, r) for job_id, r in store.iter_jobs()),
        key=lambda item: item[:3],
    )
    ahead: dict[tuple[str, str], bool] = {}  # (queue, budget) -> an earlier job waits on it
    for queue, _, job_id, record in ready:
        if record["status"] != READY:
            continue
        bindings = record.get("budgets", ())
        assert bindings, f"unbudgeted job {job_id} waits while the stream has room"
        behind = any(ahead.get((queue, b["key"])) for b in bindings)
        can_pay = all(
            held_by(engine, b["key"]) + b["cost"] <= engine.budgets.get(b["key"]).policy.allocation
            for b in bindings
        )
        assert behind or not can_pay, f"job {job_id} could take its tokens but is left waiting"
        for b in bindings:
            ahead[(queue, b["key"])] = True


def test_in_flight_records_match_the_store(shared):
    async def body(engine: Engine, store: Store):
        engine.budgets.create("b", slots(2))
        await engine.enqueue([job(budgets=[{"key": "b"}]) for _ in range(3)])
        engine.open_consumer(None, 10)
        await settle(engine)
        in_flight = {j for j, r in store.iter_jobs() if r["status"] == IN_FLIGHT}
        assert in_flight == set(engine.dispatcher.in_flight)

    shared.run(body)
