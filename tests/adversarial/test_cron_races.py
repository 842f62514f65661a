"""Cron routes under concurrent changes racing with 1-second firings, and hostile input.

Every change to the cron book takes one lock that firings take too, so a
storm of PUTs, PATCHes, DELETEs and resets must leave a state that some
order of the requests produces, never answer 5xx, never fire one entry twice
in a second, and never fire an entry after the response that deleted it.
Malformed bodies on every route get a 4xx whose error names the field.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import httpx
import msgpack
import pytest

from tests.adversarial.helpers import list_jobs
from tests.licensing import mint
from zizq.queue.cron import MAX_CRON_ENTRIES

EVERY_SECOND = "* * * * * *"
CLOCKS_APART_MS = 500  # last_enqueue_at (scheduler's clock) vs the job's ready_at (engine's)
JSON, MSGPACK = "application/json", "application/msgpack"


def now_ms() -> int:
    return int(time.time() * 1000)


def entry(group: str, name: str, expression: str = EVERY_SECOND, **extra) -> dict:
    payload = {"group": group, "entry": name, **extra.pop("payload", {})}
    return {
        "name": name,
        "expression": expression,
        "job": {"queue": "cron", "type": "tick", "payload": payload},
        **extra,
    }


def doubled(jobs: list[dict]) -> dict:
    """(group, entry, second) that hold more than one job."""
    seconds = Counter(
        (j["payload"]["group"], j["payload"]["entry"], j["ready_at"] // 1000) for j in jobs
    )
    return {key: n for key, n in seconds.items() if n > 1}


def is_defined_by(view: dict, body: dict) -> bool:
    """Whether a group view shows what a PUT body defines (its state fields aside).

    An entry's `paused` left out of the body keeps what the entry had (as the
    reference does), so only a `paused` the body names is compared.
    """
    if view.get("timezone") != body.get("timezone"):
        return False
    shown = {e["name"]: e for e in view["entries"]}
    if set(shown) != {e["name"] for e in body["entries"]}:
        return False
    for sent in body["entries"]:
        got = shown[sent["name"]]
        if (got["expression"], got.get("timezone"), got["job"]["payload"]) != (
            sent["expression"],
            sent.get("timezone"),
            sent["job"]["payload"],
        ):
            return False
        if "paused" in sent and got["paused"] != sent["paused"]:
            return False
    return True


@pytest.fixture
def licensed(start_server):
    return start_server("--license-key", mint(tier="pro"))


# -- concurrent PUTs of one group ------------------------------------------------------------

G = "race-put"
# "steady" is the same in every variant (with a zone of its own, so the group's changing
# zone does not move it): it must keep its scheduling state through every PUT.
STEADY = entry(G, "steady", timezone="UTC")
VARIANTS = [
    {"entries": [STEADY, entry(G, "a"), entry(G, "c")]},
    {"entries": [entry(G, "a", "*/2 * * * * *"), STEADY, entry(G, "d")]},
    {"entries": [STEADY, entry(G, "a", paused=True)], "timezone": "Europe/Paris"},
]


def test_concurrent_puts_leave_one_whole_definition(licensed):
    stop_at = time.monotonic() + 3.0
    failures: list[str] = []
    steady_views: list[tuple[int, dict]] = []  # (request sent at, steady as the answer shows)

    def hammer(worker: int) -> int:
        body = VARIANTS[worker % len(VARIANTS)]  # two workers send each body: same and differing
        sent = 0
        with httpx.Client(base_url=licensed.url, timeout=15.0) as client:
            while time.monotonic() < stop_at:
                started = now_ms()
                response = client.put(f"/crons/{G}", json=body)
                sent += 1
                if response.status_code != 200:
                    failures.append(f"PUT answered {response.status_code}: {response.text}")
                    continue
                view = response.json()
                if not is_defined_by(view, body):
                    failures.append(f"a PUT answered another definition: {view}")
                steady_views.append(
                    (started, next(e for e in view["entries"] if e["name"] == "steady"))
                )
        return sent

    with ThreadPoolExecutor(6) as pool:
        sent = sum(pool.map(hammer, range(6)))
    assert not failures, failures[:5]
    assert sent > 30, sent
    time.sleep(1.2)
    with httpx.Client(base_url=licensed.url, timeout=15.0) as client:
        client.patch(f"/crons/{G}", json={"paused": True}).raise_for_status()
        view = client.get(f"/crons/{G}").json()
        jobs = list_jobs(client)
        count = client.get("/jobs/count").json()["count"]
    assert any(is_defined_by(view, body) for body in VARIANTS), view
    assert count == len(jobs), (count, len(jobs))
    assert not doubled(jobs), doubled(jobs)
    steady = sorted(j["ready_at"] for j in jobs if j["payload"]["entry"] == "steady")
    assert len(steady) >= 3, f"steady fired only at {steady} in ~4 s"
    shown = next(e for e in view["entries"] if e["name"] == "steady")
    assert 0 <= steady[-1] - shown["last_enqueue_at"] <= CLOCKS_APART_MS, (steady, shown)
    # Unchanged through every PUT: once it had fired, no answer shows it fresh again.
    reset = [v for at, v in steady_views if at > steady[0] + 50 and "last_enqueue_at" not in v]
    assert not reset, f"PUTs reset steady's state: {reset[:3]}"


# -- a storm of every kind of change ---------------------------------------------------------

STORM_GROUPS = ["m0", "m1", "m2"]
POOL = ["p", "q", "r", "s"]
EXPRESSIONS = [EVERY_SECOND, "*/2 * * * * *", "0 0 1 1 *"]
# Statuses each operation may answer when the group or entry it names is gone meanwhile.
ALLOWED = {
    "put_group": {200},
    "patch_group": {200, 404},
    "put_entry": {200},
    "post_entry": {201, 409},
    "patch_entry": {200, 404},
    "delete_entry": {204, 404},
    "delete_group": {204, 404},
    "get": {200, 404},
    "list": {200},
}
RESETS = [(1.0, "POST", "/reset"), (2.5, "DELETE", "/crons")]  # s into the storm; then none


def random_group_body(rng: random.Random, group: str) -> dict:
    names = rng.sample(POOL, rng.randint(0, len(POOL)))
    body: dict = {"entries": [entry(group, n, rng.choice(EXPRESSIONS)) for n in names]}
    if rng.random() < 0.3:
        body["paused"] = rng.random() < 0.5
    if rng.random() < 0.3:
        body["timezone"] = rng.choice(["UTC", "Asia/Tokyo", "America/Sao_Paulo"])
    return body


def storm_request(rng: random.Random, client: httpx.Client, fmt: str) -> tuple[str, httpx.Response]:
    group, name = rng.choice(STORM_GROUPS), rng.choice(POOL)
    kind = rng.choices(list(ALLOWED), weights=[3, 2, 2, 2, 2, 2, 1, 2, 1], k=1)[0]
    headers = {"content-type": fmt, "accept": fmt}

    def send(method: str, path: str, body=None) -> httpx.Response:
        content = None
        if body is not None:
            content = (
                msgpack.packb(body)
                if fmt == MSGPACK
                else httpx.Request("GET", "/", json=body).content
            )
        return client.request(method, path, content=content, headers=headers)

    if kind == "put_group":
        return kind, send("PUT", f"/crons/{group}", random_group_body(rng, group))
    if kind == "patch_group":
        patch = rng.choice(
            [{"paused": True}, {"paused": False}, {"timezone": None}, {"timezone": "Asia/Tokyo"}]
        )
        return kind, send("PATCH", f"/crons/{group}", patch)
    if kind == "put_entry":
        body = entry(group, name, rng.choice(EXPRESSIONS))
        return kind, send("PUT", f"/crons/{group}/entries/{name}", body)
    if kind == "post_entry":
        return kind, send("POST", f"/crons/{group}/entries", entry(group, name))
    if kind == "patch_entry":
        body = {"paused": rng.random() < 0.5}
        return kind, send("PATCH", f"/crons/{group}/entries/{name}", body)
    if kind == "delete_entry":
        return kind, send("DELETE", f"/crons/{group}/entries/{name}")
    if kind == "delete_group":
        return kind, send("DELETE", f"/crons/{group}")
    if kind == "get":
        path = rng.choice([f"/crons/{group}", f"/crons/{group}/entries/{name}"])
        return kind, send("GET", path)
    return kind, send("GET", "/crons")


def test_storm_of_changes_never_5xx_never_doubles_and_deleted_entries_stay_silent(licensed):
    url = licensed.url
    stop = threading.Event()
    failures: list[str] = []
    resets: list[tuple[int, int]] = []  # (sent at, answered at) of POST /reset, DELETE /crons
    tokens: dict[str, tuple[int, int | None]] = {}  # victim token -> (created by, deleted at)
    counts: Counter = Counter()

    def storm(worker: int) -> None:
        rng = random.Random(worker)
        fmt = MSGPACK if worker % 2 else JSON
        with httpx.Client(base_url=url, timeout=15.0) as client:
            while not stop.is_set():
                kind, response = storm_request(rng, client, fmt)
                counts[kind] += 1
                if response.status_code not in ALLOWED[kind]:
                    failures.append(
                        f"{kind} {response.request.method} {response.request.url}: "
                        f"{response.status_code} {response.text[:300]}"
                    )

    def victim() -> None:
        """One entry at a time, each with its own token, deleted by one route or another."""
        rng = random.Random(99)
        with httpx.Client(base_url=url, timeout=15.0) as client:
            for cycle in itertools.count():
                if stop.is_set():
                    return
                token = uuid.uuid4().hex
                body = {"entries": [entry("victim", "v", payload={"token": token})]}
                response = client.put("/crons/victim", json=body)
                if response.status_code != 200:
                    failures.append(f"victim PUT: {response.status_code} {response.text}")
                    return
                tokens[token] = (now_ms(), None)
                time.sleep(rng.uniform(0.3, 1.6))
                how = cycle % 3
                if how == 0:
                    response = client.delete("/crons/victim/entries/v")
                elif how == 1:
                    response = client.delete("/crons/victim")
                else:
                    response = client.put("/crons/victim", json={"entries": []})
                if response.status_code not in (200, 204, 404):  # 404: a reset came first
                    failures.append(f"victim delete: {response.status_code} {response.text}")
                tokens[token] = (tokens[token][0], now_ms())

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(storm, w) for w in range(5)] + [pool.submit(victim)]
        # A reset wipes every job too: a few, early, leave jobs enough to check afterwards.
        began = time.monotonic()
        with httpx.Client(base_url=url, timeout=15.0) as client:
            for at, method, path in RESETS:
                time.sleep(max(0.0, began + at - time.monotonic()))
                sent = now_ms()
                response = client.request(method, path)
                assert response.status_code in (200, 204), response.text
                resets.append((sent, now_ms()))
        time.sleep(max(0.0, began + 5.0 - time.monotonic()))
        stop.set()
        for future in futures:
            future.result(timeout=30)
    assert not failures, failures[:5]
    assert sum(counts.values()) > 200, counts

    with httpx.Client(base_url=url, timeout=15.0) as client:
        # The state left is readable and made only of definitions the storm sent.
        names = client.get("/crons").json()["crons"]
        for name in names:
            response = client.get(f"/crons/{name}")
            assert response.status_code == 200, response.text
            for shown in response.json()["entries"]:
                assert shown["name"] in POOL + ["v"], shown
                assert shown["expression"] in EXPRESSIONS, shown
        time.sleep(1.2)  # firings go on meanwhile
        deleted = client.delete("/crons")
        assert deleted.status_code == 200 and deleted.json() == {"deleted": len(names)}, (
            deleted.text
        )
        settled_at = now_ms()
        jobs = list_jobs(client)
        count = client.get("/jobs/count").json()["count"]
        assert count == len(jobs), f"GET /jobs/count {count} != listing {len(jobs)}"
        time.sleep(1.2)
        later = list_jobs(client)
    assert not doubled(jobs), doubled(jobs)
    assert len(later) == len(jobs), f"{len(later) - len(jobs)} jobs fired after DELETE /crons"
    assert max((j["ready_at"] for j in jobs), default=0) <= settled_at
    victims = [j for j in jobs if j["payload"]["group"] == "victim"]
    assert victims, "the victim entry never fired"
    for job in victims:
        created, deleted_at = tokens[job["payload"]["token"]]
        # A reset or DELETE /crons sent after the token's PUT answered deletes it too.
        ends = [answered for sent, answered in resets if sent > created]
        if deleted_at is not None:
            ends.append(deleted_at)
        if ends:
            assert job["ready_at"] < min(ends), f"a deleted entry fired: {job}, ends {ends}"


# -- hostile input ---------------------------------------------------------------------------

GOOD_JOB = {"queue": "q", "type": "t", "payload": {}}
GOOD_ENTRY = {"name": "e", "expression": "0 0 1 1 *", "job": GOOD_JOB}
LONG = "n" * 1025


def with_entry(**changes) -> dict:
    body = {**GOOD_ENTRY, **changes}
    return {k: v for k, v in body.items() if v is not ...}


def with_job(**changes) -> dict:
    job = {k: v for k, v in {**GOOD_JOB, **changes}.items() if v is not ...}
    return {**GOOD_ENTRY, "job": job}


# (what, field the error must name, the entry body); each is sent to POST .../entries,
# PUT .../entries/e (without the name, the URL's), and inside a group PUT as entries[0].
BAD_ENTRIES = [
    ("not an object", "", ["e"]),
    ("no name", "name", with_entry(name=...)),
    ("name not a string", "name", with_entry(name=7)),
    ("empty name", "name", with_entry(name="")),
    ("long name", "name", with_entry(name=LONG)),
    *[(f"reserved {c!r} in name", "name", with_entry(name=f"a{c}b")) for c in ",*?[]{}\\"],
    ("no expression", "expression", with_entry(expression=...)),
    ("expression not a string", "expression", with_entry(expression=5)),
    ("empty expression", "expression", with_entry(expression="")),
    ("three fields", "expression", with_entry(expression="* * *")),
    ("seven fields", "expression", with_entry(expression="* * * * * * *")),
    ("second 61", "expression", with_entry(expression="61 * * * * *")),
    ("minute 60", "expression", with_entry(expression="60 * * * *")),
    ("words", "expression", with_entry(expression="every day at noon")),
    ("unknown zone", "timezone", with_entry(timezone="Mars/Olympus_Mons")),
    ("zone a path", "timezone", with_entry(timezone="../../etc/passwd")),
    ("zone not a string", "timezone", with_entry(timezone=3)),
    ("empty zone", "timezone", with_entry(timezone="")),
    ("paused a string", "paused", with_entry(paused="yes")),
    ("no job", "job", with_entry(job=...)),
    ("job not an object", "job", with_entry(job="run")),
    ("job without payload", "payload", with_job(payload=...)),
    ("job without queue", "queue", with_job(queue=...)),
    ("queue reserved", "queue", with_job(queue="a*b")),
    ("type not a string", "type", with_job(type=1)),
    ("priority a string", "priority", with_job(priority="high")),
    ("priority too big", "priority", with_job(priority=70_000)),
    ("ready_at", "ready_at", with_job(ready_at=1)),
    ("retry_limit negative", "retry_limit", with_job(retry_limit=-1)),
    ("backoff not an object", "backoff", with_job(backoff=3)),
    ("unique_while unknown", "unique_while", with_job(unique_key="k", unique_while="always")),
    ("batch not an object", "batch", with_job(batch="x")),
]


def assert_refused(response: httpx.Response, field: str, what: str, within: str = "") -> None:
    """A 4xx with {"error": ...} naming `field` (and `within`, the item it sits in)."""
    assert 400 <= response.status_code < 500, (what, response.status_code, response.text)
    media = response.headers.get("content-type", "")
    body = msgpack.unpackb(response.content) if "msgpack" in media else response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), (what, body)
    for name in (field, within):
        assert name in body["error"], f"{what}: {body['error']!r} does not name {name!r}"


@pytest.mark.parametrize("fmt", [JSON, MSGPACK], ids=["json", "msgpack"])
def test_malformed_bodies_get_a_4xx_naming_the_field(licensed, fmt):
    def encode(body) -> bytes:
        return (
            msgpack.packb(body) if fmt == MSGPACK else httpx.Request("GET", "/", json=body).content
        )

    headers = {"content-type": fmt, "accept": fmt}
    with httpx.Client(base_url=licensed.url, timeout=15.0, headers=headers) as client:
        assert client.put("/crons/g", content=encode({"entries": [GOOD_ENTRY]})).status_code == 200
        for what, field, body in BAD_ENTRIES:
            r = client.post("/crons/g/entries", content=encode(body))
            assert_refused(r, field or "body", f"POST {what}")
            if isinstance(body, dict) and field != "name":
                r = client.put("/crons/g/entries/e", content=encode({**body, "name": None}))
                assert_refused(r, field, f"PUT entry {what}")
            r = client.put("/crons/g2", content=encode({"entries": [body]}))
            assert_refused(r, field, f"PUT group {what}", "entries[0]")
        # Group-level fields and shapes.
        group_cases = [
            ("body not an object", "body", [1, 2]),
            ("no entries", "entries", {}),
            ("entries not an array", "entries", {"entries": {"a": GOOD_ENTRY}}),
            ("paused a number", "paused", {"entries": [], "paused": 1}),
            ("bad group zone", "timezone", {"entries": [], "timezone": "Nowhere/Special"}),
            ("duplicate names", "entries[1].name", {"entries": [GOOD_ENTRY, GOOD_ENTRY]}),
        ]
        for what, field, body in group_cases:
            assert_refused(client.put("/crons/g3", content=encode(body)), field, what)
        patch_cases = [
            ("PATCH group paused a string", "/crons/g", {"paused": "no"}, "paused"),
            ("PATCH group bad zone", "/crons/g", {"timezone": "Atlantis/Capital"}, "timezone"),
            ("PATCH group zone a number", "/crons/g", {"timezone": 12}, "timezone"),
            ("PATCH group not an object", "/crons/g", "pause", "body"),
            ("PATCH entry paused a number", "/crons/g/entries/e", {"paused": 0}, "paused"),
            ("PATCH entry not an object", "/crons/g/entries/e", [], "body"),
        ]
        for what, path, body, field in patch_cases:
            assert_refused(client.patch(path, content=encode(body)), field, what)
        # Bodies that do not decode, on every route that reads one.
        garbage = b"{" if fmt == JSON else b"\xc1"
        for method, path in [
            ("PUT", "/crons/g"),
            ("PATCH", "/crons/g"),
            ("POST", "/crons/g/entries"),
            ("PUT", "/crons/g/entries/e"),
            ("PATCH", "/crons/g/entries/e"),
        ]:
            r = client.request(method, path, content=garbage)
            assert 400 <= r.status_code < 500 and "error" in r.text, (method, path, r.text)
        # Names in the URL: too long, reserved characters.
        for bad in [LONG, "a,b", "a*b", "a?b", "a[b", "a]b", "a{b", "a}b", "a\\b"]:
            r = client.put(f"/crons/{quote(bad, safe='')}", content=encode({"entries": []}))
            assert_refused(r, "group", f"group name {bad[:10]!r}")
            r = client.put(f"/crons/g/entries/{quote(bad, safe='')}", content=encode(GOOD_ENTRY))
            assert_refused(r, "entry", f"entry name {bad[:10]!r}")
        # Nothing refused was stored.
        view = client.get("/crons/g").json() if fmt == JSON else None
        names = client.get("/crons")
        assert names.status_code == 200
    if view is not None:
        assert [e["name"] for e in view["entries"]] == ["e"], view


def test_many_entries_accepted_up_to_the_limit_then_refused(licensed):
    """10,000 entries in one PUT are fine; the 100,001st entry over all groups is refused."""
    per_group = 10_000
    groups = MAX_CRON_ENTRIES // per_group
    with httpx.Client(base_url=licensed.url, timeout=60.0) as client:
        for g in range(groups):
            body = {
                "entries": [
                    {"name": f"e{i}", "expression": "0 0 1 1 *", "job": GOOD_JOB}
                    for i in range(per_group)
                ]
            }
            r = client.put(f"/crons/big{g}", json=body)
            assert r.status_code == 200, r.text[:300]
        assert len(r.json()["entries"]) == per_group
        one_more = {"entries": [GOOD_ENTRY]}
        assert_refused(client.put("/crons/straw", json=one_more), "entries", "PUT the 100,001st")
        assert_refused(client.post("/crons/big0/entries", json=GOOD_ENTRY), "entries", "POST")
        r = client.put("/crons/big0/entries/extra", json=GOOD_ENTRY)
        assert_refused(r, "entries", "PUT entry the 100,001st")
        # Replacing an entry takes no room; shrinking a group makes some.
        r = client.put("/crons/big2/entries/e0", json=GOOD_ENTRY)
        assert r.status_code == 200, r.text[:300]
        r = client.put("/crons/big1", json=one_more)
        assert r.status_code == 200, r.text[:300]
        assert client.put("/crons/straw", json=one_more).status_code == 200
        assert client.post("/reset").status_code == 204
        assert client.get("/crons").json() == {"crons": []}
