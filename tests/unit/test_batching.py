"""Batched jobs in the engine (real RocksDB, real jq workers): folds racing other calls.

A gate around the engine's `when`/`fold` evaluation stops an enqueue in the
middle of its decision (the point where it awaits the jq worker), so a delete,
a patch or a take can be made to land exactly there, every run.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import msgpack
import pytest

from zizq.license import License, LicenseState, Tier
from zizq.queue import Conflict, Engine, EngineSettings, NotFound, batching
from zizq.queue.errors import Unprocessable
from zizq.queue.patch import parse_patch
from zizq.queue.records import IN_FLIGHT, READY, now_ms
from zizq.queue.spec import FailureSpec, parse_job
from zizq.store import Store, index_key_of, layout

APPEND = "$existing + $new"


def pro() -> LicenseState:
    return LicenseState(License("lic_test", "Test", Tier.PRO, int(time.time()) + 86_400))


def batched(payload, key="k", when="true", fold=APPEND, queue="q", **extra):
    body = {
        "queue": queue,
        "type": "t",
        "payload": payload,
        "batch": {"key": key, "when": when, "fold": fold},
        **extra,
    }
    return parse_job(body)


@pytest.fixture
def engine(store, run):
    engine = Engine(store, EngineSettings(jq_workers=1), license=pro())
    run(engine.start())
    yield engine
    run(engine.stop())
    engine.jq.close()


class Gate:
    """Pauses the `when`/`fold` evaluations after the first `skip` until `open()`;
    `entered` says one is waiting. A bulk's dry runs (one per distinct config, before
    its keys are locked) are the ones to skip; a single enqueue dry-runs in the same
    jq call as its fold, so nothing comes before its decision."""

    def __init__(self, engine: Engine, skip: int = 1) -> None:
        self.entered = asyncio.Event()
        self._proceed = asyncio.Event()
        self._skip = skip
        self._evaluate = engine.batches.evaluate
        engine.batches.evaluate = self._gated

    async def _gated(self, *args, **kwargs):
        self._skip -= 1
        if self._skip < 0:
            self.entered.set()
            await self._proceed.wait()
        return await self._evaluate(*args, **kwargs)

    def open(self) -> None:
        self._proceed.set()


def payload(engine: Engine, job_id: str):
    packed = engine.store.get_payload(job_id)
    return None if packed is None else msgpack.unpackb(packed)


def assert_keys_exact(engine: Engine) -> None:
    """Jobs and payloads match one to one; every batch key names a live, open job."""
    store = engine.store
    records = dict(store.iter_jobs())
    payload_ids = {k.decode() for k in store.payloads.keys()}  # noqa: SIM118 (an Rdict)
    assert payload_ids == set(records), "payloads without a job, or jobs without a payload"
    scanned = Counter(index_key_of(record) for record in records.values())
    assert dict(store.counts) == dict(scanned), "counters differ from a scan"
    for key, job_id in store.iter_keyed(layout.INDEX_BATCH):
        record = records.get(job_id)
        assert record is not None, f"batch key {key!r} points at a deleted job"
        assert record["status"] == READY and "dequeued_at" not in record, (key, record)


async def fold_paused(engine: Engine, spec) -> tuple[asyncio.Task, Gate]:
    """Start an enqueue and return once it waits on its fold's jq evaluation."""
    gate = Gate(engine, skip=0)
    task = asyncio.ensure_future(engine.enqueue([spec]))
    await asyncio.wait_for(gate.entered.wait(), 5)
    return task, gate


# -- decisions redone when the open job changes mid-fold --------------------------------


def test_deleting_the_open_job_mid_fold_starts_a_new_job(engine, run):
    async def scenario():
        (first,) = await engine.enqueue([batched([1])])
        task, gate = await fold_paused(engine, batched([2]))
        await engine.delete_job(first["id"])
        gate.open()
        (answer,) = await asyncio.wait_for(task, 5)
        return first, answer

    first, answer = run(scenario())
    assert answer["folded"] is False and answer["id"] != first["id"]
    assert payload(engine, answer["id"]) == [2]
    assert engine.store.get_job(first["id"]) is None
    assert engine.store.get_keyed(batching.index_key("k")) == answer["id"]
    assert_keys_exact(engine)


def test_patching_the_open_job_mid_fold_answers_with_the_patched_job(engine, run):
    async def scenario():
        (first,) = await engine.enqueue([batched([1])])
        task, gate = await fold_paused(engine, batched([2]))
        await engine.patch_job(first["id"], parse_patch({"priority": 3}))
        gate.open()
        (answer,) = await asyncio.wait_for(task, 5)
        return first, answer

    first, answer = run(scenario())
    assert answer["folded"] is True and answer["id"] == first["id"]
    assert answer["priority"] == 3  # decided again against the patched record
    assert payload(engine, first["id"]) == [1, 2]
    assert_keys_exact(engine)


def test_patching_the_open_job_to_later_mid_fold_starts_a_new_job(engine, run):
    async def scenario():
        (first,) = await engine.enqueue([batched([1])])
        task, gate = await fold_paused(engine, batched([2]))
        await engine.patch_job(first["id"], parse_patch({"ready_at": now_ms() + 3_600_000}))
        gate.open()
        (answer,) = await asyncio.wait_for(task, 5)
        return first, answer

    first, answer = run(scenario())
    assert answer["folded"] is False and answer["id"] != first["id"]
    assert payload(engine, first["id"]) == [1]
    assert payload(engine, answer["id"]) == [2]
    assert_keys_exact(engine)


def test_a_failed_call_after_the_open_job_was_deleted_leaves_no_dangling_key(engine, run):
    # The delete lands while this call holds the key's lock (so the delete leaves the key
    # alone), then the call fails (422 from another job's fold): the key must not keep
    # naming the deleted job.
    poison = 'if $existing == "poison" and $new != "poison" then error("no") else $new end'

    async def scenario():
        (first,) = await engine.enqueue([batched([1])])
        await engine.enqueue([batched("poison", key="other", fold=poison)])
        gate = Gate(engine, skip=2)  # two configs: two dry runs
        bulk = [batched([2]), batched("x", key="other", fold=poison)]
        task = asyncio.ensure_future(engine.enqueue(bulk, bulk=True))
        await asyncio.wait_for(gate.entered.wait(), 5)
        await engine.delete_job(first["id"])
        gate.open()
        with pytest.raises(Unprocessable, match=r"jobs\[1\]\.batch\.fold"):
            await asyncio.wait_for(task, 5)
        return first

    first = run(scenario())
    assert engine.store.get_job(first["id"]) is None
    assert_keys_exact(engine)


# -- holds: a job being folded is not dispatched with its old payload -----------------


def test_the_open_job_is_held_back_from_dispatch_while_its_fold_runs(engine, run):
    async def scenario():
        (first,) = await engine.enqueue([batched([1])])
        task, gate = await fold_paused(engine, batched([2]))
        consumer = engine.open_consumer(None, 5)
        assert await consumer.next_deliveries(0.2) == []  # held
        gate.open()
        (answer,) = await asyncio.wait_for(task, 5)
        got = await consumer.next_deliveries(5)
        return first, answer, got

    first, answer, got = run(scenario())
    assert answer["folded"] is True
    assert [d.job_id for d in got] == [first["id"]]
    # Delivered only after the fold landed: what it carries is the folded payload.
    assert engine.payloads_of([first["id"]]) == [msgpack.packb([1, 2])]
    assert engine.store.get_keyed(batching.index_key("k")) is None  # dispatch sealed it
    assert_keys_exact(engine)


def test_a_failed_fold_releases_the_hold(engine, run):
    fold = 'if ($existing | length) > 1 then error("full") else $existing + $new end'

    async def scenario():
        (first,) = await engine.enqueue([batched([1], fold=fold)])
        await engine.enqueue([batched([2], fold=fold)])
        task, gate = await fold_paused(engine, batched([3], fold=fold))
        consumer = engine.open_consumer(None, 5)
        assert await consumer.next_deliveries(0.2) == []
        gate.open()
        with pytest.raises(Unprocessable):
            await asyncio.wait_for(task, 5)
        return first, await consumer.next_deliveries(5)

    first, got = run(scenario())
    assert [d.job_id for d in got] == [first["id"]]
    assert payload(engine, first["id"]) == [1, 2]


def test_a_dispatched_job_retried_or_returned_takes_no_folds(engine, run):
    async def scenario():
        (first,) = await engine.enqueue([batched([1])])
        consumer = engine.open_consumer(None, 1)
        (delivery,) = await consumer.next_deliveries(5)
        assert delivery.job_id == first["id"]
        await engine.fail(first["id"], FailureSpec(message="x", retry_at=now_ms() - 1))
        engine.close_consumer(consumer)
        consumer.close()
        (second,) = await engine.enqueue([batched([2])])
        return first, second

    first, second = run(scenario())
    assert engine.store.get_job(first["id"])["status"] == READY
    assert second["folded"] is False and second["id"] != first["id"]
    assert payload(engine, first["id"]) == [1]
    assert_keys_exact(engine)


def test_bulk_copies_fold_into_the_stored_open_job_in_order(engine, run):
    async def scenario():
        (first,) = await engine.enqueue([batched([0])])
        answers = await engine.enqueue([batched([n]) for n in range(1, 6)], bulk=True)
        return first, answers

    first, answers = run(scenario())
    assert {a["id"] for a in answers} == {first["id"]}
    assert payload(engine, first["id"]) == [0, 1, 2, 3, 4, 5]


# -- a property: random concurrent calls never lose or duplicate an element ------------


async def _random_scenario(engine: Engine, rng: random.Random, rounds: int) -> dict:
    """Concurrent enqueues of distinct elements to two keys, with takes, acks, deletes and
    patches racing them. Returns what the callers saw."""
    accepted: dict[int, str] = {}  # element -> job id the enqueue answered with
    delivered: dict[str, list] = {}  # job id -> payload when it was dispatched
    deleted: set[str] = set()
    counter = iter(range(10**9))
    done = asyncio.Event()
    when = "($existing | length) < 6"

    async def enqueuer() -> None:
        for _ in range(rounds):
            size = rng.choice((1, 1, 1, 3))
            specs = []
            for _ in range(size):
                element = next(counter)
                ready_at = now_ms() + 3_600_000 if rng.random() < 0.05 else None
                extra = {"ready_at": ready_at} if ready_at else {}
                specs.append(
                    (element, batched([element], key=rng.choice("ab"), when=when, **extra))
                )
            try:
                answers = await engine.enqueue([s for _, s in specs], bulk=size > 1)
            except Conflict:
                continue
            for (element, _), answer in zip(specs, answers, strict=True):
                accepted[element] = answer["id"]
            await asyncio.sleep(0)

    async def taker() -> None:
        consumer = engine.open_consumer(None, 3)
        try:
            while not done.is_set():
                await asyncio.sleep(rng.random() * 0.005)  # let some folds in first
                for d in await consumer.next_deliveries(0.01):
                    (delivered[d.job_id],) = engine.payloads_of([d.job_id])
                    if rng.random() < 0.2:
                        await engine.fail(d.job_id, FailureSpec(message="x", retry_at=0))
                    else:
                        await engine.ack(d.job_id)
        finally:
            consumer.close()
            engine.close_consumer(consumer)

    async def meddler() -> None:
        while not done.is_set():
            await asyncio.sleep(rng.random() * 0.01)
            ids = [i for i, r in engine.store.iter_jobs() if r["status"] != IN_FLIGHT]
            if not ids:
                continue
            target = rng.choice(ids)
            try:
                if rng.random() < 0.3:
                    await engine.delete_job(target)
                    deleted.add(target)
                else:
                    await engine.patch_job(target, parse_patch({"priority": rng.randrange(9)}))
            except (NotFound, Conflict):
                pass

    async def enqueuers() -> None:
        await asyncio.gather(enqueuer(), enqueuer(), enqueuer())
        done.set()

    await asyncio.gather(enqueuers(), taker(), meddler())
    await engine.committer.drain()
    return {"accepted": accepted, "delivered": delivered, "deleted": deleted}


@pytest.mark.parametrize("seed", range(6))
def test_every_accepted_element_is_in_exactly_the_job_it_was_folded_into(seed):
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "root", cache_size=4 * 1024 * 1024)
        loop = asyncio.new_event_loop()
        engine = Engine(
            store,
            EngineSettings(jq_workers=2, default_completed_retention_ms=60_000),
            license=pro(),
        )
        try:
            loop.run_until_complete(engine.start())
            seen = loop.run_until_complete(_random_scenario(engine, rng, 25))
            assert_keys_exact(engine)
            # Each delivered job's payload as sent; each job still stored, as it is now.
            contents: dict[str, list] = {
                job_id: msgpack.unpackb(packed) for job_id, packed in seen["delivered"].items()
            }
            for job_id, record in store.iter_jobs():
                now = msgpack.unpackb(store.get_payload(job_id))
                if job_id in contents:
                    # Sent once, never folded into afterwards.
                    assert contents[job_id] == now, (job_id, record)
                contents[job_id] = now
            where: dict[int, str] = {}
            for job_id, elements in contents.items():
                for element in elements:
                    assert element not in where, f"element {element} in two jobs"
                    where[element] = job_id
            for element, job_id in seen["accepted"].items():
                if job_id in seen["deleted"]:
                    continue  # deleted with its job (it may have been delivered first)
                assert where.get(element) == job_id, (element, job_id, where.get(element))
            assert set(where) <= set(seen["accepted"]), "an element nobody enqueued"
        finally:
            loop.run_until_complete(engine.stop())
            engine.jq.close()
            loop.close()
            store.close()
