"""Connection exhaustion: many idle connections, slowloris, idle timeouts, and an HTTP/2
client that never opens its flow-control window. The listener must keep serving others,
close idle connections after --idle-timeout, and bound what one connection makes it hold."""

from __future__ import annotations

import contextlib
import select
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import orjson
import pytest

from tests.adversarial.helpers import health_latency
from tests.e2e.zizq_process import TakeStream

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="needs /proc and TCP_INFO (Linux)"
)

MANY = 1500  # well past Granian's former cap of 1,024 connections per listener


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@contextlib.contextmanager
def _sockets(url: str, count: int) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(_address(url), timeout=10))
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _worst_health(url: str, rounds: int = 10, pause: float = 0.1) -> float:
    worst = 0.0
    for _ in range(rounds):
        worst = max(worst, health_latency(url))
        time.sleep(pause)
    return worst


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_idle_connections_do_not_block_the_listener(server):
    with _sockets(server.url, MANY):
        worst = _worst_health(server.url)
    print(f"/health worst latency with {MANY} idle connections: {worst * 1000:.1f} ms")
    assert worst < 1.0


def test_serves_well_past_1024_connections_at_once(server):
    """Every one of MANY open connections gets an answer while all stay open."""
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with _sockets(server.url, MANY) as socks:
        for sock in socks:
            sock.sendall(request)
        answered = 0
        pending = {sock: b"" for sock in socks}
        with selectors.DefaultSelector() as selector:  # select() stops at fd 1,024
            for sock in socks:
                selector.register(sock, selectors.EVENT_READ)
            # Well within the 30 s after which the old server freed slots by timing out.
            deadline = time.monotonic() + 15
            while pending and time.monotonic() < deadline:
                for key, _ in selector.select(1.0):
                    sock = key.fileobj
                    data = sock.recv(65536)
                    assert data, "server closed a connection instead of answering"
                    pending[sock] += data
                    if pending[sock].endswith(b'{"status":"ok"}'):
                        assert pending[sock].startswith(b"HTTP/1.1 200"), pending[sock]
                        answered += 1
                        del pending[sock]
                        selector.unregister(sock)
        assert answered == MANY, f"only {answered} of {MANY} connections answered"
        assert _worst_health(server.url, rounds=3) < 1.0


def test_slowloris_does_not_stall_other_clients(server):
    """MANY connections dribble a request head one byte at a time; others are unaffected."""
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    stop = threading.Event()
    with _sockets(server.url, MANY) as socks:

        def dribble() -> None:
            offset = 0
            while not stop.is_set() and offset < len(head):
                for sock in socks:
                    with contextlib.suppress(OSError):
                        sock.send(head[offset : offset + 1])
                offset += 1
                stop.wait(0.2)

        thread = threading.Thread(target=dribble, daemon=True)
        thread.start()
        try:
            time.sleep(1.0)
            worst = _worst_health(server.url, rounds=20, pause=0.2)
        finally:
            stop.set()
            thread.join(10)
    print(f"/health worst latency under slowloris ({MANY} connections): {worst * 1000:.1f} ms")
    assert worst < 1.0


def _closed_after(sock: socket.socket, limit: float) -> float | None:
    """Seconds until the server closed `sock` (reading and discarding), None if it did not."""
    started = time.monotonic()
    sock.setblocking(False)
    while time.monotonic() - started < limit:
        ready, _, _ = select.select([sock], [], [], 0.2)
        if ready:
            try:
                if not sock.recv(65536):
                    return time.monotonic() - started
            except ConnectionResetError:
                return time.monotonic() - started
    return None


def _close_times(socks: dict[str, socket.socket], started: float, limit: float) -> dict:
    """Seconds from `started` until the server closed each socket (reads are discarded)."""
    closed: dict[str, float] = {}
    names = {sock: name for name, sock in socks.items()}
    with selectors.DefaultSelector() as selector:
        for sock in socks.values():
            selector.register(sock, selectors.EVENT_READ)
        while names and time.monotonic() - started < limit:
            for key, _ in selector.select(0.2):
                try:
                    data = key.fileobj.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    closed[names.pop(key.fileobj)] = time.monotonic() - started
                    selector.unregister(key.fileobj)
    return closed


def _h2_connection(url: str, window: int | None = None) -> tuple[socket.socket, object]:
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config=config)
    if window is not None:
        conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
        )
    conn.initiate_connection()
    sock = socket.create_connection(_address(url), timeout=10)
    sock.sendall(conn.data_to_send())
    return sock, conn


def _h2_get(sock: socket.socket, conn, stream: int, path: str) -> None:
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", path)]
    conn.send_headers(stream, headers, end_stream=True)
    sock.sendall(conn.data_to_send())


IDLE_FLAGS = ("--idle-timeout", "2s", "--heartbeat-interval", "500ms")


@linux_only
def test_idle_connections_are_closed_after_the_timeout(start_server):
    server = start_server(*IDLE_FLAGS)
    with httpx.Client(base_url=server.url) as client:
        client.post("/jobs", json={"queue": "idle", "type": "t", "payload": {}})
    started = time.monotonic()
    silent = socket.create_connection(_address(server.url))
    half_preface = socket.create_connection(_address(server.url))
    half_preface.sendall(b"PRI * HTTP/2.0\r\n")  # the protocol cannot be told yet
    keep_alive = socket.create_connection(_address(server.url))
    keep_alive.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    h2_sock, h2_conn = _h2_connection(server.url)
    _h2_get(h2_sock, h2_conn, 1, "/health")
    admin_silent = socket.create_connection(_address(server.admin_url))
    stream = TakeStream(server.url, queues="never-used")
    try:
        watched = {
            "silent": silent,
            "half-preface": half_preface,
            "keep-alive": keep_alive,
            "h2": h2_sock,
            "admin-silent": admin_silent,
        }
        closed = _close_times(watched, started, limit=10.0)
        print(f"closed after (s): { {name: round(t, 2) for name, t in closed.items()} }")
        for name in watched:
            assert name in closed, f"{name} connection still open after 10 s"
            assert 1.5 < closed[name] < 8.0, (name, closed[name])
        # The take stream carries heartbeats: it outlives the timeout several times over.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert stream.next_item(2) is TakeStream.HEARTBEAT
    finally:
        stream.close()
        for sock in (silent, half_preface, keep_alive, h2_sock, admin_silent):
            sock.close()


@linux_only
def test_idle_timeout_is_measured_from_the_last_data(start_server):
    """A connection that keeps talking is never cut; silence of --idle-timeout closes it."""
    server = start_server(*IDLE_FLAGS)
    sock = socket.create_connection(_address(server.url))
    try:
        started = time.monotonic()
        for _ in range(8):  # 4 s of one request every 0.5 s: twice the timeout, still open
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"200 OK" in sock.recv(65536)
            time.sleep(0.5)
        assert time.monotonic() - started > 3.5
        waited = _closed_after(sock, 10.0)
        assert waited is not None and 1.0 < waited < 8.0, waited
    finally:
        sock.close()


def _big_jobs(url: str, count: int = 2000, payload_bytes: int = 2500) -> None:
    filler = "x" * payload_bytes
    with httpx.Client(base_url=url, timeout=60) as client:
        for start in range(0, count, 500):
            jobs = [
                {"queue": "big", "type": "t", "payload": {"n": i, "pad": filler}}
                for i in range(start, min(start + 500, count))
            ]
            response = client.post("/jobs/bulk", json={"jobs": jobs})
            assert response.status_code in (200, 201), response.text


@linux_only
def test_h2_window_zero_client_cannot_pin_unbounded_memory(start_server):
    """200 streams of ~5 MB responses that the client never lets us send."""
    server = start_server("--no-admin")
    _big_jobs(server.url)
    size = len(httpx.get(f"{server.url}/jobs?limit=2000", timeout=30).content)
    pid = server.proc.pid
    before = _rss_kib(pid)
    sock, conn = _h2_connection(server.url, window=0)
    try:
        for i in range(200):
            _h2_get(sock, conn, 1 + 2 * i, "/jobs?limit=2000")
        # Let the server work on everything it will accept, reading (and discarding)
        # what it sends without ever granting flow-control credit.
        sock.setblocking(False)
        peak = before
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            ready, _, _ = select.select([sock], [], [], 0.2)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    if not sock.recv(1 << 20):
                        break
            peak = max(peak, _rss_kib(pid))
        worst = _worst_health(server.url, rounds=5)
    finally:
        sock.close()
    grown_mib = (peak - before) / 1024
    print(
        f"h2 window-0 attack: response {size / 1e6:.1f} MB x 200 streams; "
        f"RSS {before / 1024:.0f} MiB -> peak {peak / 1024:.0f} MiB (+{grown_mib:.0f} MiB); "
        f"/health worst {worst * 1000:.1f} ms"
    )
    assert size > 4_000_000
    assert grown_mib < 150, f"one connection pinned {grown_mib:.0f} MiB"
    assert worst < 1.0


def test_sigterm_is_clean_with_many_idle_connections(start_server):
    server = start_server()
    with _sockets(server.url, MANY), _sockets(server.admin_url, 100) as admin_socks:
        h2_sock, h2_conn = _h2_connection(server.url)
        _h2_get(h2_sock, h2_conn, 1, "/health")
        admin_socks[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.5)
        started = time.monotonic()
        code = server.stop(signal.SIGTERM, timeout=15)
        elapsed = time.monotonic() - started
        h2_sock.close()
    print(f"SIGTERM with {MANY} idle connections: exit {code} after {elapsed:.2f} s")
    assert code == 0, server.output
    assert elapsed < 8, elapsed
    assert "Traceback" not in server.output


def test_responses_are_whole_when_sent_in_pieces(server):
    """Large responses go out in chunks; they must arrive complete over h1 and h2."""
    _big_jobs(server.url, count=600)
    for http2 in (False, True):
        with httpx.Client(base_url=server.url, http1=not http2, http2=http2) as client:
            response = client.get("/jobs?limit=2000", timeout=30)
            assert response.status_code == 200
            assert int(response.headers["content-length"]) == len(response.content)
            assert len(orjson.loads(response.content)["jobs"]) == 600
