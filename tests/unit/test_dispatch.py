"""The dispatcher in-process against a real store: fair shares and a failed write."""

from __future__ import annotations

import asyncio
import logging

import pytest

from zizq.queue.dispatch import RETRY_AFTER_FAILED_WRITE_S, stream_limits
from zizq.queue.spec import parse_job


def spec(queue="q"):
    return parse_job({"queue": queue, "type": "t", "payload": {"n": 1}})


async def settle():
    """Let every pass scheduled with call_soon run."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("limit", "streams", "expected"),
    [
        (0, 3, (1 << 62, 1 << 62)),  # unlimited
        (1024, 1, (512, 512)),  # alone: half the limit stays free for newcomers
        (1024, 3, (342, 512)),
        (1, 1, (1, 1)),
        (1, 3, (1, 1)),  # never 0: a small limit must not starve everyone
        (2, 1, (1, 1)),
        (3, 1, (2, 2)),
        (3, 2, (2, 2)),
        (3, 3, (1, 2)),
    ],
)
def test_stream_limits(limit, streams, expected):
    assert stream_limits(limit, streams) == expected


def test_greedy_stream_holds_at_most_half(make_engine, run):
    engine = make_engine(global_in_flight_limit=10)
    run(engine.enqueue([spec() for _ in range(30)]))
    greedy = engine.open_consumer(None, 100_000)
    run(settle())
    assert len(greedy.in_flight) == 5
    worker = engine.open_consumer(None, 100)
    run(settle())
    assert len(worker.in_flight) == 5
    assert len(engine.dispatcher.in_flight) == 10


def test_freed_slots_go_first_to_streams_below_share(make_engine, run):
    # L=6: alone or in pairs a stream may hold 3; with three streams the share is 2.
    engine = make_engine(global_in_flight_limit=6)
    run(engine.enqueue([spec() for _ in range(30)]))
    a = engine.open_consumer(None, 100)
    b = engine.open_consumer(None, 100)
    run(settle())
    assert (len(a.in_flight), len(b.in_flight)) == (3, 3)
    run(a.next_deliveries(0.1)), run(b.next_deliveries(0.1))  # sent: never taken back
    late = engine.open_consumer(None, 100)
    run(settle())
    assert len(late.in_flight) == 0  # nothing free yet
    for holder in (a, b):
        # Whatever the rotation, the slot an ack frees goes to the stream below its share.
        assert run(engine.ack(next(iter(holder.in_flight))))
        run(settle())
    assert (len(a.in_flight), len(b.in_flight), len(late.in_flight)) == (2, 2, 2)
    # At their shares, freed slots are shared round-robin again.
    assert run(engine.ack(next(iter(a.in_flight))))
    run(settle())
    assert len(engine.dispatcher.in_flight) == 6


def test_lending_fills_the_limit_when_others_want_nothing(make_engine, run):
    # A stream on an empty queue counts in n but takes nothing: the other borrows up to the cap.
    engine = make_engine(global_in_flight_limit=8)
    run(engine.enqueue([spec("busy") for _ in range(20)]))
    engine.open_consumer(frozenset({"idle"}), 100)
    engine.open_consumer(frozenset({"idle2"}), 100)
    busy = engine.open_consumer(frozenset({"busy"}), 100)
    run(settle())
    assert len(busy.in_flight) == 4  # share would be 3; the cap is 4


def test_small_limit_serves_every_stream_in_turn(make_engine, run):
    engine = make_engine(global_in_flight_limit=1)
    run(engine.enqueue([spec() for _ in range(9)]))
    streams = [engine.open_consumer(None, 5) for _ in range(3)]
    served = {id(s): 0 for s in streams}
    for _ in range(9):
        run(settle())
        (holder,) = [s for s in streams if s.in_flight]
        served[id(holder)] += 1
        assert run(engine.ack(next(iter(holder.in_flight))))
    assert sorted(served.values()) == [3, 3, 3]


def test_failed_write_rolls_back_the_pass(make_engine, run, store, monkeypatch, caplog):
    engine = make_engine()
    jobs = run(engine.enqueue([spec() for _ in range(3)]))
    counts_before = dict(store.counts)
    real_write = store.write

    def failing_write(batch, sync=False):
        raise OSError("IO error: No space left on device")

    monkeypatch.setattr(store, "write", failing_write)
    caplog.set_level(logging.INFO, logger="zizq.dispatch")
    consumer = engine.open_consumer(None, 10)
    run(settle())
    other = engine.open_consumer(None, 10)  # a second pass fails too: logged once
    run(settle())
    assert consumer.in_flight == set() and other.in_flight == set()
    assert engine.dispatcher.in_flight == {}
    assert len(engine.ready) == 3
    assert dict(store.counts) == counts_before
    for job in jobs:
        record = store.get_job(job["id"])
        assert record["status"] == "ready" and "dequeued_at" not in record
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]

    # Writes work again: the retry timer dispatches without any other event.
    monkeypatch.setattr(store, "write", real_write)
    run(asyncio.sleep(RETRY_AFTER_FAILED_WRITE_S + 0.3))
    delivered = run(consumer.next_deliveries(0.1)) + run(other.next_deliveries(0.1))
    assert sorted(d.job_id for d in delivered) == sorted(job["id"] for job in jobs)
    for job in jobs:
        assert store.get_job(job["id"])["status"] == "in_flight"
    assert any("succeed again" in r.getMessage() for r in caplog.records)


def test_unsent_jobs_are_taken_back_for_a_hungry_stream(make_engine, run, store):
    # L=6: two streams hold 3 each (their share as a pair); a third arrives (share 2).
    engine = make_engine(global_in_flight_limit=6)
    run(engine.enqueue([spec() for _ in range(10)]))
    a = engine.open_consumer(None, 100)
    b = engine.open_consumer(None, 100)
    run(settle())
    assert (len(a.in_flight), len(b.in_flight)) == (3, 3)
    # Nothing has been read from a's or b's outbox: those jobs never left the server.
    late = engine.open_consumer(None, 100)
    run(settle())
    assert (len(a.in_flight), len(b.in_flight), len(late.in_flight)) == (2, 2, 2)
    assert (a.undelivered, b.undelivered, late.undelivered) == (2, 2, 2)
    sent = {d.job_id for c in (a, b, late) for d in run(c.next_deliveries(0.1))}
    assert len(sent) == 6  # every job handed out exactly once
    for job_id in sent:
        assert store.get_job(job_id)["status"] == "in_flight"
    assert len(engine.dispatcher.in_flight) == 6


def test_sent_jobs_are_never_taken_back(make_engine, run):
    engine = make_engine(global_in_flight_limit=6)
    run(engine.enqueue([spec() for _ in range(10)]))
    a = engine.open_consumer(None, 100)
    b = engine.open_consumer(None, 100)
    run(settle())
    got = run(a.next_deliveries(0.1)) + run(b.next_deliveries(0.1))  # written to the wire
    assert len(got) == 6
    late = engine.open_consumer(None, 100)
    run(settle())
    assert len(late.in_flight) == 0 and len(engine.dispatcher.in_flight) == 6
    assert run(engine.ack(got[0].job_id))
    run(settle())
    assert len(late.in_flight) == 1  # the freed slot goes to the stream below its share


def test_take_back_only_jobs_the_hungry_stream_wants(make_engine, run):
    engine = make_engine(global_in_flight_limit=6)
    run(engine.enqueue([spec("x") for _ in range(10)]))
    a = engine.open_consumer(None, 100)
    b = engine.open_consumer(None, 100)
    run(settle())
    late = engine.open_consumer(frozenset({"other"}), 100)
    run(settle())
    assert (len(a.in_flight), len(b.in_flight), len(late.in_flight)) == (3, 3, 0)
    assert (a.undelivered, b.undelivered) == (3, 3)


def test_outbox_hands_out_at_most_limit_and_keeps_the_rest(make_engine, run):
    # Payloads are read when a job is written out, so a stream takes its outbox a
    # group at a time; what it has not taken stays reclaimable and holds no payload.
    engine = make_engine(global_in_flight_limit=0)
    run(engine.enqueue([spec() for _ in range(40)]))
    consumer = engine.open_consumer(None, 40)
    run(settle())
    first = run(consumer.next_deliveries(1.0, 16))
    assert len(first) == 16 and not hasattr(first[0], "payload")
    rest = run(consumer.next_deliveries(1.0))
    assert len(rest) == 24
    assert len({d.job_id for d in first + rest}) == 40
    payloads = engine.payloads_of([d.job_id for d in first[:2]])
    assert all(isinstance(p, bytes) for p in payloads)
