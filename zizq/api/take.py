"""GET /jobs/take: the endless stream of jobs for one worker.

Granian's send() silently does nothing once the client has gone, and Falcon
does not watch for that on plain streams, so we watch the ASGI receive channel
for http.disconnect ourselves and return the stream's jobs to ready at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import falcon

from zizq.api import codec
from zizq.queue import Engine, InvalidInput
from zizq.queue.consumer import Consumer, ConsumerClosed
from zizq.queue.records import public_view

MAX_PREFETCH = 100_000
RECEIVE_KEY = "zizq.receive"  # set by the ASGI wrapper in app.py


def parse_queues(raw: str | None) -> frozenset[str] | None:
    if raw is None:
        return None
    names = frozenset(name.strip() for name in raw.split(",") if name.strip())
    return names or None


def parse_prefetch(raw: str | None) -> int:
    if raw is None or raw == "":
        return 1
    try:
        prefetch = int(raw)
    except ValueError:
        raise InvalidInput(f"prefetch: must be an integer between 1 and {MAX_PREFETCH}") from None
    if not 1 <= prefetch <= MAX_PREFETCH:
        raise InvalidInput(f"prefetch: must be an integer between 1 and {MAX_PREFETCH}")
    return prefetch


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
                yield b"".join(
                    codec.stream_frame(
                        media,
                        codec.job_with_payload(public_view(d.job_id, d.record), d.payload),
                    )
                    for d in deliveries
                )
        finally:
            watcher.cancel()
            self._engine.close_consumer(consumer)

    async def _watch_disconnect(
        self, consumer: Consumer, receive: Callable[[], Awaitable[dict]]
    ) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._engine.close_consumer(consumer)
                consumer.close()
                return
