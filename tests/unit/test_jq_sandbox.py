"""The jq sandbox: worker processes with a deadline, a memory cap and an empty environment.

Real worker processes throughout (nothing mocked): each test builds its own pool with
short limits so runaway programs are cut off quickly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time

import msgpack
import pytest

from zizq.queue.errors import InvalidInput
from zizq.queue.jq_sandbox import (
    MATCH_BATCH,
    MAX_EXPRESSION_BYTES,
    JqSandbox,
    check_text,
    worker_environment,
)
from zizq.queue.query import JobFilter, JobQuery, PayloadFilter

RUNAWAY = "def f: f; f"
MiB = 1024 * 1024


@pytest.fixture
def sandbox():
    pool = JqSandbox(workers=2, time_limit_ms=1000, memory_limit=256 * MiB)
    # Started before the test: on a loaded machine two Python start-ups can take longer
    # than the 1 s limit these tests use, and a first call counts them against it.
    pool.start()
    yield pool
    pool.close()


def packed(*values) -> list[bytes]:
    return [msgpack.packb(value) for value in values]


def failure(call, *args) -> tuple[str, float]:
    started = time.monotonic()
    with pytest.raises(InvalidInput) as info:
        call(*args)
    return str(info.value), time.monotonic() - started


# -- what the text may be ------------------------------------------------------------


def test_valid_program_checks(sandbox):
    sandbox.check('.a | startswith("x")')


@pytest.mark.parametrize("expression", [".greet | startswith(", "}", "", "# only a comment"])
def test_bad_syntax_is_invalid_input_naming_the_field(sandbox, expression):
    message, _ = failure(sandbox.check, expression)
    assert message.startswith("filter: invalid jq expression"), message
    message, _ = failure(sandbox.check, expression, "batch.when")
    assert message.startswith("batch.when: invalid jq expression"), message


def test_compile_error_lines_are_the_clients():
    pool = JqSandbox(workers=1)
    try:
        message, _ = failure(pool.check, ".a |\n.b | (")
    finally:
        pool.close()
    assert "line 2" in message, message  # not shifted by the worker's guard line


@pytest.mark.parametrize(
    "expression",
    [
        'import "a" as a; .',
        'include "a"; .',
        '  # a comment first\n  include "a"; .',
        'import "passwd" as $p {search: "/etc"}; $p',
        "module {a: 1}; .",
    ],
)
def test_module_directives_are_rejected(sandbox, expression):
    message, _ = failure(sandbox.check, expression)
    assert message == "filter: module directives (import, include) are not allowed"
    with pytest.raises(InvalidInput):
        PayloadFilter(expression)  # already when the request is parsed


def test_directives_fail_in_the_worker_even_past_the_text_check(sandbox):
    # The worker compiles a guard first, after which any directive is a syntax error.
    with pytest.raises(InvalidInput, match="not allowed"):
        sandbox._call("check", 'include "a"; .', [], "filter", time.monotonic() + 5)
    assert sandbox.match('"a" | modulemeta', [None]) == [False]  # shadowed: an error


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("." + " " * MAX_EXPRESSION_BYTES, "longer than 16384 bytes"),
        (".a\0", "NUL"),
        ('.a == "\udc80"', "UTF-8"),
    ],
)
def test_text_limits(expression, reason):
    with pytest.raises(InvalidInput, match=reason) as info:
        check_text(expression)
    assert str(info.value).startswith("filter: ")


# -- answers ---------------------------------------------------------------------------


def test_match_truthiness_and_runtime_errors(sandbox):
    payloads = packed({"a": 1}, {"a": None}, {"a": False}, {"a": 0}, "text", [1]) + [None]
    assert sandbox.match(".a", payloads) == [True, False, False, True, False, False, False]
    assert sandbox.match("error", payloads) == [False] * 7
    assert sandbox.match("true, error", payloads) == [False] * 7  # as before: error -> no match


def test_evaluate_returns_every_output(sandbox):
    assert sandbox.evaluate(".a, .b[]", {"a": 1, "b": ["x", {"y": None}]}) == [1, "x", {"y": None}]
    assert sandbox.evaluate("empty", {}) == []
    assert sandbox.evaluate("[.[] * 2] | add", [1, 2.5]) == [7.0]
    with pytest.raises(InvalidInput, match=r"^batch\.fold: jq error: "):
        sandbox.evaluate(".a.b", {"a": 5}, "batch.fold")


def test_async_calls_do_not_block_the_loop(sandbox):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        await sandbox.acheck(".a")
        with pytest.raises(InvalidInput, match="time limit"):
            await sandbox.aevaluate(RUNAWAY, None)
        task.cancel()
        with pytest.raises(InvalidInput, match="invalid jq"):
            await sandbox.acheck("(")
        return ticks

    assert asyncio.run(main()) >= 30  # the loop kept ticking through a 1 s runaway


def test_large_scans_are_batched(sandbox):
    payloads = packed(*({"n": i} for i in range(3 * MATCH_BATCH + 7)))
    assert sandbox.match(".n % 3 == 0", payloads) == [i % 3 == 0 for i in range(len(payloads))]
    big = packed(*({"blob": "x" * 300_000, "n": i} for i in range(10)))  # > 1 MiB in all
    assert sandbox.match(".n > 4", big) == [i > 4 for i in range(10)]


def test_the_limit_bounds_each_call_not_the_scan(sandbox):
    # ~40 ms per payload, 60 payloads: 2.4 s in all with a 1 s limit. The worker hands back
    # a partial answer after a quarter of the limit, so no single call runs over.
    slow = "(reduce range(50000) as $i (0; . + 1)) > 0 and .n >= 0"
    started = time.monotonic()
    assert sandbox.match(slow, packed(*({"n": i} for i in range(60)))) == [True] * 60
    assert time.monotonic() - started > 1.0


# -- limits ------------------------------------------------------------------------------


def test_timeout_kills_and_replaces_the_worker(sandbox):
    sandbox.check(".")
    before = set(sandbox.worker_pids())
    message, took = failure(sandbox.match, RUNAWAY, [None])
    assert message == "filter: the jq program exceeded the time limit of 1s"
    assert took < 3, took
    after = set(sandbox.worker_pids())
    assert len(after) == len(before) and after != before  # a fresh one took its place
    for pid in before - after:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone, and reaped
    started = time.monotonic()
    assert sandbox.match(".a", packed({"a": 1})) == [True]
    assert time.monotonic() - started < 0.5


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_AS on Windows")
def test_memory_cap(sandbox):
    pool = JqSandbox(workers=1, time_limit_ms=20_000, memory_limit=128 * MiB)
    try:
        message, took = failure(pool.match, "[range(1e8)]", [None])
        assert message == "filter: the jq program exceeded the memory limit of 128 MiB"
        assert took < 15, took  # the cap, not the deadline, ended it
        assert pool.match(".", [None, msgpack.packb(1)]) == [False, True]  # replaced
    finally:
        pool.close()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_crashed_worker_is_reported_and_replaced():
    pool = JqSandbox(workers=1, time_limit_ms=10_000)
    try:
        pool.check(".")
        [pid] = pool.worker_pids()
        threading.Timer(0.3, os.kill, (pid, signal.SIGSEGV)).start()
        message, took = failure(pool.match, RUNAWAY, [None])
        assert message.startswith("filter: the jq program crashed its worker"), message
        assert took < 5
        assert pool.match("true", [None]) == [True]
        assert pool.worker_pids() != [pid]
    finally:
        pool.close()


def test_waiting_for_a_worker_counts_against_the_deadline():
    pool = JqSandbox(workers=1, time_limit_ms=1000)
    try:
        held = pool._acquire("filter", time.monotonic() + 10)  # the only worker is busy
        message, took = failure(pool.check, ".b")
        assert message == (
            "filter: no jq worker became free within the time limit of 1s "
            "(the server is busy with other jq programs)"
        )
        assert 0.9 < took < 2
        pool._release(held, True)
        pool.check(".b")
    finally:
        pool.close()


def test_environment_is_empty(monkeypatch):
    monkeypatch.setenv("ZIZQ_LICENSE_KEY", "SECRET-license")
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    if sys.platform != "win32":
        assert worker_environment() == {}
    pool = JqSandbox(workers=1)
    try:
        assert pool.evaluate("$ENV, env", None) == [{}, {}]
        assert pool.match('$ENV | tostring | contains("SECRET")', [None]) == [False]
        assert pool.evaluate("[input_filename, get_search_list]", None) == [[None, []]]
    finally:
        pool.close()


def test_threads_share_the_pool():
    pool = JqSandbox(workers=2, time_limit_ms=2000)
    payloads = packed(*({"n": i} for i in range(1000)))
    errors: list[BaseException] = []

    def scan(k: int) -> None:
        try:
            for _ in range(3):
                got = pool.match(f".n % {k} == 0", payloads)
                assert got == [i % k == 0 for i in range(1000)]
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    def runaway() -> None:
        message, _ = failure(pool.match, RUNAWAY, [None])
        assert "time limit" in message

    threads = [threading.Thread(target=scan, args=(k,)) for k in range(2, 10)]
    threads.append(threading.Thread(target=runaway))
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        assert len(pool.worker_pids()) <= 2
    finally:
        pool.close()


def test_close_fails_calls_in_progress_and_later_ones():
    pool = JqSandbox(workers=1, time_limit_ms=30_000)
    pool.check(".")
    threading.Timer(0.3, pool.close).start()
    message, took = failure(pool.match, RUNAWAY, [None])
    assert message == "filter: the server is shutting down"
    assert took < 3
    message, _ = failure(pool.check, ".")
    assert message == "filter: the server is shutting down"
    assert pool.worker_pids() == []


# -- the query walk -----------------------------------------------------------------------


def test_query_walk_advanced_from_several_threads(store, sandbox):
    from zizq.queue.records import READY

    batch = store.batch()
    for i in range(700):
        job_id = f"{i:025d}"
        record = {"queue": "q", "type": "t", "priority": 1, "status": READY, "ready_at": 0,
                  "attempts": 0}  # fmt: skip
        batch.put_job(job_id, record, None)
        batch.put_payload(job_id, msgpack.packb({"n": i}))
    store.write(batch)
    query = JobQuery(store, JobFilter(payload=PayloadFilter(".n % 7 == 0")), sandbox)
    walk = query.matches()
    seen: list[str] = []

    def advance(count: int) -> None:
        for _ in range(count):
            item = next(walk, None)
            if item is not None:
                seen.append(item[0])

    for _ in range(20):  # the lead's bulk walk hands the generator from thread to thread
        thread = threading.Thread(target=advance, args=(6,))
        thread.start()
        thread.join()
    assert seen == [f"{i:025d}" for i in range(0, 700, 7)]
    assert query.count() == 100
