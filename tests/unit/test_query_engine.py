"""Querying, counting, patching and deleting jobs in process, against a real RocksDB store.

Deterministic tests pin every filter, range shape and jq rule; hypothesis property tests
build random stores through real engine operations (enqueue, take, ack, fail, kill, patch)
and check that cursor pages, followed forward and back, give exactly the filtered, ordered
set, also while jobs are being added between page fetches.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zizq.queue import Conflict, Engine, EngineSettings, InvalidInput, NotFound
from zizq.queue.control import BULK_SLICE
from zizq.queue.patch import parse_patch
from zizq.queue.query import JobFilter, PayloadFilter, Range, parse_range
from zizq.queue.records import STATUSES, now_ms
from zizq.queue.spec import FailureSpec, parse_job
from zizq.store import Store

KEEP = {"completed_ms": 3_600_000, "dead_ms": 3_600_000}  # completed jobs stay visible
FAR = 4_000_000_000_000  # a ready_at far in the future (year 2096)


def spec(queue="q", job_type="t", payload=None, **extra):
    body = {
        "queue": queue,
        "type": job_type,
        "payload": {"n": 1} if payload is None else payload,
        "retention": KEEP,
        **extra,
    }
    return parse_job(body)


def jf(**kw) -> JobFilter:
    """JobFilter from friendly arguments: lists become frozensets, strings become ranges."""
    args = {}
    for key, value in kw.items():
        if key in ("queues", "types", "statuses"):
            args[key] = frozenset(value)
        elif key == "ids":
            args[key] = tuple(sorted(value))
        elif key in ("priority", "ready_at", "attempts"):
            args[key] = parse_range(key, value)
        elif key == "payload":
            args[key] = PayloadFilter(value)
        else:
            raise AssertionError(key)
    return JobFilter(**args)


_RUNNERS: dict[int, object] = {}  # id(engine) -> run(coro) for that engine's loop


def resolve(engine: Engine, value):
    """The engine's read calls may be sync or async; run them to a value either way."""
    if inspect.isawaitable(value):
        return _RUNNERS[id(engine)](value)
    return value


def list_page(engine: Engine, job_filter: JobFilter, limit: int, desc: bool, after, before):
    return resolve(engine, engine.list_jobs(job_filter, limit, desc, after, before))


def list_errors(engine: Engine, *args):
    return resolve(engine, engine.list_errors(*args))


def all_pages(engine: Engine, job_filter: JobFilter, limit: int = 1000, desc=False) -> list:
    """Every match by following next cursors from the start."""
    out, after = [], None
    for _ in range(10_000):
        page = list_page(engine, job_filter, limit, desc, after, None)
        out.extend(page.items)
        if page.next_after is None:
            return out
        after = page.next_after
    raise AssertionError("pagination did not end")


def listed_ids(engine: Engine, job_filter: JobFilter, **kw) -> list[str]:
    return [job_id for job_id, _, _ in all_pages(engine, job_filter, **kw)]


async def drain(consumer, timeout: float = 0.005) -> list[str]:
    """Everything the dispatcher has handed to this consumer so far."""
    got = []
    while True:
        batch = await consumer.next_deliveries(timeout)
        if not batch:
            return got
        got.extend(d.job_id for d in batch)


@pytest.fixture
def make_engine(make_engine, run):
    """The conftest factory, with each engine's loop registered for `resolve`."""

    def make(**settings) -> Engine:
        engine = make_engine(**settings)
        _RUNNERS[id(engine)] = run
        return engine

    yield make
    _RUNNERS.clear()


# -- a fixed store used by the deterministic filter tests ---------------------------------


@dataclass
class Fixed:
    engine: Engine
    ids: dict[str, str] = field(default_factory=dict)  # name -> id
    consumer: object = None


@pytest.fixture
def fixed(make_engine, run) -> Fixed:
    """Eight named jobs in known states.

    name  queue type status     priority ready_at  attempts payload
    a1    a     x    ready      10       (now)     0        {"n": 0, "tag": "red"}
    a2    a     y    ready      20       (now)     0        {"n": 1}
    a3    a     x    scheduled  30       FAR       0        {"n": 2, "tag": "blue"}
    b1    b     x    scheduled  40       FAR+10    0        {"n": false}
    b2    b     y    in_flight  0        (now)     0        {"n": null}
    b3    b     x    completed  5        (now)     0        {"tag": "red"}
    c1    c     y    dead       50       (now)     1        [1, 2]
    c2    c     x    ready      65535    0 (retry) 2        "text"
    """
    engine = make_engine()
    fx = Fixed(engine)

    async def build():
        rows = [
            ("a1", spec("a", "x", {"n": 0, "tag": "red"}, priority=10)),
            ("a2", spec("a", "y", {"n": 1}, priority=20)),
            ("a3", spec("a", "x", {"n": 2, "tag": "blue"}, priority=30, ready_at=FAR)),
            ("b1", spec("b", "x", {"n": False}, priority=40, ready_at=FAR + 10)),
            ("b2", spec("b", "y", {"n": None}, priority=0)),
            ("b3", spec("b", "x", {"tag": "red"}, priority=5)),
            ("c1", spec("c", "y", [1, 2], priority=50)),
            ("c2", spec("c", "x", "text", priority=65535)),
        ]
        jobs = await engine.enqueue([s for _, s in rows])
        fx.ids = {name: job["id"] for (name, _), job in zip(rows, jobs, strict=True)}
        # Take everything ready (b2, b3, a1, a2, c1, c2 by priority), then settle each.
        consumer = engine.open_consumer(None, 100)
        taken = set(await drain(consumer, 0.01))
        ready_names = {"a1", "a2", "b2", "b3", "c1", "c2"}
        assert taken == {fx.ids[n] for n in ready_names}
        await engine.ack(fx.ids["b3"])
        await engine.fail(fx.ids["c1"], FailureSpec(message="boom", kill=True))
        await engine.fail(fx.ids["c2"], FailureSpec(message="once", retry_at=0))
        again = await drain(consumer, 0.01)
        assert again == [fx.ids["c2"]]
        await engine.fail(fx.ids["c2"], FailureSpec(message="twice", retry_at=0))
        # a1, a2 back to ready: fail without counting is not possible, so use a fresh
        # consumer trick: close this one (returns a1, a2, b2, c2 to ready, attempts kept),
        # then take only queue b with another stream so b2 is in flight.
        # c2 is still held by `consumer`; closing returns it to ready with attempts 2.
        engine.close_consumer(consumer)
        consumer.close()
        b_stream = engine.open_consumer(frozenset({"b"}), 10)
        assert await drain(b_stream, 0.01) == [fx.ids["b2"]]
        fx.consumer = b_stream

    run(build())
    return fx


def names(fx: Fixed, ids) -> set[str]:
    back = {v: k for k, v in fx.ids.items()}
    return {back[i] for i in ids}


def check(fx: Fixed, run, expected: set[str], **kw) -> None:
    """list (asc and desc, whole and in pages of 2) and count all agree with `expected`."""
    job_filter = jf(**kw)
    engine = fx.engine
    asc = listed_ids(engine, job_filter)
    assert names(fx, asc) == expected, kw
    assert asc == sorted(asc)
    assert listed_ids(engine, job_filter, desc=True) == asc[::-1]
    assert listed_ids(engine, job_filter, limit=2) == asc
    assert run(engine.count(job_filter)) == len(asc), kw


def test_fixed_store_states(fixed, run):
    fx = fixed
    view = {name: fx.engine.get_job(job_id)[0] for name, job_id in fx.ids.items()}
    assert {n: r["status"] for n, r in view.items()} == {
        "a1": "ready",
        "a2": "ready",
        "a3": "scheduled",
        "b1": "scheduled",
        "b2": "in_flight",
        "b3": "completed",
        "c1": "dead",
        "c2": "ready",
    }
    assert view["c2"]["attempts"] == 2 and view["c1"]["attempts"] == 1
    assert run(fx.engine.queues()) == ["a", "b", "c"]


def test_no_filter_lists_everything(fixed, run):
    check(fixed, run, set(fixed.ids))


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"queues": ["a"]}, {"a1", "a2", "a3"}),
        ({"queues": ["a", "c"]}, {"a1", "a2", "a3", "c1", "c2"}),
        ({"queues": ["nope"]}, set()),
        ({"queues": ["b", "nope"]}, {"b1", "b2", "b3"}),
        ({"types": ["y"]}, {"a2", "b2", "c1"}),
        ({"types": ["x", "y"]}, {"a1", "a2", "a3", "b1", "b2", "b3", "c1", "c2"}),
        ({"statuses": ["ready"]}, {"a1", "a2", "c2"}),
        ({"statuses": ["scheduled"]}, {"a3", "b1"}),
        ({"statuses": ["in_flight"]}, {"b2"}),
        ({"statuses": ["completed"]}, {"b3"}),
        ({"statuses": ["dead"]}, {"c1"}),
        ({"statuses": ["completed", "dead"]}, {"b3", "c1"}),
        ({"statuses": ["ready", "in_flight", "scheduled"]}, {"a1", "a2", "a3", "b1", "b2", "c2"}),
    ],
)
def test_set_filters(fixed, run, kw, expected):
    check(fixed, run, expected, **kw)


def test_id_filter(fixed, run):
    fx = fixed
    ids = fx.ids
    check(fx, run, {"a1"}, ids=[ids["a1"]])
    check(fx, run, {"a1", "c2", "b3"}, ids=[ids["c2"], ids["a1"], ids["b3"]])
    check(fx, run, {"a1"}, ids=[ids["a1"], "0" * 25, "not-an-id"])
    check(fx, run, set(), ids=["0" * 25])
    # combined with other filters: AND across parameters
    check(fx, run, {"a1"}, ids=[ids["a1"], ids["b1"]], queues=["a"])
    check(fx, run, set(), ids=[ids["a1"]], statuses=["dead"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10", {"a1"}),
        ("0", {"b2"}),
        ("65535", {"c2"}),
        ("7", set()),
        ("10..30", {"a1", "a2", "a3"}),  # both edges inclusive
        ("11..29", {"a2"}),
        ("..10", {"b2", "b3", "a1"}),
        ("..0", {"b2"}),
        ("50..", {"c1", "c2"}),
        ("65535..", {"c2"}),
        ("0..65535", {"a1", "a2", "a3", "b1", "b2", "b3", "c1", "c2"}),
        ("20..20", {"a2"}),
    ],
)
def test_priority_ranges(fixed, run, text, expected):
    check(fixed, run, expected, priority=text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", {"c2"}),  # c2 was retried with retry_at=0
        (f"{FAR}", {"a3"}),
        (f"{FAR}..{FAR + 10}", {"a3", "b1"}),
        (f"{FAR + 1}..{FAR + 10}", {"b1"}),
        (f"{FAR}..{FAR + 9}", {"a3"}),
        (f"{FAR + 10}..", {"b1"}),
        (f"{FAR + 11}..", set()),
        (f"{FAR}..", {"a3", "b1"}),
    ],
)
def test_ready_at_ranges(fixed, run, text, expected):
    check(fixed, run, expected, ready_at=text)


def test_ready_at_upper_bound_now(fixed, run):
    fx = fixed
    now = now_ms()
    check(fx, run, {"a1", "a2", "b2", "b3", "c1", "c2"}, ready_at=f"..{now}")
    check(fx, run, {"a1", "a2", "b2", "b3", "c1", "c2"}, ready_at=f"0..{FAR - 1}")
    # Exact edges on a real job's value.
    value = fx.engine.get_job(fx.ids["a2"])[0]["ready_at"]
    got = listed_ids(fx.engine, jf(ready_at=str(value)))
    assert fx.ids["a2"] in got
    assert fx.ids["a2"] in listed_ids(fx.engine, jf(ready_at=f"{value}..{value}"))
    assert fx.ids["a2"] not in listed_ids(fx.engine, jf(ready_at=f"..{value - 1}"))
    assert fx.ids["a2"] not in listed_ids(fx.engine, jf(ready_at=f"{value + 1}.."))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", {"a1", "a2", "a3", "b1", "b2", "b3"}),
        ("1", {"c1"}),
        ("2", {"c2"}),
        ("1..", {"c1", "c2"}),
        ("..1", {"a1", "a2", "a3", "b1", "b2", "b3", "c1"}),
        ("1..2", {"c1", "c2"}),
        ("2..2", {"c2"}),
        ("3..", set()),
    ],
)
def test_attempts_ranges(fixed, run, text, expected):
    check(fixed, run, expected, attempts=text)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        (".n", {"a1", "a2", "a3"}),  # 0 is truthy in jq; false and null are not
        (".n == 0", {"a1"}),
        (".n > 0", {"a2", "a3"}),  # null and false sort below numbers; strings error
        (".tag", {"a1", "a3", "b3"}),
        ('.tag == "red"', {"a1", "b3"}),
        ('.tag | startswith("bl")', {"a3"}),  # startswith on null errors: no match
        ("true", {"a1", "a2", "a3", "b1", "b2", "b3", "c1", "c2"}),
        ("false", set()),
        ("null", set()),
        ("empty", set()),
        (".[]", {"a1", "a2", "a3", "b3", "c1"}),  # any truthy output matches; "text" errors
        ('. == "text"', {"c2"}),
        ("length > 1", {"a1", "a3", "c1", "c2"}),
        (".n.x", set()),  # indexing a number or a string: runtime error, no match
        ('type == "array"', {"c1"}),
        ("error", set()),
    ],
)
def test_jq_filter_truthiness(fixed, run, expression, expected):
    check(fixed, run, expected, payload=expression)


def test_jq_invalid_expression_names_error(fixed, run):
    # jq compiles in a worker process (zizq.queue.jq_sandbox), so an invalid program is
    # reported by the engine call, before any scan, even when no job could be read.
    for expression in (".greet | startswith(", "}"):
        job_filter = jf(payload=expression)
        with pytest.raises(InvalidInput) as info:
            run(fixed.engine.count(job_filter))
        assert str(info.value).startswith("filter: invalid jq expression"), info.value
        with pytest.raises(InvalidInput):
            list_page(fixed.engine, jf(payload=expression, ids=["0" * 25]), 10, False, None, None)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"queues": ["a"], "statuses": ["ready"]}, {"a1", "a2"}),
        ({"queues": ["a", "b"], "types": ["x"]}, {"a1", "a3", "b1", "b3"}),
        ({"queues": ["a", "b"], "types": ["x"], "statuses": ["scheduled"]}, {"a3", "b1"}),
        ({"types": ["x"], "priority": "..30"}, {"a1", "a3", "b3"}),
        ({"statuses": ["ready"], "attempts": "1.."}, {"c2"}),
        ({"queues": ["a"], "payload": ".n"}, {"a1", "a2", "a3"}),
        ({"queues": ["a"], "payload": ".n", "priority": "15.."}, {"a2", "a3"}),
        ({"statuses": ["ready", "completed"], "payload": '.tag == "red"'}, {"a1", "b3"}),
        ({"types": ["y"], "statuses": ["ready"], "priority": "20"}, {"a2"}),
        ({"queues": ["c"], "types": ["y"], "statuses": ["ready"]}, set()),
        ({"priority": "0..10", "attempts": "0", "types": ["x"]}, {"a1", "b3"}),
        ({"ready_at": f"{FAR}..", "priority": "..35", "payload": ".n > 1"}, {"a3"}),
    ],
)
def test_combinations(fixed, run, kw, expected):
    check(fixed, run, expected, **kw)


def test_count_without_filters_uses_counters_and_matches_list(fixed, run):
    fx = fixed
    for statuses in (None, *([s] for s in STATUSES)):
        for queues in (None, ["a"], ["b", "c"]):
            kw = {}
            if statuses is not None:
                kw["statuses"] = statuses
            if queues is not None:
                kw["queues"] = queues
            job_filter = jf(**kw)
            assert run(fx.engine.count(job_filter)) == len(listed_ids(fx.engine, job_filter))


# -- range parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("5", 5, 5),
        ("2..5", 2, 5),
        ("..5", None, 5),
        ("2..", 2, None),
        ("3..3", 3, 3),
        ("..", None, None),  # the full range, as the reference reads it
        ("0..65535", 0, 65535),
    ],
)
def test_parse_range_shapes(text, low, high):
    assert parse_range("priority", text, 65535) == Range(low, high)


@pytest.mark.parametrize(
    "text",
    [
        "5..2",
        "abc",
        "",
        "1..2..3",
        "1.5",
        "a..b",
        "..x",
        "-5..10",  # bounds are unsigned
        "--5",
        "+5",
        "1_000",
        " 5",
        "70000",  # past the field's range
        "..65536",
        "9" * 5000,  # longer than int() converts, still a 400
        "\u0665",  # a non-ASCII digit
    ],
)
def test_parse_range_rejects(text):
    with pytest.raises(InvalidInput) as info:
        parse_range("priority", text, 65535)
    assert "priority" in str(info.value)


def test_range_contains_inclusive():
    r = Range(2, 5)
    assert 2 in r and 5 in r and 3 in r and 1 not in r and 6 not in r
    assert 0 in Range(None, 0) and 1 not in Range(None, 0)
    assert 10**12 in Range(7, None) and 6 not in Range(7, None)


# -- patch, delete and their effect on indexes, counts and delivery ----------------------


def test_patch_moves_job_between_indexes(make_engine, run):
    engine = make_engine()
    a, b = run(engine.enqueue([spec("one"), spec("one")]))
    run(engine.patch_job(a["id"], parse_patch({"queue": "two", "priority": 7})))
    assert listed_ids(engine, jf(queues=["one"])) == [b["id"]]
    assert listed_ids(engine, jf(queues=["two"])) == [a["id"]]
    assert run(engine.count(jf(queues=["two"]))) == 1
    assert run(engine.count(jf(queues=["one"]))) == 1
    assert listed_ids(engine, jf(priority="7")) == [a["id"]]
    assert run(engine.queues()) == ["one", "two"]
    run(engine.patch_job(b["id"], parse_patch({"queue": "two"})))
    assert run(engine.queues()) == ["two"]
    # ready -> scheduled by a future ready_at, and back by null
    run(engine.patch_job(a["id"], parse_patch({"ready_at": FAR})))
    assert listed_ids(engine, jf(statuses=["scheduled"])) == [a["id"]]
    assert run(engine.count(jf(statuses=["ready"]))) == 1
    run(engine.patch_job(a["id"], parse_patch({"ready_at": None})))
    assert run(engine.count(jf(statuses=["scheduled"]))) == 0
    assert run(engine.count(jf(statuses=["ready"]))) == 2


def test_patched_priority_changes_take_order(make_engine, run):
    engine = make_engine()
    jobs = run(engine.enqueue([spec(priority=10) for _ in range(3)]))
    run(engine.patch_job(jobs[2]["id"], parse_patch({"priority": 1})))
    run(engine.patch_job(jobs[0]["id"], parse_patch({"priority": 20})))
    consumer = engine.open_consumer(None, 10)
    got = run(drain(consumer, 0.01))
    assert got == [jobs[2]["id"], jobs[1]["id"], jobs[0]["id"]]


@pytest.mark.parametrize(
    "body", [{"retry_limit": 3}, {"queue": "q"}, {"priority": 9}, {"ready_at": None}]
)
def test_patched_ready_job_delivered_once(make_engine, run, body):
    """A patch that leaves a ready job ready must not make it deliverable twice."""
    engine = make_engine()
    jobs = run(engine.enqueue([spec(priority=9), spec(priority=9)]))
    run(engine.patch_job(jobs[0]["id"], parse_patch(body)))
    consumer = engine.open_consumer(None, 10)
    got = run(drain(consumer, 0.01))
    assert sorted(got) == sorted(j["id"] for j in jobs), got


def test_patch_queue_changes_which_stream_gets_it(make_engine, run):
    engine = make_engine()
    (job,) = run(engine.enqueue([spec("old")]))
    run(engine.patch_job(job["id"], parse_patch({"queue": "new"})))
    old = engine.open_consumer(frozenset({"old"}), 10)
    assert run(drain(old, 0.05)) == []
    new = engine.open_consumer(frozenset({"new"}), 10)
    assert run(drain(new, 0.05)) == [job["id"]]


def test_deleted_ready_job_never_delivered(make_engine, run):
    engine = make_engine()
    a, b = run(engine.enqueue([spec(), spec()]))
    run(engine.delete_job(a["id"]))
    consumer = engine.open_consumer(None, 10)
    assert run(drain(consumer, 0.01)) == [b["id"]]
    with pytest.raises(NotFound):
        engine.get_job(a["id"])
    assert run(engine.count(JobFilter())) == 1


def test_delete_in_flight_then_ack_is_not_found(make_engine, run):
    engine = make_engine()
    (job,) = run(engine.enqueue([spec()]))
    consumer = engine.open_consumer(None, 10)
    assert run(drain(consumer, 0.01)) == [job["id"]]
    run(engine.delete_job(job["id"]))
    assert not run(engine.ack(job["id"]))
    assert run(engine.count(JobFilter())) == 0
    assert run(engine.queues()) == []


def test_patch_terminal_job_conflicts(fixed, run):
    fx = fixed
    for name in ("b3", "c1"):
        with pytest.raises(Conflict):
            run(fx.engine.patch_job(fx.ids[name], parse_patch({"priority": 1})))


def test_bulk_patch_skips_terminal_and_rejects_terminal_status(fixed, run):
    fx = fixed
    engine = fx.engine
    for statuses in (["completed"], ["dead"], ["ready", "dead"]):
        with pytest.raises(Conflict):
            run(engine.patch_jobs(jf(statuses=statuses), parse_patch({"priority": 3})))
    patched = run(engine.patch_jobs(JobFilter(), parse_patch({"priority": 3})))
    assert patched == 6  # all but completed b3 and dead c1
    assert names(fx, listed_ids(engine, jf(priority="3"))) == {"a1", "a2", "a3", "b1", "b2", "c2"}
    assert engine.get_job(fx.ids["b3"])[0]["priority"] == 5


def test_bulk_patch_and_delete_in_slices(make_engine, run):
    engine = make_engine()
    total = 3 * BULK_SLICE + 17
    run(engine.enqueue([spec("big", payload={"i": i}) for i in range(total)]))
    run(engine.enqueue([spec("small") for _ in range(5)]))
    patched = run(engine.patch_jobs(jf(queues=["big"]), parse_patch({"queue": "moved"})))
    assert patched == total
    assert run(engine.count(jf(queues=["big"]))) == 0
    assert run(engine.count(jf(queues=["moved"]))) == total
    assert len(listed_ids(engine, jf(queues=["moved"]))) == total
    assert run(engine.queues()) == ["moved", "small"]
    # jq-filtered bulk delete: only the even ones
    deleted = run(engine.delete_jobs(jf(queues=["moved"], payload=".i % 2 == 0")))
    assert deleted == (total + 1) // 2
    assert run(engine.count(jf(queues=["moved"]))) == total // 2
    assert run(engine.count(JobFilter())) == total // 2 + 5
    # no filter: everything
    assert run(engine.delete_jobs(JobFilter())) == total // 2 + 5
    assert run(engine.count(JobFilter())) == 0
    assert listed_ids(engine, JobFilter()) == []
    assert run(engine.queues()) == []


def test_reset_drops_in_flight(make_engine, run):
    engine = make_engine()
    jobs = run(engine.enqueue([spec("r1"), spec("r2", ready_at=FAR)]))
    consumer = engine.open_consumer(None, 10)
    assert run(drain(consumer, 0.01)) == [jobs[0]["id"]]
    run(engine.reset())
    assert not run(engine.ack(jobs[0]["id"]))
    assert run(engine.count(JobFilter())) == 0
    assert run(engine.queues()) == []
    assert listed_ids(engine, JobFilter()) == []
    # the engine still works afterwards
    (again,) = run(engine.enqueue([spec("r3")]))
    assert run(drain(consumer, 0.01)) == [again["id"]]


def test_error_pages(make_engine, run):
    engine = make_engine()
    (job,) = run(engine.enqueue([spec(retry_limit=50)]))
    consumer = engine.open_consumer(None, 1)
    for attempt in range(1, 8):
        assert run(drain(consumer, 0.01)) == [job["id"]]
        run(engine.fail(job["id"], FailureSpec(message=f"m{attempt}", retry_at=0)))
    seen, after = [], None
    while True:
        page = list_errors(engine, job["id"], 3, False, after, None)
        seen.extend(attempt for attempt, _ in page.items)
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == list(range(1, 8))
    page = list_errors(engine, job["id"], 3, True, None, None)
    assert [a for a, _ in page.items] == [7, 6, 5]
    assert engine.get_error(job["id"], 4)["message"] == "m4"
    with pytest.raises(NotFound):
        engine.get_error(job["id"], 8)
    with pytest.raises(NotFound):
        list_errors(engine, "0" * 25, 3, False, None, None)


# -- property tests ------------------------------------------------------------------------

QUEUES = ("qa", "qb", "qc")
TYPES = ("ta", "tb")
PRIORITIES = (0, 5, 5, 100, 32768, 65535)
JQ_FILTERS = {
    ".n > 1": lambda p: p["n"] > 1,
    ".n == 0": lambda p: p["n"] == 0,
    ".flag": lambda p: p.get("flag") is not None and p.get("flag") is not False,  # 0 is truthy
    ".n.x": lambda p: False,  # runtime error on a number
}


@dataclass
class Job:
    id: str
    queue: str
    type: str
    priority: int
    status: str
    attempts: int
    payload: dict


class World:
    """An engine on a shared store driven by real operations, with an independent model.

    The store is shared by every example of a test (opening and dropping a RocksDB per
    example costs about a second); each World starts from an empty store and leaves it
    empty through Engine.reset(), which the next World verifies.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        assert not list(store.iter_jobs()), "the previous example left jobs behind"
        assert not list(store.index.keys()), "the previous example left index entries behind"
        self.loop = asyncio.new_event_loop()
        self.engine = Engine(store, EngineSettings())
        self.run(self.engine.start())
        assert not store.counts
        _RUNNERS[id(self.engine)] = self.run
        self.consumer = self.engine.open_consumer(None, 0)
        self.jobs: dict[str, Job] = {}

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        try:
            self.run(self.engine.reset())
        finally:
            with contextlib.suppress(Exception):
                self.run(self.engine.stop())
            _RUNNERS.pop(id(self.engine), None)
            self.loop.close()

    def _delivered(self) -> None:
        for job_id in self.run(drain(self.consumer, 0.002)):
            job = self.jobs[job_id]
            assert job.status == "ready", (job, "delivered a job that was not ready")
            job.status = "in_flight"

    def enqueue(self, rows) -> None:
        specs = []
        for queue, job_type, priority, scheduled, n, flag in rows:
            payload = {"n": n} if flag is None else {"n": n, "flag": flag}
            extra = {"priority": priority}
            if scheduled:
                extra["ready_at"] = FAR
            specs.append(spec(queue, job_type, payload, **extra))
        created = self.run(self.engine.enqueue(specs))
        for (queue, job_type, priority, scheduled, n, flag), view in zip(
            rows, created, strict=True
        ):
            payload = {"n": n} if flag is None else {"n": n, "flag": flag}
            status = "scheduled" if scheduled else "ready"
            self.jobs[view["id"]] = Job(view["id"], queue, job_type, priority, status, 0, payload)
        self._delivered()

    def take(self, count: int) -> None:
        self.consumer.prefetch += count
        self.engine.dispatcher.request_pump()
        self._delivered()

    def settle(self, index: int, action: str) -> None:
        """ack / retry now / retry later / kill one in-flight job (if any)."""
        flying = sorted(j.id for j in self.jobs.values() if j.status == "in_flight")
        if not flying:
            return
        job = self.jobs[flying[index % len(flying)]]
        if action == "ack":
            assert self.run(self.engine.ack(job.id))
            job.status = "completed"
        else:
            failure = {
                "now": FailureSpec(message="x", retry_at=0),
                "later": FailureSpec(message="x", retry_at=FAR),
                "kill": FailureSpec(message="x", kill=True),
            }[action]
            self.run(self.engine.fail(job.id, failure))
            job.attempts += 1
            job.status = {"now": "ready", "later": "scheduled", "kill": "dead"}[action]
        self.consumer.prefetch -= 1  # keep what is in flight stable
        self._delivered()

    def patch(self, index: int, queue: str | None, priority: int | None) -> None:
        ids = sorted(self.jobs)
        if not ids:
            return
        job = self.jobs[ids[index % len(ids)]]
        body = {}
        if queue is not None:
            body["queue"] = queue
        if priority is not None:
            body["priority"] = priority
        if not body:
            return
        if job.status in ("completed", "dead"):
            with pytest.raises(Conflict):
                self.run(self.engine.patch_job(job.id, parse_patch(body)))
            return
        self.run(self.engine.patch_job(job.id, parse_patch(body)))
        job.queue = body.get("queue", job.queue)
        job.priority = body.get("priority", job.priority)
        self._delivered()

    def check_model(self) -> None:
        """The store agrees with the model, record by record."""
        stored = dict(self.store.iter_jobs())
        assert set(stored) == set(self.jobs)
        for job_id, job in self.jobs.items():
            record = stored[job_id]
            got = (record["queue"], record["type"], record["priority"], record["status"])
            assert got == (job.queue, job.type, job.priority, job.status), job
            assert record["attempts"] == job.attempts


def model_match(job: Job, f: dict) -> bool:
    def in_range(value, bounds):
        low, high = bounds
        return (low is None or value >= low) and (high is None or value <= high)

    return (
        (f["queues"] is None or job.queue in f["queues"])
        and (f["types"] is None or job.type in f["types"])
        and (f["statuses"] is None or job.status in f["statuses"])
        and (f["priority"] is None or in_range(job.priority, f["priority"]))
        and (f["attempts"] is None or in_range(job.attempts, f["attempts"]))
        and (f["jq"] is None or JQ_FILTERS[f["jq"]](job.payload))
    )


def to_filter(f: dict) -> JobFilter:
    def rng(bounds):
        if bounds is None:
            return None
        return Range(*bounds)

    return JobFilter(
        queues=None if f["queues"] is None else frozenset(f["queues"]),
        types=None if f["types"] is None else frozenset(f["types"]),
        statuses=None if f["statuses"] is None else frozenset(f["statuses"]),
        priority=rng(f["priority"]),
        attempts=rng(f["attempts"]),
        payload=None if f["jq"] is None else PayloadFilter(f["jq"]),
    )


job_rows = st.lists(
    st.tuples(
        st.sampled_from(QUEUES),
        st.sampled_from(TYPES),
        st.sampled_from(PRIORITIES),
        st.sampled_from([False, False, True]),  # scheduled?
        st.integers(0, 3),
        st.sampled_from([None, None, True, False, 0]),
    ),
    min_size=0,
    max_size=12,
)

operations = st.lists(
    st.one_of(
        st.tuples(st.just("enqueue"), job_rows),
        st.tuples(st.just("take"), st.integers(1, 6)),
        st.tuples(
            st.just("settle"),
            st.integers(0, 50),
            st.sampled_from(["ack", "now", "later", "kill"]),
        ),
        st.tuples(
            st.just("patch"),
            st.integers(0, 50),
            st.sampled_from([None, "qa", "qc", "qd"]),
            st.sampled_from([None, 1, 5, 40000]),
        ),
    ),
    max_size=14,
)


def bounds(low_high):
    return st.one_of(
        st.none(),
        st.tuples(st.sampled_from(low_high + (None,)), st.sampled_from(low_high + (None,)))
        .filter(lambda t: t != (None, None))
        .filter(lambda t: t[0] is None or t[1] is None or t[0] <= t[1]),
    )


def subset(values):
    return st.none() | st.sets(st.sampled_from(values), min_size=1).map(sorted)


filters = st.fixed_dictionaries(
    {
        "queues": subset(QUEUES + ("qd", "zz")),
        "types": subset(TYPES),
        "statuses": subset(STATUSES),
        "priority": bounds((0, 5, 6, 100, 32768, 65535)),
        "attempts": bounds((0, 1, 2)),
        "jq": st.none() | st.none() | st.sampled_from(sorted(JQ_FILTERS)),
    }
)

PROPERTY = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("prop") / "root", cache_size=4 * 1024 * 1024)
    yield store
    store.close()


def build_world(store: Store, base_rows, ops) -> World:
    world = World(store)
    try:
        world.enqueue(base_rows)
        for op in ops:
            kind = op[0]
            if kind == "enqueue":
                world.enqueue(op[1])
            elif kind == "take":
                world.take(op[1])
            elif kind == "settle":
                world.settle(op[1], op[2])
            else:
                world.patch(op[1], op[2], op[3])
        world.check_model()
    except BaseException:
        world.close()
        raise
    return world


def walk_forward(engine, job_filter, limit, desc, between=None):
    pages, after = [], None
    for _ in range(1000):
        page = list_page(engine, job_filter, limit, desc, after, None)
        assert len(page.items) <= limit
        if after is None:
            assert page.prev_before is None, "the first page has no prev"
        pages.append([job_id for job_id, _, _ in page.items])
        if page.next_after is None:
            return pages, page
        assert page.items, "an empty page must not link to a next page"
        assert page.next_after == page.items[-1][0]
        after = page.next_after
        if between is not None:
            between()
    raise AssertionError("next links never ended")


def walk_back(engine, job_filter, limit, desc, last_page, between=None):
    pages = []
    page = last_page
    for _ in range(1000):
        if page.prev_before is None:
            return pages
        before = page.prev_before
        page = list_page(engine, job_filter, limit, desc, None, before)
        assert 0 < len(page.items) <= limit
        pages.append([job_id for job_id, _, _ in page.items])
        if between is not None:
            between()
    raise AssertionError("prev links never ended")


@PROPERTY
@given(
    base_rows=job_rows,
    ops=operations,
    job_filter=filters,
    limit=st.integers(1, 7),
    desc=st.booleans(),
)
def test_pages_concatenate_to_filtered_ordered_set(
    shared_store, base_rows, ops, job_filter, limit, desc
):
    world = build_world(shared_store, base_rows, ops)
    try:
        engine = world.engine
        flt = to_filter(job_filter)
        expected = sorted(j.id for j in world.jobs.values() if model_match(j, job_filter))
        if desc:
            expected.reverse()
        pages, last = walk_forward(engine, flt, limit, desc)
        forward = [job_id for page in pages for job_id in page]
        assert forward == expected
        # every full page but the last is exactly `limit` long
        assert all(len(p) == limit for p in pages[:-1])
        # the records listed are the model's jobs, with their payloads
        for job_id, record, _ in list_page(engine, flt, 2000, desc, None, None).items:
            job = world.jobs[job_id]
            assert (record["queue"], record["status"], record["priority"]) == (
                job.queue,
                job.status,
                job.priority,
            )
        # prev from the last page walks the same pages back, in reverse
        back = walk_back(engine, flt, limit, desc, last)
        assert back == pages[:-1][::-1]
        assert world.run(engine.count(flt)) == len(expected)
    finally:
        world.close()


@PROPERTY
@given(
    base_rows=job_rows.filter(bool),
    job_filter=filters,
    limit=st.integers(1, 5),
    desc=st.booleans(),
    additions=st.lists(job_rows, min_size=1, max_size=6),
)
def test_pages_while_jobs_are_added(shared_store, base_rows, job_filter, limit, desc, additions):
    world = build_world(shared_store, base_rows, [("take", 2), ("settle", 0, "later")])
    try:
        engine = world.engine
        flt = to_filter(job_filter)
        at_start = {j.id for j in world.jobs.values() if model_match(j, job_filter)}
        pending = list(additions)

        def add():
            if pending:
                world.enqueue(pending.pop(0))

        pages, last = walk_forward(engine, flt, limit, desc, between=add)
        forward = [job_id for page in pages for job_id in page]
        assert len(forward) == len(set(forward)), "a job appeared twice"
        assert at_start <= set(forward), "a job that existed at the start was skipped"
        for job_id in forward:  # anything extra is a new job that matches
            assert model_match(world.jobs[job_id], job_filter)
        order = sorted(forward, reverse=desc)
        assert forward == order

        pending.extend(additions)  # keep adding while walking back
        back = walk_back(engine, flt, limit, desc, last, between=add)
        walked = [job_id for page in back for job_id in page] + pages[-1]
        assert len(walked) == len(set(walked)), "a job appeared twice walking back"
        assert at_start <= set(walked)
        for page in back:
            assert page == sorted(page, reverse=desc)
    finally:
        world.close()
