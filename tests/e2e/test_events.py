"""The admin `/events` WebSocket against a real server (docs/events-protocol.md).

Two servers per module (free tier, pro); each test starts from POST /reset.
Every receive has a timeout.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.e2e.zizq_process import Api, TakeStream, ZizqServer
from tests.licensing import mint
from zizq.api.health import BUILD_HEADER

RECV_S = 5.0


def events_url(server: ZizqServer) -> str:
    return server.admin_url.replace("http://", "ws://") + "/events"


class Viewer:
    def __init__(self, server: ZizqServer) -> None:
        self.ws: ClientConnection = connect(events_url(server), open_timeout=RECV_S)
        self.ws.__enter__()  # the sync client's context protocol; closed by close()

    def recv(self, timeout: float = RECV_S) -> dict:
        return json.loads(self.ws.recv(timeout=timeout))

    def send(self, message: dict) -> None:
        self.ws.send(json.dumps(message))

    def until(self, pred: Callable[[dict], bool], timeout: float = RECV_S) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching message")
            msg = self.recv(left)
            if pred(msg):
                return msg

    def event(self, name: str, timeout: float = RECV_S) -> dict:
        return self.until(lambda m: m["event"] == name, timeout)

    def subscribe(self, list_name: str, anchor: dict, limit: int) -> dict:
        self.send({"type": "subscribe", "list": list_name, "anchor": anchor, "limit": limit})
        return self.event("job_snapshot")

    def find(self, list_name: str, anchor: dict, direction: str, query=None, limit=5) -> dict:
        message = {"type": "find", "list": list_name, "anchor": anchor, "direction": direction}
        message.update(limit=limit, query=query or {})
        self.send(message)
        return self.event("find_result")

    def close(self) -> None:
        self.ws.close()


def ids(window: dict) -> list[str]:
    return [job["id"] for job in window["items"]]


@pytest.fixture(scope="module")
def free_server(tmp_path_factory) -> Iterator[ZizqServer]:
    server = ZizqServer(tmp_path_factory.mktemp("events-free")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pro_server(tmp_path_factory) -> Iterator[ZizqServer]:
    server = ZizqServer(tmp_path_factory.mktemp("events-pro"), "--license-key", mint(tier="pro"))
    try:
        server.start()
    except Exception:
        if "license" in server.output:
            pytest.skip("this build does not trust development licenses")
        raise
    yield server
    server.stop()


@pytest.fixture
def free(free_server) -> Iterator[tuple[ZizqServer, Api]]:
    with Api(free_server.url) as api:
        assert api.post("/reset")[0] == 204
        yield free_server, api


@pytest.fixture
def pro(pro_server) -> Iterator[tuple[ZizqServer, Api]]:
    with Api(pro_server.url) as api:
        assert api.post("/reset")[0] == 204
        yield pro_server, api


def bulk(api: Api, jobs: list[dict]) -> list[str]:
    status, body, _ = api.post("/jobs/bulk", {"jobs": jobs})
    assert status == 201, body
    return [job["id"] for job in body["jobs"]]


def ready_jobs(api: Api, count: int, queue="q", type="t", **fields) -> list[str]:
    return bulk(
        api, [{"queue": queue, "type": type, "payload": {"n": i}, **fields} for i in range(count)]
    )


# -- connect, heartbeat, totals ---------------------------------------------------------


def test_snapshot_then_heartbeat_with_server_status(free):
    server, api = free
    ready = ready_jobs(api, 3)
    api.enqueue("q", "later", ready_at=int(time.time() * 1000) + 3_600_000)
    viewer = Viewer(server)
    snapshot = viewer.recv()
    assert snapshot["event"] == "job_snapshot"
    assert ids(snapshot["ready"]) == ready
    assert snapshot["ready"]["total"] == 3 and snapshot["scheduled"]["total"] == 1
    assert [j["job_type"] for j in snapshot["scheduled"]["items"]] == ["later"]
    status = snapshot["server"]
    assert status["tier"] == "free" and status["subscription_limit"] == 10
    assert (status["total_ready"], status["total_in_flight"], status["total_scheduled"]) == (
        3,
        0,
        1,
    )
    _, _, response = api.get("/version")  # the build version, as in its header
    assert status["version"] == response.headers[BUILD_HEADER]
    started = time.monotonic()
    beat = viewer.event("heartbeat", timeout=4)
    assert 1.0 < time.monotonic() - started < 3.5
    assert beat["server"]["uptime_ms"] > status["uptime_ms"]
    viewer.close()


def test_plain_get_is_426(free):
    server, _ = free
    with Api(server.admin_url) as admin:
        status, body, _ = admin.get("/events")
    assert status == 426 and "WebSocket" in body["error"]


# -- job_changed ----------------------------------------------------------------------


def test_job_changed_on_enqueue_take_and_ack(free):
    server, api = free
    viewer = Viewer(server)
    viewer.recv()
    job = api.enqueue("q", "t")
    added = viewer.until(lambda m: m["event"] == "job_changed" and m["id"] == job["id"])
    assert added["status"] == "ready" and added["job"]["queue"] == "q"
    assert added["server"]["total_ready"] == 1
    take = TakeStream(server.url, prefetch=1)
    try:
        assert take.next_job()["id"] == job["id"]
        seen = set()
        while {"ready_removed", "in_flight"} - seen:
            msg = viewer.until(lambda m: m["event"] == "job_changed" and m["id"] == job["id"])
            seen.add(msg["status"])
        assert api.ack(job["id"]) == 204
        seen = set()
        while {"completed", "in_flight_removed"} - seen:
            msg = viewer.until(lambda m: m["event"] == "job_changed" and m["id"] == job["id"])
            seen.add(msg["status"])
    finally:
        take.close()
    viewer.close()


# -- subscribe windows ----------------------------------------------------------------


def test_subscribe_windows_head_tail_offset_around(pro):
    server, api = pro
    jobs = ready_jobs(api, 30)
    viewer = Viewer(server)
    assert ids(viewer.recv()["ready"]) == jobs  # pro: the default window holds all 30
    head = viewer.subscribe("ready", {"kind": "head"}, 5)["ready"]
    assert ids(head) == jobs[:5] and head["first_position"] == 0 and head["total"] == 30
    tail = viewer.subscribe("ready", {"kind": "tail"}, 5)["ready"]
    assert ids(tail) == jobs[-5:] and tail["first_position"] == 25
    offset = viewer.subscribe("ready", {"kind": "offset", "offset": 10}, 5)["ready"]
    assert ids(offset) == jobs[10:15] and offset["first_position"] == 10
    clamped = viewer.subscribe("ready", {"kind": "offset", "offset": 1000}, 5)["ready"]
    assert ids(clamped) == jobs[-5:]
    around = viewer.subscribe("ready", {"kind": "around", "id": jobs[20]}, 5)["ready"]
    assert ids(around) == jobs[18:23] and around["resolved_anchor"] == jobs[20]
    gone = {"kind": "around", "id": "03hcfkwjrk2dhyw1v1ob95hgz"}
    lost = viewer.subscribe("ready", gone, 5)["ready"]
    assert lost["items"] == [] and "resolved_anchor" not in lost and lost["total"] == 30
    fallback = viewer.subscribe("ready", {**gone, "fallback": "tail"}, 5)["ready"]
    assert ids(fallback) == jobs[-5:]
    # The anchor is kept: a job of better priority shifts the window's position by one.
    first = api.enqueue("q", "t", priority=1)
    viewer.subscribe("ready", {"kind": "head"}, 1)
    again = viewer.subscribe("ready", {"kind": "around", "id": jobs[20]}, 5)["ready"]
    assert ids(again) == jobs[18:23] and again["first_position"] == 19
    assert ids(viewer.subscribe("ready", {"kind": "head"}, 2)["ready"]) == [first["id"], jobs[0]]
    viewer.close()


def test_detail_level(pro):
    server, api = pro
    job = api.enqueue("q", "t", payload={"hello": "world"}, retry_limit=3)
    viewer = Viewer(server)
    plain = viewer.recv()["ready"]["items"][0]
    assert "payload" not in plain and "retry_limit" not in plain
    viewer.send({"type": "set_detail_level", "detail": True})
    detailed = viewer.event("job_snapshot")["ready"]["items"][0]
    assert detailed["id"] == job["id"] and detailed["payload"] == {"hello": "world"}
    assert detailed["retry_limit"] == 3 and detailed["status"] == "ready"
    viewer.close()


# -- find -----------------------------------------------------------------------------


def test_find_forward_backward_locate(pro):
    server, api = pro
    jobs = bulk(
        api,
        [
            {"queue": q, "type": t, "payload": {}}
            for q, t in [("mail", "send"), ("web", "render"), ("mail", "bounce"), ("web", "send")]
            * 3
        ],
    )
    viewer = Viewer(server)
    viewer.recv()
    start = {"kind": "start"}
    found = viewer.find("ready", start, "forward", {"queues": ["web"], "types": ["sen"]})
    assert found["matched_position"] == 3 and found["window"]["resolved_anchor"] == jobs[3]
    assert jobs[3] in ids(found["window"])
    after = viewer.find("ready", {"kind": "job_id", "id": jobs[3]}, "forward", {"types": ["send"]})
    assert after["matched_position"] == 4  # mail/send: OR across types, queues unconstrained
    either = {"queues": ["nothing", "mail"], "types": ["bounce"]}
    back = viewer.find("ready", {"kind": "end"}, "backward", either)
    assert back["matched_position"] == 10
    before = viewer.find("ready", {"kind": "job_id", "id": jobs[10]}, "backward", either)
    assert before["matched_position"] == 6
    none = viewer.find("ready", start, "forward", {"queues": ["mail"], "types": ["render"]})
    assert none["matched_position"] is None and none["window"]["items"] == []
    here = viewer.find("ready", {"kind": "job_id", "id": jobs[7]}, "locate", limit=3)
    assert here["matched_position"] == 7 and ids(here["window"]) == jobs[6:9]
    assert viewer.find("ready", start, "backward")["matched_position"] is None
    viewer.close()


# -- delete ---------------------------------------------------------------------------


def test_delete_job_over_the_socket(free):
    server, api = free
    keep, doomed = ready_jobs(api, 2)
    viewer = Viewer(server)
    viewer.recv()
    viewer.send({"type": "delete_job", "id": doomed})
    removed = viewer.until(lambda m: m["event"] == "job_changed" and m["id"] == doomed)
    assert removed["status"] == "ready_removed"
    assert api.get(f"/jobs/{doomed}")[0] == 404 and api.get(f"/jobs/{keep}")[0] == 200
    viewer.send({"type": "delete_job", "id": doomed})
    error = viewer.event("error")
    assert error["error"] == "job not found" and error["id"] == doomed
    viewer.close()


# -- tiers ------------------------------------------------------------------------------


def test_free_tier_sees_the_first_10_rows_pro_sees_all(free, pro):
    (free_srv, free_api), (pro_srv, pro_api) = free, pro
    free_jobs = ready_jobs(free_api, 25)
    pro_jobs = ready_jobs(pro_api, 25)
    viewer = Viewer(free_srv)
    snapshot = viewer.recv()
    assert ids(snapshot["ready"]) == free_jobs[:10] and snapshot["ready"]["total"] == 25
    assert ids(viewer.subscribe("ready", {"kind": "head"}, 200)["ready"]) == free_jobs[:10]
    tail = viewer.subscribe("ready", {"kind": "tail"}, 5)["ready"]
    assert ids(tail) == free_jobs[5:10]  # the end of what the free tier shows
    deep = viewer.subscribe("ready", {"kind": "around", "id": free_jobs[20]}, 5)["ready"]
    assert deep["items"] == []
    found = viewer.find("ready", {"kind": "job_id", "id": free_jobs[9]}, "forward")
    assert found["matched_position"] is None
    viewer.close()
    viewer = Viewer(pro_srv)
    snapshot = viewer.recv()
    assert "subscription_limit" not in snapshot["server"] and snapshot["server"]["tier"] == "pro"
    assert ids(snapshot["ready"]) == pro_jobs
    deep = viewer.subscribe("ready", {"kind": "around", "id": pro_jobs[20]}, 5)["ready"]
    assert ids(deep) == pro_jobs[18:23]
    viewer.close()


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame, words",
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"type": "dance"}', "unknown type"),
        ('{"type": "subscribe", "list": "done", "anchor": {"kind": "head"}}', "list:"),
        ('{"type": "subscribe", "list": "ready", "anchor": {"kind": "up"}}', "anchor.kind"),
        (
            '{"type": "subscribe", "list": "ready", "anchor": {"kind": "offset", "offset": -1}}',
            "offset",
        ),
        ('{"type": "subscribe", "list": "ready", "limit": 0}', "limit"),
        ('{"type": "set_detail_level", "detail": "yes"}', "detail"),
        ('{"type": "find", "list": "ready", "direction": "sideways"}', "direction"),
        (
            '{"type": "find", "list": "ready", "direction": "forward", "query": {"types": [1]}}',
            "types",
        ),
        ('{"type": "delete_job"}', "delete_job.id"),
    ],
)
def test_bad_messages_get_an_error_and_the_stream_goes_on(free, frame, words):
    server, _ = free
    viewer = Viewer(server)
    viewer.recv()
    viewer.ws.send(frame)
    error = viewer.event("error")
    assert words in error["error"]
    viewer.subscribe("ready", {"kind": "head"}, 5)  # still answering
    viewer.close()


def test_binary_frame_and_huge_frame(free):
    server, _ = free
    viewer = Viewer(server)
    viewer.recv()
    viewer.ws.send(b"\x00\x01")
    assert "binary" in viewer.event("error")["error"]
    viewer.ws.send(json.dumps({"type": "find", "pad": "x" * 100_000}))
    assert "too big" in viewer.event("error")["error"]
    with pytest.raises(ConnectionClosed) as closed:
        viewer.until(lambda m: False)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    other = Viewer(server)  # the server is fine
    assert other.recv()["event"] == "job_snapshot"
    other.close()


# -- a client that never reads ------------------------------------------------------------


def _raw_viewer(server: ZizqServer) -> socket.socket:
    """A WebSocket client that subscribes with detail on, then never reads a byte."""
    host, port = server.admin_url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=RECV_S)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /events HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    text = json.dumps({"type": "set_detail_level", "detail": True}).encode()
    mask = os.urandom(4)
    sock.sendall(
        bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    )
    return sock


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc")
def test_a_client_that_never_reads_costs_bounded_memory(pro):
    server, api = pro
    big = "x" * 50_000
    jobs = bulk(api, [{"queue": "q", "type": "t", "payload": {"b": big}} for _ in range(40)])
    stuck = _raw_viewer(server)
    reader = Viewer(server)
    reader.recv()
    before = _rss_mb(server.proc.pid)
    # Each round moves rows (a snapshot with ~1 MiB of payloads for the stuck client).
    deadline = time.monotonic() + 3.0
    rounds = 0
    while time.monotonic() < deadline:
        job_id = jobs[rounds % len(jobs)]
        assert api.request("PATCH", f"/jobs/{job_id}", {"priority": 100 + rounds % 7})[0] == 200
        rounds += 1
        time.sleep(0.02)
    grown = _rss_mb(server.proc.pid) - before
    # ~15 snapshots of > 1 MiB were due to the stuck client; it holds at most a few.
    assert grown < 12, f"server grew {grown:.1f} MiB"
    assert reader.event("heartbeat", timeout=4)["server"]["total_ready"] == 40
    stuck.close()
    reader.close()
