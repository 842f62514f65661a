"""`zizq top` without a terminal: the view model fed recorded server messages, and the screen
it draws (`render_screen`), compared line by line with what the reference shows."""

from __future__ import annotations

from zizq.top.format import compact_duration, due_in, elapsed_since
from zizq.top.model import Connection, TopModel
from zizq.top.render import layout, render_screen

NOW = 10_000_000
URL = "http://127.0.0.1:8901"


class Clock:
    """Moves on by `step` seconds at every reading (0: only when a test moves it)."""

    def __init__(self, step: float = 1.0) -> None:
        self.now = 100.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def job(job_id: str, *, priority: int = 0, queue: str = "default", job_type: str = "t", **extra):
    return {
        "id": job_id,
        "queue": queue,
        "job_type": job_type,
        "priority": priority,
        "ready_at": extra.pop("ready_at", NOW - 5_000),
        "attempts": extra.pop("attempts", 0),
        **extra,
    }


def window(items, first=0, total=None, anchor=None):
    out = {"items": items, "first_position": first, "total": len(items) if total is None else total}
    if anchor:
        out["resolved_anchor"] = anchor
    return out


def server(ready=0, in_flight=0, scheduled=0, tier="pro", limit=None):
    status = {
        "version": "0.6.1",
        "uptime_ms": 125_000,
        "tier": tier,
        "total_ready": ready,
        "total_in_flight": in_flight,
        "total_scheduled": scheduled,
    }
    if limit is not None:
        status["subscription_limit"] = limit
    return status


def snapshot(status, ready=(), in_flight=(), scheduled=(), first_ready=0):
    return {
        "server": status,
        "event": "job_snapshot",
        "ready": window(list(ready), first_ready, status["total_ready"]),
        "in_flight": window(list(in_flight), 0, status["total_in_flight"]),
        "scheduled": window(list(scheduled), 0, status["total_scheduled"]),
    }


def connected_model(viewport: int = 10, clock: Clock | None = None) -> TopModel:
    model = TopModel(URL, "0.6.1", clock=clock or Clock())
    model.connected()
    model.set_viewport(viewport)
    return model


def screen(model: TopModel, width: int = 80, height: int = 24) -> list[str]:
    return [line.plain.rstrip() for line in render_screen(model, width, height, NOW)]


def test_durations_read_like_the_reference():
    assert [compact_duration(ms) for ms in (0, 999, 5_200, 60_000, 138_000, 3_960_000)] == [
        "0ms",
        "999ms",
        "5s",
        "1m",
        "2m18s",
        "1h6m",
    ]
    assert compact_duration(190_800_000) == "2d5h"
    assert elapsed_since(NOW - 500, NOW) == "< 1s"
    assert elapsed_since(None, NOW) == "-"
    assert due_in(NOW + 232_000, NOW) == "3m52s"
    assert due_in(NOW - 60_000, NOW) == "1m ago"


def test_connecting_screen_at_80x24():
    model = TopModel(URL, "0.6.1")
    lines = screen(model)
    assert len(lines) == 24
    assert lines[0] == "  Zizq 0.6.1"
    assert lines[1] == "\u25cf Connecting... http://127.0.0.1:8901"
    assert lines[7] == "   In-Flight   Ready   Scheduled"
    assert lines[8].split() == ["ID", "PRIORITY", "QUEUE", "DURATION", "ATTEMPTS", "TY"]
    assert lines[23] == " TabChange Tab iInfo pPause /Find DDelete qQuit"


def test_connected_screen_shows_versions_uptime_tier_counts_and_rows():
    model = connected_model()
    flying = [
        job(
            "0195b70a2bb46e1f07a0c908d7a2bb40",
            job_type="report",
            attempts=1,
            dequeued_at=NOW - 3_000,
        ),
        job("0195b70a1aa35d0e06b0b807c69", queue="billing", attempts=3, dequeued_at=NOW - 150_000),
    ]
    model.receive(snapshot(server(ready=2, in_flight=2, scheduled=2), in_flight=flying))
    lines = screen(model)
    assert lines[1] == "\u25cf Connected http://127.0.0.1:8901"
    assert lines[2] == "  Server version: 0.6.1, Uptime: 2m5s, Tier: pro"
    assert lines[3] == "  Queue: 2 in-flight, 2 ready, 2 scheduled"
    assert lines[4] == "        \u25bc"  # the cursor marker, over the in-flight section
    assert lines[5].startswith("  Depth[" + "\u2502" * 6 + " ")
    assert lines[5].endswith("6 jobs]")
    # An id longer than its column keeps its (more distinctive) tail, as in the reference.
    assert lines[9].split() == ["70a2bb46e1f07a0c908d7a2bb40", "0", "default", "3s", "1", "re"]
    assert lines[10].split()[3:5] == ["2m30s", "3"]
    wide = screen(model, 160, 12)
    assert wide[9].endswith(" report")
    assert len(render_screen(model, 160, 12, NOW)[9].plain) == 160


def test_narrow_table_scrolls_sideways_and_clamps():
    model = connected_model()
    model.receive(snapshot(server(in_flight=1), in_flight=[job("a" * 25, job_type="long_type")]))
    assert "long_type" not in screen(model)[9]
    for _ in range(10):
        model.key("right")
    scrolled = screen(model)
    assert scrolled[9].endswith("long_type")
    assert model.h_scroll[0] == 40  # 120 virtual columns - 80 on screen
    model.key("left")
    assert model.h_scroll[0] == 32


def test_job_changed_inserts_in_list_order_and_moves_between_lists():
    model = connected_model()
    model.receive(snapshot(server(ready=2), ready=[job("b", priority=1), job("d", priority=5)]))
    status = server(ready=3)
    model.receive({"server": status, "event": "job_changed", "id": "c", "status": "ready",
                   "job": job("c", priority=1)})  # fmt: skip
    assert [j["id"] for j in model.lists[1].items] == ["b", "c", "d"]
    model.receive({"server": server(ready=2, in_flight=1), "event": "job_changed", "id": "b",
                   "status": "in_flight", "job": job("b", dequeued_at=NOW)})  # fmt: skip
    assert [j["id"] for j in model.lists[1].items] == ["c", "d"]
    assert [j["id"] for j in model.lists[0].items] == ["b"]
    model.receive({"server": server(ready=2), "event": "job_changed", "id": "b",
                   "status": "completed"})  # fmt: skip
    assert model.lists[0].items == []


def test_cursor_keys_move_and_prefetch_near_the_buffer_edge():
    clock = Clock(step=0)
    model = connected_model(viewport=5, clock=clock)
    model.outbox.clear()
    rows = [job(f"j{n:03}", priority=n) for n in range(30)]
    model.key("tab")  # Ready
    model.receive(snapshot(server(ready=100), ready=rows))
    assert model.active == 1 and model.tab.cursor == 0
    for key in ("down", "j", "j"):
        model.key(key)
    assert model.tab.cursor == 3
    model.key("k")
    model.key("up")
    assert model.tab.cursor == 1
    model.key("pagedown")
    assert model.tab.cursor == 6 and model.tab.scroll == 2
    model.key("pageup")
    assert model.tab.cursor == 1
    assert model.outbox == []  # still far from the loaded edge
    for _ in range(5):
        model.key("pagedown")
    # The buffer holds rows 0..29: the cursor stops at its edge and a window is asked for.
    assert model.tab.cursor == 26
    clock.now += 1
    model.key("pagedown")
    assert model.tab.cursor == 29
    wanted = [m for m in model.outbox if m["type"] == "subscribe"]
    assert wanted and wanted[-1]["list"] == "ready"
    assert wanted[-1]["anchor"]["kind"] == "offset"
    model.outbox.clear()
    model.key("G")
    assert model.tab.cursor == 99
    clock.now += 1
    model.key("end")
    assert model.outbox[-1]["anchor"] == {"kind": "tail"}
    clock.now += 1
    model.key("g")
    assert model.tab.cursor == 0 and model.outbox[-1]["anchor"] == {"kind": "head"}
    model.key("G")
    model.key("home")
    assert model.tab.cursor == 0


def test_prefetch_is_rate_limited_and_sent_on_tick():
    clock = Clock(step=0)
    model = connected_model(viewport=5, clock=clock)
    model.receive(snapshot(server(in_flight=100), in_flight=[job(f"j{n}") for n in range(30)]))
    clock.now += 1
    model.tick()  # the re-subscribes the first snapshot asks for
    model.outbox.clear()
    clock.now += 1
    model.key("G")
    model.key("g")  # within 100 ms of G: held back
    assert [m["anchor"] for m in model.outbox] == [{"kind": "tail"}]
    model.tick()
    assert len(model.outbox) == 1
    clock.now += 0.2
    model.tick()
    assert model.outbox[-1]["anchor"] == {"kind": "head"}


def test_tabs_cycle_both_ways():
    model = connected_model()
    seen = []
    for key in ("tab", "tab", "tab", "shift+tab"):
        model.key(key)
        seen.append(model.active)
    assert seen == [1, 2, 0, 2]
    assert "\u2502" not in screen(model)[5]  # nothing queued: an empty bar


def test_pause_freezes_rows_but_not_totals():
    model = connected_model()
    model.receive(snapshot(server(ready=2), ready=[job("a"), job("b")]))
    model.key("tab")
    model.key("p")
    assert "PAUSED" in screen(model)[1]
    assert "pResume" in screen(model)[23]
    model.receive({"server": server(ready=3), "event": "job_changed", "id": "c", "status": "ready",
                   "job": job("c")})  # fmt: skip
    model.receive(snapshot(server(ready=5), ready=[job("x")]))
    assert [j["id"] for j in model.tab.items] == ["a", "b"]
    assert screen(model)[3] == "  Queue: 0 in-flight, 5 ready, 0 scheduled"
    model.key("G")  # the frozen buffer's end, not the server's
    assert model.tab.cursor == 1
    assert "\u2193 Resume to scroll further" in screen(model)[23]
    model.key("i")
    assert not model.detail  # no detail toggle while paused
    model.outbox.clear()
    model.key("p")
    assert not model.paused
    assert {m["list"] for m in model.outbox if m["type"] == "subscribe"} == {
        "ready",
        "in_flight",
        "scheduled",
    }


def test_detail_panel_asks_for_payloads_and_shows_them():
    model = connected_model()
    model.receive(snapshot(server(in_flight=1), in_flight=[job("a1", dequeued_at=NOW)]))
    model.outbox.clear()
    model.key("i")
    assert model.outbox == [{"type": "set_detail_level", "detail": True}]
    assert any(line.startswith("  ATTRIBUTES") for line in screen(model, 100, 50))
    assert "(not loaded)" in "\n".join(screen(model, 100, 50))
    detailed = job("a1", dequeued_at=NOW, payload={"to": "x@example.com"}, retry_limit=5)
    model.receive(snapshot(server(in_flight=1), in_flight=[detailed]))
    text = "\n".join(screen(model, 100, 50))
    assert '"to": "x@example.com"' in text
    assert "Attempts / Retry Limit" in text and "0/5" in text
    model.key("i")
    assert model.outbox[-1] == {"type": "set_detail_level", "detail": False}
    assert "ATTRIBUTES" not in "\n".join(screen(model, 100, 50))


def test_delete_asks_first_and_only_y_deletes():
    model = connected_model()
    model.receive(snapshot(server(in_flight=2), in_flight=[job("a1"), job("b2")]))
    model.outbox.clear()
    model.key("D")
    assert screen(model)[23] == " Delete job a1? y Yes  n No"
    model.key("j")  # swallowed while the prompt is open
    assert model.tab.cursor == 0
    model.key("n")
    assert model.pending_delete is None and model.outbox == []
    model.key("D")
    model.key("q")  # q cancels the prompt instead of quitting
    assert model.pending_delete is None
    model.key("D")
    model.key("y")
    assert model.outbox == [{"type": "delete_job", "id": "a1"}]
    assert [j["id"] for j in model.tab.items] == ["b2"]


def test_search_prompt_query_and_steps():
    model = connected_model()
    model.receive(snapshot(server(ready=3), ready=[job("a"), job("b"), job("c")]))
    model.key("tab")
    model.outbox.clear()
    model.key("/")
    for char in "mail, sms":
        model.key(char if char != " " else "space", char)
    model.key("tab")
    for char in "comms":
        model.key(char, char)
    assert screen(model)[23].startswith(" Search  Type: mail, sms")
    assert "Queue: comms" in screen(model)[23]
    model.key("enter")
    assert model.outbox == [{"type": "find", "list": "ready", "anchor": {"kind": "start"},
                             "direction": "forward",
                             "query": {"queues": ["comms"], "types": ["mail", "sms"]},
                             "limit": 30}]  # fmt: skip
    model.outbox.clear()
    found = {"server": server(ready=3), "event": "find_result", "list": "ready",
             "matched_position": 1, "window": window([job("a"), job("b"), job("c")], 0, 3, "b")}  # fmt: skip
    model.receive(found)
    assert model.pinned == "b" and model.tab.cursor == 1
    assert model.outbox[-1]["anchor"] == {"kind": "around", "id": "b", "fallback": "nowhere"}
    model.key("n")
    assert model.outbox[-1]["anchor"] == {"kind": "job_id", "id": "b"}
    assert model.outbox[-1]["direction"] == "forward"
    model.key("N")
    assert model.outbox[-1]["direction"] == "backward"
    model.receive({"server": server(ready=3), "event": "find_result", "list": "ready",
                   "matched_position": None, "window": window([])})  # fmt: skip
    assert "no match" in screen(model)[23]
    assert model.pinned == "b"  # a miss keeps the last match
    model.key("escape")
    assert model.pinned is None
    model.key("/")  # reopening prefills the last query
    assert model.search is not None and model.search.fields["queue"] == "comms"
    model.key("escape")
    assert model.search is None


def test_pinned_job_is_followed_as_the_queue_moves():
    model = connected_model()
    model.key("tab")
    model.receive(snapshot(server(ready=3), ready=[job("a"), job("b"), job("c")]))
    model.receive({"server": server(ready=3), "event": "find_result", "list": "ready",
                   "matched_position": 2, "window": window([job("a"), job("b"), job("c")], 0, 3, "c")})  # fmt: skip
    model.receive({"server": server(ready=2, in_flight=1), "event": "job_changed", "id": "a",
                   "status": "in_flight", "job": job("a", dequeued_at=NOW)})  # fmt: skip
    assert model.tab.cursor == 1 and model.selected()["id"] == "c"
    model.outbox.clear()
    model.receive({"server": server(ready=1), "event": "job_changed", "id": "c",
                   "status": "ready_removed"})  # fmt: skip
    assert model.outbox[-1]["direction"] == "locate"
    model.receive({"server": server(ready=1), "event": "find_result", "list": "ready",
                   "matched_position": None, "window": window([])})  # fmt: skip
    assert model.pinned is None


def test_free_tier_shows_the_cap_message():
    model = connected_model()
    model.outbox.clear()
    rows = [job(f"r{n}") for n in range(10)]
    model.receive(snapshot(server(ready=50, tier="free", limit=10), ready=rows))
    model.outbox.clear()
    model.key("tab")
    lines = screen(model)
    assert "Display is currently capped at 10 jobs." in [line.strip() for line in lines]
    assert "Upgrade to a pro license to see everything." in [line.strip() for line in lines]
    model.key("G")
    assert model.tab.cursor == 9  # the first 10 rows only
    model.key("g")
    assert not [m for m in model.outbox if m["type"] == "subscribe"]  # nothing more to see
    model.key("p")
    model.key("p")  # resuming asks for fresh windows: the first rows, whatever the cursor
    assert {m["anchor"]["kind"] for m in model.outbox if m["type"] == "subscribe"} == {"head"}


def test_disconnect_says_so_and_reconnect_restores_the_session():
    model = connected_model()
    model.receive(snapshot(server(ready=1), ready=[job("a")]))
    model.key("i")
    model.disconnected("retry in 1s: connection refused")
    lines = screen(model)
    assert lines[1].startswith("\u25cf Disconnected http://127.0.0.1:8901")
    assert "retry in 1s: connection refused" in lines[1]
    assert lines[2] == lines[3] == ""
    assert model.connection is Connection.DISCONNECTED
    model.outbox.clear()
    model.connected()
    assert model.outbox == [{"type": "set_detail_level", "detail": True}]
    model.receive(snapshot(server(ready=1), ready=[job("a")]))
    assert len([m for m in model.outbox if m["type"] == "subscribe"]) == 3


def test_quit_keys():
    model = connected_model()
    assert model.key("q") is True
    assert model.key("ctrl+c") is True
    model.key("/")
    assert model.key("q", "q") is False  # typed into the search field
    assert model.key("ctrl+c") is True


def test_tiny_and_hostile_input_does_not_break_the_screen():
    model = connected_model()
    model.receive({"server": "nonsense", "event": "job_snapshot", "ready": {"items": [1, None]}})
    model.receive({"event": "job_changed", "id": 5, "status": "ready"})
    model.receive(["not", "a", "dict"])
    model.receive(snapshot(server(in_flight=1), in_flight=[job("x\x1b[2Jy", queue="q\nq")]))
    for width, height in ((20, 5), (80, 24), (200, 60), (1, 1)):
        lines = render_screen(model, width, height, NOW)
        assert len(lines) == height
        assert all(len(line.plain) == width for line in lines)
        assert all("\x1b" not in line.plain and "\n" not in line.plain for line in lines)


def test_detail_panel_fits_every_attribute_at_80x24_free_and_pro():
    retried = job(
        "03hcfllhoa781lmai2iwhg42m",
        dequeued_at=NOW - 3_000,
        failed_at=NOW - 9_000,
        attempts=2,
        retry_limit=5,
        payload={"to": "x@example.com"},
    )
    for tier, limit in (("pro", None), ("free", 10)):
        model = connected_model()
        model.receive(snapshot(server(in_flight=1, tier=tier, limit=limit), in_flight=[retried]))
        model.key("i")
        shape = layout(model, 24)
        model.set_viewport(shape.body_rows)
        lines = screen(model, 80, 24)
        start = next(y for y, line in enumerate(lines) if line.startswith("  ATTRIBUTES"))
        panel = lines[start : start + shape.detail_rows]
        labels = [line[:15].strip() for line in panel[1:] if line[:15].strip()]
        assert labels == ["ID", "Queue", "Type", "Priority", "Status", "Ready At", "Attempts",
                          "Dequeued At", "Failed At"], tier  # fmt: skip
        assert "  ID           03hcfllhoa781lmai2iwhg42m" in panel[1]  # the whole id
        assert panel[2].endswith('"to": "x@example.com"')  # the payload beside it
        assert "Attempts     2/5" in panel[7]
        assert (
            sum(
                "\u2502" not in line and "03hcfllhoa781lmai2iwhg42m" in line
                for line in lines[:start]
            )
            == 1
        )
        if limit:
            assert "capped at 10 jobs" in lines[-2]


def test_detail_panel_on_a_wide_screen_and_what_a_short_one_leaves_out():
    full = job(
        "a1",
        dequeued_at=NOW,
        failed_at=NOW - 1_000,
        retry_limit=5,
        backoff={"base_ms": 1000, "exponent": 2, "jitter_ms": 100},
        retention={"completed_ms": 60_000, "dead_ms": 3_600_000},
        unique_key="k1",
        payload={},
    )
    model = connected_model()
    model.receive(snapshot(server(in_flight=1), in_flight=[full]))
    model.key("i")
    model.set_viewport(layout(model, 40).body_rows)
    wide = "\n".join(screen(model, 160, 40))
    for label in ("Attempts / Retry Limit", "Backoff", "Retention Policy", "Unique Key"):
        assert f"  {label}" in wide
    assert "more:" not in wide
    model.set_viewport(layout(model, 24).body_rows)
    narrow = screen(model, 80, 24)
    assert narrow[-2] == "  +4 more: Failed At, Backoff, Retention, Unique Key"
