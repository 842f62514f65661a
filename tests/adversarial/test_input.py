"""500s on input: every string and number a client sends is checked before it
reaches the store, and a bad one is a 400 (422 for PATCH bodies) naming it.

Limits under test: queue and type names 1..1024 UTF-8 bytes, no leading or
trailing whitespace, no reserved characters (bodies, filters, PATCH, the take
stream's `queue=`); range bounds unsigned and inside the field (priority
0..65535, ready_at 0..2**63-1, attempts 0..2**32-1; `..` = everything); job ids
in `id=` 25 characters of [0-9a-z]; limits and cursors length-checked before
int(); error attempts 0..2**32-1; failure strings cut to 64 KiB (message),
1 KiB (error_type), 256 KiB (backtrace); a bulk ack at most 10,000 ids.
"""

from __future__ import annotations

import socket
from urllib.parse import quote, urlsplit

import httpx
import pytest

from tests.adversarial.helpers import assert_counters_match_scan
from tests.e2e.helpers_semantics import UNKNOWN_ID, assert_error, get_job
from tests.e2e.zizq_process import Api, TakeStream, ZizqServer

HUGE = "9" * 5000  # longer than int() converts by default (4,300 digits)
EURO = "\u20ac"  # 3 bytes of UTF-8


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    server = ZizqServer(tmp_path_factory.mktemp("input") / "root").start()
    with Api(server.url) as api:
        for i in range(3):
            api.enqueue("keep", "t", {"i": i}, priority=i)
    yield server
    server.stop()
    assert "Traceback" not in server.output, server.output


@pytest.fixture
def http(shared):
    with httpx.Client(base_url=shared.url, timeout=15) as client:
        yield client


def _json(response: httpx.Response):
    return response.json() if response.content else None


def _total(http: httpx.Client) -> int:
    return http.get("/jobs/count").json()["count"]


BAD_QUERIES = [
    ("priority", "--5"),
    ("priority", "-5..10"),
    ("priority", "+5"),
    ("priority", "70000"),
    ("priority", "..65536"),
    ("priority", "1_000"),
    ("priority", HUGE),
    ("priority", f"1..{HUGE}"),
    ("priority", "\u0665"),  # ARABIC-INDIC DIGIT FIVE: a digit to str.isdigit()
    ("ready_at", "9223372036854775808"),
    ("ready_at", f"{HUGE}.."),
    ("attempts", "4294967296"),
    ("attempts", "-1"),
    ("id", "\u00e9"),
    ("id", "abc"),
    ("id", "0" * 24 + "A"),
    ("id", f"{UNKNOWN_ID},{'x' * 26}"),
    ("id", "z" * 5000),
    ("queue", "q" * 1025),
    ("queue", EURO * 342),  # 1,026 bytes in 342 characters
    ("queue", "a*"),
    ("queue", "ok,b[1]"),
    ("type", "t" * 60_000),
    ("type", "x\\y"),
]


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/jobs"),
    ("GET", "/jobs/count"),
    ("PATCH", "/jobs"),
    ("DELETE", "/jobs"),
])  # fmt: skip
def test_bad_query_values_are_400_naming_the_parameter(shared, http, method, path):
    before = _total(http)
    for name, value in BAD_QUERIES:
        body = {"priority": 1} if method == "PATCH" else None
        response = http.request(method, f"{path}?{name}={quote(value)}", json=body)
        try:
            assert_error(response.status_code, _json(response), 400, name)
        except AssertionError as exc:
            raise AssertionError(f"{method} {path}?{name}={value[:40]}: {exc}") from None
    assert _total(http) == before
    assert http.get("/jobs/count", params={"priority": "1"}).json()["count"] == 1  # unpatched


@pytest.mark.parametrize("path", ["/jobs", "/jobs/errors-of-a-job"])
def test_bad_page_parameters_are_400(shared, http, path):
    if path != "/jobs":
        job_id = http.get("/jobs?limit=1").json()["jobs"][0]["id"]
        path = f"/jobs/{job_id}/errors"
    for name, value in [
        ("limit", HUGE),
        ("limit", "0"),
        ("limit", "2001"),
        ("limit", "+5"),
        ("limit", " 5"),
        ("from", HUGE),
        ("before", HUGE),
        ("from", "\u00e9" * 25),
    ]:
        response = http.get(path, params={name: value})
        assert_error(response.status_code, _json(response), 400, name)
    assert http.get(path, params={"limit": "2000"}).status_code == 200


def test_full_range_and_field_bounds(shared, http):
    total = _total(http)
    for name, value in [
        ("priority", ".."),
        ("priority", "0..65535"),
        ("ready_at", ".."),
        ("ready_at", "..9223372036854775807"),
        ("attempts", ".."),
        ("attempts", "0..4294967295"),
    ]:
        response = http.get("/jobs/count", params={name: value})
        assert response.json() == {"count": total}, (name, value, response.text)
    assert http.get("/jobs/count", params={"priority": "65535"}).json() == {"count": 0}
    # `..` matches everything yet is a filter: DELETE ...?priority=.. deletes (exactly) all.
    assert http.get("/jobs", params={"priority": ".."}).status_code == 200


def test_error_attempts_and_cursors_past_32_bits_are_400(shared, http):
    job_id = http.get("/jobs?limit=1").json()["jobs"][0]["id"]
    for attempt in ("4294967296", HUGE, "-1", "1.5", "\u0665"):
        response = http.get(f"/jobs/{job_id}/errors/{quote(attempt)}")
        assert_error(response.status_code, _json(response), 400, "attempt")
    response = http.get(f"/jobs/{job_id}/errors/4294967295")
    assert_error(response.status_code, _json(response), 404)
    for name in ("from", "before"):
        for cursor in ("4294967296", "99999999999"):
            response = http.get(f"/jobs/{job_id}/errors", params={name: cursor})
            assert_error(response.status_code, _json(response), 400, name)
        response = http.get(f"/jobs/{job_id}/errors", params={name: "4294967295"})
        assert response.status_code == 200, response.text


def _raw_get(base_url: str, path: str) -> bytes:
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_malformed_ids_in_paths_are_404(shared, http):
    for job_id in ("%C3%A9", "x" * 60_000, "0" * 24 + "A", "%00" * 25, UNKNOWN_ID):
        for method, path, body in [
            ("GET", f"/jobs/{job_id}", None),
            ("PATCH", f"/jobs/{job_id}", {"priority": 1}),
            ("DELETE", f"/jobs/{job_id}", None),
            ("POST", f"/jobs/{job_id}/success", None),
            ("POST", f"/jobs/{job_id}/failure", {"message": "m"}),
            ("GET", f"/jobs/{job_id}/errors", None),
            ("GET", f"/jobs/{job_id}/errors/1", None),
        ]:
            response = http.request(method, path, json=body)
            try:
                assert_error(response.status_code, _json(response), 404)
            except AssertionError as exc:
                raise AssertionError(f"{method} {path[:60]}: {exc}") from None
    # Past the HTTP layer's URI limit (~64 KiB) the answer comes from below the app:
    # a clean 4xx with the connection closed, never a 5xx, and the server carries on.
    answer = _raw_get(shared.url, "/jobs/" + "a" * 1_000_000)
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:200]
    assert http.get("/health").status_code == 200


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_name_limits_at_enqueue(shared, fmt):
    good = ["q" * 1024, EURO * 341, "\u00e9moji-\U0001f389", "x y", "a.b:c/d-e_f"]
    bad = {
        "": "empty",
        "q" * 1025: "1024 bytes",
        EURO * 342: "1024 bytes",
        "q" * 65536: "1024 bytes",
        "x" * 1_000_000: "1024 bytes",
        " padded": "whitespace",
        "padded ": "whitespace",
        "\tq": "whitespace",
        "q\n": "whitespace",
        "\u3000q": "whitespace",  # IDEOGRAPHIC SPACE: stripped by queries too
        "a,b": "reserved",
        "a{b}": "reserved",
    }
    with Api(shared.url, fmt=fmt) as api:
        for field in ("queue", "type"):
            for name, why in bad.items():
                job = {"queue": "names", "type": "t", "payload": {}, field: name}
                status, body, _ = api.post("/jobs", job)
                assert_error(status, body, 400, field, why)
                jobs = [{"queue": "names", "type": "t", "payload": {}}] * 5
                status, body, _ = api.post("/jobs/bulk", {"jobs": [*jobs, job]})
                assert_error(status, body, 400, f"jobs[5].{field}", why)
            for value in (5, None, ["q"], b"q" if fmt == "msgpack" else {"q": 1}):
                job = {"queue": "names", "type": "t", "payload": {}, field: value}
                status, body, _ = api.post("/jobs", job)
                assert_error(status, body, 400, field)
        assert api.get("/jobs/count?queue=names")[1] == {"count": 0}
        # The longest names work end to end: stored, filtered and taken by name.
        for name in good:
            job = api.enqueue(name, name, {"n": 1})
            status, page, _ = api.get(f"/jobs?queue={quote(name)}&type={quote(name)}")
            assert status == 200 and [j["id"] for j in page["jobs"]] == [job["id"]], name
            with TakeStream(shared.url, queues=name, fmt=fmt) as stream:
                assert stream.next_job()["id"] == job["id"]
                assert api.ack(job["id"]) == 204


def test_patch_queue_name_rules(shared):
    with Api(shared.url) as api:
        job = api.enqueue("patchme", "t", {})
        with TakeStream(shared.url, queues="patchme") as stream:
            assert stream.next_job()["id"] == job["id"]
            before = get_job(api, job["id"])
            for name in ("q" * 1025, "x" * 65536, " padded ", "a*", "", 5):
                status, body, _ = api.request("PATCH", f"/jobs/{job['id']}", {"queue": name})
                assert_error(status, body, 422, "queue")
                status, body, _ = api.request("PATCH", "/jobs?queue=patchme", {"queue": name})
                assert_error(status, body, 422, "queue")
            assert get_job(api, job["id"]) == before
            assert api.ack(job["id"]) == 204


def test_take_queue_list_and_prefetch(shared, http):
    for queues in ("q" * 1025, "ok," + "x" * 60_000, "a*", "ok,{b}"):
        response = http.get("/jobs/take", params={"queue": queues})
        assert_error(response.status_code, _json(response), 400, "queue")
    # "0" is valid: no per-stream limit (tests/e2e/test_wire_parity.py).
    for prefetch in (HUGE, "1_0", " 5", "+5", "-0", "100001", "\u0665"):
        response = http.get("/jobs/take", params={"prefetch": prefetch})
        assert_error(response.status_code, _json(response), 400, "prefetch")
    with Api(shared.url) as api:
        job = api.enqueue("spaced", "t", {})
        with TakeStream(shared.url, queues=" spaced , other ") as stream:  # stripped
            assert stream.next_job()["id"] == job["id"]
            assert api.ack(job["id"]) == 204


def test_failure_strings_are_capped(shared):
    with Api(shared.url) as api:
        job = api.enqueue("fail-caps", "t", {}, retry_limit=5)
        with TakeStream(shared.url, queues="fail-caps") as stream:
            assert stream.next_job()["id"] == job["id"]
            failure = {
                "message": EURO * 200_000,  # 600 KB
                "error_type": "E" * 5000,
                "backtrace": "line\n" * 100_000,  # 500 KB
                "retry_at": 0,  # ready again at once
            }
            status, body, _ = api.post(f"/jobs/{job['id']}/failure", failure)
            assert status == 200, body
        status, errors, _ = api.get(f"/jobs/{job['id']}/errors")
        (error,) = errors["errors"]
        for field, cap in (("message", 65536), ("error_type", 1024), ("backtrace", 262144)):
            size = len(error[field].encode())
            assert cap - 4 <= size <= cap and error[field].endswith("[truncated]"), (field, size)
        assert error["message"][:-12].strip(EURO) == ""  # cut between characters
        # Bad numbers in a failure are 400 and change nothing.
        with TakeStream(shared.url, queues="fail-caps") as stream:
            assert stream.next_job(10)["id"] == job["id"]
            for bad in (
                {"message": "m", "retry_at": 2**63},
                {"message": "m", "retry_at": -1},
                {"message": "m", "kill": "yes"},
            ):
                status, body, _ = api.post(f"/jobs/{job['id']}/failure", bad)
                assert_error(status, body, 400, next(k for k in bad if k != "message"))
            assert get_job(api, job["id"])["attempts"] == 1
            assert api.ack(job["id"]) == 204


def test_backoff_and_retention_bounds(shared):
    bad = [
        {"backoff": {"base_ms": 2**31, "exponent": 1, "jitter_ms": 0}},
        {"backoff": {"base_ms": 1, "exponent": 101, "jitter_ms": 0}},
        {"backoff": {"base_ms": 1, "exponent": 1e308, "jitter_ms": 0}},
        {"backoff": {"base_ms": 1, "exponent": 1, "jitter_ms": 1e300}},
        {"retention": {"dead_ms": 2**63}},
        {"ready_at": 2**63},
        {"retry_limit": 2**31},
        {"priority": 65536},
    ]
    with Api(shared.url, fmt="msgpack") as api:
        for fields in bad:
            status, body, _ = api.post(
                "/jobs", {"queue": "bounds", "type": "t", "payload": 1, **fields}
            )
            assert_error(status, body, 400, *list(fields)[:1])
        assert api.get("/jobs/count?queue=bounds")[1] == {"count": 0}


def test_bulk_ack_ids(shared):
    with Api(shared.url) as api:
        job = api.enqueue("acks", "t", {})
        with TakeStream(shared.url, queues="acks") as stream:
            assert stream.next_job()["id"] == job["id"]
            status, body, _ = api.post("/jobs/success", {"ids": ["x"] * 10_001})
            assert_error(status, body, 413, "ids", "10000")
            assert get_job(api, job["id"])["status"] == "in_flight"
            odd = ["\u00e9", "x" * 100_000, "", UNKNOWN_ID]
            status, body, _ = api.post("/jobs/success", {"ids": [job["id"], *odd]})
            assert status == 422 and sorted(body["not_found"]) == sorted(odd), body
            assert get_job(api, job["id"]) is None  # completed (and purged: retention 0)
    assert_counters_match_scan(shared.url)
