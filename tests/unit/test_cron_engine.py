"""Cron groups in the engine (real RocksDB, in process) with an injected clock.

The book's clock decides next/last enqueue times and what is due; the
scheduler is driven by calling fire_due() after moving the clock, so nothing
here waits for real time.
"""

from __future__ import annotations

import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from zizq.license import License, LicenseState, Tier
from zizq.queue import Engine, EngineSettings, cron
from zizq.queue.cron_spec import parse_entry, parse_group, parse_group_patch
from zizq.queue.errors import AlreadyExists, InvalidInput, NotFound, Unprocessable
from zizq.store import Store, layout


def ms(text: str, zone: str = "UTC") -> int:
    """Epoch ms of a local wall-clock time in `zone`."""
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp() * 1000)


class Clock:
    def __init__(self, start: int) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now


def pro() -> LicenseState:
    return LicenseState(License("lic_test", "Test", Tier.PRO, int(time.time()) + 86_400))


def entry(name: str, expression: str, **extra) -> dict:
    job = extra.pop("job", {"queue": "q", "type": "t", "payload": {"entry": name}})
    return {"name": name, "expression": expression, "job": job, **extra}


@pytest.fixture
def engine_at(store, run):
    """engine_at(start_ms, license=...) -> a started engine whose cron clock is a Clock."""
    engines: list[Engine] = []

    def make(start: int, license: LicenseState | None = None, on: Store | None = None):
        engine = Engine(on or store, EngineSettings(), license=license or pro())
        clock = Clock(start)
        engine.crons.clock = clock
        run(engine.start())
        engines.append(engine)
        return engine, clock

    yield make
    for engine in engines:
        run(engine.stop())


def swap(run, engine: Engine, tier: Tier) -> None:
    """Rotate a license in (on the loop, as the license watcher does)."""

    async def rotate() -> None:
        engine.license.swap(License("lic_x", "Test", tier, int(time.time()) + 86_400))

    run(rotate())


def jobs_of(engine: Engine) -> list[dict]:
    return [record for _, record in engine.store.iter_jobs()]


def stored_crons(engine: Engine) -> dict[bytes, dict]:
    return dict(engine.store.iter_crons())


def test_put_computes_next_and_an_unchanged_put_keeps_the_state(engine_at, run):
    engine, clock = engine_at(ms("2026-03-10T10:00:30"))
    body = {"entries": [entry("e", "*/15 * * * *", timezone="UTC")]}
    group = run(engine.crons.put_group("g", parse_group(body)))
    first = group.entries["e"]
    assert first.next_enqueue_at == ms("2026-03-10T10:15:00")
    assert first.last_enqueue_at is None
    clock.now = ms("2026-03-10T10:15:00")
    run(engine.cron_scheduler.fire_due())
    fired = engine.crons.entry("g", "e")
    assert fired.last_enqueue_at == clock.now
    assert fired.next_enqueue_at == ms("2026-03-10T10:30:00")
    # The same PUT again (an application booting): schedule state untouched, job replaced.
    clock.now += 60_000
    body["entries"][0]["job"] = {"queue": "q2", "type": "t", "payload": 2}
    again = run(engine.crons.put_group("g", parse_group(body))).entries["e"]
    assert (again.next_enqueue_at, again.last_enqueue_at) == (
        fired.next_enqueue_at,
        fired.last_enqueue_at,
    )
    assert again.template["queue"] == "q2"
    # A changed expression is rescheduled from now; last_enqueue_at stays.
    body["entries"][0]["expression"] = "0 * * * *"
    changed = run(engine.crons.put_group("g", parse_group(body))).entries["e"]
    assert changed.next_enqueue_at == ms("2026-03-10T11:00:00")
    assert changed.last_enqueue_at == fired.last_enqueue_at
    # A changed zone alone reschedules too (0.7: the effective zone is compared).
    body["entries"][0]["timezone"] = "Asia/Tokyo"  # UTC+9, no DST
    moved = run(engine.crons.put_group("g", parse_group(body))).entries["e"]
    assert moved.next_enqueue_at == ms("2026-03-10T11:00:00")  # hourly: same instant
    body["entries"][0]["expression"] = "0 20 * * *"
    tokyo = run(engine.crons.put_group("g", parse_group(body))).entries["e"]
    assert tokyo.next_enqueue_at == ms("2026-03-10T20:00:00", "Asia/Tokyo")


def test_put_group_removes_entries_not_named(engine_at, run):
    engine, _ = engine_at(ms("2026-01-01T00:00:00"))
    run(engine.crons.put_group("g", parse_group({"entries": [entry("a", "* * * * *")]})))
    run(engine.crons.put_group("g", parse_group({"entries": [entry("b", "* * * * *")]})))
    assert list(engine.crons.group("g").entries) == ["b"]
    keys = set(stored_crons(engine))
    assert layout.cron_entry_key("g", "a") not in keys
    assert layout.cron_entry_key("g", "b") in keys
    assert engine.crons.entry_count == 1


def test_group_zone_reschedules_inheriting_entries_only(engine_at, run):
    engine, clock = engine_at(ms("2026-06-01T00:00:00"))
    body = {
        "timezone": "Europe/Rome",
        "entries": [
            entry("inherits", "0 6 * * *"),
            entry("own", "0 6 * * *", timezone="America/New_York"),
        ],
    }
    group = run(engine.crons.put_group("g", parse_group(body)))
    assert group.entries["inherits"].next_enqueue_at == ms("2026-06-01T06:00:00", "Europe/Rome")
    own_next = group.entries["own"].next_enqueue_at
    assert own_next == ms("2026-06-01T06:00:00", "America/New_York")
    patched = run(engine.crons.patch_group("g", parse_group_patch({"timezone": "Asia/Tokyo"})))
    assert patched.timezone == "Asia/Tokyo"
    # 00:00 UTC is 09:00 in Tokyo: its 06:00 is tomorrow
    assert patched.entries["inherits"].next_enqueue_at == ms("2026-06-02T06:00:00", "Asia/Tokyo")
    assert patched.entries["own"].next_enqueue_at == own_next
    # A pause-only patch leaves the zone; null clears it (the server's local zone then).
    paused = run(engine.crons.patch_group("g", parse_group_patch({"paused": True})))
    assert paused.timezone == "Asia/Tokyo" and paused.paused and paused.paused_at == clock.now
    cleared = run(engine.crons.patch_group("g", parse_group_patch({"timezone": None})))
    assert cleared.timezone is None
    assert "timezone" not in cleared.view()
    # PUT replaces the group whole: no timezone in the body clears it.
    again = run(engine.crons.put_group("g", parse_group({**body, "timezone": "Europe/Rome"})))
    assert again.timezone == "Europe/Rome"
    body.pop("timezone")
    assert run(engine.crons.put_group("g", parse_group(body))).timezone is None


def test_a_firing_after_downtime_is_one_job_not_a_burst(engine_at, run):
    engine, clock = engine_at(ms("2026-01-01T00:00:00"))
    run(engine.crons.put_group("g", parse_group({"entries": [entry("e", "* * * * * *")]})))
    clock.now = ms("2026-01-01T01:00:00") + 250  # an hour of seconds missed
    run(engine.cron_scheduler.fire_due())
    run(engine.committer.drain())
    assert len(jobs_of(engine)) == 1
    fired = engine.crons.entry("g", "e")
    assert fired.last_enqueue_at == clock.now
    assert fired.next_enqueue_at == ms("2026-01-01T01:00:01")
    run(engine.cron_scheduler.fire_due())  # nothing due yet: nothing more
    assert len(jobs_of(engine)) == 1


def test_paused_entries_and_groups_advance_without_enqueueing(engine_at, run):
    engine, clock = engine_at(ms("2026-01-01T00:00:00"))
    body = {"entries": [entry("a", "* * * * * *"), entry("b", "* * * * * *", paused=True)]}
    run(engine.crons.put_group("g", parse_group(body)))
    clock.now += 1000
    run(engine.cron_scheduler.fire_due())
    assert [r["type"] for r in jobs_of(engine)] == ["t"]  # only a
    b = engine.crons.entry("g", "b")
    assert b.last_enqueue_at is None and b.next_enqueue_at == clock.now + 1000
    run(engine.crons.patch_group("g", parse_group_patch({"paused": True})))
    clock.now += 1000
    run(engine.cron_scheduler.fire_due())
    assert len(jobs_of(engine)) == 1
    assert engine.crons.entry("g", "a").next_enqueue_at == clock.now + 1000
    clock.now += 10
    group = run(engine.crons.patch_group("g", parse_group_patch({"paused": False})))
    assert group.resumed_at == clock.now and group.paused_at == clock.now - 1010
    resumed = run(engine.crons.patch_entry("g", "b", False))
    assert resumed.resumed_at == clock.now and not resumed.paused
    clock.now += 1000
    run(engine.cron_scheduler.fire_due())
    run(engine.committer.drain())
    assert len(jobs_of(engine)) == 3


def test_the_job_carries_the_whole_template(engine_at, run):
    engine, clock = engine_at(ms("2026-01-01T00:00:00"))
    job = {
        "queue": "reports",
        "type": "daily",
        "payload": {"n": [1, 2]},
        "priority": 7,
        "retry_limit": 3,
        "backoff": {"base_ms": 10, "exponent": 2.0, "jitter_ms": 5},
        "retention": {"completed_ms": 1000},
    }
    run(engine.crons.put_group("g", parse_group({"entries": [entry("e", "@daily", job=job)]})))
    clock.now = ms("2026-01-02T00:00:00")
    run(engine.cron_scheduler.fire_due())
    run(engine.committer.drain())
    (record,) = jobs_of(engine)
    for field in ("queue", "type", "priority", "retry_limit", "backoff", "retention"):
        assert record[field] == job[field], field
    (job_id,) = [job_id for job_id, _ in engine.store.iter_jobs()]
    _, payload = engine.get_job(job_id)
    import msgpack

    assert msgpack.unpackb(payload) == {"n": [1, 2]}
    assert engine.crons.entry("g", "e").view()["job"]["priority"] == 7


def test_a_unique_template_is_a_duplicate_while_its_job_waits(engine_at, run):
    engine, clock = engine_at(ms("2026-01-01T00:00:00"))
    job = {"queue": "q", "type": "t", "payload": {}, "unique_key": "once"}
    run(engine.crons.put_group("g", parse_group({"entries": [entry("e", "* * * * * *", job=job)]})))
    for _ in range(3):
        clock.now += 1000
        run(engine.cron_scheduler.fire_due())
    run(engine.committer.drain())
    assert len(jobs_of(engine)) == 1  # the first is still ready: the others were duplicates
    assert engine.crons.entry("g", "e").last_enqueue_at == clock.now


def test_the_store_holds_everything_a_restart_needs(engine_at, run):
    """A second book loading the same store sees the same groups (the e2e tests restart
    a real server); what was missed meanwhile then fires once."""
    engine, clock = engine_at(ms("2026-01-01T00:00:00"))
    body = {"paused": False, "timezone": "Europe/Rome", "entries": [entry("e", "* * * * * *")]}
    run(engine.crons.put_group("g", parse_group(body)))
    run(engine.crons.put_group("h", parse_group({"paused": True, "entries": []})))
    reloaded = cron.Crons(engine.store, engine.license, engine.batches, clock)
    reloaded.load()
    assert {name: g.view() for name, g in reloaded.groups.items()} == {
        name: g.view() for name, g in engine.crons.groups.items()
    }
    assert reloaded.entry_count == 1
    clock.now += 300_000
    run(engine.cron_scheduler.fire_due())
    run(engine.committer.drain())
    assert len(jobs_of(engine)) == 1


def test_without_a_license_nothing_fires_until_one_is_rotated_in(engine_at, run):
    engine, clock = engine_at(ms("2026-01-01T00:00:00"))
    run(engine.crons.put_group("g", parse_group({"entries": [entry("e", "* * * * * *")]})))
    swap(run, engine, Tier.FREE)
    clock.now += 5000
    run(engine.cron_scheduler.fire_due())
    assert jobs_of(engine) == []
    swap(run, engine, Tier.PRO)
    run(engine.cron_scheduler.fire_due())
    run(engine.committer.drain())
    assert len(jobs_of(engine)) == 1


def test_entries_add_put_patch_delete(engine_at, run):
    engine, _ = engine_at(ms("2026-01-01T00:00:00"))
    created = run(engine.crons.add_entry("new", parse_entry(entry("e", "* * * * *"))))
    assert created.name == "e" and engine.crons.names() == ["new"]
    with pytest.raises(AlreadyExists):
        run(engine.crons.add_entry("new", parse_entry(entry("e", "* * * * *"))))
    replaced = run(
        engine.crons.put_entry("new", parse_entry(entry("ignored", "0 * * * *"), name="e"))
    )
    assert replaced.name == "e" and replaced.schedule.text == "0 * * * *"
    assert run(engine.crons.patch_entry("new", "e", True)).paused
    run(engine.crons.delete_entry("new", "e"))
    with pytest.raises(NotFound):
        engine.crons.entry("new", "e")
    assert engine.crons.group("new").entries == {}  # the group stays, empty
    run(engine.crons.delete_group("new"))
    with pytest.raises(NotFound):
        run(engine.crons.delete_group("new"))
    assert stored_crons(engine) == {}


def test_delete_all_and_reset_leave_nothing_that_fires(engine_at, run):
    engine, clock = engine_at(ms("2026-01-01T00:00:00"))
    for name in ("a", "b"):
        run(engine.crons.put_group(name, parse_group({"entries": [entry("e", "* * * * * *")]})))
    assert run(engine.crons.delete_all()) == 2
    clock.now += 5000
    run(engine.cron_scheduler.fire_due())
    assert jobs_of(engine) == [] and stored_crons(engine) == {}


def test_names_that_share_a_prefix_stay_apart(engine_at, run):
    engine, _ = engine_at(ms("2026-01-01T00:00:00"))
    run(engine.crons.put_group("a", parse_group({"entries": [entry("be", "* * * * *")]})))
    run(engine.crons.put_group("ab", parse_group({"entries": [entry("e", "* * * * *")]})))
    run(engine.crons.delete_group("a"))
    assert list(engine.crons.group("ab").entries) == ["e"]
    assert layout.cron_entry_key("ab", "e") in stored_crons(engine)


def test_the_entry_cap_refuses_before_writing(engine_at, run, monkeypatch):
    engine, _ = engine_at(ms("2026-01-01T00:00:00"))
    monkeypatch.setattr(cron, "MAX_CRON_ENTRIES", 3)
    body = {"entries": [entry(f"e{i}", "* * * * *") for i in range(3)]}
    run(engine.crons.put_group("g", parse_group(body)))
    with pytest.raises(Unprocessable, match="at most 3"):
        run(engine.crons.put_entry("h", parse_entry(entry("x", "* * * * *"))))
    assert engine.crons.names() == ["g"]
    # Replacing the same three is no growth.
    run(engine.crons.put_group("g", parse_group(body)))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "body: must be an object"),
        ({}, "entries: is required"),
        ({"entries": {}}, "entries: must be an array"),
        ({"entries": [1]}, "entries[0]: must be an object"),
        ({"entries": [{"expression": "* * * * *", "job": {}}]}, "entries[0].name: is required"),
        ({"entries": [entry("a", "* * * * *"), entry("a", "0 * * * *")]}, "entries[1].name"),
        ({"entries": [{"name": "a", "job": {}}]}, "entries[0].expression: is required"),
        ({"entries": [{"name": "a", "expression": "* * * * *"}]}, "entries[0].job: is required"),
        ({"entries": [entry("a", "* * * * *", job={"type": "t", "payload": 1})]}, "queue"),
        (
            {"entries": [entry("a", "* * *", job={"queue": "q", "type": "t", "payload": 1})]},
            "entries[0].expression",
        ),
        ({"entries": [entry("a", "* * * * *", timezone="Mars/Base")]}, "entries[0].timezone"),
        ({"timezone": 5, "entries": []}, "timezone"),
        ({"paused": "yes", "entries": []}, "paused: must be a boolean"),
        (
            {
                "entries": [
                    entry(
                        "a",
                        "* * * * *",
                        job={"queue": "q", "type": "t", "payload": 1, "ready_at": 5},
                    )
                ]
            },
            "entries[0].job.ready_at: is not supported for cron entries",
        ),
        ({"entries": [entry("a,b", "* * * * *")]}, "entries[0].name"),
    ],
)
def test_bad_group_bodies_name_the_field(body, message):
    with pytest.raises(InvalidInput) as caught:
        parse_group(body)
    assert message in str(caught.value)
