"""Unique jobs (pro) against a real licensed server: every scope, every way out of it.

Contract: the reference's docs/api/src/enqueue.md (`unique_key`, `unique_while`,
the 200/201 answers of POST /jobs and /jobs/bulk) and the README's "Unique jobs".
A key is held by the job that took it last while that job's status is inside
its own scope: `queued` (scheduled, ready), `active` (also in flight),
`exists` (any status, until deleted or purged). Every test uses its own keys
and queues, so one licensed server serves the module.
"""

from __future__ import annotations

import itertools
import time

import httpx
import pytest

from tests.e2e.helpers_semantics import (
    assert_error,
    fail,
    get_job,
    now_ms,
    wait_gone,
    wait_status,
)
from tests.e2e.zizq_process import Api, TakeStream, ZizqServer
from tests.licensing import mint

SCOPES = ("queued", "active", "exists")
_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One licensed server for the module (overrides conftest's `server`)."""
    zizq = ZizqServer(
        tmp_path_factory.mktemp("unique") / "root",
        "--license-key",
        mint(),
        "--reaper-check-interval",
        "100ms",
    )
    zizq.start()
    yield zizq
    zizq.stop()


@pytest.fixture
def plain(server):
    """A JSON HTTP/1.1 client, for the tests that are not about the wire."""
    with Api(server.url) as client:
        yield client


def fresh(prefix: str) -> str:
    """A queue or unique key no other test uses."""
    return f"{prefix}-{next(_names)}-{time.monotonic_ns()}"


def body(queue: str, key: str | None, scope: str | None = None, **fields) -> dict:
    job = {"queue": queue, "type": "unique", "payload": {"n": next(_names)}, **fields}
    if key is not None:
        job["unique_key"] = key
    if scope is not None:
        job["unique_while"] = scope
    return job


def enqueue(api: Api, job: dict) -> tuple[int, dict]:
    status, answer, _ = api.post("/jobs", job)
    assert status in (200, 201), (status, answer)
    # 201 exactly when a job was created, 200 exactly when it is a duplicate.
    assert answer["duplicate"] is (status == 200), (status, answer)
    assert answer["folded"] is False
    return status, answer


def created(api: Api, job: dict) -> dict:
    status, answer = enqueue(api, job)
    assert status == 201, answer
    assert answer["unique_key"] == job["unique_key"]
    assert answer["unique_while"] == job.get("unique_while", "queued")
    return answer


def duplicate_of(api: Api, job: dict, holder_id: str) -> dict:
    status, answer = enqueue(api, job)
    assert status == 200 and answer["id"] == holder_id, (holder_id, answer)
    return answer


def queue_ids(api: Api, queue: str) -> list[str]:
    status, page, _ = api.get(f"/jobs?queue={queue}&limit=2000")
    assert status == 200, (status, page)
    return [job["id"] for job in page["jobs"]]


# -- duplicates and the response ---------------------------------------------------------


def test_a_duplicate_answers_200_with_the_existing_job(server, api):
    queue, key = fresh("q"), fresh("k")
    first = created(api, body(queue, key, payload={"first": True}))
    assert first["status"] == "ready" and first["unique_while"] == "queued"
    again = duplicate_of(api, body(queue, key, "exists", payload={"second": True}), first["id"])
    # The holder as it is: its own scope and fields, not the duplicate's.
    for field in ("queue", "type", "priority", "status", "ready_at", "attempts"):
        assert again[field] == first[field], field
    assert again["unique_key"] == key and again["unique_while"] == "queued"
    # Nothing was written: one job, with the first payload.
    assert queue_ids(api, queue) == [first["id"]]
    stored = get_job(api, first["id"])
    assert stored["payload"] == {"first": True}
    assert stored["unique_key"] == key and stored["unique_while"] == "queued"


def test_keys_are_global_across_queues_and_types(plain):
    key = fresh("k")
    first = created(plain, body(fresh("q"), key))
    elsewhere = body(fresh("q"), key, type="another")
    duplicate_of(plain, elsewhere, first["id"])
    # Keys are compared exactly: no case folding, no trimming.
    created(plain, body(fresh("q"), key.upper()))
    created(plain, body(fresh("q"), key + " "))


def test_bulk_decides_each_job_on_its_own_in_input_order(server, api):
    queue = fresh("q")
    held, new_a, new_b = fresh("held"), fresh("a"), fresh("b")
    holder = created(api, body(queue, held))
    jobs = [
        body(queue, new_a, "active"),
        body(queue, held),  # a duplicate of the stored holder
        body(queue, None),  # no key at all
        body(queue, new_a, "exists"),  # a second copy in this very bulk
        body(queue, new_b),
        body(queue, new_b),
    ]
    status, answer, _ = api.post("/jobs/bulk", {"jobs": jobs})
    assert status == 201, answer
    views = answer["jobs"]
    assert [v["duplicate"] for v in views] == [False, True, False, True, False, True]
    assert all(v["folded"] is False for v in views)
    assert views[1]["id"] == holder["id"]
    assert views[3]["id"] == views[0]["id"] and views[3]["unique_while"] == "active"
    assert views[5]["id"] == views[4]["id"]
    assert "unique_key" not in views[2]
    made = {views[0]["id"], views[2]["id"], views[4]["id"]}
    assert set(queue_ids(api, queue)) == made | {holder["id"]}
    # Ids follow input order among the created ones (ids are time-ordered).
    assert views[0]["id"] < views[2]["id"] < views[4]["id"]


def test_bulk_of_only_duplicates_answers_200(server, api):
    queue, key = fresh("q"), fresh("k")
    holder = created(api, body(queue, key))
    status, answer, _ = api.post("/jobs/bulk", {"jobs": [body(queue, key), body(queue, key)]})
    assert status == 200, answer
    assert [v["id"] for v in answer["jobs"]] == [holder["id"]] * 2
    assert all(v["duplicate"] for v in answer["jobs"])
    # Two copies of a new key in one bulk: one job, and the answer is 201.
    other = fresh("k")
    status, answer, _ = api.post("/jobs/bulk", {"jobs": [body(queue, other), body(queue, other)]})
    assert status == 201, answer
    first, second = answer["jobs"]
    assert first["duplicate"] is False and second["duplicate"] is True
    assert second["id"] == first["id"]
    assert len(queue_ids(api, queue)) == 2


def test_keys_up_to_1024_bytes_of_any_utf8(plain):
    for key in ("k" * 1024, "é" * 512, "🎉" * 256, "a/b:c,d*e?f[g]{h}\\i", " ", "\x00"):
        key = key if len(key.encode()) >= 1024 else key + fresh("")
        first = created(plain, body(fresh("q"), key))
        duplicate_of(plain, body(fresh("q"), key), first["id"])


# -- every scope, every way out ----------------------------------------------------------


def take(server: ZizqServer, queue: str, count: int = 1) -> tuple[list[dict], TakeStream]:
    stream = TakeStream(server.url, queues=queue, prefetch=count)
    return stream.jobs(count, timeout=5), stream


def _leave_by(how: str, server: ZizqServer, api: Api, queue: str, job_id: str):
    """Move the holder as `how` says; returns a stream to close afterwards (or None)."""
    if how == "ready":
        return None
    if how == "scheduled":
        return None  # enqueued with a future ready_at: see the caller
    if how in ("patched_scheduled", "patched_ready"):
        status, job, _ = api.request("PATCH", f"/jobs/{job_id}", {"ready_at": now_ms() + 60_000})
        assert status == 200 and job["status"] == "scheduled", (status, job)
        if how == "patched_ready":
            status, job, _ = api.request("PATCH", f"/jobs/{job_id}", {"ready_at": None})
            assert status == 200 and job["status"] == "ready", (status, job)
        return None
    if how in ("deleted", "deleted_by_filter"):
        path = f"/jobs/{job_id}" if how == "deleted" else f"/jobs?queue={queue}"
        status, _, _ = api.request("DELETE", path)
        assert status in (200, 204), status
        return None
    (taken,), stream = take(server, queue)
    assert taken["id"] == job_id
    if how == "dispatched":
        return stream
    if how in ("acked", "acked_retained", "purged"):
        assert api.ack(job_id) == 204
        if how == "acked":
            wait_gone(api, job_id, 2)
        elif how == "purged":
            wait_gone(api, job_id, 5)  # completed_ms 300, then the reaper (100 ms)
    elif how == "retry_later":
        assert fail(api, job_id, retry_at=now_ms() + 60_000)["status"] == "scheduled"
    elif how == "retry_now":
        # A filler that goes first takes the stream's freed slot, so the retried job
        # stays ready (instead of going straight back to this stream).
        api.enqueue(queue, "filler", {}, priority=0)
        assert fail(api, job_id, retry_at=0)["status"] == "ready"
    elif how in ("killed", "killed_not_retained"):
        assert fail(api, job_id, kill=True)["status"] == "dead"
        if how == "killed_not_retained":
            wait_gone(api, job_id, 2)
    return stream


# After each move: does the holder still hold its key, per scope (queued, active, exists)?
HELD_AFTER = {
    "ready": (True, True, True),
    "scheduled": (True, True, True),
    "patched_scheduled": (True, True, True),
    "patched_ready": (True, True, True),
    "dispatched": (False, True, True),
    "retry_later": (True, True, True),  # back in scope: holds again
    "retry_now": (True, True, True),
    "acked": (False, False, False),  # completed, not retained: deleted at once
    "acked_retained": (False, False, True),
    "purged": (False, False, False),  # retained for 300 ms, then reaped
    "killed": (False, False, True),  # dead, kept 7 days by default
    "killed_not_retained": (False, False, False),
    "deleted": (False, False, False),
    "deleted_by_filter": (False, False, False),
}
RETENTION = {
    "acked_retained": {"completed_ms": 60_000},
    "purged": {"completed_ms": 300},
    "killed_not_retained": {"dead_ms": 0},
}


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("how", list(HELD_AFTER))
def test_scope_after_each_move(server, plain, how, scope):
    queue, key = fresh("q"), fresh("k")
    fields = {}
    if how in RETENTION:
        fields["retention"] = RETENTION[how]
    if how == "scheduled":
        fields["ready_at"] = now_ms() + 60_000
    holder = created(plain, body(queue, key, scope, **fields))
    stream = _leave_by(how, server, plain, queue, holder["id"])
    try:
        held = HELD_AFTER[how][SCOPES.index(scope)]
        if held:
            again = duplicate_of(plain, body(queue, key, scope), holder["id"])
            assert again["unique_while"] == scope
        else:
            # On another queue (keys are global), so the open stream cannot take it.
            elsewhere = fresh("q")
            successor = created(plain, body(elsewhere, key, scope))
            assert successor["id"] != holder["id"]
            # The new job holds the key now.
            duplicate_of(plain, body(elsewhere, key, scope), successor["id"])
    finally:
        if stream is not None:
            stream.close()


def test_a_retried_job_does_not_take_back_a_key_taken_meanwhile(server, plain):
    """Queued scope: dispatched (key free), a new job takes it, the first fails and retries."""
    queue, key = fresh("q"), fresh("k")
    first = created(plain, body(queue, key))
    (taken,), stream = take(server, queue)
    try:
        second = created(plain, body(fresh("q"), key))
        assert fail(plain, first["id"], retry_at=now_ms() + 60_000)["status"] == "scheduled"
        duplicate_of(plain, body(queue, key), second["id"])
        # The second leaves (deleted): the key is free, the retried job does not hold it.
        assert plain.request("DELETE", f"/jobs/{second['id']}")[0] == 204
        third = created(plain, body(queue, key))
        assert third["id"] not in (first["id"], second["id"])
    finally:
        stream.close()


def test_a_dropped_stream_puts_the_holder_back_in_its_scope(server, plain):
    queue, key = fresh("q"), fresh("k")
    holder = created(plain, body(queue, key))
    (taken,), stream = take(server, queue)
    stream.close()  # a crashed worker: the job is ready again, and holds its key again
    wait_status(plain, holder["id"], "ready", timeout=5)
    duplicate_of(plain, body(queue, key), holder["id"])


def test_a_purged_exists_holder_is_invisible_before_the_reaper_runs(server, plain):
    """Past its purge_at the job is gone for the API, and so is its hold on the key."""
    queue, key = fresh("q"), fresh("k")
    holder = created(plain, body(queue, key, "exists", retention={"completed_ms": 1}))
    (taken,), stream = take(server, queue)
    try:
        assert plain.ack(holder["id"]) == 204
        time.sleep(0.01)
        successor = created(plain, body(queue, key, "exists"))
        assert get_job(plain, holder["id"]) is None
        duplicate_of(plain, body(queue, key, "exists"), successor["id"])
    finally:
        stream.close()


def test_duplicate_of_an_in_flight_holder_shows_it_in_flight(server, plain):
    queue, key = fresh("q"), fresh("k")
    holder = created(plain, body(queue, key, "active"))
    (taken,), stream = take(server, queue)
    try:
        again = duplicate_of(plain, body(queue, key, "active"), holder["id"])
        assert again["status"] == "in_flight" and "dequeued_at" in again
    finally:
        stream.close()


def test_reset_frees_every_key(start_server):
    server = start_server("--license-key", mint())
    with Api(server.url) as api:
        key = fresh("k")
        created(api, body("q", key, "exists"))
        assert api.post("/reset")[0] == 204
        created(api, body("q", key, "exists"))


# -- bad input: 400 before 403 -----------------------------------------------------------

BAD = [
    ({"unique_key": ""}, "unique_key"),
    ({"unique_key": "k" * 1025}, "unique_key"),
    ({"unique_key": "é" * 513}, "unique_key"),
    ({"unique_key": "x" * 2048}, "unique_key"),
    ({"unique_key": 5}, "unique_key"),
    ({"unique_key": ["k"]}, "unique_key"),
    ({"unique_key": {"k": 1}}, "unique_key"),
    ({"unique_key": True}, "unique_key"),
    ({"unique_while": "queued"}, "unique_while"),
    ({"unique_key": None, "unique_while": "active"}, "unique_while"),
    ({"unique_key": "k", "unique_while": "forever"}, "unique_while"),
    ({"unique_key": "k", "unique_while": "QUEUED"}, "unique_while"),
    ({"unique_key": "k", "unique_while": 1}, "unique_while"),
    ({"unique_key": "k", "batch": {"key": "b", "when": "true", "fold": "$new"}}, "unique_key"),
]


@pytest.fixture(scope="module")
def unlicensed(tmp_path_factory):
    zizq = ZizqServer(tmp_path_factory.mktemp("free") / "root", env={"ZIZQ_LICENSE_KEY": ""})
    zizq.start()
    yield zizq
    zizq.stop()


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_bad_unique_fields_are_400_naming_the_field_licensed_or_not(server, unlicensed, fmt):
    for target in (server, unlicensed):
        with Api(target.url, fmt=fmt) as api:
            for fields, field in BAD:
                job = {"queue": "bad", "type": "t", "payload": {}, **fields}
                status, answer, _ = api.post("/jobs", job)
                assert_error(status, answer, 400, field)
                # In a bulk: the job's index, and no job of the bulk is written.
                jobs = [{"queue": "bad", "type": "t", "payload": {}}, job]
                status, answer, _ = api.post("/jobs/bulk", {"jobs": jobs})
                assert_error(status, answer, 400, f"jobs[1].{field}")
            assert api.get("/jobs/count?queue=bad")[1] == {"count": 0}


def test_unlicensed_unique_jobs_are_403_and_write_nothing(unlicensed):
    with Api(unlicensed.url) as api:
        status, answer, _ = api.post("/jobs", body("free", "k"))
        assert_error(status, answer, 403)
        assert answer == {"error": "unique jobs requires a pro license"}
        status, answer, _ = api.post(
            "/jobs/bulk", {"jobs": [body("free", None), body("free", "k")]}
        )
        assert answer == {"error": "unique jobs requires a pro license"}, (status, answer)
        assert status == 403
        # A null key is no key: a plain job, on any tier.
        status, answer, _ = api.post("/jobs", {**body("free", None), "unique_key": None})
        assert status == 201 and "unique_key" not in answer, answer
        assert api.get("/jobs/count?queue=free")[1] == {"count": 1}


def test_a_bad_job_anywhere_in_a_bulk_comes_before_the_license(unlicensed):
    with Api(unlicensed.url) as api:
        jobs = [body("free2", "k"), {**body("free2", None), "unique_while": "active"}]
        status, answer, _ = api.post("/jobs/bulk", {"jobs": jobs})
        assert_error(status, answer, 400, "jobs[1].unique_while")


def test_raw_http_both_versions_agree(server):
    """h1 and h2c clients see one index: a key taken over one is a duplicate over the other."""
    key = fresh("k")
    with (
        httpx.Client(base_url=server.url) as h1,
        httpx.Client(base_url=server.url, http1=False, http2=True) as h2,
    ):
        first = h1.post("/jobs", json=body("q", key))
        second = h2.post("/jobs", json=body("q", key))
        assert first.status_code == 201 and second.status_code == 200
        assert second.http_version == "HTTP/2"
        assert second.json()["id"] == first.json()["id"]
