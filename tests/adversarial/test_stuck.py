"""Finding 5: a failed request leaves memory and disk as they were; no job is stranded.

`attempts ** exponent` once overflowed (500) and left the job in flight with
no consumer until a restart; a PATCH of an in-flight job with a 64 KiB queue
name mutated memory, then failed the write, with the same result. Both also
lost the stream's prefetch slot.
"""

from __future__ import annotations

import msgpack

from tests.e2e.zizq_process import Api, TakeStream
from zizq.queue.ids import new_id
from zizq.queue.records import now_ms
from zizq.store import Store


def _plant_job(root_dir, attempts: int) -> str:
    """Write a ready job with a huge attempts count straight into a stopped server's store."""
    store = Store(root_dir, cache_size=4 * 1024 * 1024)
    try:
        job_id = new_id(now_ms())
        record = {
            "queue": "q",
            "type": "t",
            "priority": 32768,
            "status": "ready",
            "ready_at": now_ms(),
            "attempts": attempts,
            "retry_limit": 1_000_000,
            "backoff": {"base_ms": 1000, "exponent": 100.0, "jitter_ms": 5000},
        }
        batch = store.batch()
        batch.put_job(job_id, record, None)
        batch.put_payload(job_id, msgpack.packb({}))
        store.write(batch, sync=True)
    finally:
        store.close()
    return job_id


def test_failure_whose_backoff_overflows_saturates_instead_of_stranding(start_server, tmp_path):
    # 5000 ** 100 overflows a float: the delay must saturate, not raise.
    root = tmp_path / "root"
    server = start_server(root_dir=root)
    server.stop()
    job_id = _plant_job(root, attempts=5000)
    server.start()
    api = Api(server.url)
    with TakeStream(server.url, queues="q", prefetch=1) as stream:
        assert stream.next_job()["id"] == job_id
        status, body, _ = api.post(f"/jobs/{job_id}/failure", {"message": "boom"})
        assert status == 200, body
        assert body["status"] == "scheduled" and body["attempts"] == 5001
        assert body["ready_at"] == 2**63 - 1  # saturated: "never", yet patchable
        # The stream's prefetch slot is free again: another job reaches it.
        other = api.enqueue("q", "t", {})
        assert stream.next_job()["id"] == other["id"]
    status, body, _ = api.request("PATCH", f"/jobs/{job_id}", {"ready_at": None})
    assert status == 200 and body["status"] == "ready"


def test_rejected_patch_of_an_in_flight_job_changes_nothing(server):
    api = Api(server.url)
    job = api.enqueue("q", "t", {"n": 1})
    with TakeStream(server.url, queues="q", prefetch=1) as stream:
        assert stream.next_job()["id"] == job["id"]
        before = api.get(f"/jobs/{job['id']}")[1]
        for bad in (
            {"queue": "x" * 65536},
            {"queue": " padded "},
            {"priority": 70000},
            {"queue": "ok", "priority": "high"},
            {"retention": {"dead_ms": -1}},
        ):
            status, body, _ = api.request("PATCH", f"/jobs/{job['id']}", bad)
            assert 400 <= status < 500, (bad, status, body)
            assert api.get(f"/jobs/{job['id']}")[1] == before
        # Still in flight, on this stream: the ack works and frees the slot.
        assert api.ack(job["id"]) == 204
        other = api.enqueue("q", "t", {})
        assert stream.next_job()["id"] == other["id"]


def test_in_flight_job_patched_then_acked_keeps_the_patch_until_completion(server):
    api = Api(server.url)
    job = api.enqueue("q", "t", {}, retention={"completed_ms": 60_000})
    with TakeStream(server.url, queues="q", prefetch=1) as stream:
        stream.next_job()
        status, body, _ = api.request("PATCH", f"/jobs/{job['id']}", {"priority": 3})
        assert status == 200 and body["priority"] == 3 and body["status"] == "in_flight"
        assert api.ack(job["id"]) == 204
    status, body, _ = api.get(f"/jobs/{job['id']}")
    assert status == 200 and body["status"] == "completed" and body["priority"] == 3
