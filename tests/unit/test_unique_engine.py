"""Unique jobs in the engine (real RocksDB, in process): scopes, the key index, races.

Three kinds of test:
- a model test: random sequences of calls, one at a time, where every enqueue's
  outcome (duplicate of which job, or created) must be what the documented rule
  predicts: the key's last taker holds it while its status is inside its own
  `unique_while` scope; after each call the store's key index must be exactly
  the model's (a deleted or purged taker's entry is gone at once);
- a concurrency test: random calls all at once (fsync mode, or bulks big
  enough for the commit thread, so writes really are in flight while others
  decide): at most one job in scope per key, counters and indexes equal a scan,
  and no key entry points at a job that is gone;
- regressions for orderings the concurrency test found or could miss.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zizq.license import License, LicenseState, Tier
from zizq.queue import Conflict, Engine, EngineSettings, NotFound, unique
from zizq.queue.patch import parse_patch
from zizq.queue.query import JobFilter
from zizq.queue.records import IN_FLIGHT, is_purged, now_ms
from zizq.queue.spec import FailureSpec, parse_job
from zizq.store import CommitMode, Store, index_key_of, layout

KEYS = ("k0", "k1", "k2")
SCOPES = ("queued", "active", "exists")
QUEUES = ("a", "b")


def pro() -> LicenseState:
    return LicenseState(License("lic_test", "Test", Tier.PRO, int(time.time()) + 86_400))


def unique_job(key: str, scope: str | None = None, queue: str = "a", **extra):
    body = {"queue": queue, "type": "t", "payload": {"k": key}, "unique_key": key, **extra}
    if scope is not None:
        body["unique_while"] = scope
    return parse_job(body)


def plain_job(queue: str = "a"):
    return parse_job({"queue": queue, "type": "t", "payload": {}})


class SharedStore:
    """One RocksDB store for every example of a test, emptied between examples.

    Opening and closing a RocksDB database per example costs up to seconds on
    this kind of box (its flush thread sleeps a second at close); POST /reset's
    own path (Engine.reset) empties it instead, which is itself under test here.
    """

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.store = Store(Path(self._tmp.name) / "root", cache_size=4 * 1024 * 1024)

    def close(self) -> None:
        self.store.close()
        self._tmp.cleanup()

    def run(self, test, fsync: bool = False, **settings) -> None:
        """Run `test(engine, store)` on the emptied store; it returns the engine to stop."""
        mode = CommitMode.FSYNC if fsync else CommitMode.BUFFERED
        engine = Engine(
            self.store,
            EngineSettings(default_commit_mode=mode, enqueue_commit_mode=mode, **settings),
            license=pro(),
        )
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(engine.start())
            loop.run_until_complete(engine.reset())
            last = loop.run_until_complete(test(engine, self.store))
            loop.run_until_complete((last or engine).stop())
        finally:
            loop.close()


@pytest.fixture(scope="module")
def shared():
    shared = SharedStore()
    yield shared
    shared.close()


async def settle(engine: Engine) -> None:
    for _ in range(3):
        await engine.committer.drain()
        await asyncio.sleep(0.002)  # dispatch passes, scheduled clean-ups


def keyed_entries(store: Store) -> dict[str, str]:
    """The unique key index as stored: key -> job id."""
    tag = layout.INDEX_UNIQUE
    return {key[len(tag) :].decode(): job_id for key, job_id in store.iter_keyed(tag)}


def assert_store_consistent(engine: Engine, store: Store) -> None:
    records = dict(store.iter_jobs())
    scanned = Counter(index_key_of(record) for record in records.values())
    assert dict(store.counts) == dict(scanned), "counters differ from a scan"
    expected = set()
    for job_id, record in records.items():
        for tag, value in zip(
            (layout.INDEX_QUEUE, layout.INDEX_TYPE, layout.INDEX_STATUS),
            index_key_of(record),
            strict=True,
        ):
            expected.add(layout.index_key(tag, value, job_id))
    secondary = {
        key
        for key in store.index.keys()  # noqa: SIM118 (an Rdict)
        if not key.startswith((layout.INDEX_UNIQUE, layout.INDEX_BATCH))
    }
    assert secondary == expected, "secondary index differs from a scan"
    in_flight = {job_id for job_id, record in records.items() if record["status"] == IN_FLIGHT}
    assert in_flight == set(engine.dispatcher.in_flight), "in-flight jobs differ"
    for key, job_id in keyed_entries(store).items():
        assert job_id in records, f"unique key {key!r} points at {job_id}, which is gone"
        assert records[job_id].get("unique_key") == key, (key, records[job_id])
    assert not any(engine.locks.held(unique.index_key(key)) for key in KEYS), "a lock outlived"


def in_scope_per_key(store: Store) -> dict[str, list[str]]:
    now = now_ms()
    found: dict[str, list[str]] = {}
    for job_id, record in store.iter_jobs():
        if "unique_key" in record and not is_purged(record, now):
            scope = unique.SCOPE_STATUSES[record["unique_while"]]
            if record["status"] in scope:
                found.setdefault(record["unique_key"], []).append(job_id)
    return found


# -- the model test ------------------------------------------------------------------------

job_ref = st.integers(0, 30)
model_op = st.one_of(
    st.tuples(st.just("enqueue"), st.sampled_from(KEYS), st.sampled_from(SCOPES), st.booleans()),
    st.tuples(
        st.just("bulk"),
        st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(SCOPES)), min_size=1, max_size=5),
    ),
    st.tuples(st.just("take"), st.integers(1, 3)),
    st.tuples(st.just("ack"), job_ref, st.sampled_from([0, 1, 60_000])),  # retention ms
    st.tuples(st.just("retry"), job_ref, st.booleans()),  # failed: ready now, or scheduled
    st.tuples(st.just("kill"), job_ref, st.sampled_from([0, 1, 60_000])),
    st.tuples(st.just("delete"), job_ref),
    st.tuples(st.just("delete_queue"), st.sampled_from(QUEUES)),
    st.tuples(st.just("patch"), job_ref, st.booleans()),  # to scheduled, or back to ready
    st.tuples(st.just("purge")),  # the reaper runs once retention of 1 ms has passed
    st.tuples(st.just("return")),  # a take stream drops: its jobs are ready again
    st.tuples(st.just("restart")),  # the start-up key check must keep the index as it is
)


class Model:
    """What the unique index must say: each key's last taker (None once it is deleted)."""

    def __init__(self, engine: Engine, store: Store) -> None:
        self.engine = engine
        self.store = store
        self.taker: dict[str, str] = {}
        self.ids: list[str] = []  # every job created, for picking targets

    def live(self, job_id: str) -> dict | None:
        entry = self.engine.dispatcher.in_flight.get(job_id)
        record = entry.record if entry is not None else self.store.get_job(job_id)
        if record is None or is_purged(record, now_ms()):
            return None
        return record

    def holder(self, key: str) -> str | None:
        job_id = self.taker.get(key)
        if job_id is None:
            return None
        record = self.live(job_id)
        if record is None:
            return None
        return job_id if record["status"] in unique.SCOPE_STATUSES[record["unique_while"]] else None

    def expect(self, specs: list, results: list[dict]) -> None:
        """Check a call's outcomes in input order, as the rule predicts, and learn from them."""
        assert len(results) == len(specs)
        for spec, result in zip(specs, results, strict=True):
            key = spec.unique_key
            expected = self.holder(key)
            if expected is None:
                assert result["duplicate"] is False, (key, result, self.taker)
                assert result["unique_key"] == key and result["unique_while"] == spec.unique_while
                self.taker[key] = result["id"]
                self.ids.append(result["id"])
            else:
                assert result["duplicate"] is True, (key, result, expected)
                assert result["id"] == expected
                # The holder's own scope, not the duplicate's, is what it answers with.
                assert result["unique_key"] == key

    def forget_gone(self) -> None:
        for key, job_id in list(self.taker.items()):
            if self.store.get_job(job_id) is None:
                del self.taker[key]

    def adopt_repaired(self) -> None:
        """The start-up check gives a key with no entry to a job in its scope holding it."""
        for key, job_id in keyed_entries(self.store).items():
            if key not in self.taker:
                record = self.live(job_id)
                assert record is not None and record["unique_key"] == key, (key, job_id)
                assert record["status"] in unique.SCOPE_STATUSES[record["unique_while"]]
                self.taker[key] = job_id

    def check_index(self) -> None:
        self.forget_gone()
        assert keyed_entries(self.store) == self.taker


def pick(model: Model, ref: int, want=None) -> str | None:
    candidates = [i for i in model.ids if model.store.get_job(i) is not None]
    if want is not None:
        candidates = [i for i in candidates if want(i)]
    return candidates[ref % len(candidates)] if candidates else None


async def apply_model_op(model: Model, consumers: list, op: tuple) -> Engine:
    engine, store = model.engine, model.store
    kind = op[0]
    in_flight = sorted(engine.dispatcher.in_flight)
    try:
        if kind == "enqueue":
            _, key, scope, later = op
            extra = {"ready_at": now_ms() + 60_000} if later else {}
            specs = [unique_job(key, scope, queue=QUEUES[len(model.ids) % 2], **extra)]
            model.expect(specs, await engine.enqueue(specs))
        elif kind == "bulk":
            specs = [unique_job(key, scope) for key, scope in op[1]]
            model.expect(specs, await engine.enqueue(specs, bulk=True))
        elif kind == "take":
            consumers.append(engine.open_consumer(None, op[1]))
            await asyncio.sleep(0)  # the dispatch pass
        elif kind == "ack" and in_flight:
            job_id = in_flight[op[1] % len(in_flight)]
            engine.settings = _with(engine.settings, default_completed_retention_ms=op[2])
            assert await engine.ack(job_id)
        elif kind in ("retry", "kill") and in_flight:
            job_id = in_flight[op[1] % len(in_flight)]
            if kind == "kill":
                engine.settings = _with(engine.settings, default_dead_retention_ms=op[2])
                failure = FailureSpec(message="x", kill=True)
            else:
                failure = FailureSpec(message="x", retry_at=now_ms() + (60_000 if op[2] else 0))
            await engine.fail(job_id, failure)
        elif kind == "delete":
            job_id = pick(model, op[1])
            if job_id is not None:
                await engine.delete_job(job_id)
        elif kind == "delete_queue":
            await engine.delete_jobs(JobFilter(queues=frozenset({op[1]})))
        elif kind == "patch":
            job_id = pick(model, op[1])
            if job_id is not None:
                ready_at = now_ms() + 60_000 if op[2] else None
                await engine.patch_job(job_id, parse_patch({"ready_at": ready_at}))
        elif kind == "purge":
            await asyncio.sleep(0.003)
            await engine.reaper.reap()
        elif kind == "return" and consumers:
            consumer = consumers.pop(0)
            consumer.close()
            engine.close_consumer(consumer)
        elif kind == "restart":
            for consumer in consumers:
                consumer.close()
            consumers.clear()
            await engine.stop()
            engine = Engine(store, engine.settings, license=pro())
            await engine.start()
            model.engine = engine
    except (NotFound, Conflict):
        pass  # e.g. patching a finished job: nothing changed, the model neither
    await settle(engine)
    return engine


def _with(settings: EngineSettings, **changes) -> EngineSettings:
    from dataclasses import replace

    return replace(settings, **changes)


@settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=st.lists(model_op, min_size=3, max_size=25))
def test_every_enqueue_is_decided_as_the_scope_rule_says(shared, ops):
    async def scenario(engine: Engine, store: Store) -> Engine:
        model = Model(engine, store)
        consumers: list = []
        for op in ops:
            engine = await apply_model_op(model, consumers, op)
            if op[0] == "restart":
                model.adopt_repaired()
            model.check_index()
            assert_store_consistent(engine, store)
        return engine

    shared.run(scenario)


# -- the concurrency test ------------------------------------------------------------------

race_op = st.one_of(
    st.tuples(st.just("enqueue"), st.sampled_from(KEYS), st.sampled_from(SCOPES)),
    st.tuples(st.just("enqueue"), st.sampled_from(KEYS), st.sampled_from(SCOPES)),
    st.tuples(
        st.just("bulk"),
        st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(SCOPES)), min_size=1, max_size=4),
        st.booleans(),  # padded with plain jobs past the commit thread's threshold
    ),
    st.tuples(st.just("ack"), st.integers(0, 5)),
    st.tuples(st.just("kill"), st.integers(0, 5)),
    st.tuples(st.just("delete"), st.integers(0, 40)),
    st.tuples(st.just("delete_queue"), st.sampled_from(QUEUES)),
    st.tuples(st.just("patch"), st.integers(0, 40), st.booleans()),
    st.tuples(st.just("reap")),
)


async def race(engine: Engine, store: Store, ops: list[tuple]) -> list[dict]:
    """Run every op at once; returns the enqueue results (views) in no particular order."""
    consumer = engine.open_consumer(None, 4)
    results: list[dict] = []

    def any_ids() -> list[str]:
        return sorted(dict(store.iter_jobs()))

    async def run_op(op: tuple) -> None:
        kind = op[0]
        in_flight = sorted(engine.dispatcher.in_flight)
        try:
            if kind == "enqueue":
                results.extend(await engine.enqueue([unique_job(op[1], op[2])]))
            elif kind == "bulk":
                specs = [unique_job(key, scope) for key, scope in op[1]]
                if op[2]:
                    specs += [plain_job() for _ in range(90)]
                views = await engine.enqueue(specs, bulk=True)
                results.extend(v for v in views if "unique_key" in v)
            elif kind in ("ack", "kill") and in_flight:
                job_id = in_flight[op[1] % len(in_flight)]
                if kind == "ack":
                    await engine.ack(job_id)
                else:
                    await engine.fail(job_id, FailureSpec(message="x", kill=True))
            elif kind == "delete":
                ids = any_ids()
                if ids:
                    await engine.delete_job(ids[op[1] % len(ids)])
            elif kind == "delete_queue":
                await engine.delete_jobs(JobFilter(queues=frozenset({op[1]})))
            elif kind == "patch":
                ids = any_ids()
                if ids:
                    ready_at = now_ms() + 60_000 if op[2] else None
                    await engine.patch_job(
                        ids[op[1] % len(ids)], parse_patch({"ready_at": ready_at})
                    )
            elif kind == "reap":
                await engine.reaper.reap()
        except (NotFound, Conflict):
            pass

    # Some state first: a holder of every key, some of them in flight.
    first = await engine.enqueue([unique_job(key, "active") for key in KEYS])
    await asyncio.sleep(0.002)
    results.extend(await engine.enqueue([unique_job(key, "exists") for key in KEYS]))
    results.extend(first)
    await asyncio.gather(*(run_op(op) for op in ops))
    await settle(engine)
    consumer.close()
    return results


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    ops=st.lists(race_op, min_size=2, max_size=14),
    fsync=st.booleans(),
    retention=st.sampled_from([0, 60_000]),
)
def test_concurrent_calls_keep_one_job_in_scope_per_key(shared, ops, fsync, retention):
    async def scenario(engine: Engine, store: Store) -> None:
        results = await race(engine, store, ops)
        assert_store_consistent(engine, store)
        # No job ever returned to its scope here (no retries, no dropped streams), so
        # a second job in scope could only come from two enqueues both seeing the key free.
        for key, holders in in_scope_per_key(store).items():
            assert len(holders) == 1, (key, holders)
            assert keyed_entries(store)[key] == holders[0]
        # A duplicate names a job some enqueue created, with the same key.
        created = {r["id"]: r["unique_key"] for r in results if not r["duplicate"]}
        for result in results:
            if result["duplicate"]:
                assert created.get(result["id"]) == result["unique_key"], result

    shared.run(
        scenario,
        fsync=fsync,
        default_completed_retention_ms=retention,
        default_dead_retention_ms=retention,
    )


# -- regressions ---------------------------------------------------------------------------


def test_a_holder_finished_while_its_key_is_locked_leaves_no_index_entry(shared):
    """The ack of a holder lands on the commit thread after a duplicate enqueue of its key.

    The ack's clean-up skips the key (an enqueue holds it); the enqueue lets go
    first, while the ack is still being written: the entry must still go once
    the ack has landed. (Found by the concurrency test: index -> a gone job.)
    """

    async def scenario(engine: Engine, store: Store) -> None:
        (holder,) = await engine.enqueue([unique_job("k", "active")])
        consumer = engine.open_consumer(None, 1)
        await asyncio.sleep(0.002)
        assert holder["id"] in engine.dispatcher.in_flight
        # A duplicate alongside a plain job: the call has a write to wait for (a call of
        # duplicates alone writes nothing and lets go of its keys at once).
        duplicate = asyncio.ensure_future(
            engine.enqueue([unique_job("k", "active"), plain_job()], bulk=True)
        )
        await asyncio.sleep(0)  # decided (a duplicate), its write waits on the commit thread
        assert engine.locks.held(unique.index_key("k"))
        ack = asyncio.ensure_future(engine.ack(holder["id"]))
        # Block the loop while the thread writes and syncs the enqueue alone: its
        # completion is then handled after the ack has been handed to the thread.
        time.sleep(0.2)
        (answer, _) = await duplicate
        assert answer["duplicate"] is True and answer["id"] == holder["id"]
        assert await ack
        await settle(engine)
        assert store.get_job(holder["id"]) is None
        assert keyed_entries(store) == {}
        consumer.close()
        engine.close_consumer(consumer)
        (fresh,) = await engine.enqueue([unique_job("k", "active")])
        assert fresh["duplicate"] is False
        await settle(engine)
        assert keyed_entries(store) == {"k": fresh["id"]}

    shared.run(scenario, fsync=True)


def test_a_holder_deleted_while_a_duplicate_waits_leaves_no_index_entry(shared):
    async def scenario(engine: Engine, store: Store) -> None:
        (holder,) = await engine.enqueue([unique_job("k")])
        duplicate = asyncio.ensure_future(engine.enqueue([unique_job("k")]))
        await asyncio.sleep(0)
        await engine.delete_job(holder["id"])
        (answer,) = await duplicate
        assert answer["duplicate"] is True and answer["id"] == holder["id"]
        await settle(engine)
        assert keyed_entries(store) == {}

    shared.run(scenario, fsync=True)


def test_a_key_taken_while_the_old_holder_is_deleted_keeps_the_new_holder(shared):
    """The delete must not clear the entry the enqueue is about to write."""

    async def scenario(engine: Engine, store: Store) -> None:
        (old,) = await engine.enqueue([unique_job("k")])
        consumer = engine.open_consumer(frozenset({"a"}), 1)  # the new one (on b) stays
        await asyncio.sleep(0.002)  # dispatched: out of its `queued` scope
        new = asyncio.ensure_future(engine.enqueue([unique_job("k", queue="b")]))
        await asyncio.sleep(0)
        await engine.delete_job(old["id"])
        (created,) = await new
        assert created["duplicate"] is False
        await settle(engine)
        assert keyed_entries(store) == {"k": created["id"]}
        (again,) = await engine.enqueue([unique_job("k", queue="b")])
        assert again["duplicate"] is True and again["id"] == created["id"]
        consumer.close()

    shared.run(scenario, fsync=True)
