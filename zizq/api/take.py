"""GET /jobs/take: the endless stream of jobs for one worker.

Granian's send() silently does nothing once the client has gone, and Falcon
does not watch for that on plain streams, so we watch the ASGI receive channel
for http.disconnect ourselves and return the stream's jobs to ready at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import falcon

from zizq.api import codec, params
from zizq.queue import Engine
from zizq.queue.consumer import Consumer, ConsumerClosed, Delivery
from zizq.queue.records import public_view
from zizq.queue.spec import FailureSpec

logger = logging.getLogger("zizq.api")

MAX_PREFETCH = 100_000
RECEIVE_KEY = "zizq.receive"  # set by the ASGI wrapper in app.py


def parse_queues(raw: str | None) -> frozenset[str] | None:
    """The `queue=` list; each name must be one a job could have (else 400)."""
    if raw is None or not raw.strip(", "):
        return None
    return params.names(raw, "queue")


def parse_prefetch(raw: str | None) -> int:
    if raw is None or raw == "":
        return 1
    return params.whole_number(raw, "prefetch", 1, MAX_PREFETCH)


class Take:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        media = codec.stream_type(req)
        queues = parse_queues(req.get_param("queue"))
        prefetch = parse_prefetch(req.get_param("prefetch"))
        receive = req.scope[RECEIVE_KEY]
        consumer = self._engine.open_consumer(queues, prefetch)
        resp.content_type = media
        resp.stream = self._stream(consumer, receive, media)

    async def _stream(
        self, consumer: Consumer, receive: Callable[[], Awaitable[dict]], media: str
    ) -> AsyncIterator[bytes]:
        watcher = asyncio.create_task(self._watch_disconnect(consumer, receive))
        heartbeat = codec.HEARTBEAT[media]
        interval = self._engine.settings.heartbeat_interval_ms / 1000
        try:
            # An immediate heartbeat flushes the headers, so a worker knows it is connected.
            yield heartbeat
            while True:
                try:
                    deliveries = await consumer.next_deliveries(interval)
                except ConsumerClosed:
                    return
                if not deliveries:
                    yield heartbeat
                    continue
                frames = []
                for delivery in deliveries:
                    try:
                        frames.append(self._frame(media, delivery))
                    except codec.ENCODE_ERRORS as exc:
                        await self._kill_undeliverable(delivery.job_id, str(exc))
                if frames:
                    yield b"".join(frames)
        finally:
            watcher.cancel()
            self._engine.close_consumer(consumer)

    @staticmethod
    def _frame(media: str, delivery: Delivery) -> bytes:
        """The job's frame, encoded on its own so that one bad job spoils no other.

        Raises one of codec.ENCODE_ERRORS if the job cannot be delivered."""
        view = public_view(delivery.job_id, delivery.record)
        return codec.stream_frame(media, codec.job_with_payload(view, delivery.payload))

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
        self, consumer: Consumer, receive: Callable[[], Awaitable[dict]]
    ) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._engine.close_consumer(consumer)
                consumer.close()
                return
