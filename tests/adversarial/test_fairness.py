"""Finding 12: one stream must not hold the whole global in-flight limit.

A worker that connects with prefetch=100000 and never reads (or never acks)
used to take every one of the --global-in-flight-limit slots, so every other
worker got nothing until it disconnected. The dispatcher now caps a stream at
half the limit and serves streams below their fair share first
(zizq/queue/dispatch.py); these tests hold it to that against a real server.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.adversarial.helpers import (
    AckingWorker,
    GreedyTake,
    assert_counters_match_scan,
    count_jobs,
    enqueue_many,
    wait_until,
)


def _stable_in_flight(url: str, settle: float = 0.5, timeout: float = 20.0) -> int:
    """The in-flight count once it has stopped moving for `settle` seconds."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = count_jobs(url, status="in_flight")
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle and now > 0:
            return now
        time.sleep(0.05)
    raise TimeoutError(f"in-flight count never settled (last {last})")


def test_greedy_non_reader_leaves_room_for_normal_workers(start_server):
    server = start_server()  # default --global-in-flight-limit 1024
    total = 3000
    enqueue_many(server.url, total)
    with GreedyTake(server.url, prefetch=100_000):
        greedy_held = _stable_in_flight(server.url)
        assert greedy_held <= 512, greedy_held  # ceil(1024 / 2)
        with AckingWorker(server.url, prefetch=10) as a, AckingWorker(server.url, prefetch=10) as b:
            started = time.monotonic()
            wait_until(
                lambda: len(a.acked) + len(b.acked) >= total - greedy_held,
                timeout=60,
                what="normal workers draining every job the greedy stream does not hold",
            )
            elapsed = time.monotonic() - started
            print(
                f"greedy held {greedy_held}; workers drained {len(a.acked)} + {len(b.acked)} "
                f"in {elapsed:.2f} s"
            )
            assert a.acked and b.acked, (len(a.acked), len(b.acked))
            assert not a.errors and not b.errors, a.errors + b.errors
            assert count_jobs(server.url, status="ready") == 0
            assert count_jobs(server.url, status="in_flight") == greedy_held
        # Dropping the greedy stream returns its jobs; a fresh worker drains them.
    with AckingWorker(server.url, prefetch=50) as c:
        wait_until(lambda: len(c.acked) >= greedy_held, timeout=60, what="greedy jobs returned")
    assert count_jobs(server.url) == 0
    assert_counters_match_scan(server.url)


def test_worker_arriving_after_greedy_and_busy_streams_is_served(start_server):
    """Freed slots go first to the stream below its share, not back to the big holders."""
    server = start_server("--global-in-flight-limit", "60")
    enqueue_many(server.url, 2000)
    with GreedyTake(server.url, prefetch=100_000):
        assert _stable_in_flight(server.url) == 30
        with AckingWorker(server.url, prefetch=1000) as big:
            wait_until(lambda: len(big.acked) >= 100, timeout=30, what="big worker running")
            with AckingWorker(server.url, prefetch=5) as late:
                wait_until(lambda: len(late.acked) >= 50, timeout=30, what="late worker served")
                assert not late.errors, late.errors


@pytest.mark.parametrize("limit", [1, 2, 3])
@pytest.mark.parametrize("streams", [2, 3])
def test_small_limits_starve_no_one(start_server, limit, streams):
    server = start_server("--global-in-flight-limit", str(limit))
    workers = [AckingWorker(server.url, prefetch=5) for _ in range(streams)]
    try:
        jobs = 20 * streams
        enqueue_many(server.url, jobs)
        wait_until(
            lambda: sum(len(w.acked) for w in workers) >= jobs,
            timeout=60,
            what=f"{jobs} jobs drained with limit {limit} and {streams} streams",
        )
        served = [len(w.acked) for w in workers]
        print(f"limit {limit}, {streams} streams: {served}")
        assert all(served), served
        assert sum(served) == jobs
    finally:
        for worker in workers:
            worker.close()
    assert_counters_match_scan(server.url)


@pytest.mark.parametrize(("limit", "normals"), [(2, 1), (3, 2), (4, 2)])
def test_small_limits_with_a_greedy_stream(start_server, limit, normals):
    """With limit >= 2 a non-reading stream never takes the last slot from the others."""
    server = start_server("--global-in-flight-limit", str(limit))
    enqueue_many(server.url, limit)  # enough for the greedy stream to take all it may
    with GreedyTake(server.url, prefetch=100_000):
        held = _stable_in_flight(server.url, settle=0.3)
        assert held == (limit + 1) // 2, held
        workers = [AckingWorker(server.url, prefetch=5) for _ in range(normals)]
        try:
            # Only now the bulk of the work: every worker is connected, so none can
            # have drained it all before another one arrived.
            enqueue_many(server.url, 40)
            wait_until(
                lambda: sum(len(w.acked) for w in workers) >= limit + 40 - held,
                timeout=60,
                what="normal workers draining around the greedy stream",
            )
            served = [len(w.acked) for w in workers]
            print(f"limit {limit}, greedy held {held}, normal workers {served}")
            assert all(served), served
        finally:
            for worker in workers:
                worker.close()


def test_unsent_jobs_of_stalled_streams_go_to_a_waiting_worker(start_server):
    """Two non-reading streams fill the whole limit; a third worker is still served.

    Jobs handed to a stream after its socket stopped draining never leave the
    server; when the limit is full and a stream below its share waits, those
    are taken back and go to it.
    """
    server = start_server("--global-in-flight-limit", "20")
    payload = {"blob": "x" * 1_000_000}  # a few jobs fill the socket buffers
    with GreedyTake(server.url, rcvbuf=4096), GreedyTake(server.url, rcvbuf=4096):
        with httpx.Client(base_url=server.url, timeout=30) as client:
            # One job per pass, so the streams' writers block partway through.
            for _ in range(40):
                response = client.post(
                    "/jobs", json={"queue": "q", "type": "t", "payload": payload}
                )
                assert response.status_code == 201, response.text
        assert _stable_in_flight(server.url, settle=0.5) == 20  # both greedy streams at 10
        with AckingWorker(server.url, prefetch=5) as worker:
            wait_until(lambda: len(worker.acked) >= 20, timeout=60, what="worker served")
            assert not worker.errors, worker.errors
            print(f"worker drained {len(worker.acked)} with the limit held by stalled streams")
    assert_counters_match_scan(server.url)
