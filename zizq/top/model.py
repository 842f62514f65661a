"""The state of a `zizq top` session, free of Textual so that it can be tested alone.

The model takes three kinds of input, each a plain method call: server messages (decoded
JSON of the admin `/events` WebSocket), connection changes, and key names (Textual's:
`up`, `pageup`, `shift+tab`, `G`, ...). It answers with state to draw (`render.py` reads
it) and with client messages to send, queued in `outbox` for the connection to drain.

Lists are held as a *buffer*: the window of rows the server last sent for each tab, with
the absolute position of its first row. The cursor is an absolute depth in the list; the
buffer follows it by re-subscribing (at most one request per tab per `PREFETCH_INTERVAL_S`)
when the cursor comes within a screen of a buffer edge. A search match pins the cursor to
a job id instead, so that it stays on that job while the queue moves under it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = [
    "LIST_NAMES",
    "TAB_TITLES",
    "Connection",
    "ListBuffer",
    "SearchPrompt",
    "ServerStatus",
    "TopModel",
]

Job = dict[str, Any]
Message = dict[str, Any]

LIST_NAMES = ("in_flight", "ready", "scheduled")  # tab order, as the reference shows them
TAB_TITLES = ("In-Flight", "Ready", "Scheduled")
PREFETCH_INTERVAL_S = 0.1
NOTICE_S = 4.0
MIN_LIMIT = 30  # rows asked for per window, at least (3 screens otherwise)

# The order each list is kept in by the server, so that a row added by a `job_changed`
# lands where the next snapshot would put it.
_SORT_KEYS: dict[str, Callable[[Job], tuple]] = {
    "ready": lambda job: (job.get("priority") or 0, str(job.get("id", ""))),
    "in_flight": lambda job: (job.get("dequeued_at") or 0, str(job.get("id", ""))),
    "scheduled": lambda job: (job.get("ready_at") or 0, str(job.get("id", ""))),
}
# job_changed status -> (list it enters, or None) and the lists it leaves.
_CHANGES: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "ready": ("ready", ("in_flight", "scheduled")),
    "in_flight": ("in_flight", ("ready",)),
    "scheduled": ("scheduled", ("ready", "in_flight")),
    "ready_removed": (None, ("ready",)),
    "in_flight_removed": (None, ("in_flight",)),
    "scheduled_removed": (None, ("scheduled",)),
    "completed": (None, LIST_NAMES),
    "dead": (None, LIST_NAMES),
}
_TOKEN_SPLIT = re.compile(r"[,\s]+")


class Connection(Enum):
    CONNECTING = "Connecting..."
    CONNECTED = "Connected"
    DISCONNECTED = "Disconnected"


@dataclass
class ServerStatus:
    version: str = "?"
    uptime_ms: int | None = None
    tier: str = "free"
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LIST_NAMES, 0))
    subscription_limit: int | None = None

    @classmethod
    def parse(cls, data: Any) -> ServerStatus:
        if not isinstance(data, dict):
            return cls()
        limit = data.get("subscription_limit")
        return cls(
            version=str(data.get("version", "?")),
            uptime_ms=_int(data.get("uptime_ms")),
            tier=str(data.get("tier", "free")),
            totals={name: _int(data.get(f"total_{name}")) or 0 for name in LIST_NAMES},
            subscription_limit=limit if isinstance(limit, int) and limit >= 0 else None,
        )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass
class ListBuffer:
    """One tab: the rows held, where they start, and the cursor over them."""

    name: str
    items: list[Job] = field(default_factory=list)
    offset: int = 0  # absolute position of items[0]
    cursor: int = 0  # absolute depth of the highlighted row
    scroll: int = 0  # absolute depth of the first visible row
    walked: bool = False  # the cursor was moved by hand (a search starts from it)
    wanted: Message | None = None  # a subscribe held back by the rate limit
    last_sent: tuple[str, int] | None = None
    last_sent_at: float = float("-inf")

    @property
    def end(self) -> int:
        return self.offset + len(self.items)

    def row(self, position: int) -> Job | None:
        index = position - self.offset
        return self.items[index] if 0 <= index < len(self.items) else None

    def index_of(self, job_id: str) -> int | None:
        for index, job in enumerate(self.items):
            if job.get("id") == job_id:
                return index
        return None

    def remove(self, job_id: str) -> bool:
        index = self.index_of(job_id)
        if index is None:
            return False
        del self.items[index]
        return True

    def insert(self, job: Job) -> None:
        self.remove(str(job.get("id")))
        key = _SORT_KEYS[self.name]
        wanted = key(job)
        index = len(self.items)
        for position, other in enumerate(self.items):
            if key(other) > wanted:
                index = position
                break
        self.items.insert(index, job)

    def reset(self) -> None:
        self.items, self.offset, self.cursor, self.scroll = [], 0, 0, 0
        self.walked, self.wanted, self.last_sent = False, None, None
        self.last_sent_at = float("-inf")


@dataclass
class SearchPrompt:
    """The `/` prompt: two one-line fields, Type and Queue, with a caret each."""

    fields: dict[str, str] = field(default_factory=lambda: {"type": "", "queue": ""})
    carets: dict[str, int] = field(default_factory=lambda: {"type": 0, "queue": 0})
    active: str = "type"

    @classmethod
    def from_query(cls, query: dict[str, list[str]] | None) -> SearchPrompt:
        prompt = cls()
        if query:
            prompt.fields = {
                "type": ", ".join(query.get("types", [])),
                "queue": ", ".join(query.get("queues", [])),
            }
            prompt.carets = {name: len(text) for name, text in prompt.fields.items()}
        return prompt

    def query(self) -> dict[str, list[str]]:
        return {"queues": _tokens(self.fields["queue"]), "types": _tokens(self.fields["type"])}

    def switch(self) -> None:
        self.active = "queue" if self.active == "type" else "type"

    def edit(self, key: str, character: str | None) -> None:
        text, caret = self.fields[self.active], self.carets[self.active]
        if key == "left":
            caret = max(0, caret - 1)
        elif key == "right":
            caret = min(len(text), caret + 1)
        elif key in ("home", "ctrl+a"):
            caret = 0
        elif key in ("end", "ctrl+e"):
            caret = len(text)
        elif key == "backspace" and caret > 0:
            text, caret = text[: caret - 1] + text[caret:], caret - 1
        elif key == "delete":
            text = text[:caret] + text[caret + 1 :]
        elif character and character.isprintable() and len(character) == 1:
            text, caret = text[:caret] + character + text[caret:], caret + 1
        self.fields[self.active], self.carets[self.active] = text, caret


def _tokens(text: str) -> list[str]:
    """Comma- or space-separated values of one field (OR-ed by the server)."""
    return [token for token in _TOKEN_SPLIT.split(text) if token]


class TopModel:
    """Everything `zizq top` shows, and what it asks the server for."""

    def __init__(
        self, url: str, client_version: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.url = url
        self.client_version = client_version
        self.clock = clock
        self.connection = Connection.CONNECTING
        self.connection_note = ""
        self.server: ServerStatus | None = None
        self.lists = [ListBuffer(name) for name in LIST_NAMES]
        self.active = 0
        self.viewport = 0  # table body rows on screen
        self.paused = False
        self.detail = False
        self.pinned: str | None = None  # id the cursor follows (a search match)
        self.search: SearchPrompt | None = None
        self.query: dict[str, list[str]] | None = None
        self.pending_delete: str | None = None
        self.h_scroll = [0, 0, 0]
        self.outbox: list[Message] = []
        self._notice: tuple[str, float] | None = None
        self._locating = False
        self._resubscribe_on_snapshot = False

    # -- derived state ---------------------------------------------------------------

    @property
    def tab(self) -> ListBuffer:
        return self.lists[self.active]

    @property
    def cap(self) -> int | None:
        """The free tier's row cap, while connected to a server that applies one."""
        if self.connection is not Connection.CONNECTED or self.server is None:
            return None
        return self.server.subscription_limit

    def total(self, index: int | None = None) -> int:
        if self.server is None:
            return 0
        return self.server.totals[LIST_NAMES[self.active if index is None else index]]

    def visible_total(self) -> int:
        """How deep the cursor may go in the active tab."""
        total = self.total()
        return min(total, self.cap) if self.cap is not None else total

    def selected(self) -> Job | None:
        return self.tab.row(self.tab.cursor)

    @property
    def notice(self) -> str:
        if self._notice is None or self.clock() >= self._notice[1]:
            return ""
        return self._notice[0]

    def say(self, text: str) -> None:
        self._notice = (text, self.clock() + NOTICE_S)

    def resume_hint(self) -> str:
        """At a frozen buffer's edge, with rows beyond it: which way resuming would show more."""
        tab = self.tab
        if not self.paused or not tab.items:
            return ""
        if tab.cursor >= tab.end - 1 and tab.end < self.visible_total():
            return "\u2193"
        if tab.cursor <= tab.offset and tab.offset > 0:
            return "\u2191"
        return ""

    # -- connection events -------------------------------------------------------------

    def connecting(self) -> None:
        self.connection = Connection.CONNECTING

    def connected(self) -> None:
        self.connection = Connection.CONNECTED
        self.connection_note = ""
        # The server starts every connection with head windows and no detail: bring it
        # back to where this session was once its first snapshot is in.
        self._resubscribe_on_snapshot = True
        if self.detail:
            self.outbox.append({"type": "set_detail_level", "detail": True})

    def disconnected(self, note: str) -> None:
        self.connection = Connection.DISCONNECTED
        self.connection_note = note
        self.server = None
        self.pinned = None
        self.pending_delete = None
        self._locating = False
        for tab in self.lists:
            tab.reset()

    # -- server messages ----------------------------------------------------------------

    def receive(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        if "server" in message:
            self.server = ServerStatus.parse(message["server"])
            self.connection = Connection.CONNECTED
        event = message.get("event")
        if event == "job_snapshot":
            self._snapshot(message)
        elif event == "job_changed":
            self._changed(message)
        elif event == "find_result":
            self._find_result(message)
        elif event in ("error", None) and isinstance(message.get("error"), str):
            self.say(f"server: {message['error']}")
        if not self.paused:
            for index in range(len(self.lists)):
                self._settle(index)
            self._maybe_prefetch()

    def _snapshot(self, message: Message) -> None:
        if self.paused:
            return
        for index, name in enumerate(LIST_NAMES):
            window = message.get(name)
            if isinstance(window, dict):
                self._apply_window(index, window)
        if self._resubscribe_on_snapshot:
            self._resubscribe_on_snapshot = False
            self.resubscribe_all()

    def _apply_window(self, index: int, window: Message) -> None:
        tab = self.lists[index]
        items = window.get("items")
        tab.items = (
            [job for job in items if isinstance(job, dict)] if isinstance(items, list) else []
        )
        tab.offset = _int(window.get("first_position")) or 0
        # A pinned job missing from this window is not yet lost: the window may answer an
        # older request. `_settle` asks the server to locate it, and that answer decides.

    def _changed(self, message: Message) -> None:
        if self.paused:
            return
        job_id = message.get("id")
        change = _CHANGES.get(str(message.get("status")))
        if not isinstance(job_id, str) or change is None:
            return
        enters, leaves = change
        for index, name in enumerate(LIST_NAMES):
            if name in leaves:
                self.lists[index].remove(job_id)
        job = message.get("job")
        if enters is not None and isinstance(job, dict):
            self.lists[LIST_NAMES.index(enters)].insert(job)
        for index, tab in enumerate(self.lists):
            # A window at the tail shifts up as the list shrinks; keep its position honest.
            total = self.total(index)
            if tab.end > total:
                tab.offset = max(0, total - len(tab.items))

    def _find_result(self, message: Message) -> None:
        locating, self._locating = self._locating, False
        if self.paused or message.get("list") != LIST_NAMES[self.active]:
            return
        window = message.get("window") if isinstance(message.get("window"), dict) else {}
        position = _int(message.get("matched_position"))
        anchor = window.get("resolved_anchor") if isinstance(window, dict) else None
        if position is None or not isinstance(anchor, str):
            if locating:
                self.pinned = None
                self.say("the search match left the list")
            else:
                self.say("no match")
            return
        tab = self.tab
        self.pinned = anchor
        self._apply_window(self.active, window)
        tab.cursor = position
        tab.walked = True
        self._scroll_to_cursor(tab)
        self._subscribe(self.active, {"kind": "around", "id": anchor, "fallback": "nowhere"})

    def _settle(self, index: int) -> None:
        """After the rows changed: keep the cursor on its pin, inside the list, on screen."""
        tab = self.lists[index]
        if index == self.active and self.pinned is not None:
            local = tab.index_of(self.pinned)
            if local is not None:
                tab.cursor = tab.offset + local
            elif not self._locating:
                self._locating = True
                self._find(
                    {"kind": "job_id", "id": self.pinned}, "locate", {"queues": [], "types": []}
                )
        limit = self.visible_total() if index == self.active else self.total(index)
        tab.cursor = max(0, min(tab.cursor, limit - 1))
        self._scroll_to_cursor(tab)

    # -- outgoing requests ----------------------------------------------------------------

    def _limit(self) -> int:
        return max(MIN_LIMIT, self.viewport * 3)

    def _subscribe(self, index: int, anchor: Message, *, force: bool = True) -> None:
        """Ask for a window of list `index`; later than asked if the rate limit holds it."""
        if self.connection is not Connection.CONNECTED:
            return
        if self.cap is not None:
            anchor = {"kind": "head"}  # the free tier shows the first rows, whatever is asked
        tab = self.lists[index]
        message = {"type": "subscribe", "list": tab.name, "anchor": anchor, "limit": self._limit()}
        key = (repr(sorted(anchor.items())), message["limit"])
        if not force and tab.last_sent == key:
            return
        if self.clock() - tab.last_sent_at < PREFETCH_INTERVAL_S:
            tab.wanted = message
            return
        tab.wanted = None
        tab.last_sent, tab.last_sent_at = key, self.clock()
        self.outbox.append(message)

    def _find(self, anchor: Message, direction: str, query: dict[str, list[str]]) -> None:
        self.outbox.append(
            {
                "type": "find",
                "list": LIST_NAMES[self.active],
                "anchor": anchor,
                "direction": direction,
                "query": query,
                "limit": self._limit(),
            }
        )

    def _anchor_here(self, index: int) -> Message:
        if index == self.active and self.pinned is not None:
            return {"kind": "around", "id": self.pinned, "fallback": "nowhere"}
        tab = self.lists[index]
        return {"kind": "offset", "offset": max(0, tab.cursor - (self._limit() // 2))}

    def resubscribe_all(self) -> None:
        if self.paused:
            return
        for index in range(len(self.lists)):
            self._subscribe(index, self._anchor_here(index))

    def _maybe_prefetch(self) -> None:
        if self.paused or self.cap is not None or self.viewport <= 0:
            return
        tab = self.tab
        near_top = tab.offset > 0 and tab.cursor < tab.offset + self.viewport
        near_end = tab.end < self.total() and tab.cursor + self.viewport >= tab.end
        if near_top or near_end:
            self._subscribe(self.active, self._anchor_here(self.active), force=False)

    def tick(self) -> None:
        """Send what the rate limit held back (called on every redraw tick)."""
        for index, tab in enumerate(self.lists):
            if tab.wanted is not None and self.clock() - tab.last_sent_at >= PREFETCH_INTERVAL_S:
                self._subscribe(index, tab.wanted["anchor"])

    def set_viewport(self, rows: int) -> None:
        if rows != self.viewport:
            self.viewport = max(0, rows)
            for tab in self.lists:
                self._scroll_to_cursor(tab)
            self.resubscribe_all()

    # -- keys ------------------------------------------------------------------------------

    def key(self, key: str, character: str | None = None) -> bool:
        """Apply one key press; True means quit."""
        if key == "ctrl+c":
            return True
        if self.search is not None:
            self._search_key(key, character)
            return False
        if self.pending_delete is not None:
            self._delete_key(key)
            return False
        handler = self._KEYS.get(key)
        if handler is None:
            return False
        return bool(handler(self))

    def _quit(self) -> bool:
        return True

    def _move(self, delta: int) -> None:
        tab = self.tab
        self.pinned = None
        lo, hi = self._bounds()
        target = max(lo, min(tab.cursor + delta, hi))
        if not self.paused and tab.items and tab.offset <= tab.cursor < tab.end:
            # Stop at the loaded edge and let the prefetch catch up, rather than show blanks.
            target = max(tab.offset, min(target, tab.end - 1))
        tab.cursor = max(0, target)
        tab.walked = True
        self._scroll_to_cursor(tab)
        self._maybe_prefetch()

    def _bounds(self) -> tuple[int, int]:
        tab = self.tab
        if self.paused:
            return tab.offset, max(tab.offset, tab.end - 1)
        return 0, max(0, self.visible_total() - 1)

    def _scroll_to_cursor(self, tab: ListBuffer) -> None:
        rows = max(1, self.viewport)
        if tab.cursor < tab.scroll:
            tab.scroll = tab.cursor
        elif tab.cursor >= tab.scroll + rows:
            tab.scroll = tab.cursor - rows + 1
        tab.scroll = max(0, tab.scroll)

    def _page(self, direction: int) -> None:
        self._move(direction * max(1, self.viewport))

    def _home(self) -> None:
        tab = self.tab
        self.pinned = None
        tab.cursor, tab.scroll = self._bounds()[0], 0
        tab.walked = False  # `g` then `n` searches from the top
        if not self.paused and self.cap is None:
            self._subscribe(self.active, {"kind": "head"})
        self._scroll_to_cursor(tab)

    def _end(self) -> None:
        tab = self.tab
        self.pinned = None
        tab.cursor = self._bounds()[1]
        tab.walked = True
        if not self.paused and self.cap is None:
            self._subscribe(self.active, {"kind": "tail"})
        self._scroll_to_cursor(tab)

    def _switch_tab(self, step: int) -> None:
        self.pinned = None
        self.active = (self.active + step) % len(self.lists)
        self._maybe_prefetch()

    def _toggle_detail(self) -> None:
        if self.paused:
            self.say("resume (p) to toggle the detail panel")
            return
        self.detail = not self.detail
        if self.connection is Connection.CONNECTED:
            self.outbox.append({"type": "set_detail_level", "detail": self.detail})

    def _toggle_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            self.resubscribe_all()

    def _ask_delete(self) -> None:
        job = self.selected()
        if job is not None and isinstance(job.get("id"), str):
            self.pending_delete = job["id"]

    def _delete_key(self, key: str) -> None:
        if key == "y":
            job_id, self.pending_delete = self.pending_delete, None
            if job_id is None:
                return
            self.outbox.append({"type": "delete_job", "id": job_id})
            for tab in self.lists:
                tab.remove(job_id)
            if self.pinned == job_id:
                self.pinned = None
            self.say(f"deleted {job_id}")
        elif key in ("n", "N", "escape", "q"):
            self.pending_delete = None

    def _open_search(self) -> None:
        if self.paused:
            self.say("resume (p) to search")
            return
        self.search = SearchPrompt.from_query(self.query)

    def _search_key(self, key: str, character: str | None) -> None:
        prompt = self.search
        assert prompt is not None
        if key == "escape":
            self.search = None
        elif key in ("tab", "shift+tab"):
            prompt.switch()
        elif key == "enter":
            self.search = None
            query = prompt.query()
            if not query["queues"] and not query["types"]:
                self.query = None
                self.pinned = None
                return
            self.query = query
            tab = self.tab
            job = self.selected() if tab.walked else None
            anchor = {"kind": "job_id", "id": job["id"]} if job else {"kind": "start"}
            self._find(anchor, "forward", query)
        else:
            prompt.edit(key, character)

    def _step(self, direction: str) -> None:
        if self.query is None:
            self.say("no search yet: press / to search")
            return
        if self.paused:
            self.say("resume (p) to search")
            return
        job = self.selected()
        if self.pinned is not None:
            anchor: Message = {"kind": "job_id", "id": self.pinned}
        elif job is not None and self.tab.walked:
            anchor = {"kind": "job_id", "id": job["id"]}
        else:
            anchor = {"kind": "start" if direction == "forward" else "end"}
        self._find(anchor, direction, self.query)

    def _unpin(self) -> None:
        if self.pinned is not None:
            self.pinned = None
            self._subscribe(self.active, self._anchor_here(self.active))

    def _h_scroll(self, step: int) -> None:
        self.h_scroll[self.active] = max(0, self.h_scroll[self.active] + step)

    _KEYS: dict[str, Callable[[TopModel], Any]] = {
        "q": _quit,
        "up": lambda self: self._move(-1),
        "k": lambda self: self._move(-1),
        "down": lambda self: self._move(1),
        "j": lambda self: self._move(1),
        "pageup": lambda self: self._page(-1),
        "pagedown": lambda self: self._page(1),
        "g": _home,
        "home": _home,
        "G": _end,
        "end": _end,
        "tab": lambda self: self._switch_tab(1),
        "shift+tab": lambda self: self._switch_tab(-1),
        "i": _toggle_detail,
        "p": _toggle_pause,
        "D": _ask_delete,
        "/": _open_search,
        "n": lambda self: self._step("forward"),
        "N": lambda self: self._step("backward"),
        "escape": _unpin,
        "left": lambda self: self._h_scroll(-8),
        "right": lambda self: self._h_scroll(8),
    }
