"""One HTTP listener: Granian's embedded server running inside our event loop.

Granian speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on one port.
We bind the socket ourselves, before Granian starts, for three reasons: a host name
(`localhost`) must work, and Granian only takes IP literals; Granian sets SO_REUSEPORT,
which lets a second server bind the same port and silently split the traffic between two
databases; and a bind error must be one clear line, not a traceback from a worker task.
Binding first also tells us the real port behind `--port 0` before we announce it.

With TLS files Granian terminates TLS itself (rustls) and offers `h2` and `http/1.1` by
ALPN on the same port; with a client CA it also requires and verifies client certificates.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from granian.constants import HTTPModes, Interfaces, SSLProtocols
from granian.http import HTTP1Settings, HTTP2Settings
from granian.net import SocketHolder
from granian.server.embed import Server

from zizq.connections import ConnectionTracker, IdleReaper

if TYPE_CHECKING:  # zizq.tls loads `cryptography`, which a plain-HTTP server never needs
    from zizq.tls import TlsFiles

BACKLOG = 1024
# Descriptors kept free for everything that is not a client connection: RocksDB's files,
# log files, the jq worker pipes, backups (a quarter of the limit when that is smaller).
FD_RESERVE = 1024
ADMIN_MAX_CONNECTIONS = 256
# Streams one HTTP/2 connection may have open at once (RFC 9113 asks for at least 100).
# With `GET_SLOTS_PER_CONNECTION` this bounds what one connection can make us buffer.
H2_MAX_STREAMS = 100
# What hyper buffers per HTTP/2 stream beyond what the peer's window lets it send.
H2_MAX_SEND_BUFFER = 64 * 1024


class ListenError(Exception):
    """A listener could not be set up; the message is one line for the user."""


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit where allowed; returns the soft limit.

    Every client connection is a descriptor; the common soft default (1,024) would cap
    the server far below what the machine allows.
    """
    try:
        import resource
    except ImportError:  # Windows: no descriptor limit of this kind
        return 1 << 16
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    wanted = 1 << 20 if hard == unlimited else hard
    if soft != unlimited and soft < wanted:
        # macOS reports an unlimited hard limit but refuses more than OPEN_MAX (10,240).
        for value in (wanted, 10240):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (value, hard))
            except (ValueError, OSError):
                continue
            soft = value
            break
    return wanted if soft == unlimited else soft


def connection_limits(fd_limit: int) -> tuple[int, int]:
    """How many connections the (primary, admin) listeners hold at once.

    Past this, new connections wait in the kernel's accept queue instead of failing
    accept() with EMFILE (which would spin Granian's accept loop).
    """
    spare = fd_limit - min(FD_RESERVE, fd_limit // 4)
    admin = min(ADMIN_MAX_CONNECTIONS, max(16, spare // 16))
    return max(64, spare - admin), admin


def _format(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_socket(host: str, port: int, api: str = "primary") -> socket.socket:
    """A listening TCP socket on host:port (a name or an IP), without SO_REUSEPORT.

    Raises `ListenError` naming the flags of `api` ("primary" or "admin").
    """
    flags = "--admin-host/--admin-port" if api == "admin" else "--host/--port"
    try:
        infos = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        flag = flags.split("/")[0]
        raise ListenError(f"cannot resolve {flag} {host!r} ({api} API): {reason}") from None
    # A name may resolve to both families (localhost: 127.0.0.1 and ::1); take IPv4
    # first, as most clients try it first, and fall back to the next address.
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    errors: list[str] = []
    for family, kind, proto, _name, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if sys.platform == "win32":
                # Windows' SO_REUSEADDR lets another socket steal the port; this refuses.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
            else:
                # Reuse a port whose old connections linger in TIME_WAIT after a restart;
                # unlike SO_REUSEPORT this never lets two live listeners share it.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            return sock
        except OSError as exc:
            sock.close()
            errors.append(f"{_format(address[0], address[1])}: {exc.strerror or exc}")
    raise ListenError(
        f"cannot listen on {_format(host, port)} ({api} API, {flags}): {'; '.join(errors)}"
    )


def _socket_holder(sock: socket.socket) -> SocketHolder:
    """Hand Granian a duplicate of our socket: its listener closes the one it is given."""
    if sys.platform == "win32":
        # Socket handles are not C runtime descriptors there: duplicate the Windows way.
        copy = socket.fromshare(sock.share(os.getpid()))
        return SocketHolder(copy.detach())
    fd = os.dup(sock.fileno())
    if sys.platform.startswith(("linux", "freebsd")):
        return SocketHolder(fd, False, BACKLOG)
    return SocketHolder(fd, False)


class _BoundServer(Server):
    def __init__(
        self, *args, sock: socket.socket, on_bound: Callable[[tuple[str, int]], None], **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self._sock = sock
        self._on_bound = on_bound

    def _init_shared_socket(self) -> None:
        self._ssp = None
        self._shd = _socket_holder(self._sock)
        self._sfd = self._shd.get_fd()
        address = self._sock.getsockname()
        self._on_bound((address[0], address[1]))


class Listener:
    def __init__(
        self,
        app,
        host: str,
        port: int,
        *,
        api: str = "primary",
        idle_timeout_s: float = 75.0,
        max_connections: int = 1024,
        tracker: ConnectionTracker | None = None,
        tls: TlsFiles | None = None,
        websockets: bool = False,
    ) -> None:
        """Bind now (raises `ListenError`); `start` serves. `api` names the listener in errors.

        `tls` must have been checked (`zizq.tls.check_listener_files`): Granian reads the
        files again only when its worker starts, after we have announced the listener.
        """
        self.scheme = "https" if tls is not None else "http"
        self._sock = bind_socket(host, port, api)
        self._websockets = websockets  # the admin API's /events; off elsewhere
        try:
            self._init_server(app, api, idle_timeout_s, max_connections, tracker, tls)
        except BaseException:
            self.close_socket()
            raise
        self._task: asyncio.Task | None = None

    def _init_server(
        self,
        app,
        api: str,
        idle_timeout_s: float,
        max_connections: int,
        tracker: ConnectionTracker | None,
        tls: TlsFiles | None,
    ) -> None:
        address = self._sock.getsockname()
        self.bound: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
        self._reaper = IdleReaper(address[1], idle_timeout_s, tracker or ConnectionTracker())
        try:
            self._server = self._make_server(app, address, max_connections, idle_timeout_s, tls)
        except (OSError, ssl.SSLError) as exc:
            # Granian loads the pair into an ssl.SSLContext here as a check of its own; after
            # ours this fails only if a file changed in between.
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            raise ListenError(f"cannot set up TLS for the {api} API: {reason}") from None

    def _make_server(
        self,
        app,
        address: tuple[str, int],
        max_connections: int,
        idle_timeout_s: float,
        tls: TlsFiles | None,
    ) -> _BoundServer:
        return _BoundServer(
            app,
            address=address[0],
            port=address[1],
            interface=Interfaces.ASGINL,
            http=HTTPModes.auto,
            websockets=self._websockets,
            backlog=BACKLOG,
            # Connections served at once; the rest wait in the accept queue.
            backpressure=max_connections,
            http1_settings=HTTP1Settings(
                # hyper applies this both to reading a request head (slowloris) and to
                # an idle keep-alive connection waiting for its next request.
                header_read_timeout=max(1, int(idle_timeout_s * 1000)),
                keep_alive=True,
            ),
            http2_settings=HTTP2Settings(
                max_concurrent_streams=H2_MAX_STREAMS,
                max_send_buffer_size=H2_MAX_SEND_BUFFER,
                # No keep-alive pings: a ping and its answer would make an idle connection
                # look busy to the reaper, which also closes connections to vanished peers.
                keep_alive_interval=None,
            ),
            log_enabled=False,
            # Granian's default is TLS 1.3 only; 1.2 keeps older clients and proxies working
            # (rustls offers only its safe AEAD suites for either).
            ssl_protocol_min=SSLProtocols.tls12,
            ssl_cert=Path(tls.cert) if tls is not None else None,
            ssl_key=Path(tls.key) if tls is not None else None,
            ssl_ca=Path(tls.client_ca) if tls is not None and tls.client_ca else None,
            # With a CA, rustls refuses a handshake without a client certificate it signed.
            ssl_client_verify=tls is not None and tls.client_ca is not None,
            sock=self._sock,
            on_bound=self._bound,
        )

    def _bound(self, address: tuple[str, int]) -> None:
        if not self.bound.done():
            self.bound.set_result(address)

    async def start(self) -> tuple[str, int]:
        """Start serving; returns the address actually bound."""
        self._task = asyncio.create_task(self._server.serve())
        bound_wait = asyncio.ensure_future(self.bound)
        done, _ = await asyncio.wait({bound_wait, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done and not bound_wait.done():
            bound_wait.cancel()
            self._task.result()  # raises what stopped Granian
            raise ListenError("listener stopped before serving")
        self._reaper.start()
        return self.bound.result()

    def close_socket(self) -> None:
        """Close the listening socket of a listener that was bound but never started."""
        with contextlib.suppress(OSError):
            self._sock.close()

    async def stop(self, timeout: float = 3.0) -> None:
        self._reaper.stop()
        if self._task is not None:
            self._server.workers_kill_timeout = timeout
            self._server.signal_handler_interrupt()
            try:
                await asyncio.wait_for(self._task, timeout + 1)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            except Exception:
                pass
            self._task = None
        # Granian has closed its duplicate; closing ours stops the kernel from queueing
        # connections that nobody will accept.
        self.close_socket()
