"""Changing the budgets of every job a filter matches (/jobs/budgets[/{key}], pro, 0.7).

Queued jobs change; finished ones and jobs with nothing to change are skipped; in-flight
ones are reported as `blocked`; the book always equals a scan of the store.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_budget_engine import (
    assert_book_matches_scan,
    engine_bindings,
    job,
    settle,
    shared,  # noqa: F401 - the module's store fixture
    slots,
)
from zizq.queue import Engine
from zizq.queue.errors import InvalidInput, Unprocessable
from zizq.queue.query import JobFilter
from zizq.store import Store


def one(key: str, cost: int = 1, create_with: dict | None = None):
    raw = {"key": key, "cost": cost}
    if create_with is not None:
        raw["create_with"] = create_with
    (binding,) = engine_bindings([raw])
    return binding


def bindings_of(store: Store, job_id: str) -> list[dict]:
    return store.get_job(job_id).get("budgets", [])


def test_bind_skips_bound_finished_and_reports_in_flight(shared):  # noqa: F811
    async def body(engine: Engine, store: Store):
        engine.budgets.create("a", slots(100))
        engine.budgets.create("b", slots(100))
        busy, bound, plain, other_queue = await engine.enqueue(
            [job(), job(budgets=[{"key": "a"}]), job(), job(queue="elsewhere")]
        )
        worker = engine.open_consumer(None, 1)
        await settle(engine)
        assert worker.in_flight == {busy["id"]}
        done = (await engine.enqueue([job(queue="done")]))[0]
        finisher = engine.open_consumer(frozenset({"done"}), 1)
        await settle(engine)
        assert finisher.in_flight == {done["id"]} and await engine.ack(done["id"])

        change = await engine.bind_jobs_budget(
            JobFilter(queues=frozenset({"q"})), one("a", 2), False
        )
        assert change == {"changed": 1, "blocked": [busy["id"]]}
        assert bindings_of(store, plain["id"]) == [{"key": "a", "cost": 2}]
        assert bindings_of(store, bound["id"]) == [{"key": "a", "cost": 1}]  # POST skips
        assert bindings_of(store, other_queue["id"]) == []

        change = await engine.bind_jobs_budget(
            JobFilter(queues=frozenset({"q"})), one("a", 3), True
        )
        assert change == {"changed": 2, "blocked": [busy["id"]]}  # PUT replaces
        assert bindings_of(store, bound["id"]) == [{"key": "a", "cost": 3}]
        again = await engine.bind_jobs_budget(JobFilter(queues=frozenset({"q"})), one("a", 3), True)
        assert again["changed"] == 0  # nothing to change

        change = await engine.set_jobs_budget_cost(JobFilter(), "a", 5)
        assert change["changed"] == 2
        change = await engine.bind_jobs_budget(JobFilter(), one("b"), False)
        assert change["changed"] == 3  # plain, bound, other_queue (busy is blocked)
        change = await engine.unbind_jobs_budget(JobFilter(), "a")
        assert change["changed"] == 2 and bindings_of(store, plain["id"]) == [
            {"key": "b", "cost": 1}
        ]
        change = await engine.clear_jobs_budgets(JobFilter(queues=frozenset({"q"})))
        assert change == {"changed": 2, "blocked": []}  # busy has no bindings to clear
        assert bindings_of(store, bound["id"]) == []
        assert bindings_of(store, other_queue["id"]) == [{"key": "b", "cost": 1}]
        await settle(engine)
        assert_book_matches_scan(engine, store)

    shared.run(body)


def test_bad_bindings_are_refused_before_anything_is_written(shared):  # noqa: F811
    async def body(engine: Engine, store: Store):
        engine.budgets.create("small", slots(2))
        (queued,) = await engine.enqueue([job()])
        with pytest.raises(Unprocessable, match="does not exist"):
            await engine.bind_jobs_budget(JobFilter(), one("missing"), False)
        with pytest.raises(Unprocessable, match="can ever pay"):
            await engine.bind_jobs_budget(JobFilter(), one("small", 3), False)
        with pytest.raises(Unprocessable, match="can ever pay"):
            await engine.set_jobs_budget_cost(JobFilter(), "small", 3)
        assert bindings_of(store, queued["id"]) == []
        assert "missing" not in engine.budgets.budgets
        # create_with makes the budget in the write that binds it.
        policy = {"allocation": 4, "strategy": {"type": "while_in_flight"}}
        change = await engine.bind_jobs_budget(JobFilter(), one("new", 1, policy), False)
        assert change["changed"] == 1 and "new" in {k for k, _ in store.iter_budgets()}
        assert_book_matches_scan(engine, store)

    shared.run(body)


def test_a_job_past_the_binding_limit_is_refused(shared):  # noqa: F811
    from zizq.queue.budget_policy import MAX_BINDINGS

    async def body(engine: Engine, store: Store):
        keys = [f"k{i}" for i in range(MAX_BINDINGS + 1)]
        for key in keys:
            engine.budgets.create(key, slots(10))
        await engine.enqueue([job(budgets=[{"key": k} for k in keys[:MAX_BINDINGS]])])
        with pytest.raises(InvalidInput, match="more than"):
            await engine.bind_jobs_budget(JobFilter(), one(keys[-1]), False)
        assert_book_matches_scan(engine, store)

    shared.run(body)


operations = st.lists(
    st.tuples(
        st.sampled_from(["bind", "rebind", "cost", "unbind", "clear", "take", "ack", "enqueue"]),
        st.sampled_from(["a", "b"]),
        st.integers(min_value=1, max_value=3),
        st.sampled_from([None, "q", "r"]),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=operations)
def test_property_the_book_equals_a_scan_and_in_flight_jobs_never_change(shared, ops):  # noqa: F811
    async def body(engine: Engine, store: Store):
        engine.budgets.create("a", slots(50))
        engine.budgets.create("b", slots(50))
        await engine.enqueue([job(queue=q) for q in ("q", "r", "q", "r")])
        worker = engine.open_consumer(None, 3)
        for name, key, cost, queue in ops:
            job_filter = JobFilter(queues=None if queue is None else frozenset({queue}))
            before = {i: dict(e.record) for i, e in engine.dispatcher.in_flight.items()}
            if name == "bind":
                change = await engine.bind_jobs_budget(job_filter, one(key, cost), False)
            elif name == "rebind":
                change = await engine.bind_jobs_budget(job_filter, one(key, cost), True)
            elif name == "cost":
                change = await engine.set_jobs_budget_cost(job_filter, key, cost)
            elif name == "unbind":
                change = await engine.unbind_jobs_budget(job_filter, key)
            elif name == "clear":
                change = await engine.clear_jobs_budgets(job_filter)
            else:
                change = None
                if name == "take":
                    await settle(engine)
                elif name == "ack" and worker.in_flight:
                    await engine.ack(next(iter(worker.in_flight)))
                elif name == "enqueue":
                    await engine.enqueue([job(queue=queue or "q", budgets=[{"key": key}])])
            if change is not None:
                # In flight when its slice was looked at, and still (nothing acks meanwhile);
                # the dispatcher may hand out more jobs while the walk awaits.
                assert set(change["blocked"]) <= set(engine.dispatcher.in_flight)
                for job_id, record in before.items():  # in flight: untouched
                    stored = store.get_job(job_id)
                    assert stored is None or stored.get("budgets") == record.get("budgets")
            await settle(engine)
            assert_book_matches_scan(engine, store)

    shared.run(body)
