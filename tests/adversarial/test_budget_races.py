"""Budgets under attack: racing clients, hostile input, kill -9.

Many clients (HTTP/1.1 and h2c) create the same budget at once (exactly one 201), bind
jobs to one key with `create_with` (one budget, every job bound), delete or shrink a
budget while enqueues and filtered rebinds (/jobs/budgets/{key}) bind it (never a job bound to a missing budget or costing more than
its budget can pay, never a 5xx), and rebind jobs, one at a time and by filter, while
workers take them (in flight is a 422 or `blocked`, never a 5xx; every budget's draws drain to zero afterwards, so it can be deleted).
Malformed and huge input is always a 4xx with {"error"}. A server SIGKILLed right after
acknowledged budget work comes back with every policy and binding, counters equal to a
scan, and while_in_flight budgets dispatching again (tokens are not persisted: refilled).
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time

import httpx
import msgpack
import pytest

from tests.adversarial.helpers import all_at_once, assert_counters_match_scan, clients, list_jobs
from tests.e2e.zizq_process import TakeStream, ZizqServer
from tests.licensing import mint

CLIENTS = 32
WIF = {"type": "while_in_flight"}


def wif(allocation: int) -> dict:
    return {"allocation": allocation, "strategy": dict(WIF)}


def job(queue: str, budgets: list | None = None, **extra) -> dict:
    body = {"queue": queue, "type": "race", "payload": {}, **extra}
    if budgets is not None:
        body["budgets"] = budgets
    return body


@pytest.fixture
def licensed(start_server) -> ZizqServer:
    return start_server("--license-key", mint())


class Race:
    """Threads that each repeat an action until the deadline; every answer is recorded."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.answers: list[tuple[str, int, str]] = []  # (what, status, body)
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def add(self, name: str, action, allowed: set[int]) -> None:
        def loop() -> None:
            rng = random.Random(f"{name}-{len(self._threads)}")
            while time.monotonic() < self.deadline:
                try:
                    response = action(rng)
                except Exception as exc:
                    with self._lock:
                        self.failures.append(f"{name}: {exc!r}")
                    return
                if response is None:
                    continue
                with self._lock:
                    self.answers.append((name, response.status_code, response.text[:300]))
                    if response.status_code not in allowed:
                        self.failures.append(
                            f"{name}: {response.status_code} {response.text[:300]}"
                        )
                    elif response.status_code >= 400 and "error" not in response.json():
                        self.failures.append(f"{name}: no error field: {response.text[:300]}")

        self._threads.append(threading.Thread(target=loop, daemon=True))

    def run(self) -> None:
        for thread in self._threads:
            thread.start()
        for thread in self._threads:
            thread.join(max(1.0, self.deadline - time.monotonic() + 30))
        assert not any(t.is_alive() for t in self._threads), "a racer never finished"
        assert not self.failures, self.failures[:10]

    def count(self, name: str, status: int) -> int:
        return sum(1 for n, s, _ in self.answers if n == name and s == status)


def budgets_by_key(client: httpx.Client) -> dict[str, dict]:
    response = client.get("/budgets")
    assert response.status_code == 200, response.text
    return {b["key"]: b for b in response.json()["budgets"]}


def capacity(budget: dict) -> int:
    return budget["strategy"].get("burst", budget["allocation"])


def assert_every_binding_payable(client: httpx.Client) -> list[dict]:
    """Every unfinished job draws only on budgets that exist and can pay its cost."""
    budgets = budgets_by_key(client)
    jobs = list_jobs(client)
    for found in jobs:
        if found["status"] in ("completed", "dead"):
            continue
        for binding in found.get("budgets", ()):
            budget = budgets.get(binding["key"])
            assert budget is not None, f"job {found['id']} bound to missing {binding['key']}"
            assert binding["cost"] <= capacity(budget), (found, budget)
    return jobs


# -- creation races ----------------------------------------------------------------------------


def test_concurrent_posts_of_one_key_make_exactly_one_budget(licensed):
    pool = clients(licensed.url, CLIENTS)
    try:
        for round_ in range(5):
            key = f"same-{round_}"
            calls = [
                (lambda c=c, i=i, key=key: c.post(f"/budgets/{key}", json=wif(i + 1)))
                for i, c in enumerate(pool)
            ]
            results = all_at_once(calls)
            assert all(isinstance(r, httpx.Response) for r in results), results
            statuses = sorted(r.status_code for r in results)
            assert statuses == [201] + [409] * (CLIENTS - 1), statuses
            (winner,) = [r.json() for r in results if r.status_code == 201]
            assert pool[0].get(f"/budgets/{key}").json() == winner
    finally:
        for client in pool:
            client.close()
    with httpx.Client(base_url=licensed.url) as client:
        assert sorted(budgets_by_key(client)) == [f"same-{i}" for i in range(5)]


def test_concurrent_create_with_makes_one_budget_and_binds_every_job(licensed):
    pool = clients(licensed.url, CLIENTS)
    try:
        calls = []
        for i, c in enumerate(pool):
            binding = [{"key": "shared", "cost": 1, "create_with": wif(i + 1)}]
            if i % 4 == 3:
                body = {"jobs": [job("cw", binding), job("cw"), job("cw", binding)]}
                calls.append(lambda c=c, body=body: c.post("/jobs/bulk", json=body))
            else:
                calls.append(lambda c=c, binding=binding: c.post("/jobs", json=job("cw", binding)))
        results = all_at_once(calls)
        assert all(isinstance(r, httpx.Response) for r in results), results
        assert all(r.status_code == 201 for r in results), [r.text for r in results][:5]
    finally:
        for client in pool:
            client.close()
    bound = sum(2 if i % 4 == 3 else 1 for i in range(CLIENTS))
    with httpx.Client(base_url=licensed.url) as client:
        budgets = budgets_by_key(client)
        assert list(budgets) == ["shared"]
        assert budgets["shared"]["strategy"] == WIF
        assert 1 <= budgets["shared"]["allocation"] <= CLIENTS
        count = client.get("/jobs/count", params={"budgets.key": "shared"}).json()["count"]
        assert count == bound
        assert client.delete("/budgets/shared").status_code == 409
    licensed.kill()
    licensed.start()
    with httpx.Client(base_url=licensed.url) as client:
        assert budgets_by_key(client) == budgets  # written with the first landing enqueue
        assert client.get("/jobs/count", params={"budgets.key": "shared"}).json()["count"] == bound
    assert_counters_match_scan(licensed.url)


# -- delete and shrink racing enqueues ----------------------------------------------------------


def test_delete_racing_enqueues_never_leaves_a_job_bound_to_a_missing_budget(licensed):
    keys = [f"k{i}" for i in range(3)]
    pool = clients(licensed.url, 12)
    race = Race(seconds=4.0)

    def enqueue_bound(client):
        def act(rng: random.Random):
            budgets = [{"key": k} for k in rng.sample(keys, rng.randint(1, 2))]
            if rng.random() < 0.3:
                budgets[0]["create_with"] = wif(rng.randint(1, 3))
            if rng.random() < 0.3:
                body = {"jobs": [job("dq", budgets), job("dq")]}
                return client.post("/jobs/bulk", json=body)
            return client.post("/jobs", json=job("dq", budgets))

        return act

    def delete_budget(client):
        return lambda rng: client.delete(f"/budgets/{rng.choice(keys)}")

    def create_budget(client):
        return lambda rng: client.put(f"/budgets/{rng.choice(keys)}", json=wif(3))

    def delete_jobs(client):
        return lambda rng: client.delete("/jobs", params={"budgets.key": rng.choice(keys)})

    for client in pool[:6]:
        race.add("enqueue", enqueue_bound(client), {201, 422})
    for client in pool[6:8]:
        race.add("delete", delete_budget(client), {204, 404, 409})
    for client in pool[8:10]:
        race.add("create", create_budget(client), {200})

    def bind_filtered(client):
        def act(rng: random.Random):
            key = rng.choice(keys)
            if rng.random() < 0.5:
                return client.delete(f"/jobs/budgets/{key}", params={"queue": "dq"})
            body = {"create_with": wif(3)} if rng.random() < 0.5 else {}
            return client.put(f"/jobs/budgets/{key}", params={"queue": "dq"}, json=body)

        return act

    race.add("delete-jobs", delete_jobs(pool[10]), {200})
    race.add("bind-filtered", bind_filtered(pool[11]), {200, 422})
    try:
        race.run()
    finally:
        for client in pool:
            client.close()
    assert race.count("enqueue", 201) > 50 and race.count("delete", 204) > 5, (
        race.count("enqueue", 201),
        race.count("delete", 204),
    )
    with httpx.Client(base_url=licensed.url, timeout=30) as client:
        assert_every_binding_payable(client)
        # Each budget's draws are what the store says: deletable exactly when nothing draws.
        for key in budgets_by_key(client):
            count = client.get("/jobs/count", params={"budgets.key": key}).json()["count"]
            assert client.delete(f"/budgets/{key}").status_code == (409 if count else 204)
    assert_counters_match_scan(licensed.url)
    licensed.kill()
    licensed.start()
    with httpx.Client(base_url=licensed.url, timeout=30) as client:
        assert_every_binding_payable(client)
    assert_counters_match_scan(licensed.url)


def test_shrinking_racing_enqueues_never_leaves_an_unpayable_cost(licensed):
    pool = clients(licensed.url, 8)
    with httpx.Client(base_url=licensed.url) as client:
        assert client.post("/budgets/w", json=wif(10)).status_code == 201
        rate = {"allocation": 10, "strategy": {"type": "time_based", "duration_ms": 60_000}}
        assert client.post("/budgets/t", json=rate).status_code == 201
    race = Race(seconds=3.0)

    def enqueue(client):
        def act(rng: random.Random):
            key = rng.choice(["w", "t"])
            return client.post("/jobs", json=job("sq", [{"key": key, "cost": rng.randint(1, 10)}]))

        return act

    def shrink(client):
        def act(rng: random.Random):
            if rng.random() < 0.5:
                return client.patch("/budgets/w", json={"allocation": rng.randint(1, 10)})
            return client.patch("/budgets/t", json={"strategy": {"burst": rng.randint(1, 10)}})

        return act

    def rebind(client):
        def act(rng: random.Random):
            page = client.get("/jobs", params={"queue": "sq", "limit": 20}).json()["jobs"]
            if not page:
                return None
            target = rng.choice(page)["id"]
            key = rng.choice(["w", "t"])
            return client.put(f"/jobs/{target}/budgets/{key}", json={"cost": rng.randint(1, 10)})

        return act

    for client in pool[:4]:
        race.add("enqueue", enqueue(client), {201, 422})
    for client in pool[4:6]:
        race.add("shrink", shrink(client), {200, 422})
    for client in pool[6:]:
        race.add("rebind", rebind(client), {200, 422})
    try:
        race.run()
    finally:
        for client in pool:
            client.close()
    assert race.count("shrink", 422) > 0 and race.count("enqueue", 422) > 0
    with httpx.Client(base_url=licensed.url, timeout=30) as client:
        assert_every_binding_payable(client)
        assert client.delete("/jobs", params={"budgets.key": "w,t"}).status_code == 200
        # Nothing draws any more: the smallest policies are accepted, then deletes.
        assert client.patch("/budgets/w", json={"allocation": 1}).status_code == 200
        assert client.patch("/budgets/t", json={"strategy": {"burst": 1}}).status_code == 200
        assert client.delete("/budgets/w").status_code == 204
        assert client.delete("/budgets/t").status_code == 204
    assert_counters_match_scan(licensed.url)


# -- rebinding racing dispatch ----------------------------------------------------------------


def test_rebinding_racing_dispatch(licensed):
    with httpx.Client(base_url=licensed.url, timeout=30) as client:
        for key, allocation in (("a", 2), ("b", 3)):
            assert client.post(f"/budgets/{key}", json=wif(allocation)).status_code == 201
        jobs = [job("rq", [{"key": "a"}] if i % 2 else None) for i in range(600)]
        response = client.post("/jobs/bulk", json={"jobs": jobs})
        assert response.status_code == 201, response.text
        ids = [j["id"] for j in response.json()["jobs"]]
    in_flight_now: dict[str, int] = {"a": 0, "b": 0}
    peak = {"a": 0, "b": 0}
    lock = threading.Lock()
    stop = threading.Event()
    worker_errors: list[str] = []

    def worker() -> None:
        with (
            TakeStream(licensed.url, queues="rq", prefetch=4) as stream,
            httpx.Client(base_url=licensed.url, timeout=30) as acks,
        ):
            while not stop.is_set():
                try:
                    taken = stream.next_job(0.2)
                except TimeoutError:
                    continue
                keys = [b["key"] for b in taken.get("budgets", ())]
                with lock:
                    for key in keys:
                        in_flight_now[key] += 1
                        peak[key] = max(peak[key], in_flight_now[key])
                time.sleep(0.002)
                with lock:
                    for key in keys:
                        in_flight_now[key] -= 1
                # Half fail with retry_at now (back to ready, rebinding goes on), half ack.
                if random.random() < 0.3:
                    answer = acks.post(
                        f"/jobs/{taken['id']}/failure",
                        json={"message": "x", "retry_at": time.time_ns() // 1_000_000 - 1},
                    )
                    if answer.status_code != 200:
                        worker_errors.append(f"failure: {answer.status_code} {answer.text}")
                else:
                    answer = acks.post(f"/jobs/{taken['id']}/success")
                    if answer.status_code != 204:
                        worker_errors.append(f"ack: {answer.status_code} {answer.text}")

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(3)]
    for thread in workers:
        thread.start()
    pool = clients(licensed.url, 6)
    race = Race(seconds=4.0)

    def rebinder(client):
        def act(rng: random.Random):
            target = rng.choice(ids)
            key = rng.choice(["a", "b"])
            roll = rng.random()
            if roll < 0.3:
                return client.put(f"/jobs/{target}/budgets/{key}", json={"cost": rng.randint(1, 2)})
            if roll < 0.5:
                return client.post(f"/jobs/{target}/budgets/{key}", json={})
            if roll < 0.6:
                return client.patch(f"/jobs/{target}/budgets/{key}", json={"cost": 1})
            if roll < 0.8:
                return client.delete(f"/jobs/{target}/budgets/{key}")
            if roll < 0.9:
                return client.put(f"/jobs/{target}/budgets", json={"budgets": [{"key": key}]})
            return client.delete(f"/jobs/{target}/budgets")

        return act

    def filtered_rebinder(client):
        """/jobs/budgets[/{key}]: every matching queued job at once, in-flight ones blocked."""

        def act(rng: random.Random):
            key = rng.choice(["a", "b"])
            scope = {"queue": "rq"} if rng.random() < 0.5 else {"id": ",".join(rng.sample(ids, 5))}
            roll = rng.random()
            if roll < 0.4:
                return client.put(f"/jobs/budgets/{key}", params=scope, json={"cost": 1})
            if roll < 0.6:
                return client.post(f"/jobs/budgets/{key}", params=scope, json={})
            if roll < 0.8:
                return client.delete(f"/jobs/budgets/{key}", params=scope)
            return client.delete("/jobs/budgets", params=scope)

        return act

    for client in pool[:4]:
        race.add("rebind", rebinder(client), {200, 404, 409, 422})
    for client in pool[4:]:
        race.add("rebind-filtered", filtered_rebinder(client), {200})
    try:
        race.run()
    finally:
        for client in pool:
            client.close()
    with httpx.Client(base_url=licensed.url, timeout=30) as client:
        deadline = time.monotonic() + 60
        while client.get("/jobs/count", params={"queue": "rq"}).json()["count"]:
            assert time.monotonic() < deadline, "jobs stuck after the race: " + str(
                [(j["id"], j["status"], j.get("budgets")) for j in list_jobs(client)][:10]
            )
            time.sleep(0.1)
    stop.set()
    for thread in workers:
        thread.join(10)
    assert not worker_errors, worker_errors[:5]
    unprocessable = [t for n, s, t in race.answers if s == 422]
    assert all("in_flight" in t or "completed" in t or "dead" in t for t in unprocessable), [
        t for t in unprocessable if "in_flight" not in t
    ][:5]
    assert race.count("rebind", 200) > 20 and race.count("rebind-filtered", 200) > 5
    # The worker counts only while it holds the job: never above the allocations.
    assert peak["a"] <= 2 and peak["b"] <= 3, peak
    with httpx.Client(base_url=licensed.url) as client:
        # Every draw was counted out again: both budgets can go.
        assert client.delete("/budgets/a").status_code == 204
        assert client.delete("/budgets/b").status_code == 204
    assert_counters_match_scan(licensed.url)


# -- hostile input ---------------------------------------------------------------------------

HUGE = 2**64
ROUTE_BODIES = {
    "budget": [
        None,
        1,
        "x",
        [],
        [1, 2],
        {"allocation": -1, "strategy": WIF},
        {"allocation": 0, "strategy": WIF},
        {"allocation": HUGE, "strategy": WIF},
        {"allocation": 1e300, "strategy": WIF},
        {"allocation": 2.0, "strategy": WIF},
        {"allocation": False, "strategy": WIF},
        {"allocation": None, "strategy": WIF},
        {"allocation": [1], "strategy": WIF},
        {"allocation": 1, "strategy": {"type": ["while_in_flight"]}},
        {"allocation": 1, "strategy": {"type": "time_based", "duration_ms": -5}},
        {"allocation": 1, "strategy": {"type": "time_based", "duration_ms": HUGE}},
        {"allocation": 1, "strategy": {"type": "time_based", "duration_ms": 1.5}},
        {"allocation": 1, "strategy": {"type": "time_based", "duration_ms": 10, "burst": True}},
        {"allocation": 1, "strategy": {"type": "time_based", "duration_ms": 10, "burst": -1}},
        {"allocation": 1, "strategy": {"type": "time_based", "duration_ms": 10, "burst": HUGE}},
        {"allocation": 1, "strategy": {"type": 7}},
        {"allocation": 1, "strategy": {"type": "while_in_flight", "burst": 1}},
    ],
    "bindings": [
        "x",
        7,
        {"key": "k"},
        [None],
        ["k"],
        [{"key": None}],
        [{"key": 5}],
        [{"key": ""}],
        [{"key": " k"}],
        [{"key": "a,b"}],
        [{"key": "a*"}],
        [{"key": "a?"}],
        [{"key": "{a}"}],
        [{"key": "a\\b"}],
        [{"key": "k" * 1_000_000}],
        [{"key": "k", "cost": 0}],
        [{"key": "k", "cost": -1}],
        [{"key": "k", "cost": HUGE}],
        [{"key": "k", "cost": 1.5}],
        [{"key": "k", "cost": True}],
        [{"key": "k", "cost": "1"}],
        [{"key": "k", "create_with": 5}],
        [{"key": "k", "create_with": {"allocation": 1}}],
        [{"key": "k", "create_with": {"allocation": -1, "strategy": WIF}}],
        [{"key": f"k{i}"} for i in range(10_000)],
        [{"key": "k"}, {"key": "k"}],
    ],
}


def test_hostile_input_is_always_a_4xx_with_an_error(licensed):
    with httpx.Client(base_url=licensed.url, timeout=60) as client:
        assert client.post("/budgets/k", json=wif(2)).status_code == 201
        target = client.post("/jobs", json=job("hq")).json()["id"]
        sent = 0

        def check(response: httpx.Response, what: str) -> None:
            nonlocal sent
            sent += 1
            assert 400 <= response.status_code < 500, (what, response.status_code, response.text)
            body = response.json()
            assert isinstance(body.get("error"), str) and body["error"], (what, body)

        def both_formats(method: str, path: str, body) -> None:
            text = json.dumps(body).encode()  # the stdlib: integers beyond 64 bits too
            check(client.request(method, path, content=text, headers=JSON), path)
            packed = msgpack.packb(body) if not _too_big_for_msgpack(body) else None
            if packed is not None:
                check(client.request(method, path, content=packed, headers=MSGPACK), path)

        for body in ROUTE_BODIES["budget"]:
            for method in ("POST", "PUT"):
                both_formats(method, "/budgets/new", body)
            both_formats("PATCH", "/budgets/k", body if isinstance(body, dict) else body)
            create_with = [{"key": "new", "create_with": body}]
            both_formats("POST", "/jobs", job("hq", create_with))
        for bindings in ROUTE_BODIES["bindings"]:
            both_formats("POST", "/jobs", job("hq", bindings))
            both_formats("POST", "/jobs/bulk", {"jobs": [job("hq"), job("hq", bindings)]})
            both_formats("PUT", f"/jobs/{target}/budgets", {"budgets": bindings})
            single = bindings[0] if isinstance(bindings, list) and len(bindings) == 1 else None
            # (a null key is "absent" there: the path names the budget, so it may be valid)
            if isinstance(single, dict) and single.get("key") is not None:
                both_formats("POST", f"/jobs/{target}/budgets", bindings[0])
                both_formats("PUT", f"/jobs/{target}/budgets/k", bindings[0])
        for cost in (0, -1, HUGE, 1.5, True, "1", None, [1]):
            both_formats("PATCH", f"/jobs/{target}/budgets/k", {"cost": cost})
        for raw in (b"", b"{", b"\xff\xfe", b"[" * 100_000, b'{"allocation": 1' + b" " * 100_000):
            for method, path in (("POST", "/budgets/raw"), ("PUT", f"/jobs/{target}/budgets")):
                check(client.request(method, path, content=raw, headers=JSON), repr(raw[:10]))
        for key in ("a,b", "a*", "a%3F", "%7Ba%7D", "k" * 60_000, "%20k"):
            for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                check(client.request(method, f"/budgets/{key}", json=wif(1)), key[:20])
            check(client.post(f"/jobs/{target}/budgets/{key}", json={}), key[:20])
        for value in ("", ",", "k" * 5000, "a*"):
            for path in ("/jobs", "/jobs/count"):
                check(client.get(path, params={"budgets.key": value}), value[:20])
        assert sent > 400
        # Nothing of it stuck: one budget, one unbound job, a healthy server.
        assert list(budgets_by_key(client)) == ["k"]
        assert "budgets" not in client.get(f"/jobs/{target}").json()
        assert client.get("/jobs/count").json()["count"] == 1
    assert_counters_match_scan(licensed.url)
    assert licensed.proc.poll() is None
    assert not [line for line in licensed.lines if " ERROR " in line or "Traceback" in line]


def test_extreme_policies_dispatch_without_harm(licensed):
    """The largest durations, allocations and costs the server accepts still work."""
    with httpx.Client(base_url=licensed.url, timeout=30) as client:
        slow = {"allocation": 1, "strategy": {"type": "time_based", "duration_ms": 2**63 - 1}}
        fast = {
            "allocation": 2**31 - 1,
            "strategy": {"type": "time_based", "duration_ms": 1, "burst": 2**31 - 1},
        }
        assert client.post("/budgets/slow", json=slow).status_code == 201
        assert client.post("/budgets/fast", json=fast).status_code == 201
        assert client.post("/budgets/wide", json=wif(2**31 - 1)).status_code == 201
        bodies = [job("xq", [{"key": "slow"}]) for _ in range(2)]
        bodies += [job("xq", [{"key": "fast", "cost": 2**31 - 1}]) for _ in range(3)]
        bodies += [job("xq", [{"key": "wide", "cost": 2**31 - 1}, {"key": "fast"}])]
        bodies += [job("xq") for _ in range(2)]
        response = client.post("/jobs/bulk", json={"jobs": bodies})
        assert response.status_code == 201, response.text
        ids = [j["id"] for j in response.json()["jobs"]]
        with TakeStream(licensed.url, queues="xq", prefetch=20) as stream:
            got = {stream.next_job(5)["id"] for _ in range(3)}
            # The slow one's second job waits ~forever (its timer is armed centuries away),
            # the fast one drips a whole burst per ms: every other job arrives.
            more = set()
            deadline = time.monotonic() + 5
            while len(got | more) < 7 and time.monotonic() < deadline:
                more.add(stream.next_job(5)["id"])
            assert got | more == set(ids) - {ids[1]}
            stream.expect_no_job(0.3)
            # Re-arming from centuries to 1 ms releases it.
            patched = client.patch("/budgets/slow", json={"strategy": {"duration_ms": 1}})
            assert patched.status_code == 200, patched.text
            assert stream.next_job(5)["id"] == ids[1]
        assert client.get("/health").status_code == 200
    assert not [line for line in licensed.lines if " ERROR " in line or "Traceback" in line]


JSON = {"content-type": "application/json", "accept": "application/json"}
MSGPACK = {"content-type": "application/msgpack", "accept": "application/json"}


def _too_big_for_msgpack(body) -> bool:
    """msgpack cannot pack integers beyond 64 bits: those go as JSON only."""
    try:
        msgpack.packb(body)
    except (OverflowError, TypeError):
        return True
    return False


# -- kill -9 -----------------------------------------------------------------------------------


def test_kill_9_after_acknowledged_budget_work(licensed):
    rate = {"allocation": 6, "strategy": {"type": "time_based", "duration_ms": 1200, "burst": 3}}
    expected_jobs: dict[str, list | None] = {}
    counter = itertools.count()
    for round_ in range(3):
        with httpx.Client(base_url=licensed.url, timeout=30) as client:
            if round_ == 0:
                assert client.post("/budgets/w", json=wif(1)).status_code == 201
                assert client.put("/budgets/t", json=rate).status_code == 200
                assert client.post("/budgets/p", json=wif(1)).status_code == 201
            # Policy changes, enqueues (single, bulk, create_with), per-job rebinding.
            for step in range(20):
                n = next(counter)
                answer = client.patch("/budgets/p", json={"allocation": 2 + n})
                assert answer.status_code == 200, answer.text
                budgets = [{"key": "w"}, {"key": "t", "cost": 1 + n % 3}]
                created = client.post("/jobs", json=job("kq", budgets))
                assert created.status_code == 201, created.text
                expected_jobs[created.json()["id"]] = created.json()["budgets"]
                fresh_key = [{"key": f"cw{n}", "cost": 2, "create_with": wif(2)}]
                bulk = client.post("/jobs/bulk", json={"jobs": [job("kq"), job("kq", fresh_key)]})
                assert bulk.status_code == 201, bulk.text
                for made in bulk.json()["jobs"]:
                    expected_jobs[made["id"]] = made.get("budgets")
                if step % 4 == 0:
                    target = created.json()["id"]
                    answer = client.put(f"/jobs/{target}/budgets/p", json={"cost": 2})
                    assert answer.status_code == 200, answer.text
                    expected_jobs[target] = answer.json()["budgets"]
            expected_budgets = budgets_by_key(client)
            # A while_in_flight token is held when the server dies.
            stream = TakeStream(licensed.url, queues="kq", prefetch=1)
            held = stream.next_job(5)
        licensed.kill()
        stream.close()
        licensed.start()
        with httpx.Client(base_url=licensed.url, timeout=30) as client:
            assert budgets_by_key(client) == expected_budgets
            jobs = {j["id"]: j for j in list_jobs(client)}
            assert set(jobs) == set(expected_jobs)  # acked jobs are not retained (the default)
            for job_id, budgets in expected_jobs.items():
                assert jobs[job_id].get("budgets") == budgets, (job_id, jobs[job_id])
            assert jobs[held["id"]]["status"] == "ready"  # requeued by the restart
            assert_every_binding_payable(client)
        assert_counters_match_scan(licensed.url)
        # Tokens refilled: w (allocation 1) dispatches again, one job at a time.
        with (
            TakeStream(licensed.url, queues="kq", prefetch=1000) as stream,
            httpx.Client(base_url=licensed.url, timeout=30) as client,
        ):
            first_w = None
            for _ in range(len(expected_jobs)):
                try:
                    taken = stream.next_job(1.0)
                except TimeoutError:
                    break
                if any(b["key"] == "w" for b in taken.get("budgets", ())):
                    assert first_w is None, "a second w job while the first is in flight"
                    first_w = taken["id"]
            assert first_w is not None, "no w job dispatched after the restart"
            assert client.post(f"/jobs/{first_w}/success").status_code == 204
            expected_jobs.pop(first_w)
            nxt = stream.next_job(5)
            assert any(b["key"] == "w" for b in nxt.get("budgets", ())), nxt
        # Leave everything queued again for the next round (the stream's jobs went back).
        with httpx.Client(base_url=licensed.url) as client:
            deadline = time.monotonic() + 10
            while client.get("/jobs/count", params={"status": "in_flight"}).json()["count"]:
                assert time.monotonic() < deadline
                time.sleep(0.05)
