"""The `zizq top` end of the admin `/events` WebSocket: connect, read, send, reconnect.

It never gives up: when the server goes away (restart, network), it says why through
`on_state` and tries again after a short, growing pause (at most `MAX_RETRY_S`), so that
a viewer left open across a restart picks up by itself. A connection that stays silent for
longer than `STALL_S` (the server sends a heartbeat every 2 s) counts as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

__all__ = ["EventsConnection", "events_url"]

FIRST_RETRY_S = 0.25
MAX_RETRY_S = 2.0
OPEN_TIMEOUT_S = 5.0
STALL_S = 7.0
MAX_FRAME_BYTES = 16 * 1024 * 1024
SEND_QUEUE = 256  # requests are small and few; more waiting than this means a dead link


def events_url(admin_url: str) -> str:
    """`http://host:port/prefix` -> `ws://host:port/prefix/events` (https -> wss)."""
    parts = urlsplit(admin_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/events"


def describe(exc: BaseException) -> str:
    """One short reason for the header line."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status == 404:
            return "no /events here (HTTP 404): is --url the admin API?"
        return f"the server refused the WebSocket (HTTP {status})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: {exc.verify_message or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {(exc.reason or str(exc)).lower().replace('_', ' ')}"
    if isinstance(exc, ConnectionClosed):
        return "the server closed the connection"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, InvalidHandshake):
        return f"bad WebSocket handshake ({exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class EventsConnection:
    """Keeps one WebSocket open to `admin_url`; hands decoded messages to `on_message`."""

    def __init__(
        self,
        admin_url: str,
        context: ssl.SSLContext | None,
        on_state: Callable[[str, str], None],
        on_message: Callable[[Any], None],
        user_agent: str = "zizq-top",
    ) -> None:
        self.url = events_url(admin_url)
        self.context = context
        self.on_state = on_state  # ("connecting" | "connected" | "disconnected", note)
        self.on_message = on_message
        self.user_agent = user_agent
        self._outbox: asyncio.Queue[str] | None = None
        self.attempts = 0

    def send(self, message: dict[str, Any]) -> None:
        """Queue a request; dropped when not connected (the next connection starts afresh)."""
        if self._outbox is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self._outbox.put_nowait(json.dumps(message, separators=(",", ":")))

    async def run(self) -> None:
        delay = FIRST_RETRY_S
        while True:
            self.attempts += 1
            self.on_state("connecting", "")
            try:
                await self._session()
                note = "the server closed the connection"
                delay = FIRST_RETRY_S
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                note = describe(exc)
            except ValueError as exc:  # a frame that is not JSON: not a Zizq server
                note = f"unexpected data from the server ({exc})"
            self.on_state("disconnected", f"retry in {delay:g}s: {note}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_S)

    async def _session(self) -> None:
        async with connect(
            self.url,
            ssl=self.context,
            open_timeout=OPEN_TIMEOUT_S,
            ping_interval=None,  # the server's heartbeat tells a live link; see STALL_S
            close_timeout=1.0,
            max_size=MAX_FRAME_BYTES,
            user_agent_header=self.user_agent,
            proxy=None,
        ) as socket:
            self._outbox = asyncio.Queue(SEND_QUEUE)
            sender = asyncio.create_task(self._send_loop(socket, self._outbox))
            try:
                self.on_state("connected", "")
                while True:
                    raw = await asyncio.wait_for(socket.recv(), STALL_S)
                    self.on_message(json.loads(raw))
            finally:
                self._outbox = None
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)

    @staticmethod
    async def _send_loop(socket: Any, outbox: asyncio.Queue[str]) -> None:
        while True:
            text = await outbox.get()
            await socket.send(text)
