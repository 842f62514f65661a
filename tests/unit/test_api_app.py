"""The primary ASGI app in-process (httpx's ASGI transport), with a real engine and store."""

from __future__ import annotations

import httpx
import msgpack
import orjson
import pytest

from zizq.api.app import create_admin_app, create_primary_app
from zizq.api.health import API_VERSION, BUILD_HEADER
from zizq.queue import Engine, EngineSettings
from zizq.queue.maintenance import Maintenance


@pytest.fixture
def call(store, run):
    """call(method, path, **httpx kwargs) -> httpx.Response, against a started engine."""
    engine = Engine(store, EngineSettings())
    run(engine.start())
    app = create_primary_app(engine, "9.9.9")

    def request(method: str, path: str, **kwargs) -> httpx.Response:
        async def go():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://zizq") as client:
                return await client.request(method, path, **kwargs)

        return run(go())

    yield request
    run(engine.stop())


JOB = {"queue": "q", "type": "t", "payload": {"x": [1, 2]}}


def test_health_version(call):
    assert call("GET", "/health").json() == {"status": "ok"}
    version = call("GET", "/version")
    assert version.json() == {"version": API_VERSION}  # the reference API level
    assert version.headers[BUILD_HEADER] == "9.9.9"  # our own build


def test_enqueue_json_and_read_back_msgpack(call):
    created = call("POST", "/jobs", json=JOB)
    assert created.status_code == 201
    job = created.json()
    assert job["duplicate"] is False and "payload" not in job and job["priority"] == 32768
    got = call("GET", f"/jobs/{job['id']}", headers={"accept": "application/msgpack"})
    assert got.headers["content-type"] == "application/msgpack"
    assert msgpack.unpackb(got.content)["payload"] == {"x": [1, 2]}


def test_enqueue_msgpack_body(call):
    resp = call(
        "POST",
        "/jobs",
        content=msgpack.packb(JOB),
        headers={"content-type": "application/msgpack", "accept": "application/msgpack"},
    )
    assert resp.status_code == 201
    assert msgpack.unpackb(resp.content)["queue"] == "q"


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({**JOB, "priority": 65536}, 400, "priority"),
        ({**JOB, "priority": True}, 400, "priority"),
        ({**JOB, "queue": "a*b"}, 400, "queue"),
        ({"queue": "q", "type": "t"}, 400, "payload"),
        ({**JOB, "backoff": {"base_ms": 1}}, 400, "backoff.exponent"),
        ({**JOB, "unique_key": "k"}, 403, "unique jobs requires a pro license"),
        ({**JOB, "unique_while": "active"}, 400, "unique_key"),
    ],
)
def test_enqueue_rejects_bad_fields(call, body, status, needle):
    resp = call("POST", "/jobs", json=body)
    assert resp.status_code == status
    assert needle in resp.json()["error"]


def test_bulk_is_atomic_and_names_index(call):
    resp = call("POST", "/jobs/bulk", json={"jobs": [JOB, JOB, {**JOB, "type": ""}]})
    assert resp.status_code == 400 and "jobs[2].type" in resp.json()["error"]
    ok = call("POST", "/jobs/bulk", json={"jobs": [JOB, {**JOB, "priority": 1}]})
    assert ok.status_code == 201 and [j["priority"] for j in ok.json()["jobs"]] == [32768, 1]


def test_negotiation_errors(call):
    assert (
        call(
            "POST", "/jobs", content=b"{", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )
    assert (
        call(
            "POST", "/jobs", content=b"\xc1", headers={"content-type": "application/msgpack"}
        ).status_code
        == 400
    )
    assert (
        call("POST", "/jobs", content=b"x", headers={"content-type": "text/plain"}).status_code
        == 415
    )
    assert call("GET", "/health", headers={"accept": "text/html"}).status_code == 406
    missing = call("GET", "/nowhere")
    assert missing.status_code == 404 and missing.json() == {"error": "not found"}


def test_ack_unknown_is_404_and_bulk_ack_lists_missing(call):
    assert call("POST", "/jobs/03hbd4fwjntmejc628k1fdybj/success").status_code == 404
    resp = call("POST", "/jobs/success", json={"ids": ["a", "b"]})
    assert resp.status_code == 422 and resp.json() == {"not_found": ["a", "b"]}
    empty = call("POST", "/jobs/success", json={"ids": []})
    assert empty.status_code == 400 and "ids" in empty.json()["error"]


def test_failure_of_job_not_in_flight_is_404(call):
    job = call("POST", "/jobs", json=JOB).json()
    resp = call("POST", f"/jobs/{job['id']}/failure", json={"message": "m"})
    assert resp.status_code == 404
    assert call("POST", f"/jobs/{job['id']}/failure", json={}).status_code == 400


def test_admin_app_has_no_job_routes(run, store):
    app = create_admin_app(Maintenance(store, "1.2.3"), "1.2.3")

    async def go():
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://a"
        ) as client:
            return await client.get("/health"), await client.post(
                "/jobs", content=orjson.dumps(JOB)
            )

    health, jobs = run(go())
    assert health.json() == {"status": "ok"} and jobs.status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/crons"),
        ("DELETE", "/crons"),
        ("GET", "/crons/nightly"),
        ("PUT", "/crons/nightly"),
        ("PATCH", "/crons/nightly"),
        ("POST", "/crons/nightly/entries"),
        ("GET", "/crons/nightly/entries/report"),
        ("DELETE", "/crons/nightly/entries/report"),
    ],
)
def test_cron_endpoints_need_a_license(call, method, path):
    resp = call(method, path)
    assert resp.status_code == 403 and "pro license" in resp.json()["error"]
