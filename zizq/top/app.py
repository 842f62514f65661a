"""The Textual application of `zizq top`: one full-screen view over a `TopModel`.

Textual does the terminal work (alternate screen, keys, resizes, drawing); the model
decides what each key and server message means and `render.py` what the screen shows.
This module wires them to the WebSocket connection and redraws every refresh interval,
so that ages and uptime move even when nothing else does.
"""

from __future__ import annotations

import ssl
import time
from typing import Any

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widget import Widget

from zizq.top.connection import EventsConnection
from zizq.top.model import Connection, TopModel
from zizq.top.render import layout, render_screen

__all__ = ["TopApp"]


class TopView(Widget, can_focus=True):
    """The whole screen, drawn from the model; takes every key."""

    def __init__(self, top: TopApp) -> None:
        super().__init__(id="top")
        self.top = top
        self.lines: list[str] = []  # what was last drawn, as plain text (tests read it)

    def render(self) -> Text:
        width, height = self.size.width, self.size.height
        lines = render_screen(self.top.model, width, height, int(time.time() * 1000))
        self.lines = [line.plain.rstrip() for line in lines]
        return Text("\n").join(lines)

    def on_key(self, event: events.Key) -> None:
        event.stop()
        event.prevent_default()
        character = event.character
        key = character if character and len(character) == 1 and character.isprintable() else None
        self.top.press(key or event.key, character)


class TopApp(App[None]):
    CSS_PATH = "top.tcss"
    TITLE = "zizq top"
    # Ctrl-C quits from anywhere, prompts included (Textual would copy text instead).
    BINDINGS = [Binding("ctrl+c", "quit", priority=True, show=False)]
    ENABLE_COMMAND_PALETTE = False

    def __init__(
        self,
        url: str,
        client_version: str,
        context: ssl.SSLContext | None = None,
        refresh_s: float = 0.5,
    ) -> None:
        super().__init__()
        self.model = TopModel(url, client_version)
        self.refresh_s = refresh_s
        self.connection = EventsConnection(
            url,
            context,
            self._ws_state,
            self._ws_message,
            user_agent=f"zizq-top/{client_version}",
        )
        self.top_view: TopView | None = None

    def compose(self) -> ComposeResult:
        self.top_view = TopView(self)
        yield self.top_view

    def on_mount(self) -> None:
        assert self.top_view is not None
        self.top_view.focus()
        self.run_worker(self.connection.run(), name="events", exclusive=True)
        self.set_interval(self.refresh_s, self._tick)

    def on_resize(self, _event: events.Resize) -> None:
        self._sync()

    # -- inputs ------------------------------------------------------------------------

    def press(self, key: str, character: str | None = None) -> None:
        if self.model.key(key, character):
            self.exit()
            return
        self._sync()

    def _ws_state(self, state: str, note: str) -> None:
        if state == "connecting":
            self.model.connecting()
        elif state == "connected":
            self.model.connected()
        else:
            self.model.disconnected(note)
        self._sync()

    def _ws_message(self, message: Any) -> None:
        self.model.receive(message)
        self._sync()

    def _tick(self) -> None:
        self.model.tick()
        self._sync()

    # -- outputs ---------------------------------------------------------------------------

    def _sync(self) -> None:
        """Size the lists to the screen, send what the model asks for, redraw."""
        if self.top_view is None:
            return
        self.model.set_viewport(layout(self.model, self.top_view.size.height).body_rows)
        outbox, self.model.outbox = self.model.outbox, []
        if self.model.connection is Connection.CONNECTED:
            for message in outbox:
                self.connection.send(message)
        self.top_view.refresh()

    def screen_text(self) -> str:
        """The screen as last drawn, one line per row (for tests and captures)."""
        return "\n".join(self.top_view.lines) if self.top_view is not None else ""
