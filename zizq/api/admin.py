"""Admin API: POST /backup (a tar.gz stream of a snapshot) and POST /compact."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import falcon

from zizq.api import codec
from zizq.api.take import RECEIVE_KEY
from zizq.queue.maintenance import BackupSnapshot, Maintenance
from zizq.store.backup import Cancelled

logger = logging.getLogger("zizq.api.admin")

GZIP = "application/gzip"
CHUNK_BYTES = 256 * 1024
MAX_CHUNKS_AHEAD = 16  # archive produced ahead of the network, at most 4 MiB


class _ChunkPipe:
    """File-like sink for the archiving thread; hands chunks to the event loop.

    The thread blocks when MAX_CHUNKS_AHEAD are waiting (a slow client slows
    the archiver instead of filling memory) and gives up once cancelled.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, cancelled: threading.Event) -> None:
        self._loop = loop
        self._cancelled = cancelled
        self.chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self._room = threading.Semaphore(MAX_CHUNKS_AHEAD)
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        if len(self._buffer) >= CHUNK_BYTES:
            self._send(bytes(self._buffer))
            self._buffer.clear()
        return len(data)

    def flush(self) -> None:
        pass

    def finish(self, error: BaseException | None) -> None:
        if error is None and self._buffer:
            self._send(bytes(self._buffer))
        self._loop.call_soon_threadsafe(self.chunks.put_nowait, error)

    def _send(self, chunk: bytes) -> None:
        while not self._room.acquire(timeout=0.1):
            if self._cancelled.is_set():
                raise Cancelled("backup cancelled")
        self._loop.call_soon_threadsafe(self.chunks.put_nowait, chunk)

    def taken(self) -> None:
        self._room.release()


class Backup:
    """POST /backup"""

    def __init__(self, maintenance: Maintenance) -> None:
        self._maintenance = maintenance

    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        accept = req.accept
        if (
            accept
            and accept != "*/*"
            and not req.client_prefers([GZIP, "application/octet-stream"])
        ):
            raise falcon.HTTPNotAcceptable(description=f"a backup is {GZIP}")
        snapshot = await self._maintenance.snapshot()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(snapshot.manifest["created_at"] / 1000))
        resp.content_type = GZIP
        resp.set_header("Content-Disposition", f'attachment; filename="zizq-backup-{stamp}.tar.gz"')
        resp.set_header("X-Zizq-Jobs", str(snapshot.manifest["jobs"]["total"]))
        resp.stream = self._stream(snapshot, req.scope[RECEIVE_KEY])

    async def _stream(
        self, snapshot: BackupSnapshot, receive: Callable[[], Awaitable[dict]]
    ) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()
        pipe = _ChunkPipe(loop, cancelled)

        def archive() -> None:
            error = None
            try:
                snapshot.write_archive(pipe, cancelled)
            except BaseException as exc:  # handed to the loop, which ends the response
                if not isinstance(exc, Cancelled):
                    logger.error("backup archive failed: %s", exc, exc_info=exc)
                error = exc
            pipe.finish(error)

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            cancelled.set()
            pipe.chunks.put_nowait(Cancelled("client disconnected"))

        archiver = loop.run_in_executor(None, archive)
        watcher = asyncio.create_task(watch_disconnect())
        try:
            while True:
                chunk = await pipe.chunks.get()
                if chunk is None or isinstance(chunk, BaseException):
                    return  # finished, failed or abandoned: the response ends here
                yield chunk
                pipe.taken()
        finally:
            cancelled.set()
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await archiver
            snapshot.discard()  # the temporary checkpoint never outlives the response


class Compact:
    """POST /compact"""

    def __init__(self, maintenance: Maintenance) -> None:
        self._maintenance = maintenance

    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        media = codec.response_type(req)
        before, after = await self._maintenance.compact()
        codec.respond(req, resp, {"before_bytes": before, "after_bytes": after}, 200, media)
