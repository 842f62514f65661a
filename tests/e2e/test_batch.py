"""Batched jobs (pro) against a real licensed server: folding, sealing, 422s, bulks.

Contract: the reference's docs/api/src/enqueue.md "Batched jobs" and the
README's "Batched jobs". Every test uses its own queue and batch keys, so one
licensed server serves the whole module.
"""

from __future__ import annotations

import itertools
import threading
import time

import httpx
import pytest

from tests.e2e.helpers_semantics import assert_error, get_job, now_ms, wait_status
from tests.e2e.zizq_process import Api, TakeStream, ZizqServer
from tests.licensing import mint

APPEND = "$existing + $new"  # payloads are arrays: a fold concatenates them
_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One licensed server for the module (overrides conftest's `server`)."""
    zizq = ZizqServer(tmp_path_factory.mktemp("batch") / "root", "--license-key", mint())
    zizq.start()
    yield zizq
    zizq.stop()


@pytest.fixture
def plain(server):
    """A JSON HTTP/1.1 client, for the tests that are not about the wire."""
    with Api(server.url) as client:
        yield client


def fresh(prefix: str) -> str:
    """A queue or batch key no other test uses."""
    return f"{prefix}-{next(_names)}-{time.monotonic_ns()}"


def batch(key: str, when: str = "true", fold: str = APPEND) -> dict:
    return {"key": key, "when": when, "fold": fold}


def job(queue: str, payload, config: dict | None = None, **fields) -> dict:
    body = {"queue": queue, "type": "batched", "payload": payload, **fields}
    if config is not None:
        body["batch"] = config
    return body


def enqueue(api: Api, body: dict, expected: int | None = None) -> dict:
    status, answer, _ = api.post("/jobs", body)
    if expected is not None:
        assert status == expected, (status, answer)
    else:
        assert status in (200, 201), (status, answer)
    # 201 exactly when a job was created, 200 exactly when folded.
    assert answer["folded"] is (status == 200), (status, answer)
    assert answer["duplicate"] is False
    return answer


def payload_of(api: Api, job_id: str):
    found = get_job(api, job_id)
    assert found is not None, f"job {job_id} is gone"
    return found["payload"]


def queue_jobs(api: Api, queue: str) -> list[dict]:
    status, page, _ = api.get(f"/jobs?queue={queue}&limit=2000")
    assert status == 200, (status, page)
    return page["jobs"]


# -- folding and sealing, every protocol ----------------------------------------------


def test_truthy_when_folds_into_the_open_job(api):
    queue, key = fresh("fold"), fresh("k")
    first = enqueue(api, job(queue, [1], batch(key)), 201)
    assert first["folded"] is False
    assert first["batch"] == batch(key)
    assert first["status"] == "ready"
    second = enqueue(api, job(queue, [2], batch(key)), 200)
    third = enqueue(api, job(queue, [3], batch(key)), 200)
    for answer in (second, third):
        assert answer["id"] == first["id"]
        assert answer["folded"] is True
        assert answer["batch"] == batch(key)
        assert answer["status"] == "ready"
        assert answer["ready_at"] == first["ready_at"]
    stored = get_job(api, first["id"])
    assert stored["payload"] == [1, 2, 3]
    assert stored["batch"] == batch(key)  # the stored config is visible on GET /jobs/{id}
    assert [j["id"] for j in queue_jobs(api, queue)] == [first["id"]]


def test_falsy_when_seals_and_starts_a_new_job(api):
    queue, key = fresh("seal"), fresh("k")
    config = batch(key, when="($existing | length) < 2")
    a = enqueue(api, job(queue, [1], config), 201)
    assert enqueue(api, job(queue, [2], config), 200)["id"] == a["id"]
    b = enqueue(api, job(queue, [3], config), 201)  # [1, 2] is full: sealed
    assert b["id"] != a["id"] and b["folded"] is False
    assert enqueue(api, job(queue, [4], config), 200)["id"] == b["id"]
    c = enqueue(api, job(queue, [5], config), 201)
    assert payload_of(api, a["id"]) == [1, 2]
    assert payload_of(api, b["id"]) == [3, 4]
    assert payload_of(api, c["id"]) == [5]
    assert len(queue_jobs(api, queue)) == 3


def test_bulk_copies_fold_into_each_other(api):
    queue, key, other = fresh("bulk"), fresh("k"), fresh("k")
    jobs = [
        job(queue, [1], batch(key)),
        job(queue, [2], batch(key)),
        job(queue, ["x"], batch(other)),
        job(queue, [3], batch(key)),
    ]
    status, answer, _ = api.post("/jobs/bulk", {"jobs": jobs})
    assert status == 201, (status, answer)
    got = answer["jobs"]
    assert [j["folded"] for j in got] == [False, True, False, True]
    assert got[0]["id"] == got[1]["id"] == got[3]["id"] != got[2]["id"]
    assert payload_of(api, got[0]["id"]) == [1, 2, 3]
    assert payload_of(api, got[2]["id"]) == ["x"]
    # Folding only: no job created, so the bulk answers 200.
    status, answer, _ = api.post(
        "/jobs/bulk", {"jobs": [job(queue, [4], batch(key)), job(queue, [5], batch(key))]}
    )
    assert status == 200, (status, answer)
    assert [j["folded"] for j in answer["jobs"]] == [True, True]
    assert {j["id"] for j in answer["jobs"]} == {got[0]["id"]}
    # Both copies folded into the STORED open job: neither may overwrite the other.
    assert payload_of(api, got[0]["id"]) == [1, 2, 3, 4, 5]


def test_bad_expression_is_422_and_writes_nothing(api):
    queue, key = fresh("bad"), fresh("k")
    open_job = enqueue(api, job(queue, [1], batch(key)), 201)
    status, body, _ = api.post("/jobs", job(queue, [2], batch(key, when="(")))
    assert_error(status, body, 422, "batch.when")
    status, body, _ = api.post(
        "/jobs/bulk",
        {"jobs": [job(queue, [3], batch(key)), job(queue, 7, batch(key, fold="$new.a.b"))]},
    )
    assert_error(status, body, 422, "jobs[1].batch.fold")
    assert payload_of(api, open_job["id"]) == [1]
    assert len(queue_jobs(api, queue)) == 1


# -- the rules, over JSON on HTTP/1.1 (the wire is covered above) ---------------------


@pytest.mark.parametrize(
    ("when", "fold", "payload", "field", "mention"),
    [
        ("(", APPEND, [1], "batch.when", "syntax error"),
        ("true", "$existing +", [1], "batch.fold", "syntax error"),
        ("$x", APPEND, [1], "batch.when", "$x is not defined"),
        ("true", "$existing + $nope", [1], "batch.fold", "$nope is not defined"),
        ("$new.a.b", APPEND, 5, "batch.when", "cannot index number"),
        ("true", "$new | .a.b", 5, "batch.fold", "cannot index number"),
        ("true", "empty", [1], "batch.fold", "exactly one output (got none)"),
        ("true", "$existing, $new", [1], "batch.fold", "exactly one output (got more than one)"),
        ("true", 'error("nope")', [1], "batch.fold", "nope"),
        ("true", "input", [1], "batch.fold", "jq error"),
    ],
)
def test_bad_expressions_are_422_naming_the_field(plain, when, fold, payload, field, mention):
    queue, key = fresh("bad"), fresh("k")
    config = batch(key, when=when, fold=fold)
    status, body, _ = plain.post("/jobs", job(queue, payload, config))
    message = assert_error(status, body, 422, field, mention)
    assert message.startswith(field), message
    # In a bulk the field carries the job's index; the other jobs are not written either.
    bulk = {
        "jobs": [job(queue, [0]), job(queue, [0], batch(fresh("k"))), job(queue, payload, config)]
    }
    status, body, _ = plain.post("/jobs/bulk", bulk)
    message = assert_error(status, body, 422, f"jobs[2].{field}", mention)
    assert message.startswith(f"jobs[2].{field}"), message
    assert queue_jobs(plain, queue) == []


@pytest.mark.parametrize(
    ("when", "fold", "field", "mention"),
    [
        ('import "a" as a; true', APPEND, "batch.when", "not allowed"),
        ("true", 'include "x"; $new', "batch.fold", "not allowed"),
        ("true", "$new\u0000", "batch.fold", "NUL"),
        ("true" + " " * 17_000, APPEND, "batch.when", "longer than"),
    ],
)
def test_expressions_jq_may_never_see_are_400(plain, when, fold, field, mention):
    """Checked with the body's shape, before the license: what never reaches jq at all."""
    queue = fresh("text")
    status, body, _ = plain.post("/jobs", job(queue, [1], batch(fresh("k"), when, fold)))
    assert_error(status, body, 400, field, mention)
    assert queue_jobs(plain, queue) == []


def test_when_with_no_output_or_a_runtime_error_at_fold_time_seals(plain):
    queue = fresh("when-err")
    # Dry-run ({"n": 1} as both) is fine; once the open job holds n >= 2 `when` raises.
    config = batch(
        fresh("k"),
        when='if $existing.n >= 2 then error("full") else true end',
        fold="{n: ($existing.n + $new.n)}",
    )
    a = enqueue(plain, job(queue, {"n": 1}, config), 201)
    assert enqueue(plain, job(queue, {"n": 1}, config), 200)["id"] == a["id"]
    b = enqueue(plain, job(queue, {"n": 1}, config), 201)  # the error sealed it, no 422
    assert b["id"] != a["id"]
    assert payload_of(plain, a["id"]) == {"n": 2}
    assert payload_of(plain, b["id"]) == {"n": 1}
    # `when` with no output at all (`empty`) seals too.
    config = batch(fresh("k"), when="empty")
    c = enqueue(plain, job(queue, [1], config), 201)
    d = enqueue(plain, job(queue, [2], config), 201)
    assert c["id"] != d["id"]
    # So do null and false; any other value (0, "", []) is truthy in jq.
    for falsy, truthy in (("null", "0"), ("false", '""'), ("null", "[]")):
        sealed = batch(fresh("k"), when=falsy)
        assert (
            enqueue(plain, job(queue, [1], sealed), 201)["id"]
            != (enqueue(plain, job(queue, [2], sealed), 201)["id"])
        )
        folding = batch(fresh("k"), when=truthy)
        e = enqueue(plain, job(queue, [1], folding), 201)
        assert enqueue(plain, job(queue, [2], folding), 200)["id"] == e["id"]


def test_only_the_first_output_of_when_counts(plain):
    """As the reference: `when` is the truthiness of its first output, computed lazily, so
    what would follow it (an error, an endless loop) never runs."""
    queue = fresh("first")
    for when in ('true, error("late")', "true, (def f: f; f)", "(true, false)"):
        config = batch(fresh("k"), when=when)
        a = enqueue(plain, job(queue, [1], config), 201)
        started = time.monotonic()
        assert enqueue(plain, job(queue, [2], config), 200)["id"] == a["id"], when
        assert time.monotonic() - started < 2, when
    config = batch(fresh("k"), when="(false, true)")
    b = enqueue(plain, job(queue, [1], config), 201)
    assert enqueue(plain, job(queue, [2], config), 201)["id"] != b["id"]
    # `fold` needs exactly one output: a second one is enough to refuse it, at once.
    started = time.monotonic()
    status, body, _ = plain.post(
        "/jobs", job(queue, [1], batch(fresh("k"), fold="$new, $new, (def f: f; f)"))
    )
    assert_error(status, body, 422, "batch.fold", "exactly one output")
    assert time.monotonic() - started < 2


def test_fold_runtime_error_at_fold_time_is_422_and_changes_nothing(plain):
    queue, key = fresh("fold-err"), fresh("k")
    config = batch(
        key, fold='if ($existing | length) >= 2 then error("too many") else $existing + $new end'
    )
    a = enqueue(plain, job(queue, [1], config), 201)
    enqueue(plain, job(queue, [2], config), 200)
    status, body, _ = plain.post("/jobs", job(queue, [3], config))
    assert_error(status, body, 422, "batch.fold", "too many")
    assert payload_of(plain, a["id"]) == [1, 2]
    assert len(queue_jobs(plain, queue)) == 1


def test_a_bulk_is_all_or_nothing_when_one_fold_fails_at_fold_time(plain):
    queue, key, other = fresh("atomic"), fresh("k"), fresh("k")
    poison = 'if $existing == "full" and $new != "full" then error("full up") else $new end'
    a = enqueue(plain, job(queue, [1], batch(key)), 201)
    full = enqueue(plain, job(queue, "full", batch(other, fold=poison)), 201)
    bulk = [
        job(queue, [2], batch(key)),  # would fold
        job(queue, ["new"], batch(fresh("k"))),  # would create
        job(queue, {"plain": True}),  # would create
        job(queue, "x", batch(other, fold=poison)),  # fails folding into `full`
    ]
    status, body, _ = plain.post("/jobs/bulk", {"jobs": bulk})
    assert_error(status, body, 422, "jobs[3].batch.fold", "full up")
    assert payload_of(plain, a["id"]) == [1]
    assert payload_of(plain, full["id"]) == "full"
    assert {j["id"] for j in queue_jobs(plain, queue)} == {a["id"], full["id"]}
    # Nothing was left held or locked: both keys fold as before.
    assert enqueue(plain, job(queue, [3], batch(key)), 200)["id"] == a["id"]
    assert payload_of(plain, a["id"]) == [1, 3]


def test_first_enqueue_config_wins_until_the_batch_is_sealed(plain):
    queue, key = fresh("config"), fresh("k")
    first = batch(key, when="($existing | length) < 3")
    later = batch(key, when="true", fold="$new")  # would replace the payload
    a = enqueue(plain, job(queue, [1], first), 201)
    answer = enqueue(plain, job(queue, [2], later), 200)
    assert answer["batch"] == first
    enqueue(plain, job(queue, [3], later), 200)
    b = enqueue(plain, job(queue, [4], later), 201)  # the FIRST `when` sealed [1, 2, 3]
    assert get_job(plain, a["id"])["batch"] == first
    assert payload_of(plain, a["id"]) == [1, 2, 3]
    # The new batch runs on its own first enqueue's config.
    assert get_job(plain, b["id"])["batch"] == later
    enqueue(plain, job(queue, [5], first), 200)
    assert payload_of(plain, b["id"]) == [5]


def test_a_folded_job_keeps_its_fifo_place_in_its_queue(plain, server):
    queue, key = fresh("fifo"), fresh("k")
    before = enqueue(plain, job(queue, ["plain-1"]), 201)
    batched = enqueue(plain, job(queue, ["b1"], batch(key)), 201)
    after = [enqueue(plain, job(queue, [f"plain-{n}"]), 201) for n in (2, 3)]
    enqueue(plain, job(queue, ["b2"], batch(key)), 200)  # folds after plain-2 and plain-3
    enqueue(plain, job(queue, ["b3"], batch(key)), 200)
    with TakeStream(server.url, queues=queue, prefetch=10) as stream:
        taken = stream.jobs(4, timeout=10)
        stream.expect_no_job(0.3)
    assert [j["id"] for j in taken] == [before["id"], batched["id"], *(j["id"] for j in after)]
    assert taken[1]["payload"] == ["b1", "b2", "b3"]
    assert "batch" in taken[1]


def _take_one(server, queue: str) -> tuple[TakeStream, dict]:
    stream = TakeStream(server.url, queues=queue, prefetch=1)
    return stream, stream.next_job(timeout=10)


def test_dispatch_seals_the_batch(plain, server):
    queue, key = fresh("dispatch"), fresh("k")
    a = enqueue(plain, job(queue, [1], batch(key)), 201)
    stream, taken = _take_one(server, queue)
    with stream:
        assert taken["id"] == a["id"] and taken["payload"] == [1]
        b = enqueue(plain, job(queue, [2], batch(key)), 201)  # in flight: sealed
        assert b["id"] != a["id"]
        assert enqueue(plain, job(queue, [3], batch(key)), 200)["id"] == b["id"]
        assert plain.ack(a["id"]) == 204
    assert payload_of(plain, b["id"]) == [2, 3]


def test_a_failed_job_back_in_ready_takes_no_more_folds(plain, server):
    queue, key = fresh("failed"), fresh("k")
    a = enqueue(plain, job(queue, [1], batch(key)), 201)
    stream, taken = _take_one(server, queue)
    with stream:
        status, failed, _ = plain.post(
            f"/jobs/{a['id']}/failure", {"message": "again", "retry_at": now_ms() - 1}
        )
        assert status == 200, (status, failed)
        # Straight back to ready, and on this stream again: close it first, so the
        # job waits in ready while we enqueue.
    wait_status(plain, a["id"], "ready", timeout=5)
    b = enqueue(plain, job(queue, [2], batch(key)), 201)
    assert b["id"] != a["id"]
    assert payload_of(plain, a["id"]) == [1]
    assert enqueue(plain, job(queue, [3], batch(key)), 200)["id"] == b["id"]
    assert payload_of(plain, b["id"]) == [2, 3]


def test_a_job_returned_by_a_dropped_stream_takes_no_more_folds(plain, server):
    queue, key = fresh("dropped"), fresh("k")
    a = enqueue(plain, job(queue, [1], batch(key)), 201)
    stream, taken = _take_one(server, queue)
    assert taken["id"] == a["id"]
    stream.close()  # the worker crashed: the job returns to ready
    wait_status(plain, a["id"], "ready", timeout=5)
    b = enqueue(plain, job(queue, [2], batch(key)), 201)
    assert b["id"] != a["id"]
    assert payload_of(plain, a["id"]) == [1]


def test_a_future_ready_at_opts_out_of_folding_both_ways(plain):
    queue, key = fresh("sched"), fresh("k")
    later = now_ms() + 3_600_000
    a = enqueue(plain, job(queue, [1], batch(key)), 201)
    # Scheduled: its own job, with its config, and the open ready job stays open.
    s = enqueue(plain, job(queue, [2], batch(key), ready_at=later), 201)
    assert s["id"] != a["id"] and s["status"] == "scheduled"
    assert s["batch"] == batch(key)
    assert get_job(plain, s["id"])["batch"] == batch(key)
    assert enqueue(plain, job(queue, [3], batch(key)), 200)["id"] == a["id"]
    assert payload_of(plain, a["id"]) == [1, 3]
    assert payload_of(plain, s["id"]) == [2]
    # Nothing folds into a scheduled one either.
    queue2, key2 = fresh("sched"), fresh("k")
    s2 = enqueue(plain, job(queue2, [1], batch(key2), ready_at=later), 201)
    s3 = enqueue(plain, job(queue2, [2], batch(key2), ready_at=later), 201)
    r = enqueue(plain, job(queue2, [3], batch(key2)), 201)
    assert len({s2["id"], s3["id"], r["id"]}) == 3
    assert payload_of(plain, s2["id"]) == [1]
    # A ready_at in the past is an ordinary ready enqueue: it folds.
    assert (
        enqueue(plain, job(queue2, [4], batch(key2), ready_at=now_ms() - 10), 200)["id"]
        == (r["id"])
    )


def test_a_patched_or_deleted_open_job(plain):
    queue, key = fresh("patch"), fresh("k")
    a = enqueue(plain, job(queue, [1], batch(key)), 201)
    status, patched, _ = plain.request("PATCH", f"/jobs/{a['id']}", {"priority": 7})
    assert status == 200, (status, patched)
    folded = enqueue(plain, job(queue, [2], batch(key)), 200)  # still open, and still ready
    assert folded["id"] == a["id"] and folded["priority"] == 7
    # Patched to later: scheduled jobs take no folds.
    plain.request("PATCH", f"/jobs/{a['id']}", {"ready_at": now_ms() + 3_600_000})
    b = enqueue(plain, job(queue, [3], batch(key)), 201)
    assert payload_of(plain, a["id"]) == [1, 2]
    status, _, _ = plain.request("DELETE", f"/jobs/{b['id']}")
    assert status == 204
    c = enqueue(plain, job(queue, [4], batch(key)), 201)  # the key no longer points at b
    assert c["id"] not in (a["id"], b["id"])
    assert payload_of(plain, c["id"]) == [4]


def test_folded_payloads_come_out_as_computed(plain):
    queue, key = fresh("payload"), fresh("push")
    # The reference's own example.
    config = batch(
        key,
        when="(($existing | .device_ids) + ($new | .device_ids)) | length <= 100",
        fold="$existing | .device_ids += ($new | .device_ids)",
    )
    a = enqueue(plain, job(queue, {"device_ids": ["abc"], "platform": "apple"}, config), 201)
    enqueue(plain, job(queue, {"device_ids": ["def", "ghi"], "platform": "apple"}, config), 200)
    assert payload_of(plain, a["id"]) == {"device_ids": ["abc", "def", "ghi"], "platform": "apple"}
    # Scalars, unicode, nesting and counters survive the round trip through jq.
    config = batch(
        fresh("k"),
        fold="{count: ($existing.count + 1), names: ($existing.names + $new.names), "
        "last: $new.last, deep: $existing.deep}",
    )
    first = {"count": 1, "names": ["é✓"], "last": None, "deep": {"a": [1, {"b": [True]}]}}
    b = enqueue(plain, job(queue, first, config), 201)
    enqueue(plain, job(queue, {**first, "names": ["日本"], "last": 2.5}, config), 200)
    assert payload_of(plain, b["id"]) == {
        "count": 2,
        "names": ["é✓", "日本"],
        "last": 2.5,
        "deep": {"a": [1, {"b": [True]}]},
    }


def test_a_fold_result_that_is_no_valid_payload_is_422(plain):
    queue = fresh("invalid")
    # 200 arrays deep: past the 128 levels a payload may nest.
    config = batch(fresh("k"), fold="reduce range(200) as $i ($existing; [.])")
    a = enqueue(plain, job(queue, [1], config), 201)
    status, body, _ = plain.post("/jobs", job(queue, [2], config))
    assert_error(status, body, 422, "batch.fold", "folded payload")
    assert payload_of(plain, a["id"]) == [1]
    assert len(queue_jobs(plain, queue)) == 1


def test_a_fold_result_over_2_mib_seals_instead(plain):
    queue, key = fresh("large"), fresh("k")
    config = batch(key, fold="{s: ($existing.s + $new.s)}")
    big = "x" * (1100 * 1024)
    a = enqueue(plain, job(queue, {"s": big}, config), 201)
    b = enqueue(plain, job(queue, {"s": big}, config), 201)  # 2.2 MB would not fit
    assert b["id"] != a["id"]
    assert len(payload_of(plain, a["id"])["s"]) == len(big)
    # A small one still folds into the new open job.
    enqueue(plain, job(queue, {"s": "y"}, config), 200)
    assert payload_of(plain, b["id"])["s"] == big + "y"


def test_batch_shape_errors_are_400_even_without_a_license(start_server):
    free = start_server()
    with Api(free.url) as client:
        for bad, field in (
            ("nope", "batch"),
            ({"when": "true", "fold": "$new"}, "batch.key"),
            ({"key": "k", "fold": "$new"}, "batch.when"),
            ({"key": "k", "when": "true", "fold": 3}, "batch.fold"),
            ({"key": "", "when": "true", "fold": "$new"}, "batch.key"),
        ):
            status, body, _ = client.post("/jobs", job("q", [1], bad))
            assert_error(status, body, 400, field)
        status, body, _ = client.post("/jobs", job("q", [1], batch("k"), unique_key="u"))
        assert_error(status, body, 400, "unique_key")
        status, body, _ = client.post("/jobs", job("q", [1], batch("k")))
        assert status == 403 and body == {"error": "batched jobs requires a pro license"}
        status, body, _ = client.post(
            "/jobs/bulk", {"jobs": [job("q", [1]), job("q", [1], batch("k"))]}
        )
        assert status == 403 and body == {"error": "batched jobs requires a pro license"}
        assert queue_jobs(client, "q") == []


def test_a_runaway_expression_is_422_within_the_jq_limit(start_server):
    zizq = start_server("--license-key", mint(), "--jq-time-limit", "1s")
    with Api(zizq.url) as client:
        latencies: list[float] = []
        done = threading.Event()

        def probe() -> None:
            while not done.is_set():
                started = time.monotonic()
                assert httpx.get(f"{zizq.url}/health", timeout=5).status_code == 200
                latencies.append(time.monotonic() - started)
                time.sleep(0.05)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        started = time.monotonic()
        status, body, _ = client.post("/jobs", job("q", [1], batch("k", when="def f: f; f")))
        elapsed = time.monotonic() - started
        assert_error(status, body, 422, "batch", "time limit")
        status, body, _ = client.post(
            "/jobs/bulk", {"jobs": [job("q", [1]), job("q", [1], batch("k", when="def f: f; f"))]}
        )
        assert_error(status, body, 422, "jobs[1].batch", "time limit")
        assert queue_jobs(client, "q") == []
        # Runaway only once the open job holds two elements: at fold time, with the
        # open job held back from dispatch meanwhile.
        config = batch("k2", when="if ($existing | length) > 1 then def f: f; f else true end")
        a = enqueue(client, job("q", [1], config), 201)
        enqueue(client, job("q", [2], config), 200)
        started2 = time.monotonic()
        status, body, _ = client.post("/jobs", job("q", [3], config))
        elapsed2 = time.monotonic() - started2
        assert_error(status, body, 422, "batch", "time limit")
        done.set()
        prober.join(10)
        assert payload_of(client, a["id"]) == [1, 2]
        # The hold is released: the open job can still be taken.
        with TakeStream(zizq.url, queues="q", prefetch=1) as stream:
            assert stream.next_job(timeout=10)["id"] == a["id"]
    print(
        f"runaway 422 after {elapsed:.2f}s and {elapsed2:.2f}s; /health max {max(latencies):.3f}s"
    )
    assert elapsed < 4 and elapsed2 < 4, (elapsed, elapsed2)
    assert max(latencies) < 1.0, latencies


def test_jq_numbers_in_a_fold(plain):
    """jq has doubles only: NaN becomes null, infinities the largest double, and integers
    past 2^53 lose precision (documented); integers within 2^53 stay integers."""
    queue = fresh("numbers")
    config = batch(fresh("k"), fold="$existing + $new + [nan, infinite, -infinite]")
    a = enqueue(plain, job(queue, [2**53, -(2**53), 7], config), 201)
    enqueue(plain, job(queue, [1], config), 200)
    folded = payload_of(plain, a["id"])
    assert folded[:4] == [2**53, -(2**53), 7, 1]
    assert all(type(n) is int for n in folded[:4]), folded
    assert folded[4:] == [None, 1.7976931348623157e308, -1.7976931348623157e308]


def test_open_batches_survive_a_kill_and_keep_folding(start_server):
    zizq = start_server("--license-key", mint())
    with Api(zizq.url) as client:
        a = enqueue(client, job("q", [1], batch("k")), 201)
        enqueue(client, job("q", [2], batch("k")), 200)
        sealed = enqueue(client, job("q", ["s"], batch("sealed")), 201)
    with TakeStream(zizq.url, queues="q", prefetch=1) as stream:
        assert stream.next_job(timeout=10)["id"] == a["id"]  # the older job goes first
    # The stream closed: `a` is back in ready, but it was dispatched, so sealed.
    zizq.kill()
    zizq.start()
    with Api(zizq.url) as client:
        wait_status(client, a["id"], "ready", timeout=5)
        b = enqueue(client, job("q", [3], batch("k")), 201)
        assert b["id"] != a["id"]
        assert enqueue(client, job("q", ["t"], batch("sealed")), 200)["id"] == sealed["id"]
        assert payload_of(client, a["id"]) == [1, 2]
        assert payload_of(client, sealed["id"]) == ["s", "t"]
    assert "keys_repaired=0" in zizq.output or '"keys_repaired": 0' in zizq.output, zizq.output
