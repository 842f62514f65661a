"""HTTP edge cases over raw sockets: HTTP/1.0, broken chunked bodies, garbage and oversized
requests, malformed HTTP/2 framing. None may get a 5xx or wedge the listener."""

from __future__ import annotations

import socket
import time

import h2.config
import h2.connection
import h2.events
import httpx
import orjson
import pytest

from tests.adversarial.helpers import health_latency

JOB = orjson.dumps({"queue": "edge", "type": "t", "payload": {"n": 1}})


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def exchange(url: str, data: bytes, timeout: float = 5.0, shut: bool = False) -> bytes:
    """Send raw bytes, return everything the server sends until it closes or goes quiet."""
    with socket.create_connection(_address(url), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if shut:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may close before reading everything (oversized input)
        sock.settimeout(2.0)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                break
            if not chunk:
                break
            out += chunk
            if _complete(out):
                break
        return out


def _complete(out: bytes) -> bool:
    head, sep, body = out.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def status_of(response: bytes) -> int | None:
    """The status code of a raw response, or None if the server sent nothing."""
    if not response:
        return None
    parts = response.split(b" ", 2)
    assert parts[0].startswith(b"HTTP/"), response[:200]
    return int(parts[1])


def job_count(url: str) -> int:
    return httpx.get(f"{url}/jobs/count", timeout=10).json()["count"]


def assert_healthy(url: str) -> None:
    assert health_latency(url) < 1.0


# --- HTTP/1.0 ------------------------------------------------------------------------


def test_http10_get_health(server):
    for url in (server.url, server.admin_url):
        response = exchange(url, b"GET /health HTTP/1.0\r\n\r\n")
        assert status_of(response) == 200, response
        assert response.endswith(b'{"status":"ok"}'), response


def test_http10_post_job(server):
    request = (
        b"POST /jobs HTTP/1.0\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(JOB), JOB)
    )
    response = exchange(server.url, request)
    assert status_of(response) == 201, response
    job = orjson.loads(response.partition(b"\r\n\r\n")[2])
    got = httpx.get(f"{server.url}/jobs/{job['id']}", timeout=10)
    assert got.status_code == 200 and got.json()["payload"] == {"n": 1}


# --- broken chunked bodies -------------------------------------------------------------

CHUNKED_HEAD = (
    b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
WHOLE_CHUNK = b"%x\r\n%s\r\n" % (len(JOB), JOB)

BAD_CHUNKED_BODIES = {
    "size-not-hex": b"zz\r\n" + JOB + b"\r\n0\r\n\r\n",
    "size-negative": b"-1\r\n" + JOB + b"\r\n0\r\n\r\n",
    "size-overflows": b"f" * 40 + b"\r\n" + JOB + b"\r\n0\r\n\r\n",
    "size-empty": b"\r\n" + JOB + b"\r\n0\r\n\r\n",
    "size-with-space": b"2 5\r\n" + JOB + b"\r\n0\r\n\r\n",
    "data-longer-than-size": b"3\r\n" + JOB + b"\r\n0\r\n\r\n",
    "no-crlf-after-data": b"%x\r\n%sXX0\r\n\r\n" % (len(JOB), JOB),
    # A whole, valid job first: it must not be stored from a body that then breaks.
    "valid-chunk-then-bad-size": WHOLE_CHUNK + b"zz\r\n\r\n",
    "valid-chunk-then-overflow": WHOLE_CHUNK + b"f" * 40 + b"\r\n\r\n",
    "valid-chunk-then-eof": WHOLE_CHUNK,
}


@pytest.mark.parametrize("body", BAD_CHUNKED_BODIES.values(), ids=BAD_CHUNKED_BODIES.keys())
def test_malformed_chunked_body_is_400_and_stores_nothing(server, body):
    before = job_count(server.url)
    # "valid-chunk-then-eof" ends the body by closing our side, as a dying client would.
    response = exchange(server.url, CHUNKED_HEAD + body, shut=True)
    status = status_of(response)
    assert status is None or status == 400, response
    if status == 400:
        assert b'"error":"body: malformed or incomplete' in response, response
    assert job_count(server.url) == before
    assert_healthy(server.url)


def test_valid_chunked_body_still_works(server):
    response = exchange(server.url, CHUNKED_HEAD + WHOLE_CHUNK + b"0\r\n\r\n")
    assert status_of(response) == 201, response


# --- garbage, conflicting framing, oversized heads --------------------------------------

GARBAGE = {
    "garbage-line": b"GARBAGE\r\n\r\n",
    "method-only": b"GET\r\n\r\n",
    "no-version": b"GET /health\r\n\r\n",
    "unknown-version": b"GET /health HTTP/9.9\r\n\r\n",
    "binary": bytes(range(256)) * 4,
    "nul-in-path": b"GET /he\x00alth HTTP/1.1\r\nHost: x\r\n\r\n",
    "bare-lf": b"GET /health HTTP/1.1\nHost: x\n\n",
    "space-before-colon": b"GET /health HTTP/1.1\r\nHost : x\r\n\r\n",
    "header-without-colon": b"GET /health HTTP/1.1\r\nHost x\r\n\r\n",
    "obs-fold": b"GET /health HTTP/1.1\r\nHost: x\r\n  folded\r\n\r\n",
    "te-and-cl": (
        b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + WHOLE_CHUNK + b"0\r\n\r\n"
    ),
    "two-content-lengths": (
        b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: %d\r\n\r\n%s"
        % (len(JOB), JOB)
    ),
    # hyper skips chunk extensions unread: the body is whole, so 201 is right too.
    "control-bytes-in-chunk-extension": CHUNKED_HEAD
    + b"%x;\x00\x01\r\n%s\r\n0\r\n\r\n" % (len(JOB), JOB),
    "negative-content-length": b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    "huge-content-length": (
        b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n"
    ),
    "unknown-transfer-encoding": (
        b"POST /jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n" + JOB
    ),
    "absolute-form-garbage": b"GET http://[::1 HTTP/1.1\r\nHost: x\r\n\r\n",
    "huge-uri": b"GET /health?" + b"a" * 1_000_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "huge-header": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2_000_000 + b"\r\n\r\n",
    "many-headers": (
        b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(20_000))
    )
    + b"\r\n",
}


@pytest.mark.parametrize("data", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_never_gets_5xx(server, data):
    before = job_count(server.url)
    response = exchange(server.url, data, shut=True)
    status = status_of(response)
    assert status is None or status < 500, response[:300]
    assert_healthy(server.url)
    assert job_count(server.url) in (before, before + 1)  # te-and-cl, chunk extension: a whole job


# --- HTTP/2 framing -----------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


SETTINGS_EMPTY = _frame(4, 0, 0, b"")


def _h2_headers(conn: h2.connection.H2Connection, stream: int, path: str, **extra) -> None:
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", path)]
    conn.send_headers(stream, headers + list(extra.items()), end_stream=True)


def _h2_client() -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    config.validate_outbound_headers = False
    config.normalize_outbound_headers = False
    return h2.connection.H2Connection(config=config)


def _h2_statuses(sock: socket.socket, conn, opened: int = 1, timeout: float = 5.0) -> dict:
    """Read until `opened` streams ended or the server closed; returns status by stream."""
    statuses: dict[int, int] = {}
    ended: set[int] = set()
    deadline = time.monotonic() + timeout
    sock.settimeout(1.0)
    while time.monotonic() < deadline and len(ended) < opened:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not data:
            break
        try:
            events = conn.receive_data(data)
        except Exception:  # a GOAWAY for our own bad framing may upset the client
            break
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                statuses[event.stream_id] = int(dict(event.headers)[":status"])
            elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                ended.add(event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                return statuses
        sock.sendall(conn.data_to_send())
    return statuses


RAW_H2 = {
    "garbage-after-preface": PREFACE + b"\xff" * 64,
    "data-on-stream-0": PREFACE + SETTINGS_EMPTY + _frame(0, 1, 0, b"abc"),
    "headers-garbage-hpack": PREFACE + SETTINGS_EMPTY + _frame(1, 5, 1, b"\xff\xff\xff\xff"),
    "settings-bad-length": PREFACE + _frame(4, 0, 0, b"\x00\x01\x00"),
    "window-update-zero": PREFACE + SETTINGS_EMPTY + _frame(8, 0, 0, b"\x00\x00\x00\x00"),
    "even-stream-id": PREFACE + SETTINGS_EMPTY + _frame(1, 5, 2, b"\x82\x86\x84"),
    "huge-frame-length": PREFACE + SETTINGS_EMPTY + b"\xff\xff\xff\x00\x00\x00\x00\x00\x01",
    "continuation-without-headers": PREFACE + SETTINGS_EMPTY + _frame(9, 4, 1, b"\x82"),
    "rst-idle-stream": PREFACE + SETTINGS_EMPTY + _frame(3, 0, 7, b"\x00\x00\x00\x08"),
    "ping-bad-length": PREFACE + SETTINGS_EMPTY + _frame(6, 0, 0, b"\x00" * 5),
}


@pytest.mark.parametrize("data", RAW_H2.values(), ids=RAW_H2.keys())
def test_malformed_h2_frames_never_wedge(server, data):
    response = exchange(server.url, data, shut=False, timeout=3.0)
    assert not response.startswith(b"HTTP/1.1 5"), response[:200]
    assert_healthy(server.url)


H2_REQUESTS = {
    "missing-path": [(":method", "GET"), (":scheme", "http"), (":authority", "x")],
    "missing-method": [(":scheme", "http"), (":authority", "x"), (":path", "/health")],
    "unknown-pseudo": [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/health"),
        (":bogus", "1"),
    ],
    "uppercase-header": [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/health"),
        ("X-Upper", "1"),
    ],
    "connection-header": [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/health"),
        ("connection", "keep-alive"),
    ],
    "relative-path": [(":method", "GET"), (":scheme", "http"), (":path", "health")],
    "content-length-mismatch": [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/jobs"),
        ("content-type", "application/json"),
        ("content-length", "5"),
    ],
}


@pytest.mark.parametrize("headers", H2_REQUESTS.values(), ids=H2_REQUESTS.keys())
def test_malformed_h2_requests_never_5xx(server, headers):
    before = job_count(server.url)
    conn = _h2_client()
    conn.initiate_connection()
    with socket.create_connection(_address(server.url), timeout=5) as sock:
        sock.sendall(conn.data_to_send())
        post = any(value == "POST" for _, value in headers)
        conn.send_headers(1, headers, end_stream=not post)
        if post:
            conn.send_data(1, JOB, end_stream=True)
        sock.sendall(conn.data_to_send())
        statuses = _h2_statuses(sock, conn, timeout=3)
    assert all(status < 500 for status in statuses.values()), statuses
    assert job_count(server.url) == before
    assert_healthy(server.url)


def test_h2_rapid_reset_flood(server):
    """Open and reset thousands of streams (CVE-2023-44487): the server stays responsive."""
    conn = _h2_client()
    conn.initiate_connection()
    with socket.create_connection(_address(server.url), timeout=5) as sock:
        sock.sendall(conn.data_to_send())
        stream = 1
        for _ in range(20):
            for _ in range(250):
                _h2_headers(conn, stream, "/jobs?limit=2000")
                conn.reset_stream(stream)
                stream += 2
            try:
                sock.sendall(conn.data_to_send())
            except OSError:
                break  # the server may GOAWAY an abusive client: fine
            assert_healthy(server.url)
    assert_healthy(server.url)


def test_h2_huge_header_block(server):
    """A header block far over the limit, split over CONTINUATION frames, is refused."""
    big = b"\x00\x05x-big" + b"\x7f" + (1 << 21).to_bytes(4, "big")  # nonsense literal
    frames = PREFACE + SETTINGS_EMPTY + _frame(1, 0, 1, b"\x82\x86\x84" + big[:16_000])
    frames += b"".join(_frame(9, 0, 1, b"a" * 16_000) for _ in range(200))
    response = exchange(server.url, frames, timeout=3.0)
    assert not response.startswith(b"HTTP/1.1 5")
    assert_healthy(server.url)
