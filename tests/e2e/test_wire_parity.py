"""Wire parity with the reference (issue 9, HTTP points 1-5, 9, 12, 13 and the take-stream logs).

Each test names the reference behaviour it pins (zizq-labs/zizq 0.6.1,
src/api/primary/handlers.rs and types.rs). Ordinary requests run in JSON and
MessagePack over HTTP/1.1 and h2c; take streams over HTTP/1.1 as the official
clients use them (and h2c where it matters).
"""

from __future__ import annotations

import time

import httpx
import msgpack
import orjson
import pytest

import zizq
from tests.e2e.helpers_semantics import (
    UNKNOWN_ID,
    assert_error,
    assert_unsupported,
    get_job,
    wait_for,
    wait_status,
)
from tests.e2e.zizq_process import Api, TakeStream, ZizqServer

BODY_TYPES = ["application/json", "application/msgpack"]
STREAM_TYPES = ["text/event-stream", "application/x-ndjson", "application/vnd.zizq.msgpack-stream"]
JOB = {"queue": "wire", "type": "t", "payload": {"n": 1}}
API_VERSION = "0.7.0"  # the reference release whose free-tier API we implement in full


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # JSON logs, so the take-stream lines can be read back field by field.
    server = ZizqServer(
        tmp_path_factory.mktemp("wire") / "root",
        "--log-format",
        "json",
        "--log-level",
        "info",
        "--heartbeat-interval",
        "200ms",
    ).start()
    yield server
    server.stop()


@pytest.fixture(
    params=[("json", False), ("json", True), ("msgpack", False), ("msgpack", True)],
    ids=["json-h1", "json-h2c", "msgpack-h1", "msgpack-h2c"],
)
def api(server, request):
    fmt, http2 = request.param
    with Api(server.url, fmt=fmt, http2=http2) as client:
        yield client


def _take(server, queue: str, **kwargs) -> TakeStream:
    return TakeStream(server.url, queues=queue, **kwargs)


def _drain(server, api: Api, queue: str, count: int) -> None:
    """Take and ack `count` jobs of `queue`, so later tests start clean."""
    with _take(server, queue, prefetch=count) as stream:
        for job in stream.jobs(count, 5):
            assert api.ack(job["id"]) == 204


# -- 1. 406 and 415 list what is supported (handlers.rs:67-72, 147-148, 177-185, 229-237) ------


def test_406_lists_supported_body_types(api):
    for method, path in (("GET", "/queues"), ("GET", "/jobs"), ("POST", "/jobs")):
        body = JOB if method == "POST" else None
        status, error, response = api.request(method, path, body, headers={"accept": "text/html"})
        assert_unsupported(status, error, 406, BODY_TYPES)
        assert response.headers["content-type"] == "application/json"


def test_415_lists_supported_body_types(api):
    status, error, _ = api.post(
        "/jobs", raw=orjson.dumps(JOB), headers={"content-type": "text/plain"}
    )
    assert_unsupported(status, error, 415, BODY_TYPES)
    status, error, _ = api.post(
        "/jobs/bulk", raw=b"<jobs/>", headers={"content-type": "application/xml"}
    )
    assert_unsupported(status, error, 415, BODY_TYPES)


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2c"])
def test_take_406_lists_supported_stream_types(server, http2):
    with httpx.Client(base_url=server.url, http1=not http2, http2=http2, timeout=5) as http:
        response = http.get("/jobs/take", headers={"accept": "text/xml"})
    assert_unsupported(response.status_code, orjson.loads(response.content), 406, STREAM_TYPES)


# -- 2. take negotiation, SSE, prefetch=0, unknown parameters (handlers.rs:87-115, 340-345) ----


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "application/x-ndjson"),
        ("*/*", "application/x-ndjson"),
        ("application/json", "application/x-ndjson"),
        ("application/x-ndjson", "application/x-ndjson"),
        ("application/msgpack", "application/vnd.zizq.msgpack-stream"),
        ("application/vnd.zizq.msgpack-stream", "application/vnd.zizq.msgpack-stream"),
        ("text/event-stream", "text/event-stream"),
        ("application/x-ndjson, text/event-stream", "text/event-stream"),
    ],
)
def test_take_negotiation(server, accept, expected):
    headers = {} if accept is None else {"accept": accept}
    with (
        httpx.Client(base_url=server.url, timeout=5) as http,
        http.stream("GET", "/jobs/take", params={"queue": "neg-none"}, headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].split(";")[0] == expected


def _sse_events(response: httpx.Response, wanted: int, timeout: float = 5.0) -> list[str]:
    """The first `wanted` SSE events (each a block ended by a blank line), raw."""
    deadline = time.monotonic() + timeout
    buffer = b""
    events: list[str] = []
    for chunk in response.iter_raw():
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            events.append(event.decode())
        if len(events) >= wanted or time.monotonic() > deadline:
            break
    return events


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2c"])
def test_take_sse_jobs_and_heartbeats(server, http2):
    queue = f"sse-{int(http2)}"
    with Api(server.url) as api:
        job = api.enqueue(queue, "t", {"k": "v"})
        with httpx.Client(base_url=server.url, http1=not http2, http2=http2, timeout=5) as http:
            headers = {"accept": "text/event-stream"}
            with http.stream(
                "GET", "/jobs/take", params={"queue": queue}, headers=headers
            ) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].split(";")[0] == "text/event-stream"
                assert response.headers["cache-control"] == "no-cache"
                # Idle at 200 ms heartbeats: the job and at least two heartbeats in 5 s.
                events = _sse_events(response, 4)
        data = [e for e in events if e.startswith("data: ")]
        beats = [e for e in events if e == ": heartbeat"]
        assert len(data) == 1 and len(beats) >= 2, events
        assert set(events) == {data[0], ": heartbeat"}, events
        taken = orjson.loads(data[0].removeprefix("data: "))
        assert taken["id"] == job["id"] and taken["payload"] == {"k": "v"}
        assert taken["status"] == "in_flight"
        wait_status(api, job["id"], "ready", timeout=5)  # the dropped stream gave it back


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_prefetch_zero_means_no_per_stream_limit(server, fmt):
    queue = f"pf0-{fmt}"
    with Api(server.url, fmt=fmt) as api:
        ids = [api.enqueue(queue, "t", {"i": i})["id"] for i in range(30)]
        with _take(server, queue, prefetch=0, fmt=fmt) as stream:
            taken = stream.jobs(30, 5)  # all of them, none acked
            assert [j["id"] for j in taken] == ids
            for job_id in ids:
                assert api.ack(job_id) == 204


@pytest.mark.parametrize(
    "query",
    [{"prefetch": "1", "bogus": "1"}, {"queues": "a"}, {"limit": "5"}],
    ids=["bogus", "queues-typo", "limit"],
)
def test_take_unknown_parameter_is_400(server, query):
    with Api(server.url) as api:
        job = api.enqueue("take-400", "t", {})
        with httpx.Client(base_url=server.url, timeout=5) as http:
            response = http.get("/jobs/take", params={"queue": "take-400", **query})
        name = next(k for k in query if k not in ("queue", "prefetch"))
        assert_error(response.status_code, orjson.loads(response.content), 400, name)
        assert get_job(api, job["id"])["status"] == "ready"  # no stream was opened
        _drain(server, api, "take-400", 1)


def _log_lines(server: ZizqServer, message: str) -> list[dict]:
    found = []
    for line in list(server.lines):
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        fields = doc.get("fields", {}) if isinstance(doc, dict) else {}
        if fields.get("message") == message:
            found.append({"level": doc.get("level"), **fields})
    return found


def test_take_stream_log_lines_name_the_worker(server):
    """One INFO line per stream opened and closed (handlers.rs:1945-1950, 1976-1980, 2298)."""
    with Api(server.url) as api:
        api.enqueue("logq", "t", {})
        api.enqueue("logq", "t", {})
        with httpx.Client(base_url=server.url, timeout=5) as http:
            headers = {"worker-id": "billing-7", "accept": "application/x-ndjson"}
            params = {"queue": "logq,logr", "prefetch": "5"}
            with http.stream("GET", "/jobs/take", params=params, headers=headers) as response:
                buffer = b""
                for chunk in response.iter_raw():
                    buffer += chunk
                    if sum(1 for line in buffer.split(b"\n") if line.strip()) >= 2:
                        break
        # Both jobs were in flight when the connection dropped.
        closed = wait_for(
            lambda: [
                c for c in _log_lines(server, "take stream closed") if c["worker_id"] == "billing-7"
            ],
            5,
        )
    opened = [o for o in _log_lines(server, "take stream opened") if o["worker_id"] == "billing-7"]
    assert len(opened) == 1 and len(closed) == 1, (opened, closed)
    assert opened[0]["level"] == "INFO" and closed[0]["level"] == "INFO"
    assert opened[0]["queues"] == "logq,logr" and opened[0]["prefetch"] == 5
    assert closed[0]["returned_to_ready"] == 2


def test_take_stream_without_worker_id_gets_one(server):
    before = {o["worker_id"] for o in _log_lines(server, "take stream opened")}
    with _take(server, "anon", prefetch=0):
        pass
    opened = wait_for(
        lambda: [
            o for o in _log_lines(server, "take stream opened") if o["worker_id"] not in before
        ],
        5,
    )
    assert len(opened) == 1 and opened[0]["queues"] == "anon" and opened[0]["prefetch"] == 0
    assert len(opened[0]["worker_id"]) == 8  # random hex, so open and close pair up
    wait_for(
        lambda: [
            c
            for c in _log_lines(server, "take stream closed")
            if c["worker_id"] == opened[0]["worker_id"] and c["returned_to_ready"] == 0
        ],
        5,
    )


# -- 3. duplicate and folded on every enqueue response (types.rs:339-347, 372-377) -------------


def test_enqueue_responses_carry_duplicate_and_folded(api):
    status, job, _ = api.post("/jobs", {**JOB, "queue": "flags"})
    assert status == 201 and job["duplicate"] is False and job["folded"] is False, job
    status, body, _ = api.post("/jobs/bulk", {"jobs": [{**JOB, "queue": "flags"}] * 3})
    assert status == 201
    assert [(j["duplicate"], j["folded"]) for j in body["jobs"]] == [(False, False)] * 3
    got = get_job(api, job["id"])
    assert "duplicate" not in got and "folded" not in got  # enqueue responses only
    status, body, _ = api.post("/jobs/bulk", {"jobs": []})
    assert (status, body) == (201, {"jobs": []})  # handlers.rs test bulk_enqueue_empty_array
    status, _, _ = api.request("DELETE", "/jobs?queue=flags")
    assert status == 200


# -- 4. unique/batch shape errors are 400 before any 403 (handlers.rs:523-568, 677-738) ---------


@pytest.mark.parametrize(
    ("fields", "mention"),
    [
        ({"unique_while": "active"}, "unique_key"),
        ({"unique_while": "never", "unique_key": "k"}, "unique_while"),
        ({"unique_key": "k", "batch": {"key": "b", "when": "true", "fold": "$new"}}, "combined"),
        ({"unique_key": 5}, "unique_key"),
        ({"batch": {"key": "b"}}, "batch.when"),
        ({"batch": "b"}, "batch"),
    ],
    ids=[
        "while-without-key",
        "bad-scope",
        "key-with-batch",
        "key-int",
        "batch-partial",
        "batch-str",
    ],
)
def test_unique_and_batch_errors_are_400_before_the_license(api, fields, mention):
    status, error, _ = api.post("/jobs", {**JOB, "queue": "pro400", **fields})
    assert_error(status, error, 400, mention)
    jobs = [{**JOB, "queue": "pro400"}, {**JOB, "queue": "pro400", **fields}]
    status, error, _ = api.post("/jobs/bulk", {"jobs": jobs})
    assert_error(status, error, 400, "jobs[1]", mention)
    assert api.get("/jobs/count?queue=pro400")[1] == {"count": 0}


def test_bulk_checks_every_job_before_the_license(api):
    """A pro field in job 0 and a bad name in job 1: 400 (handlers.rs:658-712, then 715)."""
    jobs = [{**JOB, "unique_key": "k"}, {**JOB, "queue": "a,b"}]
    status, error, _ = api.post("/jobs/bulk", {"jobs": jobs})
    assert_error(status, error, 400, "jobs[1]", "queue")
    status, error, _ = api.post("/jobs/bulk", {"jobs": [JOB, {**JOB, "unique_key": "k"}]})
    assert_error(status, error, 403, "unique jobs requires a pro license")
    status, error, _ = api.post("/jobs", {**JOB, "unique_key": "k", "unique_while": "active"})
    assert_error(status, error, 403, "unique jobs requires a pro license")


# -- 5. bulk ack: empty or missing ids are 400, repeats count once (handlers.rs:872-880, 6643) --


def test_bulk_ack_ids(server, api):
    for body in ({"ids": []}, {}, {"other": ["x"]}):
        status, error, _ = api.post("/jobs/success", body)
        assert_error(status, error, 400, "ids")
    queue = f"ack-{api.fmt}-{int(api.http2)}"
    ids = [api.enqueue(queue, "t", {})["id"] for _ in range(2)]
    with _take(server, queue, prefetch=2) as stream:
        stream.jobs(2, 5)
        status, body, response = api.post(
            "/jobs/success", {"ids": [ids[0], ids[0], ids[1], ids[0]]}
        )
        assert status == 204 and response.content == b"", body
        status, body, _ = api.post("/jobs/success", {"ids": [ids[0], ids[0]]})
        assert status == 422 and body == {"not_found": [ids[0]]}


# -- 9. unknown body fields are ignored, unknown query parameters are not (types.rs:474-714) ---


def test_unknown_body_fields_are_ignored(server, api):
    queue = f"extra-{api.fmt}-{int(api.http2)}"
    body = {
        **JOB,
        "queue": queue,
        "x-future": {"nested": True},  # a newer client's field
        "backoff": {"base_ms": 10, "exponent": 1, "jitter_ms": 0, "cap_ms": 5},
        # An hour: the killed job below must not be purged while later tests of this
        # module read the shared server (GET and HEAD /queues must see the same queues).
        "retention": {"dead_ms": 3_600_000, "archive_ms": 7},
    }
    status, job, _ = api.post("/jobs", body)
    assert status == 201, job
    assert job["backoff"] == {"base_ms": 10, "exponent": 1.0, "jitter_ms": 0}
    assert job["retention"] == {"dead_ms": 3_600_000}
    assert "x-future" not in job
    status, bulk, _ = api.post(
        "/jobs/bulk", {"jobs": [{**JOB, "queue": queue, "later": 1}], "atomic": True}
    )
    assert status == 201 and "later" not in bulk["jobs"][0]

    # PATCH: non-mutable and unknown fields, and unknown retention sub-fields, are ignored.
    status, patched, _ = api.request(
        "PATCH",
        f"/jobs/{job['id']}",
        {"priority": 7, "status": "dead", "payload": {"n": 2}, "retention": {"archive_ms": 1}},
    )
    assert status == 200, patched
    assert patched["priority"] == 7 and patched["status"] == "ready"
    assert patched["retention"] == {"dead_ms": 3_600_000}
    assert get_job(api, job["id"])["payload"] == {"n": 1}
    status, body, _ = api.request("PATCH", f"/jobs?queue={queue}", {"priority": 9, "x": 1})
    assert (status, body) == (200, {"patched": 2})

    # Failure and bulk ack bodies ignore unknown fields too.
    with _take(server, queue, prefetch=2) as stream:
        first, second = stream.jobs(2, 5)
        status, failed, _ = api.post(
            f"/jobs/{first['id']}/failure", {"message": "m", "kill": True, "context": {"a": 1}}
        )
        assert status == 200 and failed["status"] == "dead", failed
        status, _, _ = api.post("/jobs/success", {"ids": [second["id"]], "batch": 3})
        assert status == 204


@pytest.mark.parametrize(
    "path",
    [
        "/jobs?bogus=1",
        "/jobs/count?limit=5",
        "/jobs/count?budgets.keys=a",
        f"/jobs/{UNKNOWN_ID}/errors?status=ready",
        "/queues?x=1",
    ],
)
def test_unknown_query_parameters_stay_400(api, path):
    status, error, _ = api.get(path)
    assert_error(status, error, 400, "unknown query parameter")


def test_unknown_query_parameters_on_bulk_writes_stay_400(api):
    status, error, _ = api.request("DELETE", "/jobs?queue=x&confirm=yes")
    assert_error(status, error, 400, "confirm")
    status, error, _ = api.request("PATCH", "/jobs?queue=x&dry_run=1", {"priority": 1})
    assert_error(status, error, 400, "dry_run")


# -- 12. HEAD wherever GET (axum's get() answers HEAD: handlers.rs:381-424) ------------------


def _head_paths(job_id: str) -> list[str]:
    return [
        "/health",
        "/version",
        "/queues",
        "/jobs?queue=head",
        "/jobs?bogus=1",  # a GET error answers HEAD with the same status
        "/jobs/count?queue=head",
        f"/jobs/{job_id}",
        f"/jobs/{UNKNOWN_ID}",
        f"/jobs/{job_id}/errors",
        f"/jobs/{job_id}/errors/1",
        "/crons",
        "/crons/g/entries/e",
        "/nowhere",
    ]


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2c"])
@pytest.mark.parametrize("accept", ["application/json", "application/msgpack"])
def test_head_answers_like_get_everywhere(server, http2, accept):
    with Api(server.url) as api:
        job_id = api.enqueue("head", "t", {"big": "x" * 1000})["id"]
    headers = {"accept": accept}
    with httpx.Client(base_url=server.url, http1=not http2, http2=http2, timeout=5) as http:
        for path in _head_paths(job_id):
            got = http.get(path, headers=headers)
            head = http.head(path, headers=headers)
            assert head.status_code == got.status_code, (path, got.status_code, head.status_code)
            assert head.content == b"", path
            assert head.headers.get("content-type") == got.headers.get("content-type"), path
            assert int(head.headers["content-length"]) == len(got.content), path


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2c"])
def test_head_on_take_opens_no_stream(server, http2):
    with Api(server.url) as api:
        job = api.enqueue("head-take", "t", {})
        with httpx.Client(base_url=server.url, http1=not http2, http2=http2, timeout=5) as http:
            for accept, media in [
                ("application/x-ndjson", "application/x-ndjson"),
                ("application/msgpack", "application/vnd.zizq.msgpack-stream"),
                ("text/event-stream", "text/event-stream"),
            ]:
                head = http.head(
                    "/jobs/take", params={"queue": "head-take"}, headers={"accept": accept}
                )
                assert head.status_code == 200 and head.content == b""
                assert head.headers["content-type"].split(";")[0] == media
            assert http.head("/jobs/take", headers={"accept": "text/xml"}).status_code == 406
            assert http.head("/jobs/take", params={"prefetch": "x"}).status_code == 400
            assert http.head("/jobs/take", params={"bogus": "1"}).status_code == 400
        time.sleep(0.3)  # a stream, had one opened, would have taken the job by now
        assert get_job(api, job["id"])["status"] == "ready"
        _drain(server, api, "head-take", 1)


# -- 13. /version is the reference API level; our build is a header (types.rs:433-437) --------


def test_version_reports_the_reference_api_level(api):
    status, body, response = api.get("/version")
    assert (status, body) == (200, {"version": API_VERSION})
    assert response.headers["zizq-build"] == zizq.__version__


def test_version_on_admin_listener(server):
    with httpx.Client(base_url=server.admin_url, timeout=5) as http:
        response = http.get("/version", headers={"accept": "application/msgpack"})
    assert msgpack.unpackb(response.content) == {"version": API_VERSION}
    assert response.headers["zizq-build"] == zizq.__version__
