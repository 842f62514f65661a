"""The engine against a real store: dispatch, acks, failures, scheduling, restart."""

from __future__ import annotations

import asyncio
import random

from zizq.config import BackoffPolicy
from zizq.queue import Engine, EngineSettings
from zizq.queue.backoff import retry_delay_ms
from zizq.queue.spec import FailureSpec, parse_job


def spec(queue="q", priority=None, **extra):
    body = {"queue": queue, "type": "t", "payload": {"n": 1}, **extra}
    if priority is not None:
        body["priority"] = priority
    return parse_job(body)


async def take(consumer, timeout=1.0):
    return await consumer.next_deliveries(timeout)


def test_priority_then_fifo(make_engine, run):
    engine = make_engine()
    jobs = run(
        engine.enqueue([spec(priority=5), spec(priority=1), spec(priority=5), spec(priority=1)])
    )
    consumer = engine.open_consumer(None, 10)
    got = run(take(consumer))
    expected = [jobs[1]["id"], jobs[3]["id"], jobs[0]["id"], jobs[2]["id"]]
    assert [d.job_id for d in got] == expected


def test_prefetch_limits_unacked(make_engine, run):
    engine = make_engine()
    run(engine.enqueue([spec() for _ in range(5)]))
    consumer = engine.open_consumer(None, 2)
    first = run(take(consumer))
    assert len(first) == 2
    assert run(take(consumer, 0.05)) == []
    assert run(engine.ack(first[0].job_id))
    assert len(run(take(consumer))) == 1


def test_global_limit_across_consumers(make_engine, run):
    engine = make_engine(global_in_flight_limit=3)
    run(engine.enqueue([spec() for _ in range(10)]))
    a = engine.open_consumer(None, 5)
    b = engine.open_consumer(None, 5)
    got = run(take(a, 0.1)) + run(take(b, 0.1))
    assert len(got) == 3


def test_close_consumer_requeues_with_attempts_unchanged(make_engine, run, store):
    engine = make_engine()
    (job,) = run(engine.enqueue([spec()]))
    consumer = engine.open_consumer(None, 1)
    run(take(consumer))
    assert store.get_job(job["id"])["status"] == "in_flight"
    assert engine.close_consumer(consumer) == 1
    record = store.get_job(job["id"])
    assert record["status"] == "ready" and record["attempts"] == 0 and "dequeued_at" not in record
    other = engine.open_consumer(None, 1)
    assert [d.job_id for d in run(take(other))] == [job["id"]]


def test_ack_unknown_or_twice(make_engine, run):
    engine = make_engine()
    (job,) = run(engine.enqueue([spec()]))
    assert not run(engine.ack(job["id"]))  # ready, not in flight
    consumer = engine.open_consumer(None, 1)
    run(take(consumer))
    assert run(engine.ack_many([job["id"], "nope"])) == ["nope"]
    assert not run(engine.ack(job["id"]))


def test_failure_backoff_exact(make_engine, run):
    engine = make_engine()
    backoff = {"base_ms": 1000, "exponent": 2, "jitter_ms": 0}
    (job,) = run(engine.enqueue([spec(backoff=backoff)]))
    consumer = engine.open_consumer(None, 1)
    run(take(consumer))
    failed = run(engine.fail(job["id"], FailureSpec(message="boom")))
    assert failed["status"] == "scheduled" and failed["attempts"] == 1
    assert failed["ready_at"] - failed["failed_at"] == 1000 + 1 * 1000
    assert "payload" not in failed


def test_dead_after_retry_limit(make_engine, run):
    engine = make_engine()
    (job,) = run(engine.enqueue([spec(retry_limit=1)]))
    consumer = engine.open_consumer(None, 1)
    run(take(consumer))
    retried = run(engine.fail(job["id"], FailureSpec(message="1", retry_at=0)))
    assert retried["status"] == "ready" and retried["attempts"] == 1
    run(take(consumer))
    # retry_at is the caller's decision: it retries even past the limit (as the reference).
    again = run(engine.fail(job["id"], FailureSpec(message="2", retry_at=0)))
    assert again["status"] == "ready" and again["attempts"] == 2
    run(take(consumer))
    dead = run(engine.fail(job["id"], FailureSpec(message="3")))
    assert dead["status"] == "dead" and dead["attempts"] == 3


def test_kill_and_retry_at(make_engine, run, store):
    engine = make_engine()
    a, b = run(engine.enqueue([spec(), spec()]))
    consumer = engine.open_consumer(None, 2)
    run(take(consumer))
    dead = run(engine.fail(a["id"], FailureSpec(message="x", kill=True)))
    assert dead["status"] == "dead" and "purge_at" in dead
    again = run(engine.fail(b["id"], FailureSpec(message="x", retry_at=0)))
    assert again["status"] == "ready"
    assert [d.job_id for d in run(take(consumer))] == [b["id"]]
    errors = list(store.iter_errors(a["id"]))
    assert errors[0][0] == 1 and errors[0][1]["message"] == "x"


def test_scheduled_job_promoted_by_timer(make_engine, run):
    engine = make_engine()

    async def scenario():
        from zizq.queue.records import now_ms

        (job,) = await engine.enqueue([spec(ready_at=now_ms() + 150)])
        assert job["status"] == "scheduled"
        consumer = engine.open_consumer(None, 1)
        assert await consumer.next_deliveries(0.05) == []
        got = await consumer.next_deliveries(1.0)
        return job, got

    job, got = run(scenario())
    assert [d.job_id for d in got] == [job["id"]]


def test_restart_rebuilds_and_requeues(store, run):
    engine = Engine(store, EngineSettings())
    run(engine.start())
    ready, flying = run(engine.enqueue([spec(), spec()]))
    consumer = engine.open_consumer(None, 1)
    (delivered,) = run(take(consumer))
    # Simulate a crash: drop the engine without stop(), then rebuild from the same store.
    engine2 = Engine(store, EngineSettings())
    run(engine2.start())
    assert store.get_job(delivered.job_id)["status"] == "ready"
    consumer2 = engine2.open_consumer(None, 2)
    assert sorted(d.job_id for d in run(take(consumer2))) == sorted([ready["id"], flying["id"]])
    run(engine2.stop())


def test_reaper_removes_expired(make_engine, run, store):
    engine = make_engine(default_completed_retention_ms=1)
    (job,) = run(engine.enqueue([spec()]))
    consumer = engine.open_consumer(None, 1)
    run(take(consumer))
    run(engine.ack(job["id"]))
    assert store.get_job(job["id"])["status"] == "completed"
    run(asyncio.sleep(0.01))
    assert run(engine.reaper.reap()) == 1
    assert store.get_job(job["id"]) is None and store.get_payload(job["id"]) is None


def test_retry_delay_formula():
    policy = BackoffPolicy(base_ms=15000, exponent=4.0, jitter_ms=0)
    assert retry_delay_ms(policy, 1) == 16000
    assert retry_delay_ms(policy, 3) == 15000 + 81000
    jittered = BackoffPolicy(base_ms=0, exponent=0.0, jitter_ms=1000)
    delays = {retry_delay_ms(jittered, 2, random.Random(seed)) for seed in range(50)}
    assert all(1000 <= d <= 1000 + 2000 for d in delays) and len(delays) > 1


def test_finishing_a_job_deletes_its_errors(make_engine, run, store):
    engine = make_engine(default_completed_retention_ms=0)
    failed, clean = run(engine.enqueue([spec(), spec()]))
    consumer = engine.open_consumer(None, 10)
    assert len(run(take(consumer))) == 2
    run(engine.fail(failed["id"], FailureSpec(message="boom", retry_at=0)))
    assert len(list(store.errors.keys())) == 1
    assert len(run(take(consumer))) == 1  # the retry
    assert run(engine.ack(clean["id"]))
    assert run(engine.ack(failed["id"]))
    assert list(store.errors.keys()) == []  # nothing left behind by the failed job
    assert store.get_job(failed["id"]) is None and store.get_job(clean["id"]) is None


def test_only_a_job_that_failed_gets_a_range_delete_of_its_errors(store):
    for attempts, range_deletes in ((0, 0), (1, 1), (None, 1)):
        record = {"queue": "q", "type": "t", "status": "in_flight"}
        if attempts is not None:
            record["attempts"] = attempts
        batch = store.batch(deferred=True)
        batch.delete_job("0" * 25, record)
        assert [op[0] for op in batch.raw.ops].count(2) == range_deletes, attempts
