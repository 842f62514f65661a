"""Budgets (pro, 0.7) against a real licensed server: every route, dispatch, restart.

Contract: the reference's docs/api/src/rate-limiting.md (and budget-parameters.md,
bind-budget-parameters.md, budget-response.md, the 0.7.0 CHANGELOG entry) and the README's
"Budgets". One licensed server serves the module; each test uses its own budget keys and
queues. The reference's two examples ("5 at a time", "6 per minute") run with real worker
threads on take streams, scaled down so the file stays quick.
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from tests.e2e.helpers_semantics import UNKNOWN_ID, assert_error, get_job, wait_for
from tests.e2e.zizq_process import Api, TakeStream, ZizqServer
from tests.licensing import mint

_names = itertools.count()
WIF = {"type": "while_in_flight"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One licensed server for the module (overrides conftest's `server`)."""
    zizq = ZizqServer(tmp_path_factory.mktemp("budgets") / "root", "--license-key", mint())
    zizq.start()
    yield zizq
    zizq.stop()


@pytest.fixture(scope="module")
def json_api(server):
    with Api(server.url) as client:
        yield client


def fresh(prefix: str = "b") -> str:
    return f"{prefix}{next(_names)}-{time.monotonic_ns()}"


def wif(allocation: int) -> dict:
    return {"allocation": allocation, "strategy": dict(WIF)}


def rate(allocation: int, duration_ms: int, burst: int | None = None) -> dict:
    strategy = {"type": "time_based", "duration_ms": duration_ms}
    if burst is not None:
        strategy["burst"] = burst
    return {"allocation": allocation, "strategy": strategy}


def job(queue: str, budgets: list | None = None, **extra) -> dict:
    body = {"queue": queue, "type": "t", "payload": {}, **extra}
    if budgets is not None:
        body["budgets"] = budgets
    return body


def create(api: Api, key: str, policy: dict) -> dict:
    status, body, _ = api.post(f"/budgets/{key}", policy)
    assert status == 201, (status, body)
    return body


def enqueue(api: Api, queue: str, budgets: list | None = None, **extra) -> dict:
    status, body, _ = api.post("/jobs", job(queue, budgets, **extra))
    assert status == 201, (status, body)
    return body


def bulk(api: Api, jobs: list[dict]) -> list[dict]:
    status, body, _ = api.post("/jobs/bulk", {"jobs": jobs})
    assert status == 201, (status, body)
    return body["jobs"]


# -- /budgets routes ---------------------------------------------------------------------------


def test_budget_routes(api):
    key = fresh()
    status, made, _ = api.post(f"/budgets/{key}", rate(10, 60_000))
    assert status == 201, made
    assert set(made) == {"key", "allocation", "strategy", "created_at", "updated_at"}
    assert made["key"] == key and made["allocation"] == 10
    assert made["strategy"] == {"type": "time_based", "duration_ms": 60_000}
    assert made["created_at"] == made["updated_at"] and made["created_at"] > 0
    assert_error(*api.post(f"/budgets/{key}", wif(3))[:2], 409, key, "exists")
    assert api.get(f"/budgets/{key}")[:2] == (200, made)

    # PATCH merges: a burst, then `burst: null` back to the default (the allocation).
    status, patched, _ = api.request("PATCH", f"/budgets/{key}", {"strategy": {"burst": 50}})
    assert status == 200, patched
    assert patched["strategy"] == {"type": "time_based", "duration_ms": 60_000, "burst": 50}
    assert patched["allocation"] == 10 and patched["created_at"] == made["created_at"]
    assert patched["updated_at"] >= made["updated_at"]
    status, patched, _ = api.request("PATCH", f"/budgets/{key}", {"strategy": {"burst": None}})
    assert status == 200 and patched["strategy"] == made["strategy"], patched
    status, patched, _ = api.request("PATCH", f"/budgets/{key}", {"allocation": 12})
    assert status == 200 and patched["allocation"] == 12, patched
    assert patched["strategy"] == made["strategy"]

    # PUT replaces whole (another strategy), keeping created_at.
    time.sleep(0.002)  # updated_at is in ms: let one pass so the change shows
    status, replaced, _ = api.request("PUT", f"/budgets/{key}", wif(4))
    assert status == 200, replaced
    assert replaced["strategy"] == WIF and replaced["allocation"] == 4
    assert replaced["created_at"] == made["created_at"]
    assert replaced["updated_at"] > made["updated_at"]
    assert api.get(f"/budgets/{key}")[1] == replaced

    # PUT creates too; the list is sorted by key.
    other = key + "-a"
    status, created, _ = api.request("PUT", f"/budgets/{other}", rate(1, 1000, 2))
    assert status == 200 and created["created_at"] == created["updated_at"], created
    status, listed, _ = api.get("/budgets")
    assert status == 200 and set(listed) == {"budgets"}
    keys = [b["key"] for b in listed["budgets"]]
    assert keys == sorted(keys)
    mine = [b for b in listed["budgets"] if b["key"] in (key, other)]
    assert mine == [replaced, created]

    # DELETE, then everything is 404.
    for k in (key, other):
        status, body, response = api.request("DELETE", f"/budgets/{k}")
        assert status == 204 and response.content == b"", body
        assert_error(*api.get(f"/budgets/{k}")[:2], 404, k)
        assert_error(*api.request("DELETE", f"/budgets/{k}")[:2], 404, k)
        assert_error(*api.request("PATCH", f"/budgets/{k}", {"allocation": 1})[:2], 404, k)
    assert all(b["key"] not in (key, other) for b in api.get("/budgets")[1]["budgets"])


BAD_POLICIES = [
    ([], 400, "body"),
    ("x", 400, "body"),
    ({}, 400, "allocation"),
    ({"strategy": WIF}, 400, "allocation"),
    ({"allocation": 0, "strategy": WIF}, 400, "allocation"),
    ({"allocation": -1, "strategy": WIF}, 400, "allocation"),
    ({"allocation": 1.5, "strategy": WIF}, 400, "allocation"),
    ({"allocation": True, "strategy": WIF}, 400, "allocation"),
    ({"allocation": "3", "strategy": WIF}, 400, "allocation"),
    ({"allocation": 2**31, "strategy": WIF}, 400, "allocation"),
    ({"allocation": 1}, 400, "strategy"),
    ({"allocation": 1, "strategy": "while_in_flight"}, 400, "strategy"),
    ({"allocation": 1, "strategy": {}}, 400, "strategy.type"),
    ({"allocation": 1, "strategy": {"type": "leaky"}}, 400, "strategy.type"),
    ({"allocation": 1, "strategy": {"type": "time_based"}}, 400, "strategy.duration_ms"),
    (rate(1, 0), 400, "strategy.duration_ms"),
    (rate(1, 1000, 0), 400, "strategy.burst"),
    ({"allocation": 1, "strategy": {**WIF, "duration_ms": 5}}, 400, "strategy.duration_ms"),
    ({"allocation": 1, "strategy": {**WIF, "burst": 5}}, 400, "strategy.burst"),
]


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_bad_budget_bodies_are_400_naming_the_field(server, fmt):
    key = fresh()
    with Api(server.url, fmt=fmt) as api:
        for body, code, field in BAD_POLICIES:
            for method in ("POST", "PUT"):
                status, answer, _ = api.request(method, f"/budgets/{key}", body)
                assert_error(status, answer, code, field)
        assert_error(*api.get(f"/budgets/{key}")[:2], 404)  # nothing was created
        create(api, key, rate(5, 1000))
        for patch, field in [
            ([], "body"),
            ({"allocation": None}, "allocation"),
            ({"allocation": 0}, "allocation"),
            ({"strategy": None}, "strategy"),
            ({"strategy": {"type": None}}, "strategy.type"),
            ({"strategy": {"duration_ms": None}}, "duration_ms"),
            ({"strategy": {"burst": "x"}}, "burst"),
        ]:
            assert_error(*api.request("PATCH", f"/budgets/{key}", patch)[:2], 400, field)
        for bad_key in ("a,b", "a*", "x[1]"):
            status, answer, _ = api.post(f"/budgets/{bad_key}", wif(1))
            assert_error(status, answer, 400, "key")
        assert api.request("DELETE", f"/budgets/{key}")[0] == 204


# -- enqueue with bindings ---------------------------------------------------------------------


def test_enqueue_binds_and_every_read_shows_it(api, server):
    queue, key, made = fresh("q"), fresh(), fresh("made")
    create(api, key, wif(3))
    one = enqueue(api, queue, [{"key": key}])
    assert one["budgets"] == [{"key": key, "cost": 1}]  # cost defaults to 1
    two = enqueue(
        api,
        queue,
        [
            {"key": key, "cost": 3},
            {"key": made, "cost": 2, "create_with": rate(4, 1000, 2)},
        ],
    )
    assert two["budgets"] == [{"key": key, "cost": 3}, {"key": made, "cost": 2}]
    assert api.get(f"/budgets/{made}")[1]["strategy"] == {
        "type": "time_based",
        "duration_ms": 1000,
        "burst": 2,
    }
    # create_with is ignored once the budget exists.
    three = enqueue(api, queue, [{"key": made, "create_with": wif(1)}])
    assert three["budgets"] == [{"key": made, "cost": 1}]
    assert api.get(f"/budgets/{made}")[1]["allocation"] == 4
    unbudgeted = enqueue(api, queue)
    assert "budgets" not in unbudgeted

    assert get_job(api, two["id"])["budgets"] == two["budgets"]
    status, listed, _ = api.get(f"/jobs?queue={queue}")
    assert status == 200
    assert [j.get("budgets") for j in listed["jobs"]] == [
        one["budgets"],
        two["budgets"],
        three["budgets"],
        None,
    ]
    with TakeStream(server.url, queues=queue, prefetch=10, fmt=api.fmt, http2=api.http2) as s:
        taken = {j["id"]: j.get("budgets") for j in s.jobs(3, timeout=5)}
        # `two` needs all 3 slots of `key` while `one` holds one: parked.
        assert taken == {
            one["id"]: one["budgets"],
            three["id"]: three["budgets"],
            unbudgeted["id"]: None,
        }
        s.expect_no_job(0.2)
    status, _, _ = api.request("DELETE", f"/jobs?queue={queue}")
    assert status == 200
    for k in (key, made):
        assert api.request("DELETE", f"/budgets/{k}")[0] == 204


def test_enqueue_rejections(api):
    queue, key, capped = fresh("q"), fresh(), fresh()
    create(api, key, wif(2))
    create(api, capped, rate(100, 1000, 3))
    missing = fresh("missing")
    assert_error(*api.post("/jobs", job(queue, [{"key": missing}]))[:2], 422, missing)
    assert_error(
        *api.post("/jobs", job(queue, [{"key": key, "cost": 3}]))[:2],
        422,
        "budgets[0].cost",
    )
    # The burst, not the allocation, caps the cost where it is set.
    assert_error(
        *api.post("/jobs", job(queue, [{"key": capped, "cost": 4}]))[:2],
        422,
        "budgets[0].cost",
    )
    # Bulk: all or nothing, and the message names the job and the binding.
    jobs = [job(queue, [{"key": key}]), job(queue), job(queue, [{"key": capped, "cost": 9}])]
    assert_error(*api.post("/jobs/bulk", {"jobs": jobs})[:2], 422, "jobs[2].budgets[0].cost")
    jobs[2] = job(queue, [{"key": key}, {"key": missing, "create_with": wif(1)}, {"key": "x?"}])
    assert_error(*api.post("/jobs/bulk", {"jobs": jobs})[:2], 400, "jobs[2].budgets[2].key")
    assert_error(*api.get(f"/budgets/{missing}")[:2], 404)  # create_with of a refused bulk
    assert api.get(f"/jobs/count?queue={queue}")[1]["count"] == 0
    # Shape errors are 400.
    too_many = [{"key": f"{key}-{i}", "create_with": wif(1)} for i in range(17)]
    for budgets, field in [
        ("x", "budgets"),
        ([key], "budgets[0]"),
        ([{"cost": 1}], "budgets[0].key"),
        ([{"key": key}, {"key": key}], "budgets[1].key"),
        ([{"key": key, "cost": 0}], "budgets[0].cost"),
        ([{"key": key, "cost": 1.0}], "budgets[0].cost"),
        ([{"key": key, "create_with": {"allocation": 1}}], "budgets[0].create_with.strategy"),
        (too_many, "budgets"),
    ]:
        assert_error(*api.post("/jobs", job(queue, budgets))[:2], 400, field)
    assert api.get(f"/jobs/count?queue={queue}")[1]["count"] == 0
    for k in (key, capped):
        assert api.request("DELETE", f"/budgets/{k}")[0] == 204


def test_draws_block_delete_and_shrink_until_the_jobs_go(api):
    queue, key, other = fresh("q"), fresh(), fresh()
    create(api, key, wif(4))
    create(api, other, rate(5, 1000))
    bound = enqueue(api, queue, [{"key": key, "cost": 3}, {"key": other}])
    enqueue(api, queue, [{"key": key}])
    enqueue(api, queue)
    assert_error(*api.request("DELETE", f"/budgets/{key}")[:2], 409, key, "2 unfinished jobs")
    assert_error(
        *api.request("PATCH", f"/budgets/{key}", {"allocation": 2})[:2], 422, key, "up to 3"
    )
    assert_error(*api.request("PUT", f"/budgets/{key}", wif(2))[:2], 422, key)
    assert_error(
        *api.request("PATCH", f"/budgets/{other}", {"strategy": {"burst": 0}})[:2], 400, "burst"
    )
    assert api.request("PATCH", f"/budgets/{key}", {"allocation": 3})[0] == 200

    # The budgets.key filter: listing, count, bulk patch, bulk delete.
    status, listed, _ = api.get(f"/jobs?budgets.key={key}")
    assert status == 200 and len(listed["jobs"]) == 2
    assert api.get(f"/jobs/count?budgets.key={other}")[1] == {"count": 1}
    assert api.get(f"/jobs/count?budgets.key={other},{key}")[1] == {"count": 2}
    assert api.get(f"/jobs/count?queue={queue}")[1] == {"count": 3}
    status, body, _ = api.request("PATCH", f"/jobs?budgets.key={other}", {"priority": 5})
    assert status == 200, body
    assert get_job(api, bound["id"])["priority"] == 5
    status, body, _ = api.request("DELETE", f"/jobs?budgets.key={key}")
    assert status == 200, body
    assert api.get(f"/jobs/count?queue={queue}")[1] == {"count": 1}  # the unbudgeted one
    for k in (key, other):
        assert api.request("DELETE", f"/budgets/{k}")[0] == 204
    api.request("DELETE", f"/jobs?queue={queue}")


# -- /jobs/{id}/budgets ------------------------------------------------------------------------


def test_job_budget_routes(api, server):
    queue, key, other = fresh("q"), fresh(), fresh()
    create(api, key, wif(5))
    j = enqueue(api, queue, retention={"completed_ms": 60_000})["id"]
    path = f"/jobs/{j}/budgets"

    status, body, _ = api.post(f"{path}/{key}", {"cost": 2})
    assert status == 200 and body["budgets"] == [{"key": key, "cost": 2}], body
    assert_error(*api.post(f"{path}/{key}", {})[:2], 409, key)
    status, body, _ = api.request("PATCH", f"{path}/{key}", {"cost": 4})
    assert status == 200 and body["budgets"] == [{"key": key, "cost": 4}], body
    assert_error(*api.request("PATCH", f"{path}/{key}", {"cost": 6})[:2], 422, "cost")
    assert_error(*api.request("PATCH", f"{path}/{key}", {"cost": "x"})[:2], 400, "cost")
    assert_error(*api.request("PATCH", f"{path}/{other}", {"cost": 1})[:2], 404, other)
    # PUT binds (creating from create_with) or replaces.
    status, body, _ = api.request("PUT", f"{path}/{other}", {"create_with": wif(2)})
    assert status == 200, body
    assert body["budgets"] == [{"key": key, "cost": 4}, {"key": other, "cost": 1}]
    assert api.get(f"/budgets/{other}")[0] == 200
    status, body, _ = api.request("PUT", f"{path}/{key}", {"cost": 1})
    assert status == 200 and {"key": key, "cost": 1} in body["budgets"], body
    status, body, _ = api.request("DELETE", f"{path}/{other}")
    assert status == 200 and body["budgets"] == [{"key": key, "cost": 1}], body
    assert_error(*api.request("DELETE", f"{path}/{other}")[:2], 404, other)
    # The collection: POST one (key in the body), PUT the set, DELETE all.
    status, body, _ = api.post(path, {"key": other, "cost": 2})
    assert status == 200 and {"key": other, "cost": 2} in body["budgets"], body
    status, body, _ = api.request("PUT", path, {"budgets": [{"key": other}]})
    assert status == 200 and body["budgets"] == [{"key": other, "cost": 1}], body
    assert get_job(api, j)["budgets"] == [{"key": other, "cost": 1}]
    assert_error(*api.request("PUT", path, {"budgets": [{"key": fresh()}]})[:2], 422)
    status, body, _ = api.request("DELETE", path)
    assert status == 200 and "budgets" not in body, body
    assert "budgets" not in get_job(api, j)
    # Unknown job: 404 on every route.
    for method, route in [("POST", f"/{key}"), ("PUT", f"/{key}"), ("DELETE", "")]:
        status, body, _ = api.request(method, f"/jobs/{UNKNOWN_ID}/budgets{route}")
        assert_error(status, body, 404, "not found")

    # In flight: 422 on every route; completed: 422 too.
    api.post(f"{path}/{key}", {})
    with TakeStream(server.url, queues=queue, fmt=api.fmt, http2=api.http2) as stream:
        assert stream.next_job(5)["id"] == j
        for method, route, payload in [
            ("POST", f"/{other}", {}),
            ("PUT", f"/{other}", {}),
            ("PATCH", f"/{key}", {"cost": 2}),
            ("DELETE", f"/{key}", None),
            ("PUT", "", {"budgets": []}),
            ("DELETE", "", None),
        ]:
            status, body, _ = api.request(method, f"{path}{route}", payload)
            assert_error(status, body, 422, "in_flight")
        assert api.ack(j) == 204
    status, body, _ = api.request("DELETE", f"{path}/{key}")
    assert_error(status, body, 422, "completed")
    api.request("DELETE", f"/jobs/{j}")
    for k in (key, other):
        assert api.request("DELETE", f"/budgets/{k}")[0] == 204


def test_filtered_budget_routes(api, server):
    """/jobs/budgets[/{key}]?<filters>, in the node client's shapes: {changed, blocked}."""
    queue, key, other = fresh("q"), fresh(), fresh()
    create(api, key, wif(5))
    busy, bound, plain = (enqueue(api, queue)["id"] for _ in range(3))
    api.post(f"/jobs/{bound}/budgets/{key}", {})
    elsewhere = enqueue(api, fresh("q"))["id"]
    with TakeStream(server.url, queues=queue, fmt=api.fmt, http2=api.http2) as stream:
        assert stream.next_job(5)["id"] == busy  # in flight: blocked, never changed
        status, body, _ = api.post(f"/jobs/budgets/{key}?queue={queue}", {"cost": 2})
        assert status == 200 and body == {"changed": 1, "blocked": [busy]}, body
        assert get_job(api, bound)["budgets"] == [{"key": key, "cost": 1}]  # POST skips
        assert get_job(api, plain)["budgets"] == [{"key": key, "cost": 2}]
        assert "budgets" not in get_job(api, elsewhere)
        status, body, _ = api.request("PUT", f"/jobs/budgets/{key}?queue={queue}", {"cost": 3})
        assert status == 200 and body == {"changed": 2, "blocked": [busy]}, body
        status, body, _ = api.request("PATCH", f"/jobs/budgets/{key}?queue={queue}", {"cost": 4})
        assert status == 200 and body["changed"] == 2, body
        assert get_job(api, bound)["budgets"] == [{"key": key, "cost": 4}]
        # PUT creates a missing budget from create_with, in the write that binds it.
        route = f"/jobs/budgets/{other}?id={plain}"
        status, body, _ = api.request("PUT", route, {"create_with": wif(2)})
        assert status == 200 and body == {"changed": 1, "blocked": []}, body
        status, body, _ = api.request("DELETE", f"/jobs/budgets/{key}?budgets.key={key}")
        assert status == 200 and body == {"changed": 2, "blocked": []}, body
        status, body, _ = api.request("DELETE", f"/jobs/budgets?queue={queue}")
        assert status == 200 and body == {"changed": 1, "blocked": []}, body
        assert "budgets" not in get_job(api, plain)
        # Bad input: a budget that does not exist, a cost it cannot pay, an unknown filter.
        assert_error(*api.post(f"/jobs/budgets/{fresh()}", {})[:2], 422, "does not exist")
        assert_error(*api.post(f"/jobs/budgets/{key}", {"cost": 6})[:2], 422, "cost")
        assert_error(*api.post(f"/jobs/budgets/{key}?colour=red", {})[:2], 400, "colour")
        assert_error(*api.request("PATCH", f"/jobs/budgets/{key}", {"cost": "x"})[:2], 400, "cost")
        assert api.ack(busy) == 204
    for job_id in (busy, bound, plain, elsewhere):
        api.request("DELETE", f"/jobs/{job_id}")
    for k in (key, other):
        assert api.request("DELETE", f"/budgets/{k}")[0] == 204


# -- licensing ---------------------------------------------------------------------------------


def test_every_budget_route_is_403_without_a_license(start_server):
    unlicensed = start_server()
    with Api(unlicensed.url) as api:
        j = api.enqueue("q")["id"]
        calls = [
            ("GET", "/budgets", None),
            ("GET", "/budgets/k", None),
            ("POST", "/budgets/k", wif(1)),
            ("PUT", "/budgets/k", wif(1)),
            ("PATCH", "/budgets/k", {"allocation": 1}),
            ("DELETE", "/budgets/k", None),
            ("POST", f"/jobs/{j}/budgets", {"key": "k"}),
            ("PUT", f"/jobs/{j}/budgets", {"budgets": []}),
            ("DELETE", f"/jobs/{j}/budgets", None),
            ("POST", f"/jobs/{j}/budgets/k", {}),
            ("PUT", f"/jobs/{j}/budgets/k", {}),
            ("PATCH", f"/jobs/{j}/budgets/k", {"cost": 1}),
            ("DELETE", f"/jobs/{j}/budgets/k", None),
            ("POST", "/jobs/budgets/k?queue=q", {}),
            ("PUT", "/jobs/budgets/k", {}),
            ("PATCH", "/jobs/budgets/k", {"cost": 1}),
            ("DELETE", "/jobs/budgets/k", None),
            ("DELETE", "/jobs/budgets?queue=q", None),
            ("POST", "/jobs", job("q", [{"key": "k", "create_with": wif(1)}])),
            ("POST", "/jobs/bulk", {"jobs": [job("q"), job("q", [{"key": "k"}])]}),
        ]
        for method, path, body in calls:
            status, answer, _ = api.request(method, path, body)
            assert_error(status, answer, 403, "budgets requires a pro license")
        assert api.get("/jobs/count")[1] == {"count": 1}


# -- dispatch ----------------------------------------------------------------------------------


class Workers:
    """Real worker threads, each with its own take stream (prefetch 1): run, then ack."""

    def __init__(self, url: str, queue: str, count: int, work_s: float) -> None:
        self.url, self.work_s = url, work_s
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.started: list[tuple[float, str]] = []
        self.errors: list[str] = []
        self.done = threading.Event()
        self.expected = 0
        self._stop = threading.Event()
        self.streams = [TakeStream(url, queues=queue, prefetch=1) for _ in range(count)]
        self.threads = [
            threading.Thread(target=self._run, args=(s,), daemon=True) for s in self.streams
        ]

    def start(self, expected: int) -> None:
        self.expected = expected
        for thread in self.threads:
            thread.start()

    def _run(self, stream: TakeStream) -> None:
        with Api(self.url) as api:
            while not self._stop.is_set():
                try:
                    taken = stream.next_job(0.2)
                except TimeoutError:
                    continue
                except EOFError:
                    return
                with self.lock:
                    self.running += 1
                    self.peak = max(self.peak, self.running)
                    self.started.append((time.monotonic(), taken["id"]))
                time.sleep(self.work_s)  # the job's work
                with self.lock:
                    self.running -= 1  # before the ack: never over-counts the server's in-flight
                status = api.ack(taken["id"])
                with self.lock:
                    if status != 204:
                        self.errors.append(f"ack {taken['id']}: {status}")
                    if len(self.started) >= self.expected:
                        self.done.set()

    def close(self) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join(5)
        for stream in self.streams:
            stream.close()


def test_five_at_a_time(server, json_api):
    """The reference's while_in_flight example: allocation 5, jobs of ~0.3 s, 8 workers."""
    queue, key = fresh("q"), fresh()
    create(json_api, key, wif(5))
    workers = Workers(server.url, queue, count=8, work_s=0.3)
    try:
        workers.start(expected=15)
        bulk(json_api, [job(queue, [{"key": key}]) for _ in range(15)])
        assert workers.done.wait(15), f"only {len(workers.started)} of 15 ran"
    finally:
        workers.close()
    assert not workers.errors, workers.errors
    assert workers.peak == 5, f"peak concurrency {workers.peak}"
    # Three waves of five: the sixth job started only after a job of the first wave ended.
    starts = sorted(t for t, _ in workers.started)
    assert starts[5] - starts[0] >= 0.25, starts
    assert starts[10] - starts[0] >= 0.5, starts


def test_six_per_window_scaled_down(server, json_api):
    """The reference's 6/minute example with duration_ms 1200: six at once, then one per 200 ms."""
    queue, key = fresh("q"), fresh()
    create(json_api, key, rate(6, 1200))
    with TakeStream(server.url, queues=queue, prefetch=50) as stream:
        bulk(json_api, [job(queue, [{"key": key}]) for _ in range(14)])
        taken = [stream.next_job(5) for _ in range(14)]
        for one in taken:
            assert json_api.ack(one["id"]) == 204
    # The server's dispatch times (ms), free of the client's delivery latency.
    sent = sorted(one["dequeued_at"] for one in taken)
    offsets = [t - sent[0] for t in sent]
    assert sum(1 for t in offsets if t < 150) == 6, offsets  # the burst, and no more
    assert sum(1 for t in offsets if t <= 1000) <= 6 + 5 + 1, offsets
    # Then the drip: the k-th job after the burst no sooner than k x 200 ms after it
    # (exact arithmetic, 1 ms of rounding), and not much later either.
    for k in range(1, 9):
        assert sent[5 + k] - sent[5] >= k * 200 - 1, offsets
    assert sent[13] - sent[5] <= 8 * 200 + 1000, offsets


def test_tokens_come_back_on_ack_failure_disconnect_and_delete(server, json_api):
    api = json_api
    queue, key = fresh("q"), fresh()
    create(api, key, wif(1))
    ids = [j["id"] for j in bulk(api, [job(queue, [{"key": key}]) for _ in range(5)])]
    with TakeStream(server.url, queues=queue, prefetch=10) as stream:
        assert stream.next_job(5)["id"] == ids[0]
        stream.expect_no_job(0.3)
        assert api.ack(ids[0]) == 204  # ack
        assert stream.next_job(5)["id"] == ids[1]
        status, body, _ = api.post(f"/jobs/{ids[1]}/failure", {"message": "x"})
        assert status == 200 and body["status"] == "scheduled", body  # failure (retry later)
        assert stream.next_job(5)["id"] == ids[2]
        stream.expect_no_job(0.2)
    # Disconnect: ids[2] goes back to ready, and its token with it.
    with TakeStream(server.url, queues=queue, prefetch=10) as stream:
        assert stream.next_job(5)["id"] == ids[2]
        stream.expect_no_job(0.2)
        assert api.request("DELETE", f"/jobs/{ids[2]}")[0] == 204  # deletion
        assert stream.next_job(5)["id"] == ids[3]
        stream.expect_no_job(0.2)
        # Raising a while_in_flight allocation releases a parked job at once.
        assert api.request("PATCH", f"/budgets/{key}", {"allocation": 2})[0] == 200
        assert stream.next_job(2)["id"] == ids[4]
    api.request("DELETE", f"/jobs?queue={queue}")
    assert api.request("DELETE", f"/budgets/{key}")[0] == 204


def test_speeding_up_a_rate_rearms_the_timer(server, json_api):
    queue, key = fresh("q"), fresh()
    create(json_api, key, rate(1, 3_600_000))  # one an hour
    ids = [j["id"] for j in bulk(json_api, [job(queue, [{"key": key}]) for _ in range(2)])]
    with TakeStream(server.url, queues=queue, prefetch=10) as stream:
        assert stream.next_job(5)["id"] == ids[0]
        stream.expect_no_job(0.3)
        patch = {"strategy": {"duration_ms": 100}}  # now ten a second
        assert json_api.request("PATCH", f"/budgets/{key}", patch)[0] == 200
        assert stream.next_job(2)["id"] == ids[1]
    json_api.request("DELETE", f"/jobs?queue={queue}")
    assert json_api.request("DELETE", f"/budgets/{key}")[0] == 204


def test_parked_jobs_block_nothing_else_in_their_queue(server, json_api):
    api = json_api
    queue, tight, roomy = fresh("q"), fresh(), fresh()
    create(api, tight, wif(1))
    create(api, roomy, wif(100))
    specs = []
    for i in range(30):
        if i % 3 == 0:
            specs.append(job(queue, [{"key": tight}], payload={"i": i}))
        elif i % 3 == 1:
            specs.append(job(queue, payload={"i": i}))
        else:
            specs.append(job(queue, [{"key": roomy}], payload={"i": i}))
    made = bulk(api, specs)
    tight_ids = [made[i]["id"] for i in range(0, 30, 3)]
    with TakeStream(server.url, queues=queue, prefetch=100) as stream:
        got = [stream.next_job(5) for _ in range(21)]  # 1 tight + 10 unbudgeted + 10 roomy
        stream.expect_no_job(0.3)
        taken_tight = [j["id"] for j in got if j["id"] in tight_ids]
        assert taken_tight == [tight_ids[0]]
        # Parked jobs then go one at a time, in FIFO order.
        order = [taken_tight[0]]
        for _ in range(9):
            assert api.ack(order[-1]) == 204
            order.append(stream.next_job(5)["id"])
        assert order == tight_ids
    api.request("DELETE", f"/jobs?queue={queue}")
    for k in (tight, roomy):
        assert api.request("DELETE", f"/budgets/{k}")[0] == 204


# -- cron templates ----------------------------------------------------------------------------


def test_cron_templates_create_and_hold_their_budgets(api):
    group, key, queue = fresh("g"), fresh(), fresh("q")
    template = {"queue": queue, "type": "t", "payload": {}, "budgets": [{"key": key, "cost": 2}]}
    entry = {"name": "e", "expression": "0 6 * * *", "job": template}
    status, body, _ = api.request("PUT", f"/crons/{group}", {"entries": [entry]})
    assert_error(status, body, 422, "entries[0].job.budgets[0].key", key)
    template["budgets"][0]["create_with"] = wif(3)
    status, body, _ = api.request("PUT", f"/crons/{group}", {"entries": [entry]})
    assert status == 200, body
    assert api.get(f"/budgets/{key}")[1]["allocation"] == 3
    shown = api.get(f"/crons/{group}/entries/e")[1]
    assert [(b["key"], b["cost"]) for b in shown["job"].get("budgets", [])] == [(key, 2)], shown
    assert_error(*api.request("DELETE", f"/budgets/{key}")[:2], 409, "cron entry")
    assert_error(*api.request("PATCH", f"/budgets/{key}", {"allocation": 1})[:2], 422, "cron entry")
    assert api.request("DELETE", f"/crons/{group}")[0] == 204
    assert api.request("DELETE", f"/budgets/{key}")[0] == 204


def test_cron_firings_carry_the_template_budgets(json_api):
    group, key, queue = fresh("g"), fresh(), fresh("q")
    template = {
        "queue": queue,
        "type": "t",
        "payload": {},
        "budgets": [{"key": key, "create_with": wif(1)}],
    }
    entry = {"name": "e", "expression": "* * * * * *", "job": template}
    assert json_api.request("PUT", f"/crons/{group}", {"entries": [entry]})[0] == 200
    listed = wait_for(lambda: json_api.get(f"/jobs?queue={queue}")[1]["jobs"], 5)
    assert json_api.request("DELETE", f"/crons/{group}")[0] == 204
    assert listed[0].get("budgets") == [{"key": key, "cost": 1}], listed[0]
    json_api.request("DELETE", f"/jobs?queue={queue}")
    assert json_api.request("DELETE", f"/budgets/{key}")[0] == 204


# -- restart, limits, reset (a server of its own) -------------------------------------------


def test_restart_keeps_policies_and_bindings_and_limits_hold(start_server, tmp_path):
    zizq = start_server(
        "--license-key", mint(), root_dir=tmp_path / "own", env={"ZIZQ_MAX_BUDGETS": "4"}
    )
    with Api(zizq.url) as api:
        create(api, "w", wif(1))
        create(api, "t", rate(6, 1200, 3))
        bound = enqueue(api, "q", [{"key": "w"}, {"key": "t", "cost": 3}])
        held = enqueue(api, "q", [{"key": "w"}])
        create(api, "c", rate(1, 1000))
        create(api, "d", wif(1))
        # Four budgets: a fifth is refused however it would be made.
        assert_error(*api.post("/budgets/x", wif(1))[:2], 422, "4")
        assert_error(*api.request("PUT", "/budgets/x", wif(1))[:2], 422, "4")
        status, body, _ = api.post("/jobs", job("q", [{"key": "x", "create_with": wif(1)}]))
        assert_error(status, body, 422, "4")
        assert api.request("PUT", "/budgets/d", wif(2))[0] == 200  # replacing is not adding
        budgets = api.get("/budgets")[1]
    # Dispatch once before the restart: the rate bucket is drained, then refilled by it.
    with TakeStream(zizq.url, queues="q", prefetch=10) as stream:
        assert stream.next_job(5)["id"] == bound["id"]
    zizq.restart()
    with Api(zizq.url) as api:
        assert api.get("/budgets")[1] == budgets
        assert get_job(api, bound["id"])["budgets"] == bound["budgets"]
        assert get_job(api, held["id"])["budgets"] == held["budgets"]
        assert_error(*api.request("DELETE", "/budgets/w")[:2], 409, "2 unfinished jobs")
        assert_error(*api.request("PATCH", "/budgets/t", {"strategy": {"burst": 2}})[:2], 422)
        assert_error(*api.post("/budgets/x", wif(1))[:2], 422)
        # Tokens refilled: the while_in_flight budget dispatches again, one at a time.
        with TakeStream(zizq.url, queues="q", prefetch=10) as stream:
            first = stream.next_job(5)["id"]
            stream.expect_no_job(0.3)
            assert api.ack(first) == 204
            second = stream.next_job(5)["id"]
            assert {first, second} == {bound["id"], held["id"]}
            assert api.ack(second) == 204
        assert api.request("DELETE", "/budgets/w")[0] == 204
        # POST /reset deletes every budget too.
        assert api.post("/reset")[0] in (200, 204)
        assert api.get("/budgets")[1] == {"budgets": []}


def test_cron_template_budgets_survive_a_restart(start_server, tmp_path):
    zizq = start_server("--license-key", mint(), root_dir=tmp_path / "own")
    template = {
        "queue": "cq",
        "type": "t",
        "payload": {},
        "budgets": [{"key": "c", "cost": 2, "create_with": wif(2)}],
    }
    entry = {"name": "e", "expression": "0 6 * * *", "job": template}
    with Api(zizq.url) as api:
        assert api.request("PUT", "/crons/g", {"entries": [entry]})[0] == 200
        assert_error(*api.request("DELETE", "/budgets/c")[:2], 409, "cron entry")
    zizq.restart()
    with Api(zizq.url) as api:
        # The template still draws on `c`: it may not go, nor shrink below the cost.
        assert_error(*api.request("PATCH", "/budgets/c", {"allocation": 1})[:2], 422, "cron")
        assert_error(*api.request("DELETE", "/budgets/c")[:2], 409, "cron entry")
