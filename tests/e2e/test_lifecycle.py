"""Failure, backoff, retry limit, kill, scheduling, retention and restart."""

from __future__ import annotations

import time

import pytest

from tests.e2e.helpers_semantics import (
    fail,
    get_job,
    now_ms,
    take_one,
    wait_gone,
)
from tests.e2e.zizq_process import Api, TakeStream

FAST_REAPER = ("--reaper-check-interval", "200ms")


@pytest.fixture
def json_api(server):
    with Api(server.url) as api:
        yield api


def test_failure_records_error_and_counts_attempt(api, server):
    queue = f"fail-{api.fmt}-{api.http2}"
    job = api.enqueue(queue, "t", {"secret": 1})
    with TakeStream(server.url, queues=queue, fmt=api.fmt, http2=api.http2) as stream:
        taken = stream.next_job(5)
        before = now_ms()
        status, body, _ = api.post(
            f"/jobs/{job['id']}/failure",
            {"message": "it broke", "error_type": "RuntimeError", "backtrace": "a.py:1\nb.py:2"},
        )
        after = now_ms()
        assert status == 200, (status, body)
        assert "payload" not in body and "duplicate" not in body
        assert body["id"] == job["id"] and body["queue"] == queue and body["type"] == "t"
        assert body["attempts"] == 1
        assert before <= body["failed_at"] <= after
        assert body["dequeued_at"] == taken["dequeued_at"]
        # Server default backoff: at least 15 s base + 1 s, at most + 30 s jitter.
        assert body["status"] == "scheduled"
        delay = body["ready_at"] - body["failed_at"]
        assert 16_000 <= delay <= 16_000 + 30_000, delay
        stored = get_job(api, job["id"])
        assert stored["status"] == "scheduled" and stored["attempts"] == 1
        assert stored["failed_at"] == body["failed_at"] and stored["payload"] == {"secret": 1}
        # The failure freed the stream's slot, and the job is not delivered again yet.
        stream.expect_no_job(0.3)
        status, body, _ = api.post(f"/jobs/{job['id']}/failure", {"message": "again"})
        assert status == 404, "a scheduled job is not in flight"


def _fail_until(api: Api, stream: TakeStream, job_id: str, past_failures: int) -> dict:
    """Fail `past_failures` times with retry_at in the past, re-taking each time; then the job
    is in flight again with attempts == past_failures."""
    again: dict = {}
    for _ in range(past_failures):
        fail(api, job_id, retry_at=now_ms() - 1)
        again = stream.next_job(5)
        assert again["id"] == job_id
    assert not past_failures or again["attempts"] == past_failures
    return again


@pytest.mark.parametrize("k", [1, 2, 3])
def test_exact_backoff_without_jitter(server, json_api, k):
    backoff = {"base_ms": 1000, "exponent": 2, "jitter_ms": 0}
    job = json_api.enqueue(f"exact-{k}", "t", {}, backoff=backoff)
    with TakeStream(server.url, queues=f"exact-{k}") as stream:
        assert stream.next_job(5)["id"] == job["id"]
        _fail_until(json_api, stream, job["id"], k - 1)
        body = fail(json_api, job["id"])
        assert body["attempts"] == k
        assert body["status"] == "scheduled"
        assert body["ready_at"] - body["failed_at"] == 1000 + k**2 * 1000, body
        assert get_job(json_api, job["id"])["ready_at"] == body["ready_at"]
        stream.expect_no_job(0.2)


def test_server_default_backoff_flags(start_server):
    server = start_server(
        "--default-backoff-base",
        "100ms",
        "--default-backoff-exponent",
        "0",
        "--default-backoff-jitter",
        "0",
    )
    with Api(server.url) as api:
        job = api.enqueue("dflt", "t", {})
        own = api.enqueue("dflt", "t", {}, backoff={"base_ms": 5000, "exponent": 1, "jitter_ms": 0})
        with TakeStream(server.url, queues="dflt", prefetch=2) as stream:
            assert {j["id"] for j in stream.jobs(2, timeout=5)} == {job["id"], own["id"]}
            body = fail(api, job["id"])
            assert body["status"] == "scheduled"
            assert body["ready_at"] - body["failed_at"] == 100 + 1000, body
            body_own = fail(api, own["id"])
            assert body_own["ready_at"] - body_own["failed_at"] == 5000 + 1000, body_own
            # The retry is delivered when due: not before, and promptly after.
            stream.expect_no_job(0.8)
            again = stream.next_job(2)
            assert again["id"] == job["id"] and again["attempts"] == 1
            assert again["dequeued_at"] >= body["ready_at"]
            assert now_ms() - body["ready_at"] < 1000


def test_retry_limit_then_dead(server, json_api):
    job = json_api.enqueue("limit", "t", {}, retry_limit=2)
    with TakeStream(server.url, queues="limit") as stream:
        assert stream.next_job(5)["id"] == job["id"]
        _fail_until(json_api, stream, job["id"], 2)
        body = fail(json_api, job["id"])
        assert body["status"] == "dead" and body["attempts"] == 3, body
        stream.expect_no_job(0.3)
    stored = get_job(json_api, job["id"])
    assert stored["status"] == "dead" and stored["attempts"] == 3
    assert stored["failed_at"] == body["failed_at"]


def test_explicit_retry_at_retries_even_past_the_retry_limit(server, json_api):
    # The reference (src/store/fail.rs) checks retry_at before the retry limit: the
    # caller asked for another attempt, so it gets one.
    job = json_api.enqueue("limit-at", "t", {}, retry_limit=0)
    with TakeStream(server.url, queues="limit-at") as stream:
        assert stream.next_job(5)["id"] == job["id"]
        body = fail(json_api, job["id"], retry_at=now_ms() - 1)
        assert body["status"] == "ready" and body["attempts"] == 1, body
        again = stream.next_job(5)
        assert again["id"] == job["id"] and again["attempts"] == 1
        body = fail(json_api, job["id"])
        assert body["status"] == "dead" and body["attempts"] == 2, body


def test_default_retry_limit_flag(start_server):
    server = start_server("--default-retry-limit", "0")
    with Api(server.url) as api:
        taken, stream = take_one(server, api, "limit0")
        with stream:
            body = fail(api, taken["id"])
            assert body["status"] == "dead" and body["attempts"] == 1


def test_retry_at_past_is_ready_and_redelivered(server, json_api):
    taken, stream = take_one(server, json_api, "retry-past")
    with stream:
        at = now_ms() - 5000
        body = fail(json_api, taken["id"], retry_at=at)
        assert body["status"] == "ready" and body["attempts"] == 1
        again = stream.next_job(1)
        assert again["id"] == taken["id"] and again["attempts"] == 1
        assert again["status"] == "in_flight"


def test_retry_at_future_is_scheduled_at_that_time(server, json_api):
    taken, stream = take_one(server, json_api, "retry-future")
    with stream:
        at = now_ms() + 700
        body = fail(json_api, taken["id"], retry_at=at)
        assert body["status"] == "scheduled" and body["ready_at"] == at
        stream.expect_no_job(max(0.0, (at - now_ms() - 150) / 1000))
        again = stream.next_job(2)
        assert again["id"] == taken["id"] and again["dequeued_at"] >= at


def test_kill_marks_dead_at_once(server, json_api):
    taken, stream = take_one(server, json_api, "kill", retry_limit=100)
    with stream:
        body = fail(json_api, taken["id"], kill=True, retry_at=now_ms())
        assert body["status"] == "dead" and body["attempts"] == 1
        stream.expect_no_job(0.3)
    assert get_job(json_api, taken["id"])["status"] == "dead"


def test_kill_false_still_retries(server, json_api):
    taken, stream = take_one(server, json_api, "kill-false")
    with stream:
        body = fail(json_api, taken["id"], kill=False)
        assert body["status"] == "scheduled"


def test_scheduled_job_promoted_on_time(server, json_api):
    with TakeStream(server.url, queues="sched") as stream:
        ready_at = now_ms() + 1500
        job = json_api.enqueue("sched", "t", {"when": "later"}, ready_at=ready_at)
        assert job["status"] == "scheduled" and job["ready_at"] == ready_at
        stream.expect_no_job(max(0.0, (ready_at - now_ms() - 150) / 1000))
        assert get_job(json_api, job["id"])["status"] == "scheduled"
        taken = stream.next_job(2.5)
        arrived = now_ms()
        assert taken["id"] == job["id"] and taken["payload"] == {"when": "later"}
        assert taken["dequeued_at"] >= ready_at
        assert arrived - ready_at < 1000, arrived - ready_at


def test_earlier_scheduled_job_rearms_the_timer(server, json_api):
    """A job scheduled sooner than the current earliest still runs on time."""
    with TakeStream(server.url, queues="sched2", prefetch=5) as stream:
        late = json_api.enqueue("sched2", "t", {}, ready_at=now_ms() + 60_000)
        soon_at = now_ms() + 400
        soon = json_api.enqueue("sched2", "t", {}, ready_at=soon_at)
        taken = stream.next_job(2)
        assert taken["id"] == soon["id"] and now_ms() - soon_at < 1000
        stream.expect_no_job(0.2)
        assert get_job(json_api, late["id"])["status"] == "scheduled"


def test_dead_job_retention_and_reaper(start_server):
    server = start_server("--default-dead-job-retention", "1s", *FAST_REAPER)
    with Api(server.url) as api:
        taken, stream = take_one(server, api, "dead-ret")
        with stream:
            body = fail(api, taken["id"], kill=True)
            killed = time.monotonic()
        stored = get_job(api, taken["id"])
        assert stored is not None and stored["status"] == "dead"
        assert stored["purge_at"] == body["failed_at"] + 1000
        gone = wait_gone(api, taken["id"], timeout=2.5)
        assert 0.7 <= gone - killed <= 1.8, gone - killed
        # Per-job dead_ms 0: gone at once.
        zero, stream = take_one(server, api, "dead-ret", retention={"dead_ms": 0})
        with stream:
            fail(api, zero["id"], kill=True)
            assert get_job(api, zero["id"]) is None


def test_completed_retention_per_job(start_server):
    server = start_server(*FAST_REAPER)
    with Api(server.url, fmt="msgpack", http2=True) as api:
        taken, stream = take_one(server, api, "done-ret", retention={"completed_ms": 1000})
        with stream:
            assert api.ack(taken["id"]) == 204
            acked = time.monotonic()
        stored = get_job(api, taken["id"])
        assert stored is not None and stored["status"] == "completed", stored
        assert stored["purge_at"] == stored["completed_at"] + 1000
        assert abs(stored["completed_at"] - now_ms()) < 1000
        assert stored["payload"] == {"q": "done-ret"}
        gone = wait_gone(api, taken["id"], timeout=2.5)
        assert 0.7 <= gone - acked <= 1.8, gone - acked


def test_completed_retention_default_flag(start_server):
    server = start_server("--default-completed-job-retention", "600ms", *FAST_REAPER)
    with Api(server.url) as api:
        taken, stream = take_one(server, api, "done-flag")
        with stream:
            assert api.ack(taken["id"]) == 204
        assert get_job(api, taken["id"])["status"] == "completed"
        wait_gone(api, taken["id"], timeout=2.0)
        # A per-job 0 overrides the server default.
        taken, stream = take_one(server, api, "done-flag", retention={"completed_ms": 0})
        with stream:
            assert api.ack(taken["id"]) == 204
        assert get_job(api, taken["id"]) is None


def test_completed_not_retained_by_default(server, json_api):
    taken, stream = take_one(server, json_api, "done-0")
    with stream:
        assert json_api.ack(taken["id"]) == 204
        assert get_job(json_api, taken["id"]) is None


def test_restart_keeps_jobs_and_requeues_in_flight(start_server):
    server = start_server()
    with Api(server.url) as api:
        ready = api.enqueue("rs-ready", "t", {"r": 1}, priority=5)
        far = now_ms() + 3_600_000
        scheduled = api.enqueue("rs-sched", "t", {"s": 1}, ready_at=far)
        flying = api.enqueue("rs-fly", "t", {"f": 1}, retry_limit=9)
        retried = api.enqueue("rs-fly", "t", {"f": 2})
        stream = TakeStream(server.url, queues="rs-fly", prefetch=2)
        assert stream.next_job(5)["id"] == flying["id"]
        assert stream.next_job(5)["id"] == retried["id"]
        fail(api, retried["id"], retry_at=0)
        assert stream.next_job(5)["id"] == retried["id"]
    server.restart()
    stream.close()
    with Api(server.url) as api:
        r = get_job(api, ready["id"])
        assert r["status"] == "ready" and r["payload"] == {"r": 1} and r["priority"] == 5
        s = get_job(api, scheduled["id"])
        assert s["status"] == "scheduled" and s["ready_at"] == far
        f = get_job(api, flying["id"])
        assert f["status"] == "ready" and f["attempts"] == 0 and f["retry_limit"] == 9
        rt = get_job(api, retried["id"])
        assert rt["status"] == "ready" and rt["attempts"] == 1
        with TakeStream(server.url, queues="rs-fly,rs-ready", prefetch=5) as again:
            ids = {j["id"] for j in again.jobs(3, timeout=5)}
            again.expect_no_job(0.2)
        assert ids == {ready["id"], flying["id"], retried["id"]}
