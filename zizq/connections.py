"""Per-connection bookkeeping: what each client connection is doing, and closing idle ones.

Granian (hyper) times out an HTTP/1.1 connection only while it reads a request head. A
connection that never sends a byte, or stops half-way through the HTTP/2 preface (hyper
cannot tell the protocol yet), and every idle HTTP/2 connection stay open forever. The
`IdleReaper` closes those: a connection with no data in either direction for the idle
timeout, and no request being worked on, is shut down. Take streams send heartbeats, so
they never look idle while their client reads them.

The ASGI wrapper (zizq.api.app) feeds the `ConnectionTracker` with the requests of each
connection (keyed by the client's address, which is unique while the connection lives).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import sys
import threading
from dataclasses import dataclass, field

logger = logging.getLogger("zizq.connections")

# At most this many GET requests of one connection are worked on or have response data
# waiting to be sent. GETs are the requests whose responses can be large (job listings,
# payloads); writes answer a few bytes. Bounds the unsent data one connection can pin (an
# HTTP/2 client that never opens its flow-control window) without limiting writes.
GET_SLOTS_PER_CONNECTION = 4

Peer = tuple[str, int]


@dataclass
class _Connection:
    gets: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(GET_SLOTS_PER_CONNECTION)
    )
    working: int = 0  # requests in the application that have not started their response
    requests: int = 0  # requests alive on this connection (for forgetting it)


class ConnectionTracker:
    """Requests per client connection, shared by the ASGI wrapper and the reaper."""

    def __init__(self) -> None:
        self._connections: dict[Peer, _Connection] = {}

    def enter(self, peer: Peer) -> _Connection:
        conn = self._connections.get(peer)
        if conn is None:
            conn = self._connections[peer] = _Connection()
        conn.requests += 1
        return conn

    def leave(self, peer: Peer, conn: _Connection) -> None:
        conn.requests -= 1
        if conn.requests <= 0 and self._connections.get(peer) is conn:
            del self._connections[peer]

    def working_peers(self) -> set[Peer]:
        """Peers with a request still being worked on (safe to call from another thread)."""
        return {peer for peer, conn in list(self._connections.items()) if conn.working > 0}


# struct tcp_info (linux/tcp.h): 8 one-byte fields, then u32s; tcpi_last_data_sent is the
# 10th u32 (offset 44) and tcpi_last_data_recv the 12th (offset 52), in milliseconds.
_TCP_INFO_LEN = 104
_U32 = struct.Struct("=I")
_ESTABLISHED = 1


def _idle_ms(sock: socket.socket) -> int | None:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    if len(info) < 56 or info[0] != _ESTABLISHED:
        return None
    sent = _U32.unpack_from(info, 44)[0]
    received = _U32.unpack_from(info, 52)[0]
    return min(sent, received)


def _normal_peer(address: tuple) -> Peer:
    host, port = address[0], address[1]
    if host.startswith("::ffff:"):  # IPv4-mapped, as an IPv6 dual-stack socket reports it
        host = host[7:]
    return host, port


class IdleReaper:
    """Shuts down connections to one listening port that have been idle too long.

    Linux only: it finds the connections among the process's file descriptors and reads
    their idle time from TCP_INFO. Elsewhere it does nothing (HTTP/1.1 idle keep-alive
    connections are still closed by Granian's header timeout).
    """

    supported = sys.platform.startswith("linux") and hasattr(socket, "TCP_INFO")

    def __init__(self, port: int, timeout_s: float, tracker: ConnectionTracker) -> None:
        self._port = port
        self._timeout_ms = int(timeout_s * 1000)
        # Scan often enough that a connection is closed within ~1.25x the timeout.
        self._period_s = min(max(timeout_s / 4, 0.1), 5.0)
        self._tracker = tracker
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.closed = 0

    def start(self) -> None:
        if not self.supported:
            return
        # A thread, not a task: a scan is thousands of system calls, and the event loop
        # must keep serving meanwhile.
        self._thread = threading.Thread(target=self._run, name="zizq-idle-reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            try:
                self.scan()
            except Exception:  # never let the reaper die; the next scan retries
                logger.exception("idle connection scan failed")

    def scan(self) -> int:
        """One pass over the open sockets; returns how many connections were shut down."""
        working = self._tracker.working_peers()
        shut = 0
        for name in os.listdir("/proc/self/fd"):
            try:
                if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                    continue
                # Our own duplicate: if Granian closes its descriptor meanwhile, this one
                # still names the same connection, so we never touch an unrelated socket.
                dup = os.dup(int(name))
            except OSError:
                continue
            try:
                sock = socket.socket(fileno=dup)
            except OSError:
                os.close(dup)
                continue
            try:
                shut += self._check(sock, working)
            except OSError:
                continue  # the connection went away meanwhile; `_check` closed our copy
        self.closed += shut
        return shut

    def _check(self, sock: socket.socket, working: set[Peer]) -> int:
        with sock:
            if sock.type != socket.SOCK_STREAM or sock.family not in (
                socket.AF_INET,
                socket.AF_INET6,
            ):
                return 0
            if sock.getsockname()[1] != self._port:
                return 0
            try:
                peer = _normal_peer(sock.getpeername())
            except OSError:  # the listening socket itself
                return 0
            if peer in working:
                return 0
            idle = _idle_ms(sock)
            if idle is None or idle < self._timeout_ms:
                return 0
            # shutdown (not close) acts on the connection Granian holds: hyper reads EOF
            # and closes its descriptor, releasing the connection's slot.
            sock.shutdown(socket.SHUT_RDWR)
            return 1
