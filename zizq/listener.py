"""One HTTP listener: Granian's embedded server running inside our event loop.

Granian speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on one port.
We bind the socket once ourselves (Granian re-binds per worker on Linux,
which would give a different port each time for --port 0), so we learn the
real port before announcing it.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings, HTTP2Settings
from granian.net import SocketSpec
from granian.server.embed import Server


class _BoundServer(Server):
    def __init__(self, *args, on_bound: Callable[[tuple[str, int]], None], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._on_bound = on_bound

    def _init_shared_socket(self) -> None:
        self._ssp = None
        self._shd = SocketSpec(self.bind_addr, self.bind_port, self.backlog).build()
        self._sfd = self._shd.get_fd()
        probe = socket.socket(fileno=os.dup(self._sfd))
        try:
            address = probe.getsockname()
        finally:
            probe.close()
        self._on_bound((address[0], address[1]))


class Listener:
    def __init__(self, app, host: str, port: int) -> None:
        self.bound: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
        self._server = _BoundServer(
            app,
            address=host,
            port=port,
            interface=Interfaces.ASGINL,
            http=HTTPModes.auto,
            websockets=False,
            backlog=1024,
            http1_settings=HTTP1Settings(keep_alive=True),
            http2_settings=HTTP2Settings(max_concurrent_streams=1000),
            log_enabled=False,
            on_bound=self._bound,
        )
        self._task: asyncio.Task | None = None

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
            self._task.result()  # raises the bind error
            raise OSError("listener stopped before binding")
        return self.bound.result()

    async def stop(self, timeout: float = 3.0) -> None:
        if self._task is None:
            return
        self._server.workers_kill_timeout = timeout
        self._server.signal_handler_interrupt()
        try:
            await asyncio.wait_for(self._task, timeout + 1)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()
        except Exception:
            pass
        self._task = None
