"""Helpers shared by the semantics e2e tests (enqueue, bad input, take, lifecycle, serve)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable

from tests.e2e.zizq_process import Api, TakeStream, ZizqServer

ID_RE = re.compile(r"^[0-9a-z]{25}$")
UNKNOWN_ID = "0" * 25  # well-formed SCRU128 shape, never issued (time 0)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def assert_error(status: int, body, expected_status: int, *mentions: str) -> str:
    """The response is `expected_status` with exactly {"error": "<text>"} naming each mention."""
    assert status == expected_status, (status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    message = body["error"]
    assert isinstance(message, str) and message.strip(), body
    for mention in mentions:
        assert mention.lower() in message.lower(), f"{mention!r} not named in {message!r}"
    return message


def assert_unsupported(status: int, body, expected_status: int, supported: Iterable[str]) -> str:
    """A 406 or 415: {"error": ..., "supported": [...]} listing what the server can do."""
    assert status == expected_status, (status, body)
    assert isinstance(body, dict) and set(body) == {"error", "supported"}, body
    assert isinstance(body["error"], str) and body["error"].strip(), body
    assert body["supported"] == list(supported), body
    return body["error"]


def get_job(api: Api, job_id: str) -> dict | None:
    """GET /jobs/{id}: the job, or None on 404."""
    status, body, _ = api.get(f"/jobs/{job_id}")
    if status == 404:
        return None
    assert status == 200, (status, body)
    return body


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.02):
    """Poll until predicate() is truthy; returns its value or raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)


def wait_status(api: Api, job_id: str, status: str, timeout: float = 1.0) -> dict:
    """Poll GET /jobs/{id} until the job has `status`; returns the job."""

    def check():
        job = get_job(api, job_id)
        return job if job is not None and job["status"] == status else None

    try:
        return wait_for(check, timeout)
    except TimeoutError:
        raise AssertionError(
            f"job {job_id} not {status} within {timeout}s: {get_job(api, job_id)}"
        ) from None


def wait_gone(api: Api, job_id: str, timeout: float) -> float:
    """Poll until GET /jobs/{id} is 404; returns the monotonic time it was first seen gone."""
    wait_for(lambda: get_job(api, job_id) is None, timeout)
    return time.monotonic()


def collect(streams: Iterable[TakeStream], wait: float) -> list[list[dict]]:
    """Every job that arrives on each stream within `wait` seconds (heartbeats skipped)."""
    streams = list(streams)
    got: list[list[dict]] = [[] for _ in streams]
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        for index, stream in enumerate(streams):
            try:
                item = stream.next_item(0.02)
            except TimeoutError:
                continue
            if item is None:
                raise EOFError("take stream ended")
            if item is not TakeStream.HEARTBEAT:
                got[index].append(item)
    return got


def take_one(server: ZizqServer, api: Api, queue: str, **fields) -> tuple[dict, TakeStream]:
    """Enqueue one job on `queue` and take it on a fresh stream (returned, still open)."""
    job = api.enqueue(queue, "work", {"q": queue}, **fields)
    stream = TakeStream(server.url, queues=queue)
    taken = stream.next_job(5)
    assert taken["id"] == job["id"], (taken, job)
    return taken, stream


def fail(api: Api, job_id: str, **body) -> dict:
    body.setdefault("message", "boom")
    status, job, _ = api.post(f"/jobs/{job_id}/failure", body)
    assert status == 200, (status, job)
    return job


def enqueue_raw(api: Api, body) -> tuple[int, object]:
    status, data, _ = api.post("/jobs", body)
    return status, data
