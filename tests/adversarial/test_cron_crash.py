"""Cron firings are exactly-once across `kill -9` (issue 12, items 4 and 6).

A firing enqueues its jobs in the write batch that advances the entries, so
whatever moment the server dies at, the store holds either both or neither.
Each round runs entries firing every second, SIGKILLs the server at a chosen
phase of a second (right at the boundary, while the firing's write is in
progress, or mid-second), copies the dead server's data directory and reads
the copy with the store class (real RocksDB: the copy keeps the server's own
WAL recovery for the restart), then restarts on the same root dir.

After every kill, for every entry: no second holds two of its jobs, its stored
`last` is the newest job's ready_at (up to the few milliseconds between the
scheduler's clock reading and the engine's), its stored `next` is the second
after `last`, and every job and `last_enqueue_at` the API showed before the
kill is still there. After every restart the entry fires again: first at its
stored `next` if that is still ahead, else once at start-up for the whole
missed period (never a burst), and nothing fires before its time.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgpack
import pytest

from tests.adversarial.helpers import list_jobs
from tests.e2e.zizq_process import ZizqServer
from tests.licensing import mint
from zizq.store import Store, layout

EVERY_SECOND = "* * * * * *"  # six fields: seconds first
# Between the scheduler's clock reading (`last_enqueue_at`) and the engine's (the job's
# ready_at) run the entries' advance and the job specs' copies: milliseconds, not more.
CLOCKS_APART_MS = 500
# How late a firing may come after its time, or after start-up for a missed one: the
# machine is shared, so a second of scheduling delay is tolerated, two are not.
PROMPT_MS = 2000
GROUPS: dict[str, dict] = {
    # Enough entries that one firing's batch (jobs, payloads, indexes, entries) is large
    # and written on the store's helper thread: the kill has a window to land inside it.
    "crash-a": {"entries": [f"e{i:03}" for i in range(150)]},
    "crash-b": {"entries": ["x", "y", "z"], "timezone": "America/New_York"},
}
SPARSE_GROUP = "crash-sparse"  # the downtime test's once-a-minute entry (checked on its own)
ZONED = {("crash-b", "z"): "Asia/Kolkata"}  # an entry with a zone of its own
SPARSE_PREFIX = layout.cron_entry_prefix(SPARSE_GROUP)
ENTRIES = [(group, name) for group, spec in GROUPS.items() for name in spec["entries"]]


def now_ms() -> int:
    return int(time.time() * 1000)


def group_body(group: str) -> dict:
    spec = GROUPS[group]
    entries = []
    for name in spec["entries"]:
        entry = {
            "name": name,
            "expression": EVERY_SECOND,
            "job": {"queue": "cron", "type": "tick", "payload": {"group": group, "entry": name}},
        }
        if (group, name) in ZONED:
            entry["timezone"] = ZONED[(group, name)]
        entries.append(entry)
    body: dict = {"entries": entries}
    if "timezone" in spec:
        body["timezone"] = spec["timezone"]
    return body


@dataclass
class Seen:
    """What the API acknowledged before a kill: it must all survive."""

    ids: set[str] = field(default_factory=set)
    lasts: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass
class Stored:
    """The dead server's store: entry records, and each entry's jobs' ready_at, sorted."""

    entries: dict[tuple[str, str], dict]
    jobs: dict[tuple[str, str], list[int]]
    ids: set[str]


@dataclass
class Restart:
    killed_at: int  # ms, just after the kill returned
    next_at: dict[tuple[str, str], int]  # each entry's stored next at that moment
    listening_at: int  # ms, once the restarted server listened


def acknowledged(client: httpx.Client) -> Seen:
    seen = Seen(ids={job["id"] for job in list_jobs(client)})
    for group in GROUPS:
        response = client.get(f"/crons/{group}")
        assert response.status_code == 200, response.text
        for entry in response.json()["entries"]:
            if "last_enqueue_at" in entry:
                seen.lasts[(group, entry["name"])] = entry["last_enqueue_at"]
    return seen


def read_store(root_dir: Path, scratch: Path) -> Stored:
    """Copy the dead server's database and read the copy (the original stays untouched)."""
    copy = scratch / f"inspect-{time.monotonic_ns()}"
    shutil.copytree(root_dir / layout.DATA_DIR_NAME, copy / layout.DATA_DIR_NAME)
    store = Store(copy, cache_size=8 * 1024 * 1024)
    try:
        entries = {
            layout.cron_entry_names(key): record
            for key, record in store.iter_crons()
            if key.startswith(layout.CRON_ENTRY) and not key.startswith(SPARSE_PREFIX)
        }
        jobs: dict[tuple[str, str], list[int]] = defaultdict(list)
        ids = set()
        for job_id, record in store.iter_jobs():
            payload = msgpack.unpackb(store.get_payload(job_id))
            if record["type"] == "sparse":
                continue
            jobs[(payload["group"], payload["entry"])].append(record["ready_at"])
            ids.add(job_id)
    finally:
        store.close()
        shutil.rmtree(copy, ignore_errors=True)
    return Stored(entries, {key: sorted(times) for key, times in jobs.items()}, ids)


def doubled_seconds(times: list[int]) -> list[int]:
    return sorted(second for second, n in Counter(t // 1000 for t in times).items() if n > 1)


def check_state(
    entries: dict[tuple[str, str], dict],
    jobs: dict[tuple[str, str], list[int]],
    where: str,
    paused: bool = False,
) -> None:
    """Every entry's jobs against its own record (`last` and `next`, as stored or shown).

    A paused entry keeps advancing `next` without enqueueing, so `next` says nothing then.
    """
    assert set(jobs) <= set(ENTRIES), f"{where}: jobs of unknown entries {set(jobs) - set(ENTRIES)}"
    assert set(entries) == set(ENTRIES), f"{where}: entries {sorted(entries)}"
    for key in ENTRIES:
        record, times = entries[key], jobs.get(key, [])
        assert not doubled_seconds(times), f"{where}: {key} fired twice in {doubled_seconds(times)}"
        last = record["last"]
        if not times:
            assert last is None, f"{where}: {key} has last={last} but no job"
            continue
        newest = times[-1]
        assert last is not None, f"{where}: {key} has jobs up to {newest} but no last"
        # A split batch shows here: `last` ahead of every job (a lost job) or behind the
        # newest one (a job whose entry did not advance, due to fire again).
        assert 0 <= newest - last <= CLOCKS_APART_MS, (
            f"{where}: {key} last={last} but the newest job is ready at {newest}"
        )
        if not paused:
            assert record["next"] == (last // 1000 + 1) * 1000, (
                f"{where}: {key} last={last} next={record['next']}"
            )


def check_survived(stored: Stored, seen: Seen, where: str) -> None:
    lost = seen.ids - stored.ids
    assert not lost, f"{where}: {len(lost)} acknowledged jobs lost, e.g. {sorted(lost)[:3]}"
    for key, last in seen.lasts.items():
        assert stored.entries[key]["last"] >= last, (
            f"{where}: {key} showed last_enqueue_at={last}, stored {stored.entries[key]['last']}"
        )


def check_restart(jobs: dict[tuple[str, str], list[int]], restart: Restart, where: str) -> None:
    """After a restart each entry fires again, on time or once for the missed period."""
    for key in ENTRIES:
        after = [t for t in jobs.get(key, []) if t > restart.killed_at]
        next_at = restart.next_at[key]
        assert after, f"{where}: {key} never fired after the restart (next was {next_at})"
        first = after[0]
        assert first >= next_at, f"{where}: {key} fired at {first}, before its time {next_at}"
        due_by = max(next_at, restart.listening_at) + PROMPT_MS
        assert first <= due_by, f"{where}: {key} first fired at {first}, due by {due_by}"


def sleep_until(at_ms: float) -> None:
    while (left := at_ms / 1000 - time.time()) > 0:
        time.sleep(min(left, 0.05) if left > 0.002 else left)


def start(root: Path, flags: tuple[str, ...], license_key: str) -> ZizqServer:
    return ZizqServer(root, "--license-key", license_key, *flags).start()


def pause_all(client: httpx.Client) -> None:
    """Once PATCH answers no firing can enqueue for the group (both take the book's lock)."""
    for group in GROUPS:
        response = client.patch(f"/crons/{group}", json={"paused": True})
        assert response.status_code == 200, response.text


def final_check(server: ZizqServer, restart: Restart | None, where: str) -> int:
    """Pause, then the same checks through the API; returns how many jobs there are."""
    with httpx.Client(base_url=server.url, timeout=15.0) as client:
        pause_all(client)
        jobs: dict[tuple[str, str], list[int]] = defaultdict(list)
        listing = list_jobs(client)
        for job in listing:
            if job["type"] == "sparse":
                continue
            jobs[(job["payload"]["group"], job["payload"]["entry"])].append(job["ready_at"])
        jobs = {key: sorted(times) for key, times in jobs.items()}
        entries = {}
        for group in GROUPS:
            for entry in client.get(f"/crons/{group}").json()["entries"]:
                entries[(group, entry["name"])] = {
                    "last": entry.get("last_enqueue_at"),
                    "next": entry.get("next_enqueue_at"),
                }
        count = client.get("/jobs/count").json()["count"]
    check_state(entries, jobs, where, paused=True)
    if restart is not None:
        check_restart(jobs, restart, where)
    assert count == len(listing), f"{where}: GET /jobs/count {count} != listing {len(listing)}"
    return count


@pytest.fixture(scope="module")
def license_key() -> str:
    return mint(tier="pro")


@pytest.mark.parametrize(
    ("flags", "phases"),
    [
        # The boundary itself, then the firing's write in progress (it starts ~1 ms
        # after the boundary and takes a few), then anywhere in the second.
        ((), [0.0, 0.002, 0.004, 0.008, 0.012, None]),
        (("--default-commit-mode", "fsync"), [0.001, 0.005, None]),
    ],
    ids=["buffered", "fsync"],
)
def test_kill_9_around_firings_neither_skips_nor_doubles(tmp_path, license_key, flags, phases):
    """`phases`: where in a second each round kills (None: anywhere, at random)."""
    rng = random.Random(12)
    root = tmp_path / "root"
    server = start(root, flags, license_key)
    restart: Restart | None = None
    try:
        with httpx.Client(base_url=server.url, timeout=15.0) as client:
            for group in GROUPS:
                response = client.put(f"/crons/{group}", json=group_body(group))
                assert response.status_code == 200, response.text
        for round_no in range(len(phases)):
            phase = phases[round_no] if phases[round_no] is not None else rng.random()
            # A whole period at least since the restart: its first firing has landed.
            kill_at = (math.ceil(time.time() + 1.2) + phase) * 1000
            sleep_until(kill_at - 300)
            with httpx.Client(base_url=server.url, timeout=15.0) as client:
                seen = acknowledged(client)
            sleep_until(kill_at)
            server.kill()
            killed_at = now_ms()
            where = f"{'+'.join(flags) or 'buffered'} round {round_no} (phase {phase:.3f} s)"
            stored = read_store(root, tmp_path)
            check_state(stored.entries, stored.jobs, where)
            check_survived(stored, seen, where)
            if restart is not None:
                check_restart(stored.jobs, restart, f"{where}, the restart before")
            next_at = {key: record["next"] for key, record in stored.entries.items()}
            server.start()
            restart = Restart(killed_at, next_at, now_ms())
        sleep_until((math.ceil(time.time()) + 1.3) * 1000)  # the last restart fires too
        final_check(server, restart, "after the last restart")
    finally:
        server.stop()


def test_long_downtime_fires_once_per_entry_not_a_burst(tmp_path, license_key):
    """Down for ~4 periods: each entry fires once at start-up, then keeps its period.

    An extra entry fires once a minute, at a second that falls in the downtime: its one
    job must come at start-up (a missed firing is caught up), not a minute later.
    """
    root = tmp_path / "root"
    server = start(root, (), license_key)
    try:
        with httpx.Client(base_url=server.url, timeout=15.0) as client:
            for group in GROUPS:
                response = client.put(f"/crons/{group}", json=group_body(group))
                assert response.status_code == 200, response.text
            sparse_at = (math.floor(time.time()) + 2) * 1000  # due while the server is down
            sparse = {
                "entries": [
                    {
                        "name": "minutely",
                        "expression": f"{sparse_at // 1000 % 60} * * * * *",
                        "timezone": "UTC",
                        "job": {"queue": "cron", "type": "sparse", "payload": {}},
                    }
                ]
            }
            response = client.put(f"/crons/{SPARSE_GROUP}", json=sparse)
            assert response.status_code == 200, response.text
            assert response.json()["entries"][0]["next_enqueue_at"] == sparse_at, response.text
        sleep_until(sparse_at - 500)
        server.kill()
        killed_at = now_ms()
        stored = read_store(root, tmp_path)
        check_state(stored.entries, stored.jobs, "before the downtime")
        next_at = {key: record["next"] for key, record in stored.entries.items()}
        time.sleep(3.6)
        started_at = now_ms()
        server.start()
        restart = Restart(killed_at, next_at, now_ms())
        sleep_until((math.ceil(time.time()) + 1.3) * 1000)
        with httpx.Client(base_url=server.url, timeout=15.0) as client:
            pause_all(client)
            jobs: dict[tuple[str, str], list[int]] = defaultdict(list)
            sparse_jobs = []
            for job in list_jobs(client):
                if job["type"] == "sparse":
                    sparse_jobs.append(job["ready_at"])
                else:
                    jobs[(job["payload"]["group"], job["payload"]["entry"])].append(job["ready_at"])
            shown = client.get(f"/crons/{SPARSE_GROUP}").json()["entries"][0]
        assert len(sparse_jobs) == 1, f"the minutely entry fired {sparse_jobs} (due {sparse_at})"
        assert started_at <= sparse_jobs[0] <= restart.listening_at + PROMPT_MS, (
            f"the minutely entry fired at {sparse_jobs[0]}, started at {started_at}"
        )
        assert shown["next_enqueue_at"] == sparse_at + 60_000, shown
        assert 0 <= sparse_jobs[0] - shown["last_enqueue_at"] <= CLOCKS_APART_MS, shown
        for key in ENTRIES:
            times = sorted(jobs[key])
            missed = [t for t in times if killed_at < t < started_at]
            assert not missed, f"{key} has jobs from while the server was down: {missed}"
            after = [t for t in times if t > killed_at]
            assert after, f"{key} did not fire after the downtime"
            # Every fire time from the stored next to the restart was missed: one job for
            # them all, at start-up (a burst would put several in the start-up second).
            assert next_at[key] < started_at - 2000, (key, next_at[key], started_at)
            startup = [t for t in after if t // 1000 == after[0] // 1000]
            assert startup == after[:1], f"{key}: a burst at start-up {startup}"
            assert after[0] <= restart.listening_at + PROMPT_MS, (key, after[0], restart)
            # Then back to one per second: at most one per whole second since start-up.
            assert len(after) <= after[-1] // 1000 - after[0] // 1000 + 1, (key, after)
        final_check(server, restart, "after the downtime")
    finally:
        server.stop()
