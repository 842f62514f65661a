"""Races on the admin `/events` WebSocket's `delete_job` (docs/events-protocol.md).

Two viewers deleting the same job at once, and a viewer deleting an in-flight job while
its worker acks it. Each round lines the two sides up on a barrier so that both requests
reach the server together; a viewer follows each `delete_job` with a `find` (answered in
order on its connection), so whether its delete failed is known from the `error` that
came before the `find_result` or not. Every read has a timeout.
"""

from __future__ import annotations

import concurrent.futures
import threading

import httpx

from tests.adversarial.helpers import assert_counters_match_scan, counter_counts
from tests.e2e.test_events import Viewer
from tests.e2e.zizq_process import Api, TakeStream, ZizqServer

ROUNDS = 40
STEP_S = 10.0  # the longest one side of a round may take
NOT_FOUND = "job not found"
PING = {"type": "find", "list": "ready", "anchor": {"kind": "start"}, "direction": "forward"}
PING_QUERY = {"queues": ["no queue has this name"]}


def delete_and_ping(viewer: Viewer, job_id: str) -> str | None:
    """Send `delete_job` then a `find`: the delete's error text, or None when it succeeded."""
    viewer.send({"type": "delete_job", "id": job_id})
    viewer.send({**PING, "query": PING_QUERY, "limit": 1})
    error = None
    while True:
        message = viewer.recv(STEP_S)
        if message["event"] == "find_result":
            assert message["matched_position"] is None
            return error
        if message["event"] == "error":
            assert error is None, f"two errors for one delete: {error!r}, {message}"
            assert message.get("id") == job_id, message
            error = message["error"]


def no_server_errors(server: ZizqServer) -> None:
    output = server.output
    assert "Traceback" not in output and " ERROR " not in output, output[-4000:]


def last_status(viewer: Viewer) -> dict:
    """The `server` status of a fresh answer on this connection."""
    viewer.send({**PING, "query": PING_QUERY, "limit": 1})
    return viewer.event("find_result", STEP_S)["server"]


def test_two_viewers_deleting_the_same_job(server: ZizqServer):
    with Api(server.url) as api:
        kept = [api.enqueue(queue="keep", type="k")["id"] for _ in range(5)]
        doomed = [
            api.enqueue(queue="race", type="r", payload={"n": n})["id"] for n in range(ROUNDS)
        ]
        viewers = [Viewer(server), Viewer(server)]
        try:
            for viewer in viewers:
                assert viewer.event("job_snapshot")["server"]["total_ready"] == ROUNDS + 5
            barrier = threading.Barrier(2, timeout=STEP_S)

            def side(viewer: Viewer) -> list[str | None]:
                results = []
                for job_id in doomed:
                    barrier.wait()
                    results.append(delete_and_ping(viewer, job_id))
                return results

            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                first, second = pool.map(side, viewers, timeout=ROUNDS * STEP_S)
            for job_id, a, b in zip(doomed, first, second, strict=True):
                # Exactly one delete took effect; the other was told the job is gone.
                assert {a, b} == {None, NOT_FOUND}, (job_id, a, b)
                assert api.get(f"/jobs/{job_id}")[0] == 404
            for job_id in kept:
                assert api.get(f"/jobs/{job_id}")[0] == 200
            for viewer in viewers:  # both connections are still served, with true totals
                status = last_status(viewer)
                assert status["total_ready"] == len(kept), status
        finally:
            for viewer in viewers:
                viewer.close()
    counts = counter_counts(server.url)
    assert counts["ready"] == len(kept) and counts["in_flight"] == 0, counts
    assert_counters_match_scan(server.url)
    no_server_errors(server)


def test_delete_racing_the_ack_of_an_in_flight_job(server: ZizqServer):
    with Api(server.url) as api:
        # Half keep completed jobs for an hour (so a delete after the ack finds one), half
        # are forgotten when acked (the default).
        job_ids = [
            api.enqueue(
                queue="race",
                type="r",
                payload={"n": n},
                **({"retention": {"completed_ms": 3_600_000}} if n % 2 else {}),
            )["id"]
            for n in range(ROUNDS)
        ]
    take = TakeStream(server.url, queues="race", prefetch=ROUNDS)
    viewer = Viewer(server)
    try:
        assert sorted(job["id"] for job in take.jobs(ROUNDS)) == sorted(job_ids)
        viewer.event("job_snapshot")
        barrier = threading.Barrier(2, timeout=STEP_S)

        def deleter() -> list[str | None]:
            results = []
            for job_id in job_ids:
                barrier.wait()
                results.append(delete_and_ping(viewer, job_id))
            return results

        def acker() -> list[int]:
            codes = []
            with httpx.Client(base_url=server.url, timeout=STEP_S) as client:
                for job_id in job_ids:
                    barrier.wait()
                    codes.append(client.post(f"/jobs/{job_id}/success").status_code)
            return codes

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            deleting = pool.submit(deleter)
            acking = pool.submit(acker)
            deletes = deleting.result(ROUNDS * STEP_S)
            acks = acking.result(ROUNDS * STEP_S)
        outcomes = set()
        with Api(server.url) as api:
            for n, (job_id, deleted, acked) in enumerate(zip(job_ids, deletes, acks, strict=True)):
                assert acked in (200, 204, 404), (job_id, acked)  # never a 5xx
                assert deleted in (None, NOT_FOUND), (job_id, deleted)
                if acked == 404:  # the delete came first
                    assert deleted is None, job_id
                elif deleted == NOT_FOUND:  # the ack came first and forgot the job
                    assert n % 2 == 0, job_id
                status, body, _ = api.get(f"/jobs/{job_id}")
                # Deleted, or completed and then deleted, or completed and forgotten: in no
                # case left ready or in flight.
                assert status == 404, (job_id, status, body)
                outcomes.add((acked == 404, deleted is None))
        assert outcomes  # (which orders the scheduler gave us varies from run to run)
        status = last_status(viewer)
        assert status["total_in_flight"] == 0 and status["total_ready"] == 0, status
        take.expect_no_job(0.2)  # nothing went back to ready for the stream to take
    finally:
        viewer.close()
        take.close()
    counts = counter_counts(server.url)
    assert counts == dict.fromkeys(counts, 0), counts
    assert_counters_match_scan(server.url)
    no_server_errors(server)
