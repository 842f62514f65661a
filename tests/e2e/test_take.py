"""GET /jobs/take and the acks: ordering, queue selection, prefetch, fairness, requeue on
disconnect, heartbeats, the global in-flight limit, bulk success."""

from __future__ import annotations

import time

import httpx
import msgpack
import orjson
import pytest

from tests.e2e.helpers_semantics import (
    UNKNOWN_ID,
    assert_error,
    collect,
    get_job,
    now_ms,
    wait_status,
)
from tests.e2e.zizq_process import Api, TakeStream


@pytest.fixture
def json_api(server):
    with Api(server.url) as api:
        yield api


def test_priority_then_fifo_across_queues(server, json_api):
    plan = [("ord-a", 500), ("ord-b", 100), ("ord-a", 100), ("ord-b", 500), ("ord-a", 32768)]
    plan += [("ord-b", 100), ("ord-a", 0), ("ord-b", 32768), ("ord-c", 0)]
    jobs = [json_api.enqueue(q, "t", {"i": i}, priority=p) for i, (q, p) in enumerate(plan)]
    jobs.append(json_api.enqueue("ord-a", "t", {"i": len(plan)}))  # default priority 32768
    wanted = [j for j in jobs if j["queue"] in ("ord-a", "ord-b")]
    expected = [j["id"] for j in sorted(wanted, key=lambda j: (j["priority"], j["id"]))]
    with TakeStream(server.url, queues="ord-a,ord-b", prefetch=100) as stream:
        taken = stream.jobs(len(expected), timeout=5)
        stream.expect_no_job(0.3)
    assert [t["id"] for t in taken] == expected
    assert [t["payload"]["i"] for t in taken] == [
        jobs.index(j) for j in sorted(wanted, key=lambda j: (j["priority"], j["id"]))
    ]


def test_taken_job_shape(server, json_api):
    job = json_api.enqueue("shape", "greet", {"x": [1, 2]}, priority=3, retry_limit=4)
    before = now_ms()
    with TakeStream(server.url, queues="shape") as stream:
        taken = stream.next_job(5)
    expected = {k: v for k, v in job.items() if k not in ("duplicate", "folded")}
    expected.update(status="in_flight", payload={"x": [1, 2]})
    dequeued_at = taken.pop("dequeued_at")
    assert before <= dequeued_at <= now_ms()
    assert taken == expected


def test_queue_filter(server, json_api):
    a = json_api.enqueue("flt-a", "t", {})
    b = json_api.enqueue("flt-b", "t", {})
    c = json_api.enqueue("flt-c", "t", {})
    with TakeStream(server.url, queues="flt-a,flt-b", prefetch=10) as stream:
        got = {j["id"] for j in stream.jobs(2, timeout=5)}
        stream.expect_no_job(0.3)
        late_c = json_api.enqueue("flt-c", "t", {})
        late_a = json_api.enqueue("flt-a", "t", {})
        assert stream.next_job(5)["id"] == late_a["id"]
        stream.expect_no_job(0.2)
    assert got == {a["id"], b["id"]}
    assert get_job(json_api, c["id"])["status"] == "ready"
    assert get_job(json_api, late_c["id"])["status"] == "ready"


def test_no_queue_takes_from_all(server, json_api):
    ids = {json_api.enqueue(q, "t", {})["id"] for q in ("all-1", "all-2", "all.three", "ünï")}
    with TakeStream(server.url, prefetch=10) as stream:
        got = {j["id"] for j in stream.jobs(4, timeout=5)}
        stream.expect_no_job(0.2)
        later = json_api.enqueue("all-5", "t", {})
        assert stream.next_job(5)["id"] == later["id"]
    assert got == ids


def test_prefetch_bounds_unacked_jobs(server, json_api):
    for i in range(6):
        json_api.enqueue("pf", "t", {"i": i})
    with TakeStream(server.url, queues="pf", prefetch=3) as stream:
        first = stream.jobs(3, timeout=5)
        stream.expect_no_job(0.5)
        assert json_api.ack(first[0]["id"]) == 204
        fourth = stream.next_job(5)
        stream.expect_no_job(0.4)
        # A failure frees a slot too.
        status, _, _ = json_api.post(
            f"/jobs/{first[1]['id']}/failure",
            {"message": "x", "retry_at": now_ms() + 3_600_000},
        )
        assert status == 200
        fifth = stream.next_job(5)
        stream.expect_no_job(0.4)
    assert [j["payload"]["i"] for j in [*first, fourth, fifth]] == [0, 1, 2, 3, 4]


def test_default_prefetch_is_one(server, json_api):
    a = json_api.enqueue("pf1", "t", {})
    b = json_api.enqueue("pf1", "t", {})
    with TakeStream(server.url, queues="pf1") as stream:
        assert stream.next_job(5)["id"] == a["id"]
        stream.expect_no_job(0.4)
        assert json_api.ack(a["id"]) == 204
        assert stream.next_job(5)["id"] == b["id"]


def test_waiting_workers_are_served_fairly(server, json_api):
    streams = [TakeStream(server.url, queues="fair", prefetch=1) for _ in range(3)]
    try:
        time.sleep(0.1)  # all three are waiting before the first job arrives
        ids = []
        for i in range(3):
            ids.append(json_api.enqueue("fair", "t", {"i": i})["id"])
            time.sleep(0.05)
        got = collect(streams, 0.6)
        assert [len(g) for g in got] == [1, 1, 1], got
        assert {g[0]["id"] for g in got} == set(ids)
    finally:
        for stream in streams:
            stream.close()


def test_each_job_goes_to_exactly_one_worker(server, json_api):
    streams = [TakeStream(server.url, queues="once", prefetch=10) for _ in range(3)]
    try:
        _, body, _ = json_api.post(
            "/jobs/bulk",
            {"jobs": [{"queue": "once", "type": "t", "payload": i} for i in range(25)]},
        )
        ids = [j["id"] for j in body["jobs"]]
        got = collect(streams, 0.8)
        all_ids = [j["id"] for g in got for j in g]
        assert len(all_ids) == 25 and set(all_ids) == set(ids[:25])
        assert all(len(g) <= 10 for g in got), [len(g) for g in got]
    finally:
        for stream in streams:
            stream.close()


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2c"])
def test_disconnect_returns_jobs_to_ready(server, http2):
    with Api(server.url, http2=http2) as api:
        jobs = [api.enqueue("drop", "t", {"i": i}) for i in range(3)]
        # One job has failed once before: its attempts must stay 1.
        first = TakeStream(server.url, queues="drop", http2=http2)
        taken = first.next_job(5)
        assert api.post(f"/jobs/{taken['id']}/failure", {"message": "m", "retry_at": 0})[0] == 200
        first.close()
        stream = TakeStream(server.url, queues="drop", prefetch=2, fmt="msgpack", http2=http2)
        held = stream.jobs(2, timeout=5)
        for job in held:
            assert get_job(api, job["id"])["status"] == "in_flight"
        attempts = {j["id"]: j["attempts"] for j in held}
        started = time.monotonic()
        stream.close()
        for job in held:
            back = wait_status(api, job["id"], "ready", timeout=1.0)
            assert back["attempts"] == attempts[job["id"]]
        assert time.monotonic() - started < 1.5
        with TakeStream(server.url, queues="drop", prefetch=5, http2=http2) as other:
            again = other.jobs(3, timeout=5)
            assert {j["id"] for j in again} == {j["id"] for j in jobs}
            assert {j["id"]: j["attempts"] for j in again if j["id"] in attempts} == attempts


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_heartbeats_on_idle_stream(start_server, fmt):
    server = start_server("--heartbeat-interval", "300ms")
    with TakeStream(server.url, queues="hb", fmt=fmt) as stream:
        expected = (
            "application/vnd.zizq.msgpack-stream" if fmt == "msgpack" else "application/x-ndjson"
        )
        assert stream.status == 200
        assert (stream.content_type or "").split(";")[0].strip() == expected
        times = []
        deadline = time.monotonic() + 1.1
        while time.monotonic() < deadline:
            try:
                item = stream.next_item(deadline - time.monotonic())
            except TimeoutError:
                break
            assert item is TakeStream.HEARTBEAT, item
            times.append(time.monotonic())
        assert len(times) >= 3, f"only {len(times)} heartbeats in 1.1 s at 300ms"
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert max(gaps) < 0.6, gaps


def test_heartbeat_default_interval_not_too_fast(server):
    with TakeStream(server.url, queues="hb-default") as stream:
        beats = 0
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                item = stream.next_item(deadline - time.monotonic())
            except TimeoutError:
                break
            beats += item is TakeStream.HEARTBEAT
        assert beats <= 1, "default heartbeat interval is 3 s"


def test_raw_stream_formats(server, json_api):
    """Byte-level check of both stream framings, and NDJSON as the default."""
    job = json_api.enqueue("raw", "t", {"k": "v"})
    with httpx.Client(base_url=server.url, timeout=5) as http:
        with http.stream("GET", "/jobs/take", params={"queue": "raw"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/x-ndjson")
            buffer = b""
            for chunk in response.iter_raw():
                buffer += chunk
                lines = [line for line in buffer.split(b"\n")[:-1] if line.strip()]
                if lines:
                    break
        assert orjson.loads(lines[0])["id"] == job["id"]
    wait_status(json_api, job["id"], "ready")
    with httpx.Client(base_url=server.url, timeout=5) as http:
        headers = {"accept": "application/vnd.zizq.msgpack-stream"}
        with http.stream("GET", "/jobs/take", params={"queue": "raw"}, headers=headers) as response:
            assert response.headers["content-type"].startswith(
                "application/vnd.zizq.msgpack-stream"
            )
            buffer = b""
            frames = []
            for chunk in response.iter_raw():
                buffer += chunk
                while len(buffer) >= 4:
                    size = int.from_bytes(buffer[:4], "big")
                    if len(buffer) < 4 + size:
                        break
                    if size:
                        frames.append(msgpack.unpackb(buffer[4 : 4 + size]))
                    buffer = buffer[4 + size :]
                if frames:
                    break
    assert frames[0]["id"] == job["id"] and frames[0]["payload"] == {"k": "v"}


def test_global_in_flight_limit_across_connections(start_server):
    server = start_server("--global-in-flight-limit", "3")
    with Api(server.url, http2=True) as api:
        for i in range(8):
            api.enqueue("gl", "t", {"i": i})
        streams = [TakeStream(server.url, queues="gl", prefetch=5) for _ in range(2)]
        try:
            got = collect(streams, 0.6)
            held = [j for g in got for j in g]
            assert len(held) == 3, got
            assert api.ack(held[0]["id"]) == 204
            more = collect(streams, 0.6)
            assert sum(map(len, more)) == 1, more
            _, body, _ = api.post("/jobs/success", {"ids": [j["id"] for j in held[1:]]})
            more2 = collect(streams, 0.6)
            assert sum(map(len, more2)) == 2, more2
        finally:
            for stream in streams:
                stream.close()


def test_bulk_success(api, server):
    queue = f"bulk-ack-{api.fmt}-{api.http2}"
    ids = [api.enqueue(queue, "t", {"i": i})["id"] for i in range(5)]
    with TakeStream(server.url, queues=queue, prefetch=5, fmt=api.fmt, http2=api.http2) as stream:
        assert {j["id"] for j in stream.jobs(5, timeout=5)} == set(ids)
        status, body, response = api.post("/jobs/success", {"ids": ids[:3]})
        assert status == 204 and response.content == b"", (status, body)
        for job_id in ids[:3]:
            assert get_job(api, job_id) is None
        bogus = "not-a-job"
        status, body, _ = api.post(
            "/jobs/success", {"ids": [ids[3], bogus, ids[0], ids[4], UNKNOWN_ID]}
        )
        assert status == 422, (status, body)
        assert body == {"not_found": [bogus, ids[0], UNKNOWN_ID]}
        assert get_job(api, ids[3]) is None and get_job(api, ids[4]) is None
        # The acks freed the stream's slots, and nothing is left to deliver.
        stream.expect_no_job(0.2)
        # An empty list is a 400, as in the reference (handlers.rs:872-880).
        status, body, _ = api.post("/jobs/success", {"ids": []})
        assert status == 400 and "ids" in body["error"], (status, body)


def test_single_success_not_in_flight_is_404(server, json_api):
    job = json_api.enqueue("ack404", "t", {})
    status, body, _ = json_api.post(f"/jobs/{job['id']}/success")
    assert_error(status, body, 404)
    assert get_job(json_api, job["id"])["status"] == "ready"
    with TakeStream(server.url, queues="ack404") as stream:
        stream.next_job(5)
        assert json_api.ack(job["id"]) == 204
        status, body, _ = json_api.post(f"/jobs/{job['id']}/success")
        assert_error(status, body, 404)
