"""Assembly of the two ASGI applications: the primary API and the admin API."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import falcon
import falcon.asgi
import orjson

from zizq.api import access_log, errors
from zizq.api.acks import BulkSuccess, Failure, Success
from zizq.api.admin import Backup, Compact
from zizq.api.budgets import (
    BudgetCollection,
    BudgetItem,
    JobBudgetCollection,
    JobBudgetItem,
    JobsBudgetCollection,
    JobsBudgetItem,
)
from zizq.api.crons import CronCollection, CronEntries, CronEntryItem, CronGroupItem
from zizq.api.events import Events
from zizq.api.health import Health, Version
from zizq.api.jobs import BulkJobs, JobCollection, JobItem
from zizq.api.query import JobCount, JobError, JobErrors, Queues, Reset
from zizq.api.take import RECEIVE_KEY, Take
from zizq.connections import ConnectionTracker
from zizq.queue import Engine
from zizq.queue.maintenance import Maintenance
from zizq.store import Store

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]

TAKE_PATH = "/jobs/take"  # endless streams: not limited like other GETs


class _App(falcon.asgi.App):
    """Falcon's app with HEAD wherever there is GET: the same status and headers, no body.

    Falcon has no automatic HEAD. A resource may define its own on_head (the take
    stream does, so that a HEAD opens no consumer); otherwise HEAD runs on_get and
    Falcon drops the body, keeping GET's Content-Length.
    """

    def add_route(self, uri_template: str, resource: object, **kwargs) -> None:
        if hasattr(resource, "on_get") and not hasattr(resource, "on_head"):
            resource.on_head = resource.on_get  # type: ignore[attr-defined]
        super().add_route(uri_template, resource, **kwargs)


def _base_app(version: str, store: Store) -> falcon.asgi.App:
    app = _App(cors_enable=False)
    app.req_options.strip_url_path_trailing_slash = True
    errors.install(app)
    app.add_route("/health", Health(store))  # 503 while the store cannot write
    app.add_route("/version", Version(version))  # `version` is our build; see health.py
    return app


# Large response bodies go to Granian in pieces of this size. Each piece waits until
# Granian's small per-response queue has room, i.e. until the client reads, so a client
# that stops reading holds up its own response instead of making us buffer all of it.
SEND_CHUNK = 32 * 1024

_BAD_BODY_MESSAGE = "body: malformed or incomplete (bad chunked encoding, or the connection closed)"
_BAD_BODY = orjson.dumps({"error": _BAD_BODY_MESSAGE})
_BAD_BODY_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_BAD_BODY)).encode()),
]


_CLOSE = (b"connection", b"close")
DRAIN_MAX_BYTES = 16 * 1024 * 1024  # unread request body we read and drop after answering
DRAIN_TIMEOUT_S = 10.0


async def _reject_body(send: Callable) -> None:
    await send({"type": "http.response.start", "status": 400, "headers": _BAD_BODY_HEADERS})
    await send({"type": "http.response.body", "body": _BAD_BODY})


def _wrap(app: falcon.asgi.App, tracker: ConnectionTracker) -> ASGIApp:
    """The ASGI callable Granian calls: fixes what Granian hands Falcon, then runs it.

    - Granian reports HTTP/1.0 as http_version "1", which Falcon rejects (every HTTP/1.0
      request, e.g. a load balancer's health check, would get a 500).
    - Granian turns a broken request body (a malformed chunk size) into http.disconnect.
      Falcon would then answer nothing (Granian writes a 500) or, after the first chunk,
      read the truncated body as if it were whole; both become a 400 here.
    - It puts the receive channel in the scope so a stream can watch for disconnects,
      and bounds what one connection can make us hold (see `ConnectionTracker`).
    """

    async def asgi(scope: dict, receive: Callable, send: Callable) -> None:
        if scope.get("type") != "http":
            await app(scope, receive, send)
            return
        if scope.get("http_version") == "1":
            scope["http_version"] = "1.0"
        record = access_log.RequestLog(scope) if access_log.enabled() else None
        try:
            await _serve(scope, receive, send, record)
        finally:
            if record is not None:
                record.finish()

    async def _serve(
        scope: dict, receive: Callable, send: Callable, record: access_log.RequestLog | None
    ) -> None:
        first = await receive()
        if first.get("type") != "http.request":
            if record is not None:
                record.status, record.bytes = 400, len(_BAD_BODY)
            await _reject_body(send)  # a no-op if the client is really gone
            return
        # The body is done at its final event, or once Content-Length bytes arrived
        # (Falcon stops reading there, before the empty final event).
        expected = _content_length(scope)
        received = len(first.get("body", b""))
        body_done = not first.get("more_body", False) or (
            expected is not None and received >= expected
        )
        replayed = False

        async def next_event() -> dict:
            nonlocal body_done, replayed, received
            if not replayed:
                replayed = True
                return first
            event = await receive()
            if event.get("type") == "http.request":
                received += len(event.get("body", b""))
                body_done = not event.get("more_body", False) or (
                    expected is not None and received >= expected
                )
            return event

        async def checked_receive() -> dict:
            """What Falcon reads the body with: a body cut short is an error, not an end."""
            done_before = body_done
            event = await next_event()
            if not done_before and event.get("type") != "http.request":
                raise falcon.HTTPBadRequest(description=_BAD_BODY_MESSAGE)
            return event

        # Streams watch this one for the disconnect; it must hand them every event as is.
        scope[RECEIVE_KEY] = next_event
        http1 = scope.get("http_version", "1.1").startswith("1")

        client = scope.get("client")
        peer = _peer(client) if client else None
        conn = tracker.enter(peer) if peer is not None else None
        gated = (
            conn is not None
            and scope.get("method") in ("GET", "HEAD")
            and scope.get("path", "").rstrip("/") != TAKE_PATH
        )
        started = False

        async def wrapped_send(message: dict) -> None:
            """The one layer between Falcon and Granian (each layer costs every request):
            counts for the request log and the reaper, says `Connection: close` when the
            body was left unread, and cuts large bodies into SEND_CHUNK pieces."""
            nonlocal started
            kind = message.get("type")
            if kind == "http.response.start":
                if record is not None:
                    record.status = message.get("status", 0)
                if not started:
                    started = True
                    if conn is not None:
                        conn.working -= 1
                # An answer given before the body was read (a 400 for a bad query, a
                # 413) leaves unread bytes on an HTTP/1.1 connection; the server then
                # drops the connection, and a client that reuses it fails. Say so first.
                if http1 and not body_done:
                    message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
                await send(message)
                return
            body = message.get("body", b"")
            if record is not None:
                record.bytes += len(body)
            if kind != "http.response.body" or len(body) <= SEND_CHUNK:
                await send(message)
                return
            more = message.get("more_body", False)
            last = len(body) - SEND_CHUNK
            for offset in range(0, len(body), SEND_CHUNK):
                await send(
                    {
                        "type": "http.response.body",
                        "body": bytes(body[offset : offset + SEND_CHUNK]),
                        "more_body": more or offset < last,
                    }
                )

        try:
            if gated:
                await conn.gets.acquire()  # type: ignore[union-attr]
            if conn is not None:
                conn.working += 1
            try:
                await app(scope, checked_receive, wrapped_send)
            finally:
                if not started and conn is not None:
                    conn.working -= 1
            await _drain_unread_body(next_event, lambda: body_done)
        finally:
            if conn is not None:
                if gated:
                    conn.gets.release()
                tracker.leave(peer, conn)  # type: ignore[arg-type]

    return asgi


async def _drain_unread_body(
    next_event: Callable[[], Awaitable[dict]], body_done: Callable[[], bool]
) -> None:
    """Read and drop what is left of a body the answer did not need (a 413, a 400 for a
    bad query). An HTTP/2 client (and many HTTP/1.1 ones) sends its whole body before
    reading the answer: left unread, the flow-control window stays shut and the client
    waits forever. Bounded in bytes and time."""
    if body_done():
        return  # the usual case: nothing left, no timer to set up
    left = DRAIN_MAX_BYTES
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            while not body_done() and left > 0:
                event = await next_event()
                if event.get("type") != "http.request":
                    return  # the client went away
                left -= len(event.get("body", b""))
    except TimeoutError:
        return


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() and len(value) < 20 else None
    return None


def _peer(client: object) -> tuple[str, int] | None:
    try:
        host, port = client[0], int(client[1])  # type: ignore[index]
    except (TypeError, ValueError, IndexError):
        return None
    if host.startswith("::ffff:"):  # the reaper sees IPv4-mapped addresses this way
        host = host[7:]
    return host, port


def create_primary_app(
    engine: Engine, version: str, tracker: ConnectionTracker | None = None
) -> ASGIApp:
    tracker = tracker or ConnectionTracker()
    app = _base_app(version, engine.store)
    app.add_route("/jobs", JobCollection(engine))
    app.add_route("/jobs/bulk", BulkJobs(engine))
    app.add_route("/jobs/take", Take(engine))
    app.add_route("/jobs/success", BulkSuccess(engine))
    app.add_route("/jobs/{job_id}", JobItem(engine))
    app.add_route("/jobs/{job_id}/success", Success(engine))
    app.add_route("/jobs/{job_id}/failure", Failure(engine))
    app.add_route("/jobs/count", JobCount(engine))
    app.add_route("/jobs/{job_id}/errors", JobErrors(engine))
    app.add_route("/jobs/{job_id}/errors/{attempt}", JobError(engine))
    app.add_route("/queues", Queues(engine))
    app.add_route("/reset", Reset(engine))
    app.add_route("/budgets", BudgetCollection(engine))
    app.add_route("/budgets/{key}", BudgetItem(engine))
    app.add_route("/jobs/{job_id}/budgets", JobBudgetCollection(engine))
    app.add_route("/jobs/{job_id}/budgets/{key}", JobBudgetItem(engine))
    app.add_route("/jobs/budgets", JobsBudgetCollection(engine))  # every matching job
    app.add_route("/jobs/budgets/{key}", JobsBudgetItem(engine))
    crons, license = engine.crons, engine.license
    app.add_route("/crons", CronCollection(crons, license))
    app.add_route("/crons/{group}", CronGroupItem(crons, license))
    app.add_route("/crons/{group}/entries", CronEntries(crons, license))
    app.add_route("/crons/{group}/entries/{entry}", CronEntryItem(crons, license))
    return _wrap(app, tracker)


def create_admin_app(
    maintenance: Maintenance,
    version: str,
    tracker: ConnectionTracker | None = None,
    engine: Engine | None = None,
) -> ASGIApp:
    tracker = tracker or ConnectionTracker()
    app = _base_app(version, maintenance.store)
    app.add_route("/backup", Backup(maintenance))
    app.add_route("/compact", Compact(maintenance))
    if engine is not None:
        app.add_route("/events", Events(engine, version))  # WebSocket for `zizq top`
    return _wrap(app, tracker)
