"""Logs an operator can use: a line per request, per bulk change and reset, DEBUG lifecycle."""

from __future__ import annotations

import time

import orjson

from tests.e2e.zizq_process import Api, TakeStream


def records(server, message: str, timeout: float = 5.0) -> list[dict]:
    """The JSON log records with this message (waiting a little for them to be written)."""
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for line in list(server.lines):
            if line.startswith("{"):
                doc = orjson.loads(line)
                if doc["fields"].get("message") == message:
                    found.append(doc)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_line_per_request_with_status_duration_bytes_and_worker(start_server):
    server = start_server("--log-format", "json")
    with Api(server.url) as api:
        api.enqueue("q", "t", {"n": 1})
        status, _, _ = api.get("/jobs/nope", headers={"worker-id": "w-7"})
        assert status == 404
    lines = records(server, "request")
    by_path = {(r["fields"]["method"], r["fields"]["path"]): r for r in lines}
    enqueue = by_path[("POST", "/jobs")]
    assert enqueue["level"] == "INFO" and enqueue["target"] == "zizq.http"
    assert enqueue["fields"]["status"] == 201 and enqueue["fields"]["bytes"] > 0
    assert enqueue["fields"]["duration_ms"] >= 0
    missing = by_path[("GET", "/jobs/nope")]
    assert missing["fields"]["status"] == 404 and missing["fields"]["worker_id"] == "w-7"


def test_reset_and_bulk_changes_say_how_many_jobs(start_server):
    server = start_server("--log-format", "json")
    with Api(server.url) as api:
        for n in range(5):
            api.enqueue("q", "t", {"n": n})
        assert api.request("PATCH", "/jobs?queue=q", {"priority": 1})[1] == {"patched": 5}
        assert api.request("DELETE", "/jobs?filter=.n < 2")[1] == {"deleted": 2}
        assert api.post("/reset")[0] == 204
    assert records(server, "jobs patched by filter")[0]["fields"]["patched"] == 5
    assert records(server, "jobs deleted by filter")[0]["fields"]["deleted"] == 2
    assert records(server, "reset: every job deleted")[0]["fields"]["deleted"] == 3


def test_debug_lines_follow_a_job_through_its_life(start_server):
    server = start_server("--log-format", "json", "--log-level", "debug")
    with Api(server.url) as api:
        job = api.enqueue("q", "t", {})
        dead = api.enqueue("q", "t", {}, retry_limit=0)
        with TakeStream(server.url, queues="q", prefetch=2) as stream:
            stream.jobs(2)
            assert api.ack(job["id"]) == 204
            assert api.post(f"/jobs/{dead['id']}/failure", {"message": "x"})[0] == 200
    for message, job_id in (
        ("job enqueued", job["id"]),
        ("job acked", job["id"]),
        ("job dead", dead["id"]),
    ):
        found = [r for r in records(server, message) if r["fields"]["id"] == job_id]
        assert found and found[0]["level"] == "DEBUG", (message, found)


def test_info_level_writes_no_lifecycle_lines(start_server):
    server = start_server("--log-format", "json")
    with Api(server.url) as api:
        api.enqueue("q", "t", {})
    assert records(server, "request")
    assert not records(server, "job enqueued", timeout=0.2)
