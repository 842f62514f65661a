"""Concurrent callers racing on the same jobs: counters and indexes must equal a scan.

Each example runs a random set of engine calls *at the same time* (one task
each) against a real RocksDB store, in fsync mode or with bulks large enough to
go through the commit thread, so that acks, failures, deletes, patches, resets
and enqueues really interleave with writes in flight. Afterwards the in-memory
counters, the secondary index and the dispatcher must agree with a full scan.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zizq.queue import Conflict, Engine, EngineSettings, NotFound
from zizq.queue.patch import parse_patch
from zizq.queue.query import JobFilter
from zizq.queue.records import IN_FLIGHT, now_ms
from zizq.queue.spec import FailureSpec, parse_job
from zizq.store import CommitMode, Store, index_key_of, layout

QUEUES = ("a", "b")

op = st.one_of(
    st.tuples(st.just("enqueue"), st.integers(1, 3), st.sampled_from(QUEUES), st.booleans()),
    st.tuples(st.just("bulk"), st.integers(200, 400), st.sampled_from(QUEUES)),
    st.tuples(st.just("ack"), st.integers(1, 6)),
    st.tuples(st.just("ack_dupes"), st.integers(1, 4)),
    st.tuples(st.just("fail"), st.booleans()),
    st.tuples(st.just("delete_id"), st.integers(0, 50)),
    st.tuples(st.just("delete_queue"), st.sampled_from(QUEUES)),
    st.tuples(st.just("delete_in_flight")),
    st.tuples(st.just("patch_id"), st.integers(0, 50), st.sampled_from(QUEUES)),
    st.tuples(st.just("patch_queue"), st.sampled_from(QUEUES), st.sampled_from(QUEUES)),
    st.tuples(st.just("reset")),
    st.tuples(st.just("close_consumer")),
)


def job(queue: str, later: bool = False):
    body = {"queue": queue, "type": "t", "payload": {"q": queue}}
    if later:
        body["ready_at"] = now_ms() + 60_000
    return parse_job(body)


def assert_consistent(engine: Engine, store: Store) -> None:
    records = dict(store.iter_jobs())
    scanned = Counter(index_key_of(record) for record in records.values())
    assert dict(store.counts) == dict(scanned), "counters differ from a scan"
    assert all(n > 0 for n in store.counts.values())
    expected_index = set()
    for job_id, record in records.items():
        for tag, value in zip(
            (layout.INDEX_QUEUE, layout.INDEX_TYPE, layout.INDEX_STATUS),
            index_key_of(record),
            strict=True,
        ):
            expected_index.add(layout.index_key(tag, value, job_id))
    assert set(store.index.keys()) == expected_index, "secondary index differs from a scan"
    payload_ids = {k.decode() for k in store.payloads.keys()}  # noqa: SIM118 (an Rdict)
    assert payload_ids == set(records), "payloads differ"
    in_flight = {job_id for job_id, record in records.items() if record["status"] == IN_FLIGHT}
    assert in_flight == set(engine.dispatcher.in_flight), "in-flight jobs differ"
    for job_id, entry in engine.dispatcher.in_flight.items():
        assert records[job_id] == entry.record
        assert job_id in entry.consumer.in_flight


async def scenario(engine: Engine, ops: list[tuple]) -> None:
    consumers = [engine.open_consumer(None, 5), engine.open_consumer(frozenset({"a"}), 3)]
    await engine.enqueue([job(QUEUES[i % 2]) for i in range(20)])
    await asyncio.sleep(0.01)  # let the dispatcher hand some out

    def in_flight_ids() -> list[str]:
        return sorted(engine.dispatcher.in_flight)

    def any_ids() -> list[str]:
        return sorted(dict(engine.store.iter_jobs()))

    async def run_op(spec: tuple) -> None:
        kind = spec[0]
        try:
            if kind == "enqueue":
                await engine.enqueue([job(spec[2], spec[3]) for _ in range(spec[1])])
            elif kind == "bulk":
                await engine.enqueue([job(spec[2]) for _ in range(spec[1])])
            elif kind == "ack":
                await engine.ack_many(in_flight_ids()[: spec[1]])
            elif kind == "ack_dupes":
                ids = in_flight_ids()[: spec[1]]
                await engine.ack_many(ids + ids)
            elif kind == "fail":
                ids = in_flight_ids()
                if ids:
                    await engine.fail(ids[0], FailureSpec(message="boom", kill=spec[1]))
            elif kind == "delete_id":
                ids = any_ids()
                if ids:
                    await engine.delete_job(ids[spec[1] % len(ids)])
            elif kind == "delete_queue":
                await engine.delete_jobs(JobFilter(queues=frozenset({spec[1]})))
            elif kind == "delete_in_flight":
                ids = in_flight_ids()
                if ids:
                    await engine.delete_jobs(JobFilter(ids=tuple(ids[:3])))
            elif kind == "patch_id":
                ids = any_ids()
                if ids:
                    await engine.patch_job(ids[spec[1] % len(ids)], parse_patch({"queue": spec[2]}))
            elif kind == "patch_queue":
                await engine.patch_jobs(
                    JobFilter(queues=frozenset({spec[1]})), parse_patch({"queue": spec[2]})
                )
            elif kind == "reset":
                await engine.reset()
            elif kind == "close_consumer" and consumers:
                consumer = consumers.pop()
                consumer.close()
                engine.close_consumer(consumer)
        except (NotFound, Conflict):
            pass  # lost a race for that job: a fine answer, as long as state stays exact

    await asyncio.gather(*(run_op(spec) for spec in ops))
    await engine.committer.drain()
    await asyncio.sleep(0.01)  # pending dispatch passes
    await engine.committer.drain()


@pytest.fixture(scope="module")
def shared_store():
    # One store for every example, emptied by a reset after each: opening and closing
    # RocksDB per example cost ~1 s each (a background thread's sleep on close).
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "root", cache_size=4 * 1024 * 1024)
        yield store
        store.close()


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(op, min_size=2, max_size=12), fsync=st.booleans())
def test_counters_and_indexes_equal_a_scan_after_concurrent_calls(shared_store, ops, fsync):
    mode = CommitMode.FSYNC if fsync else CommitMode.BUFFERED
    store = shared_store
    loop = asyncio.new_event_loop()
    try:
        engine = Engine(
            store,
            EngineSettings(
                default_commit_mode=mode,
                enqueue_commit_mode=mode,
                default_completed_retention_ms=60_000,  # completed jobs stay: ack writes
            ),
        )
        loop.run_until_complete(engine.start())
        try:
            loop.run_until_complete(scenario(engine, ops))
            assert_consistent(engine, store)
        finally:
            loop.run_until_complete(engine.reset())
            loop.run_until_complete(engine.stop())
    finally:
        loop.close()
