"""`zizq top` in Textual's test harness (`App.run_test`, pilot key presses), at 80x24.

Two kinds of server: a scripted WebSocket server that plays recorded protocol messages and
records what the client sends (connection wiring, keys to requests, reconnecting), and a
real `zizq serve` subprocess (live counts while jobs are enqueued, taken and acked; delete,
search and detail against the real engine). The screen is read from what the view drew.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import InvalidStatus

from tests.e2e.zizq_process import Api, TakeStream, ZizqServer
from zizq.top.app import TopApp

pytestmark = pytest.mark.asyncio
SIZE = (80, 24)
WAIT_S = 8.0


async def wait_for(app: TopApp, pilot, predicate: Callable[[], bool], what: str) -> None:
    """Poll the screen until `predicate` holds; fail with the screen if it never does."""
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; screen:\n{app.screen_text()}")
        await pilot.pause(0.02)


def on_screen(app: TopApp, text: str) -> Callable[[], bool]:
    return lambda: text in app.screen_text()


def line(app: TopApp, index: int) -> str:
    lines = app.screen_text().splitlines()
    return lines[index] if index < len(lines) else ""


# -- a scripted server ------------------------------------------------------------------------

STATUS = {"version": "9.9.9", "uptime_ms": 61_000, "tier": "pro", "total_ready": 2,
          "total_in_flight": 0, "total_scheduled": 0}  # fmt: skip
READY = [
    {"id": "job-a", "queue": "emails", "job_type": "send_welcome", "priority": 1,
     "ready_at": int(time.time() * 1000), "attempts": 0},
    {"id": "job-b", "queue": "billing", "job_type": "charge", "priority": 2,
     "ready_at": int(time.time() * 1000), "attempts": 2},
]  # fmt: skip
SNAPSHOT = {
    "server": STATUS,
    "event": "job_snapshot",
    "ready": {"items": READY, "first_position": 0, "total": 2},
    "in_flight": {"items": [], "first_position": 0, "total": 0},
    "scheduled": {"items": [], "first_position": 0, "total": 0},
}


class ScriptedServer:
    def __init__(self) -> None:
        self.received: list[dict] = []
        self.connections = 0
        self.port = 0
        self._server = None

    async def _handle(self, ws) -> None:
        self.connections += 1
        await ws.send(json.dumps(SNAPSHOT))
        async for raw in ws:
            self.received.append(json.loads(raw))

    async def start(self, port: int = 0) -> ScriptedServer:
        self._server = await serve(self._handle, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    def sent(self, kind: str) -> list[dict]:
        return [message for message in self.received if message.get("type") == kind]


async def test_keys_become_requests_and_the_view_reconnects_by_itself():
    fake = await ScriptedServer().start()
    app = TopApp(f"http://127.0.0.1:{fake.port}", "1.2.3", refresh_s=0.1)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(app, pilot, on_screen(app, "Server version: 9.9.9"), "the snapshot")
            assert line(app, 0) == "  Zizq 1.2.3"
            assert line(app, 1) == f"\u25cf Connected http://127.0.0.1:{fake.port}"
            await pilot.press("tab")
            await wait_for(app, pilot, on_screen(app, "job-a"), "the ready rows")
            assert line(app, 8).split()[3] == "DELAY"
            await pilot.press("D")
            assert line(app, 23) == " Delete job job-a? y Yes  n No"
            await pilot.press("y")
            await wait_for(app, pilot, lambda: fake.sent("delete_job"), "delete_job")
            assert fake.sent("delete_job") == [{"type": "delete_job", "id": "job-a"}]
            await pilot.press("slash", "c", "h", "tab", "b", "i", "l", "enter")
            await wait_for(app, pilot, lambda: fake.sent("find"), "find")
            find = fake.sent("find")[0]
            assert find["query"] == {"queues": ["bil"], "types": ["ch"]}
            assert find["list"] == "ready" and find["direction"] == "forward"
            await pilot.press("i")
            await wait_for(app, pilot, lambda: fake.sent("set_detail_level"), "detail level")
            assert "ATTRIBUTES" in app.screen_text()

            await fake.stop()
            await wait_for(app, pilot, on_screen(app, "Disconnected"), "the disconnect")
            assert "retry in" in line(app, 1)
            await fake.start(fake.port)
            await wait_for(app, pilot, on_screen(app, "\u25cf Connected"), "the reconnect")
            await wait_for(app, pilot, on_screen(app, "Server version: 9.9.9"), "a new snapshot")
            # The new connection gets the session back: detail level on, windows re-asked for.
            await wait_for(app, pilot, lambda: len(fake.sent("set_detail_level")) == 2, "detail")
            assert fake.sent("set_detail_level")[-1] == {"type": "set_detail_level", "detail": True}
            await pilot.press("q")
            await wait_for(app, pilot, lambda: not app.is_running, "q to quit")
    finally:
        await fake.stop()


async def test_ctrl_c_quits_even_from_the_search_prompt():
    fake = await ScriptedServer().start()
    app = TopApp(f"http://127.0.0.1:{fake.port}", "1.2.3", refresh_s=0.1)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(app, pilot, on_screen(app, "Connected"), "the connection")
            await pilot.press("slash", "q")  # q is text in the prompt
            assert app.is_running and "Type: q" in line(app, 23)
            await pilot.press("ctrl+c")
            await wait_for(app, pilot, lambda: not app.is_running, "ctrl+c to quit")
    finally:
        await fake.stop()


# -- a real server ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def require_events(admin_url: str) -> None:
    try:
        async with connect(admin_url.replace("http", "ws", 1) + "/events", open_timeout=5):
            pass
    except InvalidStatus as exc:
        if exc.response.status_code == 404:
            pytest.skip("the server has no admin /events WebSocket yet")
        raise


@pytest.fixture
def real_server(tmp_path):
    # A fixed admin port, so that a restarted server is found at the same --url.
    server = ZizqServer(tmp_path / "root", "--admin-port", str(free_port())).start()
    yield server
    server.stop()


async def test_live_counts_rows_and_actions_against_a_real_server(real_server):
    await require_events(real_server.admin_url)
    app = TopApp(real_server.admin_url, "0.0.0", refresh_s=0.1)
    with Api(real_server.url) as api:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(app, pilot, on_screen(app, "Queue: 0 in-flight, 0 ready"), "counts")
            assert "Tier: free" in line(app, 2)
            first = api.enqueue(queue="emails", type="send_welcome", payload={"to": "a@x"})
            api.enqueue(queue="billing", type="charge_card")
            api.enqueue(queue="billing", type="refund")
            await wait_for(app, pilot, on_screen(app, "0 in-flight, 3 ready"), "3 ready")
            await pilot.press("tab")
            await wait_for(app, pilot, on_screen(app, first["id"]), "the ready rows")

            take = TakeStream(real_server.url, queues="emails")
            try:
                taken = take.next_job()
                assert taken["id"] == first["id"]
                await wait_for(app, pilot, on_screen(app, "1 in-flight, 2 ready"), "in flight")
                await pilot.press("shift+tab")
                await wait_for(app, pilot, on_screen(app, first["id"]), "the in-flight row")
                await pilot.press("i")
                await wait_for(app, pilot, on_screen(app, '"to": "a@x"'), "the payload")
                await pilot.press("i")
                assert api.ack(first["id"]) in (200, 204)
                await wait_for(app, pilot, on_screen(app, "0 in-flight, 2 ready"), "the ack")
            finally:
                take.close()

            await pilot.press("tab")  # Ready
            await pilot.press("slash", *"refund", "enter")
            await wait_for(app, pilot, lambda: app.model.pinned is not None, "a search match")
            assert app.model.selected()["job_type"] == "refund"
            await pilot.press("escape")
            assert app.model.pinned is None
            await pilot.press("g", "D", "y")
            await wait_for(app, pilot, on_screen(app, "0 in-flight, 1 ready"), "the delete")
            status, _body, _ = api.get("/jobs/count")
            assert status == 200

            await pilot.press("p")
            assert "PAUSED" in line(app, 1)
            late = api.enqueue(queue="billing", type="late_arrival")
            await wait_for(app, pilot, on_screen(app, "0 in-flight, 2 ready"), "live totals")
            assert late["id"] not in app.screen_text()  # the rows stay frozen
            await pilot.press("p")
            await wait_for(app, pilot, on_screen(app, late["id"]), "rows after resume")

            real_server.stop()
            await wait_for(app, pilot, on_screen(app, "Disconnected"), "the disconnect")
            real_server.start()
            await wait_for(app, pilot, on_screen(app, "0 in-flight, 2 ready"), "the reconnect")
            assert line(app, 1).startswith("\u25cf Connected")


async def test_free_tier_caps_lists_at_ten_rows(real_server):
    await require_events(real_server.admin_url)
    with Api(real_server.url) as api:
        for number in range(12):
            api.enqueue(type=f"job_{number:02}")
    app = TopApp(real_server.admin_url, "0.0.0", refresh_s=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(app, pilot, on_screen(app, "12 ready"), "the counts")
        await pilot.press("tab")
        await wait_for(app, pilot, on_screen(app, "capped at 10 jobs"), "the cap message")
        assert "Upgrade to a pro license to see everything." in app.screen_text()
        await pilot.press("G")
        assert app.model.tab.cursor == 9
        await pilot.press("pagedown", "j", "end")
        assert app.model.tab.cursor == 9
        await pilot.press("k", "pageup", "home")
        assert app.model.tab.cursor == 0
        await asyncio.sleep(0)  # let the last redraw happen before the harness exits
