"""A small, fast HTTP/1.1 client for benchmarks: asyncio protocols on uvloop.

Hand-written request bytes, keep-alive, Content-Length and chunked responses,
and an endless chunked take stream split into NDJSON lines. It does no more
than the benchmarks need, so the load generator costs little CPU.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from collections.abc import Callable

import orjson


def request_bytes(
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str = "application/json",
    accept: str = "application/json",
) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nhost: bench\r\naccept: {accept}\r\n"
    if body is None:
        return (head + "\r\n").encode()
    head += f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def post_json(path: str, obj) -> bytes:
    return request_bytes("POST", path, orjson.dumps(obj))


class HttpError(RuntimeError):
    pass


class Connection(asyncio.Protocol):
    """One keep-alive connection; requests are answered in order (pipelining allowed)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiters: deque[asyncio.Future] = deque()
        self._head: tuple[int, int, bool] | None = None  # status, content-length, chunked
        self._chunks = bytearray()
        self._closed: asyncio.Future | None = None
        # Stream mode: once the head of a chunked response has arrived, every chunk's
        # data goes to this callback and the response never "ends".
        self.on_stream_data: Callable[[bytes], None] | None = None
        self._streaming = False

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, host, port)
        sock = conn.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc) -> None:
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(exc)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(HttpError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            self._parse()
        except Exception as exc:  # a parse error ends the connection loudly
            self.connection_lost(exc)
            if self.transport is not None:
                self.transport.close()

    # -- requests -----------------------------------------------------------

    def send(self, raw: bytes) -> asyncio.Future:
        """Write a request; the future resolves to (status, body)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        assert self.transport is not None
        self.transport.write(raw)
        return waiter

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        return await self.send(raw)

    async def open_stream(self, raw: bytes, on_data: Callable[[bytes], None]) -> int:
        """Send a request whose chunked response is endless; returns its status."""
        self.on_stream_data = on_data
        status, _ = await self.send(raw)
        return status

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- parsing --------------------------------------------------------------

    def _parse(self) -> None:
        buf = self._buf
        while True:
            if self._head is None:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                del buf[: end + 4]
                status = int(head[9:12])
                length = 0
                chunked = b"\r\ntransfer-encoding: chunked" in head
                at = head.find(b"\r\ncontent-length:")
                if at >= 0:
                    stop = head.find(b"\r\n", at + 2)
                    length = int(head[at + 17 : stop if stop >= 0 else None])
                self._head = (status, length, chunked)
                if chunked and self.on_stream_data is not None:
                    self._streaming = True
                    self._resolve(status, b"")
            status, length, chunked = self._head
            if not chunked:
                if len(buf) < length:
                    return
                body = bytes(buf[:length])
                del buf[:length]
                self._head = None
                self._resolve(status, body)
                continue
            # chunked: <hex size>\r\n<data>\r\n ... 0\r\n\r\n
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(buf[:line_end]).split(b";", 1)[0], 16)
            if len(buf) < line_end + 2 + size + 2:
                return
            data = bytes(buf[line_end + 2 : line_end + 2 + size])
            del buf[: line_end + 2 + size + 2]
            if size == 0:
                self._head = None
                if not self._streaming:
                    self._resolve(status, bytes(self._chunks))
                self._chunks.clear()
                self._streaming = False
                continue
            if self._streaming:
                assert self.on_stream_data is not None
                self.on_stream_data(data)
            else:
                self._chunks += data

    def _resolve(self, status: int, body: bytes) -> None:
        waiter = self._waiters.popleft()
        if not waiter.done():
            waiter.set_result((status, body))


async def timed_on_connections(host: str, port: int, count: int, work) -> float:
    """Open `count` keep-alive connections, run `work(conn)` on each at once, close them;
    returns the seconds the work took (connection set-up not included)."""
    conns = [await Connection.open(host, port) for _ in range(count)]
    try:
        started = time.perf_counter()
        await asyncio.gather(*(work(conn) for conn in conns))
        return time.perf_counter() - started
    finally:
        for conn in conns:
            conn.close()


class LineSplitter:
    """Feeds NDJSON stream data; calls on_line(line) for every non-empty line."""

    def __init__(self, on_line: Callable[[bytes], None]) -> None:
        self._rest = b""
        self._on_line = on_line

    def feed(self, data: bytes) -> None:
        data = self._rest + data
        lines = data.split(b"\n")
        self._rest = lines.pop()
        for line in lines:
            if line:
                self._on_line(line)


ID_PREFIX = b'{"id":"'


def job_id_of(line: bytes) -> str:
    """The id of a job line; a fast path for our `{"id":"...",` shape, else parse it."""
    if line.startswith(ID_PREFIX) and line[32:33] == b'"':
        return line[7:32].decode()
    return orjson.loads(line)["id"]
