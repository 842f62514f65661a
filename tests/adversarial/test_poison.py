"""Poison jobs: payloads that cannot be delivered must never be accepted, and one
already stored (by an older version) must never take other jobs down with it.

What a payload may be is the JSON data model nested at most 128 levels; the
server refuses anything else at enqueue with a 400 that names the path. Data
written straight into a store (as an older zizq could have) stands for the
legacy case: reads show it with `payload: null` and a `payload_error`, and the
take stream kills such a job once, with a log line, while the rest of the same
delivery arrives intact.
"""

from __future__ import annotations

import math

import httpx
import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.adversarial.helpers import assert_counters_match_scan
from tests.e2e.helpers_semantics import assert_error, get_job, wait_for
from tests.e2e.zizq_process import Api, TakeStream, ZizqServer
from zizq.queue import payload as payload_model
from zizq.queue.ids import new_id
from zizq.queue.records import now_ms
from zizq.store import Store

MSGPACK = {"content-type": "application/msgpack", "accept": "application/json"}


def nested(depth: int, leaf=1):
    """`depth` arrays inside one another around `leaf` ([[1]] is depth 2)."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def post_msgpack(client: httpx.Client, path: str, body) -> tuple[int, dict]:
    response = client.post(path, content=msgpack.packb(body, use_bin_type=True), headers=MSGPACK)
    return response.status_code, response.json() if response.content else None


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    server = ZizqServer(tmp_path_factory.mktemp("poison") / "root").start()
    yield server
    server.stop()
    assert "Traceback" not in server.output, server.output


@pytest.fixture
def client(shared):
    with httpx.Client(base_url=shared.url, timeout=15) as http:
        yield http


# -- what enqueue refuses -----------------------------------------------------------

OUTSIDE_THE_MODEL = [
    ("bin-value", {"a": [1, 2, 3, {"b": b"\x00"}]}, "payload.a[3].b", "binary"),
    ("bin-key", {"a": [1, 2, 3, {b"k": 1}]}, "payload.a[3]", "keys must be strings"),
    ("int-key", {"a": {1: "x"}}, "payload.a", "keys must be strings"),
    ("nil-key", {None: 1}, "payload", "keys must be strings"),
    ("ext-value", {"e": msgpack.ExtType(5, b"xyz")}, "payload.e", "extension"),
    ("ext-key", {msgpack.ExtType(1, b""): 1}, "payload", "keys must be strings"),
    ("timestamp", {"t": msgpack.Timestamp(1, 0)}, "payload.t", "extension"),
    ("nan", {"n": [0, float("nan")]}, "payload.n[1]", "nan"),
    ("inf", {"x y": float("inf")}, 'payload["x y"]', "infinite"),
    ("-inf", float("-inf"), "payload", "infinite"),
    ("top-level-bin", b"raw", "payload", "binary"),
]


@pytest.mark.parametrize(
    ("value", "path", "why"),
    [pytest.param(v, p, w, id=case) for case, v, p, w in OUTSIDE_THE_MODEL],
)
def test_msgpack_payload_outside_the_data_model_is_400(shared, client, value, path, why):
    status, body = post_msgpack(client, "/jobs", {"queue": "px", "type": "t", "payload": value})
    message = assert_error(status, body, 400, path, why)
    assert message.startswith(path + ":"), message
    jobs = [{"queue": "px", "type": "t", "payload": i} for i in range(10)]
    jobs[7]["payload"] = value
    status, body = post_msgpack(client, "/jobs/bulk", {"jobs": jobs})
    message = assert_error(status, body, 400, f"jobs[7].{path}", why)
    assert client.get("/jobs/count", params={"queue": "px"}).json() == {"count": 0}


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_nesting_limit_is_128_levels(shared, fmt):
    with Api(shared.url, fmt=fmt) as api:
        status, body, _ = api.post("/jobs", {"queue": "deep", "type": "t", "payload": nested(129)})
        assert_error(status, body, 400, "payload[0][0]", "128 levels")
        jobs = [{"queue": "deep", "type": "t", "payload": {}} for _ in range(9)]
        jobs[7]["payload"] = {"a": nested(128)}  # 129 with the map
        status, body, _ = api.post("/jobs/bulk", {"jobs": jobs})
        assert_error(status, body, 400, "jobs[7].payload.a[0]", "128 levels")
        # Far deeper than the limit, and deeper than the JSON encoder's 254 levels.
        for depth in (500, 1000):  # raw bytes: the clients' encoders refuse these
            if fmt == "json":
                raw = b'{"queue":"deep","type":"t","payload":%s1%s}' % (b"[" * depth, b"]" * depth)
            else:
                raw = b"\x83\xa5queue\xa4deep\xa4type\xa1t\xa7payload" + b"\x91" * depth + b"\x01"
            status, body, _ = api.post("/jobs", raw=raw)
            assert_error(status, body, 400, "128 levels")
        assert api.get("/jobs/count?queue=deep")[1] == {"count": 0}

        # Exactly 128 levels is accepted and readable everywhere, in every format.
        job = api.enqueue("deep", "t", nested(128))
        assert get_job(api, job["id"])["payload"] == nested(128)
        status, page, _ = api.get("/jobs?queue=deep")
        assert status == 200 and page["jobs"][0]["payload"] == nested(128)
    for stream_fmt in ("json", "msgpack"):
        with Api(shared.url, fmt=stream_fmt) as api:
            assert get_job(api, job["id"])["payload"] == nested(128)
        with TakeStream(shared.url, queues="deep", fmt=stream_fmt) as stream:
            taken = stream.next_job()
            assert taken["id"] == job["id"] and taken["payload"] == nested(128)
    with Api(shared.url) as api:
        assert api.request("DELETE", f"/jobs/{job['id']}")[0] == 204


def test_absurd_msgpack_bodies_are_400(shared, client):
    bodies = {
        "array of 2**32-1 announced": b"\xdd\xff\xff\xff\xff",
        "map of 2**32-1 announced": b"\xdf\xff\xff\xff\xff",
        "4 GiB string announced": b"\xdb\xff\xff\xff\xff" + b"x" * 100,
        "4 GiB bin announced": b"\xc6\xff\xff\xff\xff",
        "nested 100,000 levels": b"\x91" * 100_000 + b"\x01",
        "nested 2 MiB of maps": b"\x81\xa1k" * (2 * 1024 * 1024 // 3),
        "trailing data": msgpack.packb({"queue": "q", "type": "t", "payload": 1}) + b"\x01",
        "trailing data after a big body": msgpack.packb(
            {"jobs": [{"queue": "q", "type": "t", "payload": "x" * 1000}] * 200}
        )
        + b"\xc0",
        "truncated big body": msgpack.packb(
            {"jobs": [{"queue": "q", "type": "t", "payload": "x" * 1000}] * 200}
        )[:-10],
        "unhashable key": b"\x81\x91\x01\x01",
        "invalid UTF-8 string": b"\xa2\xed\xa0",
        "reserved byte": b"\xc1",
    }
    for name, raw in bodies.items():
        for path in ("/jobs", "/jobs/bulk"):
            response = client.post(path, content=raw, headers=MSGPACK)
            body = response.json() if response.content else None
            try:
                assert_error(response.status_code, body, 400, "body")
            except AssertionError as exc:
                raise AssertionError(f"{name} on {path}: {exc}") from None
    assert client.get("/health").status_code == 200
    assert client.get("/jobs/count").json() == {"count": 0}


# -- every accepted value encodes in both formats ---------------------------------------

any_key = st.one_of(st.text(max_size=5), st.integers(-3, 3), st.binary(max_size=3))
any_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),  # NaN and infinities included
    st.text(max_size=8),
    st.binary(max_size=4),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=3)),
    st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1)),
)
any_value = st.recursive(
    any_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(any_key, inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=any_value, extra_depth=st.integers(0, 130))
def test_everything_accepted_encodes_in_json_and_msgpack(value, extra_depth):
    value = nested(extra_depth, value)
    try:
        payload_model.check(value)
    except payload_model.PayloadError as error:
        assert error.describe("payload").startswith("payload")
        return
    # A list page is the deepest place a payload goes: {"jobs": [{"payload": ...}]}.
    page = {"jobs": [{"id": "x", "payload": value}]}
    assert orjson.loads(orjson.dumps(page)) is not None
    assert msgpack.unpackb(msgpack.packb(page), strict_map_key=False) is not None
    # JSON-sourced values take the fast walk; it must agree with the full one.
    if _json_safe(value):
        payload_model.check(value, from_json=True)


def _json_safe(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_safe(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_json_safe(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, bool | int | str)


# -- poison already in the store --------------------------------------------------------


def _record(queue: str, now: int) -> dict:
    return {
        "queue": queue,
        "type": "t",
        "priority": 32768,
        "status": "ready",
        "ready_at": now,
        "attempts": 0,
    }


def _plant(root_dir, queue: str, payloads: dict[str, bytes]) -> dict[str, str]:
    """Write jobs with these raw msgpack payloads straight into a stopped server's store."""
    store = Store(root_dir)
    ids = {}
    try:
        now = now_ms()
        batch = store.batch()
        for name, raw in payloads.items():
            job_id = new_id(now)
            batch.put_job(job_id, _record(queue, now), None)
            batch.put_payload(job_id, raw)
            ids[name] = job_id
        store.write(batch, sync=True)
    finally:
        store.close()
    return ids


LEGACY = {
    "good-1": msgpack.packb({"n": 1}),
    "deep-300": msgpack.packb(nested(300)),  # JSON writes at most 254 levels
    "bin-key": msgpack.packb({b"k": 1}, use_bin_type=True),  # no JSON form for the key
    "good-2": msgpack.packb({"n": 2}),
    "corrupt": b"\x92\x01",  # an array of 2 holding 1 element: unreadable in any format
    "good-3": msgpack.packb({"n": 3}),
}
# Which legacy payloads cannot reach a worker in each stream format.
UNDELIVERABLE = {"json": {"deep-300", "bin-key", "corrupt"}, "msgpack": {"corrupt"}}


@pytest.fixture(params=["json", "msgpack"])
def poisoned(request, start_server, tmp_path):
    root = tmp_path / "legacy"
    start_server(root_dir=root).stop()  # a store laid out by this version
    ids = _plant(root, "legacy", LEGACY)
    server = start_server(root_dir=root)
    return request.param, server, ids


def test_legacy_poison_never_breaks_reads(poisoned):
    fmt, server, ids = poisoned
    with Api(server.url, fmt=fmt) as api:
        for name, job_id in ids.items():
            status, job, _ = api.get(f"/jobs/{job_id}")
            assert status == 200, (name, status, job)
            if name.startswith("good"):
                assert job["payload"] == {"n": int(name[-1])} and "payload_error" not in job
            elif name in UNDELIVERABLE[fmt]:
                assert job["payload"] is None and job["payload_error"], (name, job)
        # Every page holding poison still answers, the good jobs with their payloads.
        for limit in (1, 2, 6, 50):
            path = f"/jobs?queue=legacy&limit={limit}"
            seen = []
            while path:
                status, page, _ = api.get(path)
                assert status == 200, (path, status, page)
                seen += page["jobs"]
                path = page["pages"]["next"]
            assert [job["id"] for job in seen] == list(ids.values())
            good = {job["id"]: job["payload"] for job in seen if "payload_error" not in job}
            for n in (1, 2, 3):
                assert good[ids[f"good-{n}"]] == {"n": n}
        status, body, _ = api.get("/jobs/count?queue=legacy")
        assert body == {"count": 6}


def test_legacy_poison_is_killed_once_and_spares_its_delivery(poisoned):
    fmt, server, ids = poisoned
    bad = UNDELIVERABLE[fmt]
    with TakeStream(server.url, queues="legacy", prefetch=100, fmt=fmt) as stream:
        delivered = {job["id"]: job for job in stream.jobs(len(ids) - len(bad))}
        stream.expect_no_job(0.5)
        assert set(delivered) == {job_id for name, job_id in ids.items() if name not in bad}
        for n in (1, 2, 3):
            assert delivered[ids[f"good-{n}"]]["payload"] == {"n": n}
        with Api(server.url) as api:
            for job_id in delivered:
                assert api.ack(job_id) == 204
            for name in bad:
                job = wait_for(
                    lambda name=name: (
                        (j := get_job(api, ids[name])) and j["status"] == "dead" and j
                    ),
                    5,
                )
                assert job["attempts"] == 1, job
                status, errors, _ = api.get(f"/jobs/{ids[name]}/errors")
                assert status == 200 and len(errors["errors"]) == 1, errors
                error = errors["errors"][0]
                assert error["error_type"] == "UndeliverableJob", error
                assert "cannot deliver" in error["message"], error
        stream.expect_no_job(0.5)  # killed, not redelivered
    # One log line per killed job, naming it.
    for name in bad:
        lines = [line for line in server.output.splitlines() if ids[name] in line]
        assert len([line for line in lines if "cannot be delivered" in line]) == 1, lines
    # A new stream gets nothing more: the poison is dead, the rest acked.
    with TakeStream(server.url, queues="legacy", prefetch=100, fmt=fmt) as stream:
        stream.expect_no_job(0.5)
    assert_counters_match_scan(server.url)
    assert "Traceback" not in server.output, server.output
