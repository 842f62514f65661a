"""The auto-compaction threshold (issue 9, point 17): counted over bulk deletes, bulk
patches and resets, reset by any compaction, off at 0. Real RocksDB, real compactions.

Reference: src/store/storage_config.rs (DEFAULT_AUTO_COMPACT_THRESHOLD = 10_000,
ZIZQ_AUTO_COMPACT_THRESHOLD, 0 disables), src/store/delete.rs:208-214 and
src/store/patch.rs:389-395 (deletes and patches both trigger it).
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from zizq.config import DEFAULT_AUTO_COMPACT_THRESHOLD
from zizq.queue.maintenance import Maintenance


async def _settle(maintenance: Maintenance) -> None:
    # Let the background compaction task (if any) start and finish.
    for _ in range(200):
        await asyncio.sleep(0.01)
        if maintenance._compacting is None and not any(
            not task.done() for task in asyncio.all_tasks() if task is not asyncio.current_task()
        ):
            return


def _finished(caplog: pytest.LogCaptureFixture) -> int:
    return sum(r.getMessage() == "compaction finished" for r in caplog.records)


@pytest.fixture
def maintenance(store):
    made: list[Maintenance] = []

    def make(threshold: int) -> Maintenance:
        made.append(Maintenance(store, "test", threshold))
        return made[-1]

    yield make
    for each in made:
        each.close()


def test_default_threshold_is_the_reference_one(store) -> None:
    assert DEFAULT_AUTO_COMPACT_THRESHOLD == 10_000
    each = Maintenance(store, "test")
    try:
        assert each.auto_compact_threshold == 10_000
    finally:
        each.close()


def test_patches_and_deletes_add_up_to_the_threshold(
    maintenance, run, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "zizq.maintenance")
    m = maintenance(5)

    async def scenario() -> list[int]:
        seen = []
        m.note_patched(3)
        await _settle(m)
        seen.append(_finished(caplog))
        m.note_deleted(2)  # 3 + 2 reaches 5
        await _settle(m)
        seen.append(_finished(caplog))
        m.note_patched(4)  # the counter started again from 0
        await _settle(m)
        seen.append(_finished(caplog))
        m.note_patched(5)  # one operation at the threshold is enough
        await _settle(m)
        seen.append(_finished(caplog))
        return seen

    assert run(scenario()) == [0, 1, 1, 2]
    started = [r for r in caplog.records if r.getMessage() == "auto-compaction started"]
    assert len(started) == 2 and started[0].fields == {"threshold": 5}


def test_zero_turns_auto_compaction_off(maintenance, run, caplog) -> None:
    caplog.set_level(logging.INFO, "zizq.maintenance")
    m = maintenance(0)

    async def scenario() -> None:
        m.note_deleted(1_000_000)
        m.note_patched(1_000_000)
        await _settle(m)

    run(scenario())
    assert _finished(caplog) == 0


def test_a_manual_compaction_resets_the_count(maintenance, run, caplog) -> None:
    caplog.set_level(logging.INFO, "zizq.maintenance")
    m = maintenance(5)

    async def scenario() -> None:
        m.note_deleted(4)
        await m.compact()  # `zizq compact`
        m.note_patched(4)  # 4 since the last compaction: below 5
        await _settle(m)

    run(scenario())
    assert _finished(caplog) == 1
