"""Cron groups (pro) against a real licensed server: every route, real firings, restart.

Contract: the reference's docs/api/src/cron.md, cron-group-response.md and
cron-group-entry-response.md (0.7: the group `timezone`), and the README's
"Cron scheduling". Each test uses its own group names, so one licensed server
serves the module; firings are watched at "* * * * * *" (every second).
"""

from __future__ import annotations

import itertools
import time

import pytest

from tests.e2e.helpers_semantics import assert_error
from tests.e2e.zizq_process import Api, ZizqServer
from tests.licensing import mint

_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One licensed server for the module (overrides conftest's `server`)."""
    zizq = ZizqServer(tmp_path_factory.mktemp("cron") / "root", "--license-key", mint())
    zizq.start()
    yield zizq
    zizq.stop()


def fresh(prefix: str = "g") -> str:
    return f"{prefix}{next(_names)}-{time.monotonic_ns()}"


def entry(name: str, expression: str = "0 6 * * *", queue: str = "q", **extra) -> dict:
    job = extra.pop("job", {"queue": queue, "type": "report", "payload": {"entry": name}})
    return {"name": name, "expression": expression, "job": job, **extra}


def wait_for(predicate, timeout: float = 10.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(every)


def count(api: Api, queue: str) -> int:
    status, body, _ = api.get(f"/jobs/count?queue={queue}")
    assert status == 200, body
    return body["count"]


def test_put_get_list_and_delete_a_group(api):
    group = fresh()
    body = {
        "timezone": "Europe/Rome",
        "entries": [
            entry(
                "warehouse",
                "0 6 * * *",
                timezone="America/New_York",
                job={"queue": "dw", "type": "refresh", "priority": 1000, "payload": {"inc": True}},
            ),
            entry(
                "tokens",
                "*/15 * * * *",
                job={
                    "queue": "id",
                    "type": "expire",
                    "payload": {},
                    "unique_key": "expire",
                    "unique_while": "active",
                },
            ),
        ],
    }
    status, shown, _ = api.request("PUT", f"/crons/{group}", body)
    assert status == 200, shown
    assert shown["name"] == group and shown["paused"] is False
    assert shown["timezone"] == "Europe/Rome"
    by_name = {e["name"]: e for e in shown["entries"]}
    assert [e["name"] for e in shown["entries"]] == ["tokens", "warehouse"]
    warehouse = by_name["warehouse"]
    assert warehouse["timezone"] == "America/New_York"
    assert warehouse["job"] == {
        "queue": "dw",
        "type": "refresh",
        "priority": 1000,
        "payload": {"inc": True},
    }
    assert warehouse["next_enqueue_at"] > time.time() * 1000
    assert "last_enqueue_at" not in warehouse
    tokens = by_name["tokens"]
    assert tokens["job"]["priority"] == 32768  # the default, filled in
    assert tokens["job"]["unique_key"] == "expire" and tokens["job"]["unique_while"] == "active"
    assert "timezone" not in tokens  # inherits the group's
    assert tokens["next_enqueue_at"] % (15 * 60_000) == 0
    # Idempotent: the same PUT again answers the same.
    assert api.request("PUT", f"/crons/{group}", body)[1] == shown
    assert api.get(f"/crons/{group}")[1] == shown
    status, listed, _ = api.get("/crons")
    assert status == 200 and group in listed["crons"]
    status, single, _ = api.get(f"/crons/{group}/entries/warehouse")
    assert status == 200 and single == warehouse
    status, _, response = api.request("DELETE", f"/crons/{group}")
    assert status == 204 and response.content == b""
    assert_error(*api.get(f"/crons/{group}")[:2], 404, group)
    assert_error(*api.request("DELETE", f"/crons/{group}")[:2], 404, group)


def test_put_replaces_the_group_whole(api):
    group = fresh()
    api.request("PUT", f"/crons/{group}", {"entries": [entry("a"), entry("b")]})
    before = {e["name"]: e for e in api.get(f"/crons/{group}")[1]["entries"]}
    status, shown, _ = api.request(
        "PUT", f"/crons/{group}", {"entries": [entry("b"), entry("c", "0 7 * * *")]}
    )
    assert status == 200
    assert [e["name"] for e in shown["entries"]] == ["b", "c"]
    assert shown["entries"][0]["next_enqueue_at"] == before["b"]["next_enqueue_at"]
    assert_error(*api.get(f"/crons/{group}/entries/a")[:2], 404, "a")


def test_entry_routes(api):
    group = fresh()
    status, created, _ = api.post(f"/crons/{group}/entries", entry("e1"))
    assert status == 201 and created["name"] == "e1"  # the group is created with it
    assert_error(*api.post(f"/crons/{group}/entries", entry("e1"))[:2], 409, "e1")
    status, put, _ = api.request("PUT", f"/crons/{group}/entries/e2", entry("e2", "30 6 * * *"))
    assert status == 200 and put["expression"] == "30 6 * * *"
    status, paused, _ = api.request("PATCH", f"/crons/{group}/entries/e2", {"paused": True})
    assert status == 200 and paused["paused"] is True and paused["paused_at"] > 0
    status, resumed, _ = api.request("PATCH", f"/crons/{group}/entries/e2", {"paused": False})
    assert status == 200 and resumed["paused"] is False
    assert resumed["resumed_at"] >= resumed["paused_at"]
    status, _, _ = api.request("DELETE", f"/crons/{group}/entries/e2")
    assert status == 204
    assert_error(*api.request("DELETE", f"/crons/{group}/entries/e2")[:2], 404, "e2")
    assert_error(*api.request("PATCH", f"/crons/{group}/entries/nope", {"paused": True})[:2], 404)
    assert [e["name"] for e in api.get(f"/crons/{group}")[1]["entries"]] == ["e1"]


def test_patch_group_is_a_merge_patch(api):
    group = fresh()
    api.request("PUT", f"/crons/{group}", {"timezone": "Asia/Tokyo", "entries": [entry("e")]})
    status, paused, _ = api.request("PATCH", f"/crons/{group}", {"paused": True})
    assert status == 200 and paused["paused"] and paused["timezone"] == "Asia/Tokyo"
    status, cleared, _ = api.request("PATCH", f"/crons/{group}", {"timezone": None})
    assert status == 200 and "timezone" not in cleared and cleared["paused"]
    assert_error(*api.request("PATCH", fresh("/crons/none"), {"paused": True})[:2], 404)


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        ({"entries": [entry("a", "61 * * * *")]}, ["entries[0].expression"]),
        ({"entries": [entry("a", "* * * * * * *")]}, ["entries[0].expression"]),
        ({"entries": [entry("a", timezone="Not/AZone")]}, ["entries[0].timezone"]),
        ({"timezone": "../etc/passwd", "entries": []}, ["timezone"]),
        ({"entries": [entry("a"), entry("a")]}, ["entries[1].name", "duplicate"]),
        ({"entries": [{**entry("a"), "job": {"queue": "q", "type": "t"}}]}, ["payload"]),
        (
            {
                "entries": [
                    {**entry("a"), "job": {"queue": "q", "type": "t", "payload": 1, "ready_at": 1}}
                ]
            },
            ["entries[0].job.ready_at"],
        ),
        ({"entries": "all"}, ["entries"]),
    ],
)
def test_bad_bodies_are_400_naming_the_field(api, body, mentions):
    assert_error(*api.request("PUT", f"/crons/{fresh()}", body)[:2], 400, *mentions)


def test_bad_names_and_batch_templates(api):
    assert_error(*api.request("PUT", "/crons/a,b", {"entries": []})[:2], 400, "group")
    assert_error(*api.request("PUT", f"/crons/{fresh()}/entries/x*", entry("x"))[:2], 400, "entry")
    failing = {
        **entry("b"),
        "job": {
            "queue": "q",
            "type": "t",
            "payload": 1,
            "batch": {"key": "k", "when": 'error("no")', "fold": "."},
        },
    }
    assert_error(*api.post(f"/crons/{fresh()}/entries", failing)[:2], 422, "job.batch.when")


@pytest.fixture
def json_api(server):
    """One protocol only, for the tests that wait on the clock (the routes run under all)."""
    with Api(server.url) as client:
        yield client


def test_real_firings_every_second_and_pause(json_api):
    api = json_api
    group, queue = fresh(), fresh("q")
    status, shown, _ = api.request(
        "PUT", f"/crons/{group}", {"entries": [entry("tick", "* * * * * *", queue=queue)]}
    )
    assert status == 200, shown
    wait_for(lambda: count(api, queue) >= 2, timeout=6)
    status, fired, _ = api.get(f"/crons/{group}/entries/tick")
    assert fired["last_enqueue_at"] < fired["next_enqueue_at"]
    assert fired["next_enqueue_at"] % 1000 == 0
    status, listing, _ = api.get(f"/jobs?queue={queue}&order=asc")
    seconds = [job["ready_at"] // 1000 for job in listing["jobs"]]
    assert len(seconds) == len(set(seconds)), "two jobs in one second"
    assert all(job["ready_at"] % 1000 < 500 for job in listing["jobs"]), "fired late"
    assert listing["jobs"][0]["payload"] == {"entry": "tick"}
    api.request("PATCH", f"/crons/{group}", {"paused": True})
    time.sleep(0.05)
    stopped_at = count(api, queue)
    time.sleep(2.2)
    assert count(api, queue) == stopped_at  # paused: nothing more
    paused = api.get(f"/crons/{group}/entries/tick")[1]
    assert paused["next_enqueue_at"] > time.time() * 1000 - 1000  # time still advances
    api.request("DELETE", f"/crons/{group}")
    time.sleep(1.2)
    assert count(api, queue) == stopped_at


def test_msgpack_bodies_and_delete_all(start_server):
    zizq = start_server("--license-key", mint())
    with Api(zizq.url, fmt="msgpack", http2=True) as api:
        status, shown, response = api.request("PUT", "/crons/m", {"entries": [entry("e")]})
        assert status == 200 and "msgpack" in response.headers["content-type"]
        assert shown["entries"][0]["job"]["payload"] == {"entry": "e"}
        api.request("PUT", "/crons/n", {"entries": []})
        status, deleted, _ = api.request("DELETE", "/crons")
        assert status == 200 and deleted == {"deleted": 2}
        assert api.get("/crons")[1] == {"crons": []}


def test_groups_survive_a_restart_and_reset_removes_them(start_server):
    zizq = start_server("--license-key", mint())
    with Api(zizq.url) as api:
        api.request(
            "PUT",
            "/crons/keep",
            {"timezone": "Europe/Rome", "entries": [entry("e"), entry("f", paused=True)]},
        )
        before = api.get("/crons/keep")[1]
    zizq.restart()
    with Api(zizq.url) as api:
        assert api.get("/crons/keep")[1] == before
        status, _, _ = api.post("/reset")
        assert status == 204
        assert api.get("/crons")[1] == {"crons": []}


def test_every_route_is_403_without_a_license(start_server):
    zizq = start_server()
    with Api(zizq.url) as api:
        for method, path, body in [
            ("GET", "/crons", None),
            ("DELETE", "/crons", None),
            ("GET", "/crons/g", None),
            ("PUT", "/crons/g", {"entries": []}),
            ("PATCH", "/crons/g", {"paused": True}),
            ("DELETE", "/crons/g", None),
            ("POST", "/crons/g/entries", entry("e")),
            ("GET", "/crons/g/entries/e", None),
            ("PUT", "/crons/g/entries/e", entry("e")),
            ("PATCH", "/crons/g/entries/e", {"paused": True}),
            ("DELETE", "/crons/g/entries/e", None),
        ]:
            status, body, _ = api.request(method, path, body)
            assert_error(status, body, 403, "pro license")
        assert api.post("/reset")[0] == 204  # reset needs no license


def test_firing_stops_when_the_license_expires_at_run_time(start_server):
    zizq = start_server("--license-key", mint(expires_in_s=3))
    queue = fresh("q")
    with Api(zizq.url) as api:
        status, _, _ = api.request(
            "PUT", "/crons/exp", {"entries": [entry("tick", "* * * * * *", queue=queue)]}
        )
        assert status == 200
        wait_for(lambda: count(api, queue) >= 1, timeout=5)
        zizq.wait_for_line(lambda line: "cron firing stopped" in line, timeout=6)
        after = count(api, queue)
        time.sleep(1.5)
        assert count(api, queue) == after
        assert_error(*api.get("/crons/exp")[:2], 403, "license expired")
