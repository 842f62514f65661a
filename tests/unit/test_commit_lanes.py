"""Commit lanes: small enqueues and acks of one loop turn share one RocksDB write.

Against a real store: the coalesced write is atomic, answers go out only after
it, `landed` runs in join order, a failure reaches every request of the write
(and nothing of them is stored), and a batch size of 1 writes each alone.
"""

from __future__ import annotations

import asyncio

import pytest

from zizq.queue.spec import parse_job
from zizq.store import Lane, StoreUnavailable


def job(n: int):
    return parse_job({"queue": "q", "type": "t", "payload": {"n": n}})


def test_concurrent_enqueues_share_writes_and_all_land(make_engine, run):
    engine = make_engine()
    before = engine.committer.coalesced_writes

    async def burst():
        return await asyncio.gather(*(engine.enqueue([job(i)]) for i in range(200)))

    views = run(burst())
    writes = engine.committer.coalesced_writes - before
    assert 1 <= writes < 200  # requests of one loop turn went out together
    ids = [v["id"] for (v,) in views]
    assert len(set(ids)) == 200
    assert all(engine.store.get_job(job_id) is not None for job_id in ids)
    assert sum(engine.store.counts.values()) == 200
    assert len(engine.ready) == 200  # every landed() ran


def test_batch_size_one_writes_each_alone(make_engine, run):
    engine = make_engine(enqueue_batch_size=1)
    before = engine.committer.coalesced_writes

    async def burst():
        await asyncio.gather(*(engine.enqueue([job(i)]) for i in range(20)))

    run(burst())
    assert engine.committer.coalesced_writes - before == 20


def test_landed_runs_in_join_order_before_the_answers(make_engine, run):
    engine = make_engine()
    order: list[int] = []

    async def one(index: int):
        batch = engine.store.batch(deferred=True)
        batch.put_payload(f"{index:025d}", b"\x90")
        await engine.committer.commit(
            batch,
            engine.settings.enqueue_commit_mode,
            lambda: order.append(index),
            lane=Lane.ENQUEUE,
        )
        assert index in order  # its own landed ran before it was answered
        return index

    async def burst():
        return await asyncio.gather(*(one(i) for i in range(50)))

    assert run(burst()) == list(range(50))
    assert order == list(range(50))


def test_a_failed_write_fails_every_request_and_stores_nothing(make_engine, run):
    engine = make_engine()
    failed: list[int] = []
    landed: list[int] = []

    async def one(index: int):
        batch = engine.store.batch(deferred=True)
        batch.put_payload(f"{index:025d}", b"\x90")
        await engine.committer.commit(
            batch,
            engine.settings.enqueue_commit_mode,
            lambda: landed.append(index),
            lambda: failed.append(index),
            lane=Lane.ENQUEUE,
        )

    async def burst():
        tasks = [asyncio.ensure_future(one(i)) for i in range(10)]
        await asyncio.sleep(0)  # all ten joined the lane; the write is due next turn
        engine.store.failure = "disk full (test)"
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        results = run(burst())
    finally:
        engine.store.failure = None
    assert all(isinstance(r, StoreUnavailable) for r in results)
    assert sorted(failed) == list(range(10)) and landed == []
    assert all(engine.store.get_payload(f"{i:025d}") is None for i in range(10))
    assert engine.committer.outstanding == 0


def test_a_cancelled_request_still_lands_with_the_others(make_engine, run):
    engine = make_engine()

    async def scenario():
        first = asyncio.ensure_future(engine.enqueue([job(1)]))
        second = asyncio.ensure_future(engine.enqueue([job(2)]))
        await asyncio.sleep(0)
        first.cancel()  # the client went away: its write still happens, memory follows
        await asyncio.gather(first, second, return_exceptions=True)
        await engine.committer.drain()

    run(scenario())
    assert sum(engine.store.counts.values()) == 2
    assert len(engine.ready) == 2


@pytest.mark.parametrize("size", [1, 3])
def test_acks_coalesce_and_free_their_slots(make_engine, run, size):
    engine = make_engine(complete_batch_size=size)
    run(engine.enqueue([job(i) for i in range(30)], bulk=True))
    worker = engine.open_consumer(None, 100)

    async def scenario():
        for _ in range(5):
            await asyncio.sleep(0)
        held = sorted(worker.in_flight)
        results = await asyncio.gather(*(engine.ack(job_id) for job_id in held))
        return held, results

    held, results = run(scenario())
    assert len(held) == 30 and all(results)
    assert sum(engine.store.counts.values()) == 0  # completed jobs are purged at once
    assert not worker.in_flight and not engine.dispatcher.in_flight
