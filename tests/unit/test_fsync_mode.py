"""In the fsync commit mode every write is synced, not only enqueues and acks.

Dispatch to in-flight, the requeue of a dropped stream's jobs, scheduler
promotions, patches, deletes and reaping all sync, as in the reference.
A real store records the `sync` flag of every write it performs.
"""

from __future__ import annotations

import asyncio

import pytest

from zizq.queue import Engine, EngineSettings
from zizq.queue.patch import parse_patch
from zizq.queue.records import now_ms
from zizq.queue.spec import FailureSpec, parse_job
from zizq.store import CommitMode, Store


class RecordingStore(Store):
    """A real RocksDB store that remembers whether each write was synced."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.syncs: list[bool] = []

    def write_raw(self, batch, sync: bool = False) -> None:
        self.syncs.append(sync)
        super().write_raw(batch, sync)


def job(**extra):
    return parse_job({"queue": "q", "type": "t", "payload": {}, **extra})


async def lifecycle(engine: Engine) -> None:
    (first, second) = await engine.enqueue([job(), job(retention={"dead_ms": 1})])
    consumer = engine.open_consumer(None, 2)
    deliveries = await consumer.next_deliveries(1.0)  # dispatch
    assert {d.job_id for d in deliveries} == {first["id"], second["id"]}
    await engine.fail(first["id"], FailureSpec(message="x", retry_at=now_ms() + 30))
    await engine.fail(second["id"], FailureSpec(message="x", kill=True))  # dead, purge in 1 ms
    await asyncio.sleep(0.1)  # the scheduler promotes the retry; it is dispatched again
    assert [d.job_id for d in await consumer.next_deliveries(1.0)] == [first["id"]]
    consumer.close()
    engine.close_consumer(consumer)  # requeue to ready
    await engine.patch_job(first["id"], parse_patch({"priority": 1}))
    await engine.reaper.reap()  # the dead job's retention is over
    await engine.delete_job(first["id"])


@pytest.mark.parametrize("mode", [CommitMode.FSYNC, CommitMode.BUFFERED])
def test_every_write_syncs_in_fsync_mode_and_none_in_buffered(tmp_path, run, mode):
    store = RecordingStore(tmp_path / "root", cache_size=4 * 1024 * 1024)
    try:
        engine = Engine(store, EngineSettings(default_commit_mode=mode, enqueue_commit_mode=mode))
        run(engine.start())
        store.syncs.clear()
        run(lifecycle(engine))
        run(engine.stop())
        assert len(store.syncs) >= 9, store.syncs  # every step above wrote at least once
        assert set(store.syncs) == {mode is CommitMode.FSYNC}, store.syncs
    finally:
        store.close()
