"""Visibility and control over HTTP: list, count, get, patch, delete, errors, queues, reset.

Core behaviour runs over every protocol combination (JSON and MessagePack, HTTP/1.1 and
h2c) through the `api` fixture; narrower checks use one client. Every stream read has a
timeout (TakeStream).
"""

from __future__ import annotations

from urllib.parse import parse_qs, quote, urlsplit

import pytest

from tests.e2e.helpers_semantics import UNKNOWN_ID, assert_error, get_job, now_ms
from tests.e2e.zizq_process import Api, TakeStream

FAR = 4_000_000_000_000  # a ready_at far in the future (year 2096)
KEEP = {"completed_ms": 3_600_000}  # keep completed jobs visible


@pytest.fixture
def json_api(server):
    with Api(server.url) as client:
        yield client


@pytest.fixture
def mp_h2(server):
    with Api(server.url, fmt="msgpack", http2=True) as client:
        yield client


def bulk(api: Api, jobs: list[dict]) -> list[dict]:
    status, body, _ = api.post("/jobs/bulk", {"jobs": jobs})
    assert status == 201, (status, body)
    return body["jobs"]


def job(queue="q", type="t", payload=None, **fields) -> dict:
    return {"queue": queue, "type": type, "payload": {} if payload is None else payload, **fields}


def q(value: str) -> str:
    return quote(value, safe="")


def list_all(api: Api, path: str, key: str = "jobs") -> tuple[list[dict], list[dict]]:
    """Follow pages.next from `path` to the end; returns (items, every page body)."""
    items, pages = [], []
    link = path
    for _ in range(1000):
        status, body, _ = api.get(link)
        assert status == 200, (link, status, body)
        pages.append(body)
        items.extend(body[key])
        link = body["pages"]["next"]
        if link is None:
            return items, pages
    raise AssertionError("next links never ended")


def count(api: Api, query: str = "") -> int:
    status, body, _ = api.get("/jobs/count" + (f"?{query}" if query else ""))
    assert status == 200, (status, body)
    assert set(body) == {"count"}
    return body["count"]


def link_params(link: str) -> dict[str, list[str]]:
    parts = urlsplit(link)
    assert not parts.scheme and not parts.netloc, f"not an absolute path: {link}"
    assert link.startswith("/"), link
    return parse_qs(parts.query, keep_blank_values=True)


def take_and_fail(stream: TakeStream, api: Api, job_id: str, times: int) -> None:
    for attempt in range(1, times + 1):
        got = stream.next_job(5)
        assert got["id"] == job_id
        status, body, _ = api.post(
            f"/jobs/{job_id}/failure",
            {"message": f"m{attempt}", "error_type": "E", "retry_at": 0},
        )
        assert status == 200, (status, body)


# -- GET /queues -------------------------------------------------------------------------


def test_queues_sorted(api):
    status, body, _ = api.get("/queues")
    assert (status, body) == (200, {"queues": []})
    bulk(api, [job("zeta"), job("alpha"), job("mid"), job("alpha"), job("beta")])
    status, body, _ = api.get("/queues")
    assert (status, body) == (200, {"queues": ["alpha", "beta", "mid", "zeta"]})
    status, body, _ = api.get("/queues?x=1")
    assert_error(status, body, 400, "x")


# -- GET /jobs ---------------------------------------------------------------------------


def test_list_shape_pages_and_links(api):
    created = bulk(api, [job("list", "t", {"i": i}, priority=i % 3) for i in range(7)])
    bulk(api, [job("other")])
    ids = [j["id"] for j in created]
    status, body, _ = api.get("/jobs?queue=list&limit=3")
    assert status == 200, body
    assert set(body) == {"jobs", "pages"}
    assert set(body["pages"]) == {"self", "next", "prev"}
    assert [j["id"] for j in body["jobs"]] == ids[:3]
    first = body["jobs"][0]
    assert first["payload"] == {"i": 0}
    assert first["queue"] == "list" and first["type"] == "t" and first["status"] == "ready"
    assert first["priority"] == 0 and first["attempts"] == 0 and "ready_at" in first
    assert body["pages"]["prev"] is None
    self_params = link_params(body["pages"]["self"])
    assert self_params["queue"] == ["list"] and self_params["limit"] == ["3"]
    assert self_params.get("order", ["asc"]) == ["asc"]
    next_params = link_params(body["pages"]["next"])
    assert next_params["queue"] == ["list"] and next_params["limit"] == ["3"]
    assert next_params["from"] == [ids[2]]
    assert urlsplit(body["pages"]["next"]).path == "/jobs"

    items, pages = list_all(api, "/jobs?queue=list&limit=3")
    assert [j["id"] for j in items] == ids
    assert [len(p["jobs"]) for p in pages] == [3, 3, 1]
    assert pages[-1]["pages"]["next"] is None
    assert all(p["pages"]["prev"] is not None for p in pages[1:])
    # prev links walk back the same pages
    link, back = pages[-1]["pages"]["prev"], []
    while link is not None:
        assert "before=" in link
        status, page, _ = api.get(link)
        assert status == 200, page
        back.append([j["id"] for j in page["jobs"]])
        link = page["pages"]["prev"]
    assert back == [ids[3:6], ids[0:3]]
    # a self link fetches the same page again
    status, again, _ = api.get(pages[1]["pages"]["self"])
    assert [j["id"] for j in again["jobs"]] == ids[3:6]

    # desc order
    items, pages = list_all(api, "/jobs?queue=list&limit=4&order=desc")
    assert [j["id"] for j in items] == ids[::-1]
    assert link_params(pages[0]["pages"]["self"])["order"] == ["desc"]
    assert link_params(pages[0]["pages"]["next"])["order"] == ["desc"]


def test_links_keep_every_filter(api):
    base = now_ms()
    bulk(api, [job("a b", "t:1", {"greet": f"Wo{i}"}, priority=5) for i in range(5)])
    bulk(api, [job("a b", "t:1", {"greet": "Universe"}, priority=5)])
    expression = '.greet | startswith("Wo")'
    params = {
        "queue": "a b,zz",
        "type": "t:1",
        "status": "ready,scheduled",
        "priority": "1..10",
        "ready_at": f"{base - 60_000}..",
        "attempts": "0",
        "filter": expression,
    }
    query = "&".join(f"{k}={q(v)}" for k, v in params.items())
    items, pages = list_all(api, f"/jobs?{query}&limit=2")
    assert len(items) == 5 and all(j["payload"]["greet"].startswith("Wo") for j in items)
    assert len(pages) == 3
    for page in pages:
        for name in ("self", "next", "prev"):
            link = page["pages"][name]
            if link is None:
                continue
            got = link_params(link)
            for key, value in params.items():
                assert got[key] == [value], (name, key, link)
            assert got["limit"] == ["2"]
    assert count(api, query) == 5
    # id filter kept too
    ids = ",".join(j["id"] for j in items[:3])
    status, body, _ = api.get(f"/jobs?id={ids}&limit=1")
    assert status == 200, body
    assert link_params(body["pages"]["next"])["id"] == [ids]


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_pages_while_jobs_are_added(mp_h2, order):
    """Every job that existed at the start appears exactly once, forward and back."""
    api = mp_h2
    start = {j["id"] for j in bulk(api, [job("grow", payload={"i": i}) for i in range(10)])}
    bulk(api, [job("elsewhere")])
    link, seen, last = f"/jobs?queue=grow&limit=3&order={order}", [], None
    while link is not None:
        status, body, _ = api.get(link)
        assert status == 200, body
        seen.extend(j["id"] for j in body["jobs"])
        bulk(api, [job("grow"), job("elsewhere")])
        last, link = body, body["pages"]["next"]
    assert len(seen) == len(set(seen)) and start <= set(seen)
    assert seen == sorted(seen, reverse=order == "desc")
    link, back = last["pages"]["prev"], list(j["id"] for j in last["jobs"])
    while link is not None:
        status, body, _ = api.get(link)
        assert status == 200, body
        back.extend(j["id"] for j in body["jobs"])
        bulk(api, [job("grow")])
        link = body["pages"]["prev"]
    assert len(back) == len(set(back)) and start <= set(back)


def test_pages_null_at_both_ends_and_empty(api):
    status, body, _ = api.get("/jobs")
    assert status == 200
    assert body["jobs"] == []
    assert body["pages"]["next"] is None and body["pages"]["prev"] is None
    assert body["pages"]["self"].startswith("/jobs")
    bulk(api, [job() for _ in range(3)])
    status, body, _ = api.get("/jobs?limit=3")
    assert len(body["jobs"]) == 3
    assert body["pages"]["next"] is None and body["pages"]["prev"] is None


def test_limit_bounds_and_default(json_api):
    bulk(json_api, [job("lim") for _ in range(60)])
    status, body, _ = json_api.get("/jobs")
    assert status == 200 and len(body["jobs"]) == 50
    assert link_params(body["pages"]["next"])["limit"] == ["50"]
    assert len(list_all(json_api, "/jobs")[0]) == 60
    for bad in ("0", "2001", "-1", "abc", "1.5", ""):
        status, body, _ = json_api.get(f"/jobs?limit={bad}")
        assert_error(status, body, 400, "limit")
    for good, size in (("1", 1), ("2000", 60)):
        status, body, _ = json_api.get(f"/jobs?limit={good}")
        assert status == 200 and len(body["jobs"]) == size


@pytest.mark.parametrize("path", ["/jobs", "/jobs/count"])
def test_unknown_and_bad_params_400(json_api, path):
    status, body, _ = json_api.get(f"{path}?bogus=1")
    assert_error(status, body, 400, "bogus")
    for name in ("priority", "ready_at", "attempts"):
        for bad in ("5..2", "abc", "1..x", "-5..10", "--5", "1_0", "9" * 5000):
            status, body, _ = json_api.get(f"{path}?{name}={q(bad)}")
            assert_error(status, body, 400, name)
        status, body, _ = json_api.get(f"{path}?{name}=..")  # `..` is the full range
        assert status == 200, body
    status, body, _ = json_api.get(f"{path}?status=ready,sleeping")
    assert_error(status, body, 400, "status", "sleeping")
    status, body, _ = json_api.get(f"{path}?filter={q('.greet | startswith(')}")
    assert_error(status, body, 400, "filter", "syntax error")
    status, body, _ = json_api.get(f"{path}?filter={q('nosuchfn(1)')}")
    assert_error(status, body, 400, "filter", "nosuchfn/1 is not defined")


def test_bad_params_on_bulk_endpoints(json_api):
    bulk(json_api, [job("keep")])
    for method in ("PATCH", "DELETE"):
        body = {"priority": 1} if method == "PATCH" else None
        status, err, _ = json_api.request(method, "/jobs?bogus=1", body)
        assert_error(status, err, 400, "bogus")
        status, err, _ = json_api.request(method, "/jobs?priority=5..2", body)
        assert_error(status, err, 400, "priority")
        status, err, _ = json_api.request(method, f"/jobs?filter={q('}')}", body)
        assert_error(status, err, 400, "filter")
        status, err, _ = json_api.request(method, "/jobs?status=nope", body)
        assert_error(status, err, 400, "status")
    assert count(json_api) == 1, "a rejected bulk call changed nothing"


def test_order_param(json_api):
    status, body, _ = json_api.get("/jobs?order=sideways")
    assert_error(status, body, 400, "order")


def test_filters_over_http(api, server):
    """Every filter, alone and combined, agrees between list and count."""
    a = bulk(
        api,
        [
            job("fa", "x", {"n": i, "tag": "red" if i % 2 else None}, priority=i * 10)
            for i in range(4)
        ],
    )
    b = bulk(api, [job("fb", "y", {"n": 9}, priority=0, ready_at=FAR + 5)])
    with TakeStream(server.url, queues="fa", prefetch=1, fmt=api.fmt) as stream:
        taken = stream.next_job(5)
        assert taken["id"] == a[0]["id"]  # lowest priority number first
        status, _, _ = api.post(f"/jobs/{a[0]['id']}/failure", {"message": "x", "retry_at": FAR})
        assert status == 200
        taken = stream.next_job(5)
        assert taken["id"] == a[1]["id"]  # a[1] stays in flight
        cases = {
            "queue=fa": {a[0]["id"], a[1]["id"], a[2]["id"], a[3]["id"]},
            "queue=fb,fa": {j["id"] for j in a + b},
            "type=y": {b[0]["id"]},
            "status=scheduled": {a[0]["id"], b[0]["id"]},
            "status=in_flight": {a[1]["id"]},
            "status=ready": {a[2]["id"], a[3]["id"]},
            "status=ready,in_flight": {a[1]["id"], a[2]["id"], a[3]["id"]},
            "priority=10..20": {a[1]["id"], a[2]["id"]},
            "priority=..0": {a[0]["id"], b[0]["id"]},
            "priority=30..": {a[3]["id"]},
            "priority=20": {a[2]["id"]},
            f"ready_at={FAR}..": {a[0]["id"], b[0]["id"]},
            f"ready_at={FAR + 5}": {b[0]["id"]},
            f"ready_at=..{FAR - 1}": {a[1]["id"], a[2]["id"], a[3]["id"]},
            "attempts=1": {a[0]["id"]},
            "attempts=1..": {a[0]["id"]},
            "attempts=..0": {a[1]["id"], a[2]["id"], a[3]["id"], b[0]["id"]},
            f"filter={q('.tag')}": {a[1]["id"], a[3]["id"]},
            f"filter={q('.n >= 2')}": {a[2]["id"], a[3]["id"], b[0]["id"]},
            f"filter={q('.n.x')}": set(),  # runtime error: no match, not a 500
            f"id={a[0]['id']},{b[0]['id']},{UNKNOWN_ID}": {a[0]["id"], b[0]["id"]},
            "queue=fa&status=ready&priority=..20": {a[2]["id"]},
            f"queue=fa&filter={q('.tag')}&status=ready,in_flight": {a[1]["id"], a[3]["id"]},
            f"type=x&attempts=0&filter={q('.n > 0')}": {a[1]["id"], a[2]["id"], a[3]["id"]},
            f"id={a[0]['id']}&status=ready": set(),
            "queue=nope": set(),
        }
        for query, expected in cases.items():
            items, _ = list_all(api, f"/jobs?{query}&limit=2")
            got = [j["id"] for j in items]
            assert set(got) == expected, query
            assert got == sorted(got), query
            assert count(api, query) == len(expected), query


# -- GET /jobs/count -----------------------------------------------------------------------


def test_count(api):
    assert count(api) == 0
    bulk(api, [job("c1") for _ in range(3)] + [job("c2", ready_at=FAR)])
    assert count(api) == 4
    assert count(api, "queue=c1") == 3
    assert count(api, "status=scheduled") == 1
    assert count(api, "status=ready&queue=c2") == 0
    assert count(api, "queue=c1,c2&status=ready,scheduled") == 4


# -- GET / DELETE / PATCH /jobs/{id} ------------------------------------------------------


def test_get_job(api):
    (created,) = bulk(api, [job("g", "t", {"deep": {"list": [1, "two", None]}})])
    got = get_job(api, created["id"])
    assert got["payload"] == {"deep": {"list": [1, "two", None]}}
    assert got["id"] == created["id"] and got["status"] == "ready"
    for missing in (UNKNOWN_ID, "nope"):
        status, body, _ = api.get(f"/jobs/{missing}")
        assert_error(status, body, 404)


def test_patch_job_fields(api):
    (created,) = bulk(
        api,
        [
            job(
                "p",
                "t",
                {"keep": 1},
                priority=10,
                retry_limit=4,
                backoff={"base_ms": 1, "exponent": 2, "jitter_ms": 3},
                retention={"completed_ms": 1000, "dead_ms": 2000},
            )
        ],
    )
    job_id = created["id"]
    path = f"/jobs/{job_id}"
    status, body, _ = api.request("PATCH", path, {"priority": 20, "queue": "p2"})
    assert status == 200, body
    assert "payload" not in body
    assert body["priority"] == 20 and body["queue"] == "p2"
    assert body["retry_limit"] == 4 and body["status"] == "ready"  # omitted: unchanged
    assert body["retention"] == {"completed_ms": 1000, "dead_ms": 2000}
    # retention is merge-patched
    status, body, _ = api.request("PATCH", path, {"retention": {"dead_ms": 5000}})
    assert status == 200 and body["retention"] == {"completed_ms": 1000, "dead_ms": 5000}
    status, body, _ = api.request("PATCH", path, {"retention": {"completed_ms": None}})
    assert status == 200 and body["retention"] == {"dead_ms": 5000}
    status, body, _ = api.request("PATCH", path, {"retention": None})
    assert status == 200 and "retention" not in body
    # null resets to the server default (the field disappears)
    status, body, _ = api.request("PATCH", path, {"retry_limit": None, "backoff": None})
    assert status == 200 and "retry_limit" not in body and "backoff" not in body
    status, body, _ = api.request(
        "PATCH", path, {"backoff": {"base_ms": 5, "exponent": 1.5, "jitter_ms": 0}}
    )
    assert status == 200 and body["backoff"]["base_ms"] == 5
    assert body["backoff"]["exponent"] == 1.5 and body["backoff"]["jitter_ms"] == 0
    # the stored job agrees, payload untouched
    stored = get_job(api, job_id)
    assert stored["payload"] == {"keep": 1} and stored["queue"] == "p2"
    assert stored["priority"] == 20 and stored["backoff"]["base_ms"] == 5
    # empty patch: nothing changes
    status, body, _ = api.request("PATCH", path, {})
    assert status == 200 and body["priority"] == 20

    for bad in (
        {"queue": None},
        {"priority": None},
        {"backoff": {"base_ms": 1}},
        {"backoff": {"base_ms": 1, "exponent": 2}},
        {"priority": 70000},
        {"queue": "a,b"},
    ):
        status, body, _ = api.request("PATCH", path, bad)
        assert_error(status, body, 422)
    after = get_job(api, job_id)
    assert after["priority"] == 20 and after["queue"] == "p2", "a rejected patch changed nothing"
    # Fields that are not mutable are ignored, as the reference ignores them.
    status, body, _ = api.request("PATCH", path, {"type": "other", "payload": {}, "bogus": 1})
    assert status == 200 and body["type"] == "t" and "bogus" not in body, body
    assert get_job(api, job_id)["payload"] == {"keep": 1}

    status, body, _ = api.request("PATCH", f"/jobs/{UNKNOWN_ID}", {"priority": 1})
    assert_error(status, body, 404)


def test_patch_terminal_job_422(api, server):
    dead, done = bulk(api, [job("term"), job("term", retention=KEEP)])
    with TakeStream(server.url, queues="term", prefetch=2, fmt=api.fmt) as stream:
        stream.jobs(2, timeout=5)
        assert api.post(f"/jobs/{dead['id']}/failure", {"message": "x", "kill": True})[0] == 200
        assert api.ack(done["id"]) == 204
    for terminal in (dead, done):
        status, body, _ = api.request("PATCH", f"/jobs/{terminal['id']}", {"priority": 1})
        assert_error(status, body, 422)
    assert get_job(api, dead["id"])["status"] == "dead"
    assert get_job(api, done["id"])["status"] == "completed"
    # they can still be deleted
    assert api.request("DELETE", f"/jobs/{dead['id']}")[0] == 204
    assert get_job(api, dead["id"]) is None


def test_future_ready_at_schedules_and_null_readies(api, server):
    keep, moved = bulk(api, [job("sched"), job("sched")])
    status, body, _ = api.request("PATCH", f"/jobs/{moved['id']}", {"ready_at": FAR})
    assert status == 200 and body["status"] == "scheduled" and body["ready_at"] == FAR
    with TakeStream(server.url, queues="sched", prefetch=5, fmt=api.fmt) as stream:
        assert stream.next_job(5)["id"] == keep["id"]
        stream.expect_no_job(0.5)
        assert count(api, "queue=sched&status=scheduled") == 1
        before = now_ms()
        status, body, _ = api.request("PATCH", f"/jobs/{moved['id']}", {"ready_at": None})
        assert status == 200 and body["status"] == "ready"
        assert body["ready_at"] >= before - 1000
        got = stream.next_job(3)
        assert got["id"] == moved["id"]
    # a past ready_at on a scheduled job also makes it ready
    (later,) = bulk(api, [job("sched2", ready_at=FAR)])
    status, body, _ = api.request("PATCH", f"/jobs/{later['id']}", {"ready_at": 1000})
    assert status == 200 and body["status"] == "ready" and body["ready_at"] == 1000


def test_patched_priority_changes_take_order(api, server):
    jobs = bulk(api, [job("prio", priority=100) for _ in range(3)])
    assert api.request("PATCH", f"/jobs/{jobs[2]['id']}", {"priority": 1})[0] == 200
    assert api.request("PATCH", f"/jobs/{jobs[0]['id']}", {"priority": 500})[0] == 200
    with TakeStream(server.url, queues="prio", prefetch=1, fmt=api.fmt) as stream:
        order = []
        for _ in range(3):
            got = stream.next_job(5)
            order.append(got["id"])
            assert api.ack(got["id"]) == 204
        stream.expect_no_job(0.3)
    assert order == [jobs[2]["id"], jobs[1]["id"], jobs[0]["id"]]


@pytest.mark.parametrize("body", [{"retry_limit": 3}, {"priority": 100}, {"queue": "once"}])
def test_patched_ready_job_delivered_once(json_api, server, body):
    """A patch that leaves a job ready must not make it deliverable twice."""
    a, b = bulk(json_api, [job("once", priority=100), job("once", priority=100)])
    assert json_api.request("PATCH", f"/jobs/{a['id']}", body)[0] == 200
    with TakeStream(server.url, queues="once", prefetch=10) as stream:
        got = [j["id"] for j in stream.jobs(2, timeout=5)]
        stream.expect_no_job(0.5)
    assert sorted(got) == sorted([a["id"], b["id"]])


def test_patch_queue_moves_job_between_streams(json_api, server):
    (created,) = bulk(json_api, [job("from-q")])
    assert json_api.request("PATCH", f"/jobs/{created['id']}", {"queue": "to-q"})[0] == 200
    with TakeStream(server.url, queues="from-q", prefetch=5) as old:
        old.expect_no_job(0.4)
    with TakeStream(server.url, queues="to-q", prefetch=5) as new:
        assert new.next_job(5)["id"] == created["id"]
    status, body, _ = json_api.get("/queues")
    assert body == {"queues": ["to-q"]}


def test_delete_ready_job_never_delivered(api, server):
    gone, kept = bulk(api, [job("del", priority=1), job("del", priority=2)])
    status, body, _ = api.request("DELETE", f"/jobs/{gone['id']}")
    assert status == 204 and body is None
    assert get_job(api, gone["id"]) is None
    status, body, _ = api.request("DELETE", f"/jobs/{gone['id']}")
    assert_error(status, body, 404)
    with TakeStream(server.url, queues="del", prefetch=5, fmt=api.fmt) as stream:
        assert stream.next_job(5)["id"] == kept["id"]
        stream.expect_no_job(0.5)
    assert count(api, "queue=del") == 1


def test_delete_in_flight_job_then_ack_404(api, server):
    (created,) = bulk(api, [job("fly")])
    with TakeStream(server.url, queues="fly", prefetch=1, fmt=api.fmt) as stream:
        assert stream.next_job(5)["id"] == created["id"]
        assert api.request("DELETE", f"/jobs/{created['id']}")[0] == 204
        assert api.ack(created["id"]) == 404
        status, body, _ = api.post(f"/jobs/{created['id']}/failure", {"message": "late"})
        assert status == 404, body
        # the stream's slot is free again
        (nxt,) = bulk(api, [job("fly")])
        assert stream.next_job(5)["id"] == nxt["id"]
    assert get_job(api, created["id"]) is None


# -- PATCH /jobs, DELETE /jobs -------------------------------------------------------------


def test_bulk_patch_and_delete(api, server):
    bulk(api, [job("bp", "x", {"i": i}) for i in range(6)])
    bulk(api, [job("bp", "y", ready_at=FAR) for _ in range(2)])
    bulk(api, [job("other") for _ in range(3)])
    status, body, _ = api.request("PATCH", "/jobs?queue=bp&type=x", {"queue": "bp2"})
    assert (status, body) == (200, {"patched": 6})
    assert count(api, "queue=bp2") == 6 and count(api, "queue=bp") == 2
    status, body, _ = api.request(
        "PATCH", f"/jobs?queue=bp2&filter={q('.i >= 3')}", {"priority": 7}
    )
    assert (status, body) == (200, {"patched": 3})
    assert count(api, "priority=7") == 3
    status, body, _ = api.request("PATCH", "/jobs?queue=nothing", {"priority": 7})
    assert (status, body) == (200, {"patched": 0})
    status, body, _ = api.request("PATCH", "/jobs?queue=bp2", {"queue": None})
    assert_error(status, body, 422)
    # remove the scheduled ones on bp
    status, body, _ = api.request("DELETE", "/jobs?queue=bp&status=scheduled")
    assert (status, body) == (200, {"deleted": 2})
    status, body, _ = api.request("DELETE", "/jobs?queue=bp2&priority=7")
    assert (status, body) == (200, {"deleted": 3})
    assert count(api) == 6
    status, body, _ = api.get("/queues")
    assert body == {"queues": ["bp2", "other"]}
    # no filters: everything, in flight too
    with TakeStream(server.url, queues="other", prefetch=1, fmt=api.fmt) as stream:
        held = stream.next_job(5)
        status, body, _ = api.request("DELETE", "/jobs")
        assert (status, body) == (200, {"deleted": 6})
        assert api.ack(held["id"]) == 404
    assert count(api) == 0
    assert api.get("/queues")[1] == {"queues": []}


def test_bulk_patch_terminal_status_422_else_skipped(api, server):
    dead, done, live = bulk(api, [job("bt"), job("bt", retention=KEEP), job("bt")])
    with TakeStream(server.url, queues="bt", prefetch=2, fmt=api.fmt) as stream:
        got = {j["id"] for j in stream.jobs(2, timeout=5)}
        assert got == {dead["id"], done["id"]}
        assert api.post(f"/jobs/{dead['id']}/failure", {"message": "x", "kill": True})[0] == 200
        assert api.ack(done["id"]) == 204
    for statuses in ("completed", "dead", "ready,dead", "completed,scheduled"):
        status, body, _ = api.request("PATCH", f"/jobs?status={statuses}", {"priority": 1})
        assert_error(status, body, 422)
    assert count(api, "priority=1") == 0
    status, body, _ = api.request("PATCH", "/jobs?queue=bt", {"priority": 1})
    assert (status, body) == (200, {"patched": 1})
    assert get_job(api, live["id"])["priority"] == 1
    assert get_job(api, dead["id"])["priority"] != 1
    assert get_job(api, done["id"])["priority"] != 1
    # terminal jobs can be bulk-deleted by status
    status, body, _ = api.request("DELETE", "/jobs?status=completed,dead")
    assert (status, body) == (200, {"deleted": 2})


# -- errors ------------------------------------------------------------------------------


def test_job_errors_paginated(api, server):
    (created,) = bulk(api, [job("err", retry_limit=50)])
    job_id = created["id"]
    status, body, _ = api.get(f"/jobs/{job_id}/errors")
    assert status == 200 and body["errors"] == []
    assert body["pages"]["next"] is None and body["pages"]["prev"] is None
    with TakeStream(server.url, queues="err", prefetch=1, fmt=api.fmt) as stream:
        take_and_fail(stream, api, job_id, 5)
    errors, pages = list_all(api, f"/jobs/{job_id}/errors?limit=2", key="errors")
    assert [e["attempt"] for e in errors] == [1, 2, 3, 4, 5]
    assert [len(p["errors"]) for p in pages] == [2, 2, 1]
    assert errors[0]["message"] == "m1" and errors[0]["error_type"] == "E"
    assert "dequeued_at" in errors[0] and "failed_at" in errors[0]
    assert pages[0]["pages"]["prev"] is None and pages[-1]["pages"]["next"] is None
    for page in pages:
        for name in ("self", "next", "prev"):
            link = page["pages"][name]
            if link is not None:
                assert urlsplit(link).path == f"/jobs/{job_id}/errors", link
                assert link_params(link)["limit"] == ["2"]
    # prev back from the last page
    status, back, _ = api.get(pages[-1]["pages"]["prev"])
    assert [e["attempt"] for e in back["errors"]] == [3, 4]
    errors, _ = list_all(api, f"/jobs/{job_id}/errors?limit=3&order=desc", key="errors")
    assert [e["attempt"] for e in errors] == [5, 4, 3, 2, 1]
    status, body, _ = api.get(f"/jobs/{job_id}/errors")
    assert len(body["errors"]) == 5  # default 50
    for bad in ("0", "2001", "x", "9" * 5000):
        status, body, _ = api.get(f"/jobs/{job_id}/errors?limit={bad}")
        assert_error(status, body, 400, "limit")
    status, body, _ = api.get(f"/jobs/{job_id}/errors?limit=2000")  # as for job listings
    assert status == 200
    status, body, _ = api.get(f"/jobs/{job_id}/errors?bogus=1")
    assert_error(status, body, 400, "bogus")

    status, body, _ = api.get(f"/jobs/{job_id}/errors/3")
    assert status == 200 and body["attempt"] == 3 and body["message"] == "m3"
    for missing in ("6", "0"):
        status, body, _ = api.get(f"/jobs/{job_id}/errors/{missing}")
        assert_error(status, body, 404)
    status, body, _ = api.get(f"/jobs/{UNKNOWN_ID}/errors")
    assert_error(status, body, 404)
    status, body, _ = api.get(f"/jobs/{UNKNOWN_ID}/errors/1")
    assert_error(status, body, 404)


# -- reset ---------------------------------------------------------------------------------


def test_reset(api, server):
    bulk(api, [job("r1"), job("r2", ready_at=FAR), job("r3")])
    with TakeStream(server.url, queues="r1", prefetch=1, fmt=api.fmt) as stream:
        held = stream.next_job(5)
        status, body, response = api.post("/reset")
        assert status == 204 and body is None and response.content == b""
        assert api.ack(held["id"]) == 404
        assert count(api) == 0
        assert api.get("/queues")[1] == {"queues": []}
        status, body, _ = api.get("/jobs")
        assert body["jobs"] == []
        # the server keeps working: the open stream gets new work
        (fresh,) = bulk(api, [job("r1")])
        assert stream.next_job(5)["id"] == fresh["id"]


def test_malformed_cursor_is_not_a_server_error(json_api):
    bulk(json_api, [job() for _ in range(3)])
    for cursor in ("x", "%C3%BC", "0" * 25, "z" * 40):
        for name in ("from", "before"):
            status, body, _ = json_api.get(f"/jobs?{name}={cursor}")
            assert status in (200, 400), (name, cursor, status, body)
