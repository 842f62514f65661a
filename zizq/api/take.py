"""GET /jobs/take: the endless stream of jobs for one worker.

Granian's send() silently does nothing once the client has gone, and Falcon
does not watch for that on plain streams, so we watch the ASGI receive channel
for http.disconnect ourselves and return the stream's jobs to ready at once.

Framing follows the Accept header (see codec.stream_type): NDJSON, length-prefixed
MessagePack, or Server-Sent Events (`data: <job>` events, `: heartbeat` comments).
Each stream logs one INFO line when it opens and one when it closes, naming the
worker (the `Worker-Id` request header, else a random id) so the two can be paired.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import falcon

from zizq.api import codec, params
from zizq.api.splice import job_with_stored_payload
from zizq.logs import log_event
from zizq.queue import Engine
from zizq.queue.consumer import Consumer, ConsumerClosed, Delivery
from zizq.queue.records import public_view
from zizq.queue.spec import FailureSpec

logger = logging.getLogger("zizq.api.take")

MAX_PREFETCH = 100_000
# prefetch=0 means "no per-stream limit", as in the reference; the global in-flight
# limit (and the dispatcher's fair shares of it) still bound the stream.
NO_PREFETCH_LIMIT = 1 << 62
TAKE_PARAMS = ("queue", "prefetch")
MAX_WORKER_ID_CHARS = 128
# Jobs written out per step: their payloads are read just before, so a stream
# whose client reads slowly holds at most this many payloads (2 MiB each at most).
WRITE_GROUP = 16
RECEIVE_KEY = "zizq.receive"  # set by the ASGI wrapper in app.py


def parse_queues(raw: str | None) -> frozenset[str] | None:
    """The `queue=` list; each name must be one a job could have (else 400)."""
    if raw is None or not raw.strip(", "):
        return None
    return params.names(raw, "queue")


def parse_prefetch(raw: str | None) -> int:
    """1 by default; 0 is no per-stream limit (NO_PREFETCH_LIMIT)."""
    if raw is None or raw == "":
        return 1
    value = params.whole_number(raw, "prefetch", 0, MAX_PREFETCH)
    return NO_PREFETCH_LIMIT if value == 0 else value


def worker_id(req: falcon.Request) -> str:
    """The client's `Worker-Id`, made safe for a log line; a random id without one."""
    raw = req.get_header("Worker-Id")
    if raw:
        shown = "".join(c if c.isprintable() else "?" for c in raw[:MAX_WORKER_ID_CHARS]).strip()
        if shown:
            return shown
    return secrets.token_hex(4)  # 8 hex digits, as the reference assigns


class _Request:
    """What a take request asks for, checked as GET and HEAD both need it."""

    __slots__ = ("media", "queues", "prefetch")

    def __init__(self, req: falcon.Request) -> None:
        self.media = codec.stream_type(req)
        params.reject_unknown(req, TAKE_PARAMS)
        self.queues = parse_queues(params.joined(req, "queue"))
        self.prefetch = parse_prefetch(params.joined(req, "prefetch"))


def _set_headers(resp: falcon.Response, media: str) -> None:
    resp.content_type = media
    if media == codec.SSE:
        resp.set_header("Cache-Control", "no-cache")  # proxies must not hold events back


async def _no_body() -> AsyncIterator[bytes]:
    """Marks a HEAD answer as a stream (no Content-Length: 0); never iterated."""
    return
    yield b""  # pragma: no cover - makes this an async generator


class Take:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        wanted = _Request(req)
        receive = req.scope[RECEIVE_KEY]
        consumer = self._engine.open_consumer(wanted.queues, wanted.prefetch)
        worker = worker_id(req)
        queues = "*" if wanted.queues is None else ",".join(sorted(wanted.queues))
        prefetch = 0 if wanted.prefetch == NO_PREFETCH_LIMIT else wanted.prefetch
        log_event(
            logger,
            logging.INFO,
            "take stream opened",
            worker_id=worker,
            queues=queues,
            prefetch=prefetch,
            format=wanted.media,
        )
        _set_headers(resp, wanted.media)
        resp.stream = self._stream(consumer, receive, wanted.media, worker)

    async def on_head(self, req: falcon.Request, resp: falcon.Response) -> None:
        """GET's status and headers, and no stream: no consumer, no job leaves ready."""
        wanted = _Request(req)
        _set_headers(resp, wanted.media)
        resp.stream = _no_body()

    async def _stream(
        self,
        consumer: Consumer,
        receive: Callable[[], Awaitable[dict]],
        media: str,
        worker: str,
    ) -> AsyncIterator[bytes]:
        returned = [0]  # jobs given back to ready; the watcher may add to it
        watcher = asyncio.create_task(self._watch_disconnect(consumer, receive, returned))
        heartbeat = codec.HEARTBEAT[media]
        interval = self._engine.settings.heartbeat_interval_ms / 1000
        try:
            # An immediate heartbeat flushes the headers, so a worker knows it is connected.
            yield heartbeat
            while True:
                try:
                    deliveries = await consumer.next_deliveries(interval, WRITE_GROUP)
                except ConsumerClosed:
                    return
                if not deliveries:
                    yield heartbeat
                    continue
                # Still ours? A job deleted while it waited here frees its slot at once.
                deliveries = [d for d in deliveries if d.job_id in consumer.in_flight]
                payloads = self._engine.payloads_of([d.job_id for d in deliveries])
                frames = []
                for delivery, payload in zip(deliveries, payloads, strict=True):
                    try:
                        frames.append(self._frame(media, delivery, payload))
                    except codec.ENCODE_ERRORS as exc:
                        await self._kill_undeliverable(delivery.job_id, str(exc))
                if frames:
                    yield b"".join(frames)
        finally:
            watcher.cancel()
            returned[0] += self._engine.close_consumer(consumer)
            log_event(
                logger,
                logging.INFO,
                "take stream closed",
                worker_id=worker,
                returned_to_ready=returned[0],
            )

    @staticmethod
    def _frame(media: str, delivery: Delivery, payload: bytes | None) -> bytes:
        """The job's frame, encoded on its own so that one bad job spoils no other.

        Raises one of codec.ENCODE_ERRORS if the job cannot be delivered."""
        view = public_view(delivery.job_id, delivery.record)
        if media == codec.MSGPACK_STREAM:
            body = job_with_stored_payload(view, payload)  # the stored bytes, not re-encoded
            return len(body).to_bytes(4, "big") + body
        return codec.stream_frame(media, codec.job_with_payload(view, payload))

    async def _kill_undeliverable(self, job_id: str, problem: str) -> None:
        """A job no worker can ever receive (its payload, stored by an older version,
        cannot be encoded): kill it, once and with a log line, instead of redelivering
        it forever. The other jobs of the same delivery go out as usual."""
        logger.error("job %s cannot be delivered, killing it: %s", job_id, problem)
        failure = FailureSpec(
            message=f"zizq cannot deliver this job: {problem}",
            error_type="UndeliverableJob",
            kill=True,
        )
        try:
            await self._engine.fail(job_id, failure)
        except Exception:  # deleted meanwhile, or the store refused: nothing more to do
            logger.exception("could not kill undeliverable job %s", job_id)

    async def _watch_disconnect(
        self, consumer: Consumer, receive: Callable[[], Awaitable[dict]], returned: list[int]
    ) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                returned[0] += self._engine.close_consumer(consumer)
                consumer.close()
                return
