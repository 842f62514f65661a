"""Unique keys under attack: many clients at once, holders leaving mid-race, kill -9.

Exactly one job may win a key: N clients (HTTP/1.1 and h2c, singles and bulks,
bulks carrying the key twice) enqueueing it at the same moment make one job,
counted by a scan of the store. A holder acked, killed or deleted while new
enqueues of its key arrive hands the key to exactly one successor, and once
things settle the key index (read from the store itself, with the server
stopped) names only jobs that exist. A server SIGKILLed at random moments under
a stream of unique enqueues comes back with every acknowledged job, at most one
job per key, and recognises duplicates of what it had (the index survived).
"""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest

from tests.adversarial.helpers import all_at_once, assert_counters_match_scan, clients
from tests.e2e.zizq_process import TakeStream, ZizqServer
from tests.licensing import mint
from zizq.store import Store, layout

CLIENTS = 40
SCOPES = ("queued", "active", "exists")


def job(queue: str, key: str | None, scope: str | None = None, **fields) -> dict:
    body = {"queue": queue, "type": "race", "payload": {}, **fields}
    if key is not None:
        body["unique_key"] = key
    if scope is not None:
        body["unique_while"] = scope
    return body


def jobs_with_key(client: httpx.Client, key: str) -> list[dict]:
    """Every job holding `key` in its record, by a walk of the whole store."""
    found, path = [], "/jobs?limit=2000"
    while path:
        page = client.get(path).json()
        found += [j for j in page["jobs"] if j.get("unique_key") == key]
        path = page["pages"]["next"]
    return found


def unique_index(root_dir) -> dict[str, str]:
    """The unique key index as stored (the server must be stopped): key -> job id."""
    store = Store(root_dir, cache_size=8 * 1024 * 1024)
    try:
        tag = layout.INDEX_UNIQUE
        entries = {key[len(tag) :].decode(): job_id for key, job_id in store.iter_keyed(tag)}
        missing = {key: job_id for key, job_id in entries.items() if store.get_job(job_id) is None}
        mismatched = {
            key: job_id
            for key, job_id in entries.items()
            if key not in missing and store.get_job(job_id).get("unique_key") != key
        }
    finally:
        store.close()
    assert not missing, f"index entries naming jobs that are gone: {missing}"
    assert not mismatched, f"index entries naming jobs with another key: {mismatched}"
    return entries


@pytest.fixture(scope="module")
def licensed(tmp_path_factory):
    server = ZizqServer(tmp_path_factory.mktemp("races") / "root", "--license-key", mint())
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("scope", SCOPES)
def test_forty_clients_one_key_make_exactly_one_job(licensed, scope):
    key, queue = f"race-{scope}-{time.monotonic_ns()}", f"race-{scope}"
    pool = clients(licensed.url, CLIENTS)

    def single(client: httpx.Client):
        return lambda: [client.post("/jobs", json=job(queue, key, scope))]

    def bulk(client: httpx.Client, own: str):
        # The key twice, and a key of this client's own so the bulk creates something.
        jobs = [job(queue, key, scope), job(queue, own, scope), job(queue, key, scope)]
        return lambda: [client.post("/jobs/bulk", json={"jobs": jobs})]

    try:
        calls = [
            single(client) if i % 4 < 2 else bulk(client, f"{key}-own-{i}")
            for i, client in enumerate(pool)
        ]
        started = time.monotonic()
        results = all_at_once(calls)
        elapsed = time.monotonic() - started
        views = []
        for outcome in results:
            assert not isinstance(outcome, Exception), outcome
            (response,) = outcome
            assert response.status_code in (200, 201), response.text
            answer = response.json()
            views += [v for v in answer.get("jobs", [answer]) if v["unique_key"] == key]
        winners = {v["id"] for v in views if not v["duplicate"]}
        assert len(winners) == 1, winners
        assert {v["id"] for v in views} == winners, "a duplicate names another job"
        assert len(views) == CLIENTS // 2 + 2 * (CLIENTS // 2)
        stored = jobs_with_key(pool[0], key)
        assert [j["id"] for j in stored] == list(winners)
        print(f"{CLIENTS} clients ({scope}): one job, all answered in {elapsed * 1000:.0f} ms")
    finally:
        for client in pool:
            client.close()
    assert_counters_match_scan(licensed.url)


@pytest.mark.parametrize("leave", ["ack", "kill", "delete", "delete_by_filter"])
def test_the_holder_leaving_mid_race_hands_the_key_to_one_job(start_server, tmp_path, leave):
    """The holder (in flight) leaves while 12 clients enqueue its key: one successor.

    fsync commit modes, so acks and enqueues really are in flight on the commit
    thread together. The enqueues go to another queue than the stream's, so a
    successor stays ready (and in every scope) until the end.
    """
    root = tmp_path / "root"
    server = start_server(
        "--license-key",
        mint(),
        "--default-commit-mode",
        "fsync",
        "--enqueue-commit-mode",
        "fsync",
        root_dir=root,
    )
    pool = clients(server.url, 12)
    holder_client = httpx.Client(base_url=server.url, timeout=30.0)
    try:
        for round_ in range(6):
            _hand_over(server, pool, holder_client, leave, round_)
        assert_counters_match_scan(server.url)
    finally:
        holder_client.close()
        for client in pool:
            client.close()
    server.stop()
    index = unique_index(root)
    assert all(key.startswith(f"hand-{leave}-") for key in index)


def _hand_over(
    server: ZizqServer, pool: list[httpx.Client], client: httpx.Client, leave: str, round_: int
) -> None:
    scope = SCOPES[round_ % 3]
    key = f"hand-{leave}-{round_}"
    stream_queue, queue = f"held-{leave}-{round_}", f"next-{leave}-{round_}"
    # Not retained, then retained: an `exists` holder acked or killed keeps its key.
    retained = round_ >= 3
    keep = 60_000 if retained else 0
    fields = {"retention": {"completed_ms": keep, "dead_ms": keep}}
    still_held = scope == "exists" and retained and leave in ("ack", "kill")
    holder = client.post("/jobs", json=job(stream_queue, key, scope, **fields)).json()["id"]

    def leaving():
        if leave == "ack":
            return client.post(f"/jobs/{holder}/success")
        if leave == "kill":
            return client.post(f"/jobs/{holder}/failure", json={"message": "x", "kill": True})
        if leave == "delete":
            return client.delete(f"/jobs/{holder}")
        return client.delete(f"/jobs?queue={stream_queue}")

    def enqueuer(other: httpx.Client, i: int):
        if i % 3 == 2:
            jobs = [job(queue, key, scope), job(queue, key, scope)]
            return lambda: other.post("/jobs/bulk", json={"jobs": jobs})
        return lambda: other.post("/jobs", json=job(queue, key, scope))

    stream = TakeStream(server.url, queues=stream_queue, prefetch=1)
    try:
        assert stream.next_job(5)["id"] == holder
        calls = [enqueuer(other, i) for i, other in enumerate(pool)]
        calls.insert(len(calls) // 2, leaving)
        results = all_at_once(calls)
    finally:
        stream.close()
    views = []
    for outcome in results:
        assert not isinstance(outcome, Exception), outcome
        assert outcome.status_code < 300, (outcome.status_code, outcome.text)
        if outcome.content:
            answer = outcome.json()
            if "deleted" not in answer and answer.get("status") != "dead":
                views += answer.get("jobs", [answer])
    successors = {v["id"] for v in views if not v["duplicate"]}
    held = scope != "queued"  # a queued holder was out of scope from the start
    if held and not still_held and not successors:
        # The holder left only after every enqueue had decided: all were duplicates of
        # it, and the key is free now that it is gone.
        assert all(v["duplicate"] and v["id"] == holder for v in views), views
        answer = client.post("/jobs", json=job(queue, key, scope)).json()
        assert answer["duplicate"] is False, answer
        return
    assert len(successors) == (0 if still_held else 1), (scope, successors)
    for view in views:
        if view["duplicate"]:
            assert view["id"] in successors or (held and view["id"] == holder), view
    if still_held:
        assert [j["id"] for j in jobs_with_key(client, key)] == [holder]
        return
    # Settled: the one successor holds the key, alone in its scope.
    (successor,) = successors
    answer = client.post("/jobs", json=job(queue, key, scope)).json()
    assert answer["duplicate"] is True and answer["id"] == successor, answer
    in_scope = [
        j for j in jobs_with_key(client, key) if j["status"] in ("scheduled", "ready", "in_flight")
    ]
    assert [j["id"] for j in in_scope] == [successor], in_scope


class Writer(threading.Thread):
    """Enqueues unique jobs (singles, bulks with copies) and deletes some, until stopped.

    Remembers what the server acknowledged: ids created (201 or a new job in a
    bulk) and ids whose delete answered 204; an answer that never came is unknown.
    """

    def __init__(self, url: str, seed: int, keys: list[str], http2: bool) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=url, http1=not http2, http2=http2, timeout=5.0)
        self.rng = random.Random(seed)
        self.keys = keys
        self.created: dict[str, str] = {}  # id -> key
        self.deleted: set[str] = set()
        self.maybe_deleted: set[str] = set()
        self.stop = threading.Event()
        self.requests = 0
        self.errors: list[str] = []  # answers no request should get

    def body(self) -> dict:
        return job("crash", self.rng.choice(self.keys), self.rng.choice(SCOPES))

    def run(self) -> None:
        while not self.stop.is_set():
            roll = self.rng.random()
            target = None
            try:
                if roll < 0.5:
                    response = self.client.post("/jobs", json=self.body())
                elif roll < 0.85:
                    jobs = [self.body() for _ in range(self.rng.randint(1, 6))]
                    response = self.client.post("/jobs/bulk", json={"jobs": jobs})
                elif self.created:
                    target = self.rng.choice(sorted(self.created))
                    self.maybe_deleted.add(target)
                    response = self.client.delete(f"/jobs/{target}")
                    if response.status_code == 204:
                        self.deleted.add(target)
                    elif response.status_code != 404:
                        self.errors.append(f"delete: {response.status_code} {response.text}")
                    continue
                else:
                    continue
            except httpx.HTTPError:
                return  # the server is gone: this answer never came
            finally:
                self.requests += 1
            if response.status_code not in (200, 201):
                self.errors.append(f"enqueue: {response.status_code} {response.text}")
                continue
            answer = response.json()
            for view in answer.get("jobs", [answer]):
                if not view["duplicate"]:
                    self.created[view["id"]] = view["unique_key"]

    def close(self) -> None:
        self.stop.set()
        self.join(10)
        self.client.close()


def test_kill_9_under_unique_enqueues_keeps_every_job_and_the_index(start_server, tmp_path):
    root = tmp_path / "root"
    token = mint()
    rng = random.Random(7)
    keys = [f"crash-{i}" for i in range(40)]
    server = start_server("--license-key", token, root_dir=root)
    created: dict[str, str] = {}
    deleted: set[str] = set()
    unsure: set[str] = set()
    total_requests = 0
    for round_ in range(4):
        writers = [Writer(server.url, round_ * 10 + i, keys, http2=i % 2 == 1) for i in range(4)]
        for writer in writers:
            writer.start()
        time.sleep(rng.uniform(0.2, 0.8))
        server.kill()
        for writer in writers:
            writer.close()
            created.update(writer.created)
            deleted |= writer.deleted
            unsure |= writer.maybe_deleted - writer.deleted
            total_requests += writer.requests
            assert not writer.errors, writer.errors[:3]
        assert not any(writer.is_alive() for writer in writers)
        server.start()
        with httpx.Client(base_url=server.url, timeout=30.0) as client:
            present: dict[str, str] = {}
            path = "/jobs?queue=crash&limit=2000"
            while path:
                page = client.get(path).json()
                present.update({j["id"]: j["unique_key"] for j in page["jobs"]})
                path = page["pages"]["next"]
            lost = set(created) - set(present) - deleted - unsure
            assert not lost, f"acknowledged jobs lost: {sorted(lost)[:5]}"
            resurrected = deleted & set(present)
            assert not resurrected, f"acknowledged deletes undone: {sorted(resurrected)[:5]}"
            per_key: dict[str, list[str]] = {}
            for job_id, key in present.items():
                per_key.setdefault(key, []).append(job_id)
            doubled = {key: ids for key, ids in per_key.items() if len(ids) > 1}
            assert not doubled, f"two jobs in scope for one key after the crash: {doubled}"
            # The index survived: every holder is recognised, every other key is free.
            for key in keys:
                response = client.post("/jobs", json=job("crash", key, "exists"))
                answer = response.json()
                if key in per_key:
                    assert response.status_code == 200, (key, answer)
                    assert answer["id"] == per_key[key][0], (key, answer, per_key[key])
                else:
                    assert response.status_code == 201, (key, answer)
                    created[answer["id"]] = key
        assert_counters_match_scan(server.url)
    print(f"kill -9: 4 rounds, {total_requests} requests, {len(created)} jobs created")
    server.stop()
    unique_index(root)
