"""Batched jobs under concurrent HTTP clients: folds are atomic and never lose an element.

Many clients (HTTP/1.1 and h2c, JSON and MessagePack, singles and bulks) fold
distinct elements into the same batch keys with `fold: "$existing + $new"`,
while a worker takes and acks jobs (dispatch seals batches mid-stream) and a
meddler patches and deletes jobs. Afterwards every accepted element must be in
exactly one job: the one its enqueue answered with, as delivered to the worker
or as still stored, unless that job was deleted. Each client's elements keep
their order inside a job (folds apply in commit order).
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from tests.adversarial.helpers import assert_counters_match_scan
from tests.e2e.zizq_process import Api, TakeStream, ZizqServer
from tests.licensing import mint

CLIENTS = 12
ENQUEUES_PER_CLIENT = 25
KEYS = ("k1", "k2")


@pytest.fixture
def pro_server(start_server) -> ZizqServer:
    return start_server("--license-key", mint())


def _client_run(url: str, number: int, queue: str, when: str, accepted: dict, errors: list):
    """One client: enqueue its own elements (client number * 10_000 + n) in order."""
    rng = random.Random(number)
    fmt = ("json", "msgpack")[number % 2]
    with Api(url, fmt=fmt, http2=number % 4 >= 2, timeout=30) as api:
        n = 0
        while n < ENQUEUES_PER_CLIENT:
            size = min(rng.choice((1, 1, 1, 2, 4)), ENQUEUES_PER_CLIENT - n)
            jobs = []
            for _ in range(size):
                element = number * 10_000 + n
                n += 1
                config = {"key": rng.choice(KEYS), "when": when, "fold": "$existing + $new"}
                jobs.append(
                    (element, {"queue": queue, "type": "t", "payload": [element], "batch": config})
                )
            if size == 1:
                status, body, _ = api.post("/jobs", jobs[0][1])
                answers = [body] if status in (200, 201) else None
            else:
                status, body, _ = api.post("/jobs/bulk", {"jobs": [j for _, j in jobs]})
                answers = body["jobs"] if status in (200, 201) else None
            if answers is None:
                errors.append((status, body))
                continue
            for (element, _), answer in zip(jobs, answers, strict=True):
                accepted[element] = answer["id"]


def _worker(url: str, queue: str, delivered: dict, stop: threading.Event, fmt: str) -> None:
    rng = random.Random(7)
    with TakeStream(url, queues=queue, prefetch=4, fmt=fmt) as stream, Api(url) as api:
        while not stop.is_set():
            try:
                job = stream.next_job(timeout=0.2)
            except TimeoutError:
                continue
            delivered[job["id"]] = job["payload"]
            time.sleep(rng.random() * 0.01)  # let more folds in meanwhile
            # 404: the meddler deleted it (listed as ready just before it went out).
            assert api.ack(job["id"]) in (204, 404)


def _meddler(url: str, queue: str, deleted: set, stop: threading.Event) -> None:
    rng = random.Random(11)
    with Api(url, http2=True) as api:
        while not stop.is_set():
            time.sleep(rng.random() * 0.02)
            status, page, _ = api.get(f"/jobs?queue={queue}&status=ready&limit=50")
            assert status == 200, (status, page)
            if not page["jobs"]:
                continue
            target = rng.choice(page["jobs"])["id"]
            if rng.random() < 0.3:
                status, body, _ = api.request("DELETE", f"/jobs/{target}")
                assert status in (204, 404), (status, body)
                if status == 204:
                    deleted.add(target)
            else:
                status, body, _ = api.request(
                    "PATCH", f"/jobs/{target}", {"priority": rng.randrange(100)}
                )
                assert status in (200, 404, 422), (status, body)


def _stored_contents(api: Api, queue: str) -> dict[str, list]:
    status, page, _ = api.get(f"/jobs?queue={queue}&limit=2000")
    assert status == 200, (status, page)
    contents = {}
    for job in page["jobs"]:
        status, full, _ = api.get(f"/jobs/{job['id']}")
        assert status == 200, (status, full)
        contents[job["id"]] = full["payload"]
    return contents


def _check(accepted: dict, delivered: dict, stored: dict, deleted: set) -> dict:
    contents = dict(delivered)
    for job_id, payload in stored.items():
        if job_id in contents:
            # Dispatched once (and returned to ready when the stream closed): sealed.
            assert contents[job_id] == payload, f"{job_id} was folded into after dispatch"
        contents[job_id] = payload
    where: dict[int, str] = {}
    for job_id, elements in contents.items():
        for element in elements:
            assert element not in where, f"element {element} in two jobs"
            where[element] = job_id
        # A client's enqueues are sequential: its elements appear in the order it sent them.
        by_client: dict[int, list[int]] = {}
        for element in elements:
            by_client.setdefault(element // 10_000, []).append(element)
        for client, mine in by_client.items():
            assert mine == sorted(mine), f"client {client}'s elements out of order in {job_id}"
    lost = [e for e, job_id in accepted.items() if job_id not in deleted and where.get(e) != job_id]
    assert not lost, f"{len(lost)} accepted elements lost or misplaced, e.g. {lost[:5]}"
    assert set(where) <= set(accepted), "an element nobody enqueued (or a failed enqueue's)"
    return contents


def _race(server: ZizqServer, queue: str, when: str, worker: bool, meddle: bool) -> dict:
    accepted: dict[int, str] = {}
    delivered: dict[str, list] = {}
    deleted: set[str] = set()
    errors: list = []
    stop = threading.Event()
    helpers = []
    if worker:
        helpers.append(
            threading.Thread(target=_worker, args=(server.url, queue, delivered, stop, "msgpack"))
        )
    if meddle:
        helpers.append(threading.Thread(target=_meddler, args=(server.url, queue, deleted, stop)))
    clients = [
        threading.Thread(
            target=_client_run, args=(server.url, n, queue, when, accepted, errors), daemon=True
        )
        for n in range(CLIENTS)
    ]
    started = time.monotonic()
    for thread in helpers + clients:
        thread.start()
    for thread in clients:
        thread.join(60)
        assert not thread.is_alive(), "a client hung"
    elapsed = time.monotonic() - started
    stop.set()
    for thread in helpers:
        thread.join(30)
        assert not thread.is_alive(), "a helper hung"
    # The only acceptable refusal: the open job kept changing under the meddler (422).
    assert all(status == 422 and "kept changing" in body["error"] for status, body in errors), (
        errors
    )
    with Api(server.url) as api:
        stored = _stored_contents(api, queue)
    contents = _check(accepted, delivered, stored, deleted)
    assert_counters_match_scan(server.url)
    total = CLIENTS * ENQUEUES_PER_CLIENT
    print(
        f"{queue}: {len(accepted)}/{total} accepted in {elapsed:.2f}s "
        f"({len(accepted) / elapsed:.0f}/s), {len(contents)} jobs, "
        f"{len(delivered)} delivered, {len(deleted)} deleted, {len(errors)} refused"
    )
    return {"accepted": accepted, "contents": contents}


def test_concurrent_folds_lose_nothing(pro_server):
    """No worker: each key holds one job whose payload is every element, each once."""
    seen = _race(pro_server, "only-folds", "true", worker=False, meddle=False)
    assert len(seen["accepted"]) == CLIENTS * ENQUEUES_PER_CLIENT
    assert len(seen["contents"]) == len(KEYS)  # one open job per key, nothing sealed


def test_concurrent_folds_and_seals_while_a_worker_takes(pro_server):
    seen = _race(pro_server, "with-worker", "($existing | length) < 8", worker=True, meddle=False)
    assert len(seen["accepted"]) == CLIENTS * ENQUEUES_PER_CLIENT
    assert max(len(p) for p in seen["contents"].values()) <= 8


def test_concurrent_folds_with_patches_and_deletes(pro_server):
    _race(pro_server, "meddled", "($existing | length) < 8", worker=True, meddle=True)
