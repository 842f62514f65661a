"""Windows, finds and the change feed of zizq.queue.observe on a real engine and store;
and the /events session closing a client that never reads (in-process Granian)."""

from __future__ import annotations

import asyncio
import base64
import heapq
import json
import os
import random
import socket

import pytest

from zizq.api import events
from zizq.api.app import create_admin_app
from zizq.license import License, LicenseState, Tier
from zizq.listener import Listener
from zizq.queue import feed as change_feed
from zizq.queue import observe
from zizq.queue.feed import ChangeFeed
from zizq.queue.maintenance import Maintenance
from zizq.queue.observe import Anchor, Lists, Query, _heap_walk
from zizq.queue.patch import parse_patch
from zizq.queue.records import now_ms
from zizq.queue.spec import parse_job


def spec(queue="q", type="t", priority=None, **extra):
    body = {"queue": queue, "type": type, "payload": {"n": 1}, **extra}
    if priority is not None:
        body["priority"] = priority
    return parse_job(body)


def ids(window) -> list[str]:
    return [job_id for job_id, _ in window.items]


@pytest.fixture(params=["lazy", "deep", "watched"])
def deep(request, monkeypatch) -> bool:
    """Run a test on every path: lazy heap walks, full passes for deep positions, and (with
    a viewer watching the engine's feed) the sorted snapshots kept for deep positions."""
    if request.param != "lazy":
        monkeypatch.setattr(observe, "PREFIX_MAX", 2)
    if request.param == "watched":
        plain_init = ChangeFeed.__init__

        def watched_init(self: ChangeFeed) -> None:
            plain_init(self)
            self.watch(asyncio.Event())

        monkeypatch.setattr(ChangeFeed, "__init__", watched_init)
    return request.param != "lazy"


def test_heap_walk_is_sorted_order_and_leaves_heaps_alone():
    rng = random.Random(7)
    heaps = []
    for _ in range(5):
        heap = [(rng.randrange(4), f"{rng.random():.6f}") for _ in range(rng.randrange(40))]
        heapq.heapify(heap)
        heaps.append(heap)
    copies = [list(h) for h in heaps]
    walked = [entry for entry, _ in _heap_walk(heaps)]
    assert walked == sorted(e for h in heaps for e in h)
    assert heaps == copies


def test_ready_windows_by_priority_across_queues(make_engine, run, deep):
    engine = make_engine()
    specs = [spec(queue=f"q{i % 3}", priority=[5, 1, 3][i % 3]) for i in range(12)]
    jobs = [job["id"] for job in run(engine.enqueue(specs))]
    order = [jobs[i] for i in (1, 4, 7, 10, 2, 5, 8, 11, 0, 3, 6, 9)]  # priority 1, 3, 5
    lists = Lists(engine)
    head = lists.window("ready", Anchor("head"), 4)
    assert ids(head) == order[:4] and head.first_position == 0 and head.total == 12
    assert ids(lists.window("ready", Anchor("tail"), 4)) == order[-4:]
    offset = lists.window("ready", Anchor("offset", offset=5), 3)
    assert ids(offset) == order[5:8] and offset.first_position == 5
    assert ids(lists.window("ready", Anchor("offset", offset=99), 3)) == order[-3:]
    around = lists.window("ready", Anchor("around", job_id=order[6]), 5)
    assert ids(around) == order[4:9] and around.resolved_anchor == order[6]
    edge = lists.window("ready", Anchor("around", job_id=order[0]), 5)
    assert ids(edge) == order[:5] and edge.first_position == 0
    missing = Anchor("around", job_id="03hcfkwjrk2dhyw1v1ob95hgz")
    assert lists.window("ready", missing, 3).items == []
    assert ids(lists.window("ready", Anchor("around", job_id="x", fallback="head"), 3)) == order[:3]
    assert (
        ids(lists.window("ready", Anchor("around", job_id="x", fallback="tail"), 3)) == order[-3:]
    )


def test_stale_entries_are_skipped(make_engine, run, deep):
    engine = make_engine()
    jobs = [job["id"] for job in run(engine.enqueue([spec(priority=5) for _ in range(6)]))]
    run(engine.patch_job(jobs[4], parse_patch({"priority": 1})))  # leaves a stale entry
    run(engine.patch_job(jobs[2], parse_patch({"priority": 5})))  # same key: a twin entry
    run(engine.delete_job(jobs[1]))  # its entry stays in the heap until popped
    lists = Lists(engine)
    window = lists.window("ready", Anchor("head"), 10)
    assert ids(window) == [jobs[4], jobs[0], jobs[2], jobs[3], jobs[5]]
    assert window.total == 5
    assert lists.window("ready", Anchor("around", job_id=jobs[1]), 3).items == []


def test_heap_snapshot_follows_random_heap_changes():
    rng = random.Random(14)
    heaps: dict[str, list] = {}
    snapshot = observe.HeapSnapshot()
    for step in range(300):
        for _ in range(rng.choice([0, 1, 3, 40, 400])):
            queue = f"q{rng.randrange(4)}"
            heap = heaps.get(queue)
            if heap and rng.random() < 0.4:
                heapq.heappop(heap)
                if not heap and rng.random() < 0.5:
                    del heaps[queue]  # as ReadyIndex drops an emptied queue
            else:
                # Few distinct values: twins (equal entries, other objects) are common.
                entry = (rng.randrange(5), f"{rng.randrange(300):04}")
                heapq.heappush(heaps.setdefault(queue, []), entry)
        ordered = snapshot.ordered(list(heaps.values()), step)
        assert ordered == sorted(e for h in heaps.values() for e in h), step
    assert snapshot.resorts < 40  # brought up to date by edits, mostly


def test_heap_snapshot_is_reused_and_sees_changes_the_feed_missed():
    heap = [(1, f"{i:05}") for i in range(1000)]
    snapshot = observe.HeapSnapshot()
    first = snapshot.ordered([heap], 1)
    assert snapshot.ordered([heap], 1) is first and snapshot.resorts == 1
    heapq.heappush(heap, (0, "new"))  # no feed version change: the stamp tells
    assert snapshot.ordered([heap], 1)[0] == (0, "new")
    heapq.heappop(heap)
    heapq.heappop(heap)
    assert snapshot.ordered([heap], 1) == sorted(heap)
    assert snapshot.resorts == 1


def test_deep_windows_read_one_snapshot_kept_current(make_engine, run, monkeypatch):
    monkeypatch.setattr(observe, "PREFIX_MAX", 50)
    engine = make_engine()
    watcher = engine.dispatcher.feed.watch(asyncio.Event())
    jobs = [job["id"] for job in run(engine.enqueue([spec(priority=5) for _ in range(400)]))]
    lists = Lists(engine)
    fresh = Lists(engine)  # computes every deep window from scratch
    monkeypatch.setattr(fresh, "_snapshot", lambda name, kind: None)

    def check(expected: list[str]) -> None:
        tail = lists.window("ready", Anchor("tail"), 5)
        assert tail == fresh.window("ready", Anchor("tail"), 5)
        assert ids(tail) == expected[-5:]
        middle = lists.window("ready", Anchor("offset", offset=200), 4)
        assert middle == fresh.window("ready", Anchor("offset", offset=200), 4)
        assert ids(middle)[0] in expected[199:201]  # a patched job's stale entry counts
        around = Anchor("around", job_id=expected[300])
        assert lists.window("ready", around, 3) == fresh.window("ready", around, 3)
        assert ids(lists.window("ready", around, 3))[1] == expected[300]
        late = Query((), ("late",))
        assert lists.find("ready", "end", "backward", late, 3) == fresh.find(
            "ready", "end", "backward", late, 3
        )

    check(jobs)
    snapshot = lists._snapshots["ready"]
    assert snapshot.resorts == 1
    jobs += [job["id"] for job in run(engine.enqueue([spec(type="late") for _ in range(20)]))]
    check(jobs)
    consumer = engine.open_consumer(None, 30)
    taken = [d.job_id for d in run(consumer.next_deliveries(1.0))]
    assert taken == jobs[:30]
    jobs = jobs[30:]
    check(jobs)
    run(engine.patch_job(jobs[350], parse_patch({"priority": 1})))  # to the head
    jobs.insert(0, jobs.pop(350))
    check(jobs)
    assert snapshot.resorts == 1 and lists._snapshots["ready"] is snapshot
    assert not run(engine.ack_many(taken))
    engine.close_consumer(consumer)
    engine.dispatcher.feed.unwatch(watcher)
    check(jobs)  # no viewer: no snapshot kept
    assert lists._snapshots == {}


def test_scheduled_and_in_flight_order(make_engine, run, deep):
    engine = make_engine()
    now = now_ms()
    later = [spec(ready_at=now + 3_600_000 - i * 1000) for i in range(4)]
    scheduled = [job["id"] for job in run(engine.enqueue(later))]
    window = Lists(engine).window("scheduled", Anchor("head"), 10)
    assert ids(window) == scheduled[::-1] and window.total == 4
    ready = [job["id"] for job in run(engine.enqueue([spec() for _ in range(3)]))]
    consumer = engine.open_consumer(None, 10)
    got = run(consumer.next_deliveries(1.0))
    assert [d.job_id for d in got] == ready
    in_flight = Lists(engine).window("in_flight", Anchor("tail"), 2)
    assert ids(in_flight) == ready[1:] and in_flight.total == 3
    assert in_flight.items[0][1]["dequeued_at"] > 0


def test_cap_confines_windows_to_the_first_rows(make_engine, run, deep):
    engine = make_engine()
    jobs = [job["id"] for job in run(engine.enqueue([spec() for _ in range(15)]))]
    lists = Lists(engine)
    assert ids(lists.window("ready", Anchor("head"), 200, cap=10)) == jobs[:10]
    assert ids(lists.window("ready", Anchor("tail"), 3, cap=10)) == jobs[7:10]
    assert ids(lists.window("ready", Anchor("offset", offset=12), 3, cap=10)) == jobs[7:10]
    assert lists.window("ready", Anchor("around", job_id=jobs[12]), 3, cap=10).items == []
    assert lists.window("ready", Anchor("head"), 200, cap=10).total == 15
    tail = lists.find("ready", "end", "backward", Query(), 3, cap=10)
    assert tail.matched_position == 9
    assert lists.find("ready", "job_id", "forward", Query(), 3, jobs[9], cap=10).window.items == []


def test_find(make_engine, run, deep):
    engine = make_engine()
    pairs = [("mail", "send"), ("web", "render"), ("mail", "bounce"), ("web", "send")] * 3
    jobs = [job["id"] for job in run(engine.enqueue([spec(q, t) for q, t in pairs]))]
    lists = Lists(engine)
    web_send = Query(("web",), ("sen",))
    found = lists.find("ready", "start", "forward", web_send, 3)
    assert found.matched_position == 3 and found.window.resolved_anchor == jobs[3]
    assert ids(found.window) == jobs[2:5]
    nxt = lists.find("ready", "job_id", "forward", web_send, 3, jobs[3])
    assert nxt.matched_position == 7
    assert lists.find("ready", "job_id", "backward", web_send, 3, jobs[7]).matched_position == 3
    assert lists.find("ready", "job_id", "backward", web_send, 3, jobs[3]).matched_position is None
    assert lists.find("ready", "end", "backward", web_send, 3).matched_position == 11
    either = Query(("nope", "mai"), ())
    assert lists.find("ready", "job_id", "forward", either, 3, jobs[0]).matched_position == 2
    gone = "03hcfkwjrk2dhyw1v1ob95hgz"  # an anchor no longer listed: from the start / the end
    assert lists.find("ready", "job_id", "forward", web_send, 3, gone).matched_position == 3
    assert lists.find("ready", "job_id", "backward", web_send, 3, gone).matched_position == 11
    assert lists.find("ready", "job_id", "locate", Query(), 3, gone).matched_position is None
    here = lists.find("ready", "job_id", "locate", Query(("zzz",)), 5, jobs[11])
    assert here.matched_position == 11 and ids(here.window) == jobs[7:]
    assert lists.find("ready", "start", "backward", Query(), 3).matched_position is None
    assert lists.find("ready", "end", "forward", Query(), 3).matched_position is None
    assert lists.find("ready", "start", "forward", Query((), ("x",)), 3).matched_position is None


def test_find_gives_up_after_its_bound(make_engine, run, monkeypatch):
    engine = make_engine()
    jobs = [job["id"] for job in run(engine.enqueue([spec() for _ in range(9)] + [spec(type="z")]))]
    lists = Lists(engine)
    assert lists.find("ready", "start", "forward", Query((), ("z",)), 3).matched_position == 9
    monkeypatch.setattr(observe, "FIND_MAX_EXAMINED", 5)
    assert lists.find("ready", "start", "forward", Query((), ("z",)), 3).matched_position is None
    assert jobs


def test_change_feed_hooks(make_engine, run):
    engine = make_engine()
    feed: ChangeFeed = engine.dispatcher.feed
    assert not feed.active
    run(engine.enqueue([spec()]))  # no watcher: nothing to tell

    async def scenario():
        watcher = feed.watch(asyncio.Event())
        assert feed.active
        await engine.enqueue([spec()])
        assert watcher.dirty and watcher.wake.is_set()
        watcher.dirty = False
        consumer = engine.open_consumer(None, 10)
        delivered = await consumer.next_deliveries(1.0)
        assert watcher.dirty  # the dispatch pass
        watcher.dirty = False
        assert not await engine.ack_many([d.job_id for d in delivered])
        assert watcher.dirty
        assert watcher.take_finished() == [(d.job_id, "completed") for d in delivered]
        feed.unwatch(watcher)
        assert not feed.active
        engine.close_consumer(consumer)

    run(scenario())


def test_finished_notes_are_bounded():
    feed = ChangeFeed()
    loop = asyncio.new_event_loop()
    try:
        watcher = feed.watch(asyncio.Event())
        for i in range(change_feed.FINISHED_CAP + 50):
            feed.finished(str(i), "completed")
        notes = watcher.take_finished()
        assert len(notes) == change_feed.FINISHED_CAP and notes[-1][0] == str(
            change_feed.FINISHED_CAP + 49
        )
    finally:
        loop.close()


# -- a session on a real listener ------------------------------------------------------


def _handshake(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    text = json.dumps({"type": "set_detail_level", "detail": True}).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    sock.sendall(bytes([0x81, 0x80 | len(text)]) + mask + masked)
    return sock


def test_a_viewer_that_never_reads_is_closed(make_engine, run, store, monkeypatch):
    monkeypatch.setattr(events, "SEND_TIMEOUT_S", 0.5)
    engine = make_engine()
    # Pro: windows of 200 rows, so each snapshot carries ~1 MiB of payloads.
    engine.license = LicenseState(License("t", "t", Tier.PRO, 2**40))
    big = {"b": "x" * 60_000}
    run(engine.enqueue([parse_job({"queue": "q", "type": "t", "payload": big}) for _ in range(20)]))
    maintenance = Maintenance(store, "1.2.3")

    async def scenario():
        app = create_admin_app(maintenance, "1.2.3", engine=engine)
        listener = Listener(app, "127.0.0.1", 0, api="admin", websockets=True)
        _, port = await listener.start()
        try:
            sock = await asyncio.to_thread(_handshake, port)
            for _ in range(100):
                if engine.dispatcher.feed.active:
                    break
                await asyncio.sleep(0.02)
            assert engine.dispatcher.feed.active  # the session started
            started = asyncio.get_running_loop().time()
            # Rows that keep moving: each refresh is a fresh ~1 MiB snapshot it never reads.
            for round_ in range(200):
                if not engine.dispatcher.feed.active:
                    break
                job_id = ids(Lists(engine).window("ready", Anchor("tail"), 1))[0]
                await engine.patch_job(job_id, parse_patch({"priority": round_ % 100}))
                await asyncio.sleep(0.05)
            assert not engine.dispatcher.feed.active  # the session ended
            assert asyncio.get_running_loop().time() - started >= events.SEND_TIMEOUT_S
            sock.close()
        finally:
            await listener.stop(1.0)

    run(scenario())
    maintenance.close()


def test_uptime_counts_from_the_engine_start(make_engine, monkeypatch):
    engine = make_engine()
    assert engine.started_monotonic is not None
    clock = [engine.started_monotonic + 3_600.0]
    monkeypatch.setattr(events.time, "monotonic", lambda: clock[0])
    resource = events.Events(engine, "1.2.3")  # created an hour after the engine started
    assert resource.status()["uptime_ms"] == 3_600_000
    clock[0] += 2.5
    assert resource.status()["uptime_ms"] == 3_602_500
    engine.started_monotonic = None  # not started (yet): the admin app's age instead
    assert resource.status()["uptime_ms"] == 2_500
