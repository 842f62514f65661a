"""POST /jobs, POST /jobs/bulk and GET /jobs/{id} over every protocol combination."""

from __future__ import annotations

import pytest

from tests.e2e.helpers_semantics import ID_RE, UNKNOWN_ID, assert_error, get_job, now_ms
from tests.e2e.zizq_process import MEDIA, TakeStream, ZizqServer

BASE_KEYS = {
    *("id", "queue", "type", "priority", "status", "ready_at", "attempts"),
    *("duplicate", "folded"),
}
ENQUEUE_FLAGS = ("duplicate", "folded")
PAYLOAD = {
    "text": "héllo ✓ 日本",
    "n": 42,
    "big": 2**53,
    "f": 2.5,
    "list": [1, "two", None, True, False, {"deep": []}],
    "obj": {"k": {"kk": "v"}},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (overrides conftest's): these tests use distinct queues
    and never depend on the server being empty."""
    zizq = ZizqServer(tmp_path_factory.mktemp("enqueue") / "root").start()
    yield zizq
    zizq.stop()


def _content_type(response) -> str:
    return response.headers.get("content-type", "").split(";")[0].strip()


def test_enqueue_minimal_response_shape(api):
    before = now_ms()
    status, job, response = api.post(
        "/jobs", {"queue": "enq-min", "type": "greet", "payload": {"a": 1}}
    )
    after = now_ms()
    assert status == 201, (status, job)
    assert _content_type(response) == MEDIA[api.fmt]
    assert set(job) == BASE_KEYS, job
    assert ID_RE.match(job["id"]), job["id"]
    assert job["queue"] == "enq-min"
    assert job["type"] == "greet"
    assert job["priority"] == 32768
    assert job["status"] == "ready"
    assert isinstance(job["ready_at"], int) and before <= job["ready_at"] <= after
    assert job["attempts"] == 0
    assert job["duplicate"] is False


def test_enqueue_echoes_optional_fields(api):
    ready_at = now_ms() + 3_600_000
    body = {
        "queue": "enq-opt",
        "type": "later",
        "payload": None,
        "priority": 7,
        "ready_at": ready_at,
        "retry_limit": 3,
        "backoff": {"base_ms": 250, "exponent": 1.5, "jitter_ms": 0},
        "retention": {"completed_ms": 1000, "dead_ms": 2000},
    }
    status, job, _ = api.post("/jobs", body)
    assert status == 201, (status, job)
    assert set(job) == BASE_KEYS | {"retry_limit", "backoff", "retention"}, job
    assert job["status"] == "scheduled"
    assert job["ready_at"] == ready_at
    assert job["priority"] == 7
    assert job["retry_limit"] == 3
    assert job["backoff"] == {"base_ms": 250, "exponent": 1.5, "jitter_ms": 0}
    assert job["retention"] == {"completed_ms": 1000, "dead_ms": 2000}
    assert "payload" not in job


def test_enqueue_partial_retention_and_priority_bounds(api):
    status, job, _ = api.post(
        "/jobs",
        {"queue": "enq-ret", "type": "t", "payload": 1, "priority": 0, "retention": {"dead_ms": 0}},
    )
    assert status == 201, (status, job)
    assert job["retention"] == {"dead_ms": 0}
    assert job["priority"] == 0
    assert "retry_limit" not in job and "backoff" not in job
    status, job, _ = api.post(
        "/jobs", {"queue": "enq-ret", "type": "t", "payload": "s", "priority": 65535}
    )
    assert status == 201 and job["priority"] == 65535, (status, job)


def test_past_ready_at_is_ready(api):
    past = now_ms() - 60_000
    job = api.enqueue("enq-past", "t", {}, ready_at=past)
    assert job["status"] == "ready"
    assert job["ready_at"] <= now_ms()


def test_get_job_with_payload(api):
    job = api.enqueue("enq-get", "greet", PAYLOAD, retry_limit=5)
    status, got, response = api.get(f"/jobs/{job['id']}")
    assert status == 200, (status, got)
    assert _content_type(response) == MEDIA[api.fmt]
    assert got["payload"] == PAYLOAD
    expected = {k: v for k, v in job.items() if k not in ENQUEUE_FLAGS}
    assert {k: v for k, v in got.items() if k != "payload"} == expected
    # `duplicate` and `folded` are only part of enqueue responses.


def test_get_unknown_job_is_404(api):
    for job_id in (UNKNOWN_ID, "nope", "03fr1jkpcsipbsckqj0y6pgr7"):
        status, body, _ = api.get(f"/jobs/{job_id}")
        assert_error(status, body, 404)


def test_bulk_enqueue_in_input_order(api):
    inputs = [
        {"queue": "bulk-b", "type": "t1", "payload": {"i": 0}, "priority": 900},
        {"queue": "bulk-a", "type": "t2", "payload": {"i": 1}},
        {"queue": "bulk-c", "type": "t3", "payload": [1, 2], "priority": 5, "retry_limit": 1},
        {"queue": "bulk-a", "type": "t4", "payload": "x", "ready_at": now_ms() + 3_600_000},
    ]
    before = now_ms()
    status, body, response = api.post("/jobs/bulk", {"jobs": inputs})
    assert status == 201, (status, body)
    assert _content_type(response) == MEDIA[api.fmt]
    assert set(body) == {"jobs"}
    jobs = body["jobs"]
    assert len(jobs) == len(inputs)
    for given, job in zip(inputs, jobs, strict=True):
        assert ID_RE.match(job["id"])
        assert job["queue"] == given["queue"] and job["type"] == given["type"]
        assert job["priority"] == given.get("priority", 32768)
        assert job["attempts"] == 0 and job["duplicate"] is False
        assert "payload" not in job
        extra = {"retry_limit"} if "retry_limit" in given else set()
        assert set(job) == BASE_KEYS | extra, job
    assert [j["status"] for j in jobs] == ["ready", "ready", "ready", "scheduled"]
    assert all(before <= j["ready_at"] for j in jobs)
    ids = [j["id"] for j in jobs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "ids follow input order"
    for given, job in zip(inputs, jobs, strict=True):
        assert get_job(api, job["id"])["payload"] == given["payload"]


def test_bulk_is_atomic(api, server):
    inputs = [
        {"queue": "bulk-atomic", "type": "t", "payload": {}},
        {"queue": "bulk-atomic", "type": "t", "payload": {}},
        {"queue": "bulk-atomic", "type": "t", "payload": {}, "priority": 70000},
        {"queue": "bulk-atomic", "type": "t", "payload": {}},
    ]
    status, body, _ = api.post("/jobs/bulk", {"jobs": inputs})
    assert_error(status, body, 400, "jobs[2]", "priority")
    with TakeStream(server.url, queues="bulk-atomic", prefetch=10) as stream:
        stream.expect_no_job(0.3)
