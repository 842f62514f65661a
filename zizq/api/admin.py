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
# A client that takes nothing for this long has stalled: the backup is abandoned,
# its thread, checkpoint and slot freed, and the response ends (documented).
STALL_TIMEOUT_S = 60.0


class _ChunkPipe:
    """File-like sink for the archiving thread; hands chunks to the event loop.

    The thread blocks when MAX_CHUNKS_AHEAD are waiting (a slow client slows
    the archiver instead of filling memory) and gives up once cancelled, or
    once the client has taken nothing for `stall_timeout` seconds.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        cancelled: threading.Event,
        stall_timeout: float = STALL_TIMEOUT_S,
    ) -> None:
        self._loop = loop
        self._cancelled = cancelled
        self._stall_timeout = stall_timeout
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
            try:
                self._send(bytes(self._buffer))
            except Cancelled as exc:
                error = exc
        self._buffer.clear()
        with contextlib.suppress(RuntimeError):  # the loop is closed: we are exiting
            self._loop.call_soon_threadsafe(self._end, error)

    def _end(self, error: BaseException | None) -> None:
        if isinstance(error, Cancelled):
            # Abandoned: drop what the client never took, so a stalled
            # connection keeps at most the chunk being sent.
            while not self.chunks.empty():
                self.chunks.get_nowait()
        self.chunks.put_nowait(error)

    def _send(self, chunk: bytes) -> None:
        deadline = time.monotonic() + self._stall_timeout
        while not self._room.acquire(timeout=0.1):
            if self._cancelled.is_set():
                raise Cancelled("backup cancelled")
            if time.monotonic() > deadline:
                self._cancelled.set()
                raise Cancelled(f"the client read nothing for {self._stall_timeout:g} s")
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
        try:
            stamp = time.strftime(
                "%Y%m%dT%H%M%SZ", time.gmtime(snapshot.manifest["created_at"] / 1000)
            )
            resp.content_type = GZIP
            resp.set_header(
                "Content-Disposition", f'attachment; filename="zizq-backup-{stamp}.tar.gz"'
            )
            resp.set_header("X-Zizq-Jobs", str(snapshot.manifest["jobs"]["total"]))
            # Archiving starts now, not when the server first pulls the body: if
            # the body is never pulled, the stall timeout still frees everything.
            pipe = _ChunkPipe(asyncio.get_running_loop(), snapshot.cancelled)
            archiver = asyncio.ensure_future(
                self._maintenance.run_archiver(lambda: _archive(snapshot, pipe))
            )
            archiver.add_done_callback(lambda done: _archiver_ended(done, snapshot, pipe))
        except BaseException:
            snapshot.discard()
            raise
        resp.stream = self._stream(snapshot, pipe, archiver, req.scope[RECEIVE_KEY])

    async def _stream(
        self,
        snapshot: BackupSnapshot,
        pipe: _ChunkPipe,
        archiver: asyncio.Future,
        receive: Callable[[], Awaitable[dict]],
    ) -> AsyncIterator[bytes]:
        cancelled = snapshot.cancelled

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            cancelled.set()
            pipe.chunks.put_nowait(Cancelled("client disconnected"))

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


def _archiver_ended(done: asyncio.Future, snapshot: BackupSnapshot, pipe: _ChunkPipe) -> None:
    """_archive reports its own errors; this catches the thread never starting."""
    if done.cancelled() or done.exception() is None:
        return
    logger.error("backup archive did not start: %s", done.exception())
    snapshot.discard()
    pipe.chunks.put_nowait(done.exception())


def _archive(snapshot: BackupSnapshot, pipe: _ChunkPipe) -> None:
    """On a backup thread: write the whole archive into the pipe, then free the checkpoint."""
    error = None
    try:
        snapshot.write_archive(pipe)
    except BaseException as exc:  # handed to the loop, which ends the response
        if isinstance(exc, Cancelled):
            logger.info("backup abandoned: %s", exc)
        else:
            logger.error("backup archive failed: %s", exc, exc_info=exc)
        error = exc
    try:
        pipe.finish(error)
    finally:
        snapshot.discard()  # the archive is sent on (or abandoned): free the slot


class Compact:
    """POST /compact"""

    def __init__(self, maintenance: Maintenance) -> None:
        self._maintenance = maintenance

    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        media = codec.response_type(req)
        before, after = await self._maintenance.compact()
        codec.respond(req, resp, {"before_bytes": before, "after_bytes": after}, 200, media)
