"""Admin `GET /events`: the WebSocket that `zizq top` watches (docs/events-protocol.md).

Per connection, one coroutine sends and one reads. The sender holds no queue
of events: it keeps the ids of the rows it last sent for each list, and when
the change feed says something changed it recomputes the windows (at most
every COALESCE_S) and sends the difference. A burst of changes therefore costs
one refresh, a difference too large to be worth sending becomes a fresh
snapshot, and a client that reads slowly simply sees fewer, later refreshes.
A send that does not finish within SEND_TIMEOUT_S (a client that stopped
reading while the socket buffers are full) closes the connection.

Client messages wait in a queue of REQUEST_QUEUE; when it is full the reader
stops reading, so a flooding client is held back by TCP, not by our memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import falcon
import falcon.asgi
import msgpack
import orjson

from zizq.api.codec import dumps_json
from zizq.license import Feature
from zizq.queue import Engine
from zizq.queue.errors import NotFound
from zizq.queue.feed import Watcher
from zizq.queue.observe import (
    IN_FLIGHT_LIST,
    LIST_NAMES,
    Anchor,
    Lists,
    Query,
    Window,
    job_view,
)

logger = logging.getLogger("zizq.api.events")

HEARTBEAT_S = 2.0
COALESCE_S = 0.2  # at most one refresh per connection per this interval
# A refresh that took t seconds (a window deep in a long list) waits at least
# DEEP_COST_FACTOR * t before the next, so one viewer costs at most ~1/that of a core.
DEEP_COST_FACTOR = 10
SEND_TIMEOUT_S = 10.0  # a send stuck this long (the client does not read): close
MAX_CLIENT_FRAME = 64 * 1024  # characters; a larger client message is refused and closes
REQUEST_QUEUE = 8  # client messages waiting to be answered before we stop reading
MAX_CHANGES = 100  # job_changed events per refresh; more become one job_snapshot
DEFAULT_LIMIT = 200  # rows per list before the client subscribes
FREE_TIER_CAP = 10  # the free tier sees the first 10 rows of each list
DETAIL_PAYLOAD_MAX = 64 * 1024  # stored payload bytes sent in detail mode; larger: omitted
DETAIL_BUDGET = 1024 * 1024  # payload bytes per window; rows past it get no payload

CLOSE_TOO_BIG = 1009
CLOSE_POLICY = 1008


class BadMessage(ValueError):
    """A client message we cannot act on; answered with an `error` event."""


@dataclass
class _Subscription:
    anchor: Anchor = field(default_factory=Anchor)
    limit: int = DEFAULT_LIMIT


@dataclass
class _Shown:
    """What the client was last sent for one list: ids in order, and each row's look."""

    ids: list[str] = field(default_factory=list)
    looks: dict[str, tuple] = field(default_factory=dict)


def _look(record: dict) -> tuple:
    # The fields a row shows: a change in any of them is sent as an update of the row.
    return (
        record["queue"],
        record["type"],
        record["priority"],
        record["ready_at"],
        record["attempts"],
        record.get("dequeued_at"),
    )


class Events:
    """The `/events` resource of the admin app."""

    def __init__(self, engine: Engine, version: str) -> None:
        self._engine = engine
        self._version = version
        self._lists = Lists(engine)
        self._created = (
            time.monotonic()
        )  # the uptime's origin until the engine says when it started

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        # A plain GET (no Upgrade header): say what this endpoint is.
        raise falcon.HTTPError(
            "426 Upgrade Required",
            description="/events is a WebSocket: connect with Upgrade: websocket",
            headers={"Upgrade": "websocket", "Connection": "Upgrade"},
        )

    async def on_websocket(self, req: falcon.Request, ws: falcon.asgi.WebSocket) -> None:
        await ws.accept()
        session = _Session(self, ws)
        try:
            await session.run()
        except falcon.errors.WebSocketDisconnected:
            pass
        finally:
            await session.end()

    # -- shared by sessions ------------------------------------------------------------

    def live(self) -> bool:
        return self._engine.license.allows(Feature.TOP_LIVE_QUEUE)

    def uptime_ms(self) -> int:
        started = self._engine.started_monotonic
        if started is None:  # an engine that was never started (tests): the admin app's age
            started = self._created
        # round, not int: a float difference of exactly 3600 s may come out as 3599.9999...
        return round((time.monotonic() - started) * 1000)

    def status(self) -> dict[str, Any]:
        totals = self._lists.totals()
        counts = self._engine.store.counts
        completed = dead = 0
        for (_, _, status), count in counts.items():
            if status == "completed":
                completed += count
            elif status == "dead":
                dead += count
        status: dict[str, Any] = {
            "version": self._version,
            "uptime_ms": self.uptime_ms(),
            "tier": str(self._engine.license.tier()),
            "total_ready": totals["ready"],
            "total_in_flight": totals["in_flight"],
            "total_scheduled": totals["scheduled"],
            "total_completed": completed,
            "total_dead": dead,
        }
        if not self.live():
            status["subscription_limit"] = FREE_TIER_CAP
        return status


class _Session:
    """One connected viewer."""

    def __init__(self, events: Events, ws: falcon.asgi.WebSocket) -> None:
        self._events = events
        self._engine = events._engine
        self._lists = events._lists
        self._ws = ws
        self._wake = asyncio.Event()
        self._feed = self._engine.dispatcher.feed
        self._watcher: Watcher = self._feed.watch(self._wake)
        self._requests: asyncio.Queue[dict | BadMessage] = asyncio.Queue(REQUEST_QUEUE)
        self._subs = {name: _Subscription() for name in LIST_NAMES}
        self._shown = {name: _Shown() for name in LIST_NAMES}
        self._detail = False
        self._reader: asyncio.Task | None = None
        self._closing: tuple[int, str] | None = None

    async def end(self) -> None:
        self._feed.unwatch(self._watcher)
        if not self._feed.active:
            self._lists.forget()  # the last viewer left: no sorted snapshots kept
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._closing is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await self._ws.close(*self._closing)

    async def run(self) -> None:
        self._reader = asyncio.create_task(self._read())
        await self._send_snapshot()
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + HEARTBEAT_S
        next_refresh = 0.0
        while True:
            self._wake.clear()
            while not self._requests.empty():
                await self._answer(self._requests.get_nowait())
            if self._reader.done():
                return  # the client went away, or sent something that closes
            now = loop.time()
            if now >= next_beat:
                await self._send({"event": "heartbeat"})
                # Also a full refresh: catches any change no hook reported.
                self._watcher.dirty = True
                next_beat = max(next_beat + HEARTBEAT_S, now + HEARTBEAT_S / 2)
            if self._watcher.dirty and now >= next_refresh:
                started = loop.time()
                await self._refresh()
                cost = loop.time() - started
                next_refresh = started + max(COALESCE_S, DEEP_COST_FACTOR * cost)
            if not self._requests.empty():
                continue
            wait = next_beat - loop.time()
            if self._watcher.dirty:
                wait = min(wait, next_refresh - loop.time())
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()

    # -- reading -----------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            await self._read_messages()
        finally:
            self._wake.set()  # the sender notices at once that reading has ended

    async def _read_messages(self) -> None:
        ws = self._ws
        while True:
            try:
                text = await ws.receive_text()
            except falcon.errors.PayloadTypeError:
                await self._requests.put(
                    BadMessage("binary frames are not accepted: send JSON text")
                )
                self._wake.set()
                continue
            if len(text) > MAX_CLIENT_FRAME:
                self._closing = (CLOSE_TOO_BIG, "message too big")
                await self._requests.put(
                    BadMessage(f"message too big: at most {MAX_CLIENT_FRAME} characters")
                )
                self._wake.set()
                return
            try:
                message = _parse(text)
            except BadMessage as exc:
                message = exc
            await self._requests.put(message)
            self._wake.set()

    # -- answering ---------------------------------------------------------------------

    async def _answer(self, message: dict | BadMessage) -> None:
        if isinstance(message, BadMessage):
            await self._send({"event": "error", "error": str(message)})
            return
        kind = message["type"]
        if kind == "subscribe":
            sub = _Subscription(message["anchor"], message["limit"])
            self._subs[message["list"]] = sub
            await self._send_snapshot()
        elif kind == "set_detail_level":
            self._detail = message["detail"]
            await self._send_snapshot()
        elif kind == "delete_job":
            try:
                await self._engine.delete_job(message["id"])
            except NotFound:
                await self._send({"event": "error", "error": "job not found", "id": message["id"]})
            except Exception as exc:  # the store refuses writes: say so, keep the stream
                await self._send({"event": "error", "error": str(exc), "id": message["id"]})
            else:
                self._watcher.dirty = True  # the row leaves every list at the next refresh
        elif kind == "find":
            await self._send_find(message)

    async def _send_find(self, message: dict) -> None:
        cap = self._cap()
        found = self._lists.find(
            message["list"],
            message["start"],
            message["direction"],
            message["query"],
            message["limit"],
            job_id=message.get("id"),
            cap=cap,
        )
        event = {
            "event": "find_result",
            "list": message["list"],
            "matched_position": found.matched_position,
            "window": self._window_json(found.window),
        }
        await self._send(event)

    # -- refreshing --------------------------------------------------------------------

    def _cap(self) -> int | None:
        return None if self._events.live() else FREE_TIER_CAP

    def _windows(self) -> dict[str, Window]:
        cap = self._cap()
        return {
            name: self._lists.window(name, sub.anchor, sub.limit, cap)
            for name, sub in self._subs.items()
        }

    async def _send_snapshot(self, windows: dict[str, Window] | None = None) -> None:
        self._watcher.dirty = False
        self._watcher.take_finished()
        windows = windows if windows is not None else self._windows()
        event: dict[str, Any] = {"event": "job_snapshot"}
        for name, window in windows.items():
            event[name] = self._window_json(window)
            self._remember(name, window)
        await self._send(event)

    def _remember(self, name: str, window: Window) -> None:
        self._shown[name] = _Shown(
            [job_id for job_id, _ in window.items],
            {job_id: _look(record) for job_id, record in window.items},
        )

    async def _refresh(self) -> None:
        self._watcher.dirty = False
        finished = self._watcher.take_finished()
        windows = self._windows()
        changes: list[dict] = []
        shown_in_flight = set(self._shown[IN_FLIGHT_LIST].ids)
        for job_id, status in finished:
            if job_id in shown_in_flight:  # only jobs this client shows
                changes.append({"event": "job_changed", "id": job_id, "status": status})
        for name, window in windows.items():
            shown = self._shown[name]
            current = [job_id for job_id, _ in window.items]
            kept = set(current) & set(shown.looks)
            if [i for i in shown.ids if i in kept] != [i for i in current if i in kept]:
                await self._send_snapshot(windows)  # rows moved: a fresh window says it best
                return
            for job_id in shown.ids:
                if job_id not in kept:
                    changes.append(
                        {"event": "job_changed", "id": job_id, "status": f"{name}_removed"}
                    )
            fresh = [
                (job_id, record)
                for job_id, record in window.items
                if job_id not in kept or shown.looks[job_id] != _look(record)
            ]
            if len(changes) + len(fresh) > MAX_CHANGES:
                await self._send_snapshot(windows)
                return
            for (job_id, _), view in zip(fresh, self._views(fresh), strict=True):
                changes.append({"event": "job_changed", "id": job_id, "status": name, "job": view})
        for name, window in windows.items():
            self._remember(name, window)
        for change in changes:
            await self._send(change)

    # -- rendering ---------------------------------------------------------------------

    def _views(self, rows: list[tuple[str, dict]]) -> list[dict]:
        if not self._detail:
            return [job_view(job_id, record, False) for job_id, record in rows]
        payloads = self._engine.payloads_of([job_id for job_id, _ in rows])
        views = []
        budget = DETAIL_BUDGET
        for (job_id, record), raw in zip(rows, payloads, strict=True):
            size = 0 if raw is None else len(raw)
            if size > min(DETAIL_PAYLOAD_MAX, budget):
                view = job_view(job_id, record, True, None)
                view["payload_truncated"] = True
                view["payload_size"] = size
            else:
                budget -= size
                view = job_view(job_id, record, True, _payload(raw))
            views.append(view)
        return views

    def _window_json(self, window: Window) -> dict[str, Any]:
        out: dict[str, Any] = {
            "items": self._views(window.items),
            "first_position": window.first_position,
            "total": window.total,
        }
        if window.resolved_anchor is not None:
            out["resolved_anchor"] = window.resolved_anchor
        return out

    async def _send(self, event: dict[str, Any]) -> None:
        message = {"server": self._events.status(), **event}
        text = dumps_json(message).decode()
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await self._ws.send_text(text)
        except TimeoutError:
            logger.info("events: closing a viewer that stopped reading")
            self._closing = (CLOSE_POLICY, "not reading")
            raise falcon.errors.WebSocketDisconnected(CLOSE_POLICY) from None


def _payload(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return msgpack.unpackb(raw, strict_map_key=False)
    except Exception:
        return None


# -- parsing client messages -----------------------------------------------------------


def _parse(text: str) -> dict:
    """A client message, checked and normalised; BadMessage says what is wrong."""
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise BadMessage("message is not valid JSON") from None
    if not isinstance(raw, dict):
        raise BadMessage("message must be a JSON object")
    kind = raw.get("type")
    if kind == "subscribe":
        return {
            "type": kind,
            "list": _list_name(raw),
            "anchor": _subscribe_anchor(raw.get("anchor", {"kind": "head"})),
            "limit": _limit(raw),
        }
    if kind == "set_detail_level":
        detail = raw.get("detail")
        if not isinstance(detail, bool):
            raise BadMessage("set_detail_level.detail: must be true or false")
        return {"type": kind, "detail": detail}
    if kind == "delete_job":
        return {"type": kind, "id": _string(raw.get("id"), "delete_job.id")}
    if kind == "find":
        anchor = raw.get("anchor", {"kind": "start"})
        if not isinstance(anchor, dict):
            raise BadMessage("find.anchor: must be an object")
        start = anchor.get("kind")
        if start not in ("job_id", "start", "end"):
            raise BadMessage("find.anchor.kind: must be job_id, start or end")
        direction = raw.get("direction")
        if direction not in ("forward", "backward", "locate"):
            raise BadMessage("find.direction: must be forward, backward or locate")
        message = {
            "type": kind,
            "list": _list_name(raw),
            "start": start,
            "direction": direction,
            "query": _query(raw.get("query", {})),
            "limit": _limit(raw),
        }
        if start == "job_id":
            message["id"] = _string(anchor.get("id"), "find.anchor.id")
        return message
    if not isinstance(kind, str):
        raise BadMessage("message.type: required (subscribe, set_detail_level, delete_job, find)")
    raise BadMessage(f"message.type: unknown type {kind[:64]!r}")


def _list_name(raw: dict) -> str:
    name = raw.get("list")
    if name not in LIST_NAMES:
        raise BadMessage("list: must be ready, in_flight or scheduled")
    return name


def _limit(raw: dict) -> int:
    limit = raw.get("limit", DEFAULT_LIMIT)
    if type(limit) is not int or limit < 1:
        raise BadMessage("limit: must be a positive integer")
    return limit


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadMessage(f"{where}: must be a non-empty string")
    return value


def _subscribe_anchor(anchor: Any) -> Anchor:
    if not isinstance(anchor, dict):
        raise BadMessage("subscribe.anchor: must be an object")
    kind = anchor.get("kind")
    if kind in ("head", "tail"):
        return Anchor(kind)
    if kind == "offset":
        offset = anchor.get("offset")
        if type(offset) is not int or offset < 0:
            raise BadMessage("subscribe.anchor.offset: must be an integer >= 0")
        return Anchor("offset", offset=offset)
    if kind == "around":
        fallback = anchor.get("fallback", "nowhere")
        if fallback not in ("head", "tail", "nowhere"):
            raise BadMessage("subscribe.anchor.fallback: must be head, tail or nowhere")
        job_id = _string(anchor.get("id"), "subscribe.anchor.id")
        return Anchor("around", job_id=job_id, fallback=fallback)
    raise BadMessage("subscribe.anchor.kind: must be around, offset, head or tail")


def _query(query: Any) -> Query:
    if not isinstance(query, dict):
        raise BadMessage("find.query: must be an object")
    fields = []
    for name in ("queues", "types"):
        values = query.get(name, [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise BadMessage(f"find.query.{name}: must be a list of strings")
        fields.append(tuple(v for v in values if v))
    return Query(*fields)
