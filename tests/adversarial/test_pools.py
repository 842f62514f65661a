"""Finding 11: stalled backups must not starve queries (nor other admin work).

Before the fix, every blocking call shared asyncio's default executor: eight
`POST /backup` downloads whose clients never read held all of its threads,
and `GET /jobs` and scanning counts on the primary API hung behind them.
Now backups have their own threads and a concurrency limit (one more answers
503 at once), other admin work has its own pool, and a client that reads
nothing for STALL_TIMEOUT_S is dropped (checked here on the pipe directly,
with a short timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time

import httpx
import pytest

from zizq.api.admin import _ChunkPipe
from zizq.queue.maintenance import MAX_BACKUPS
from zizq.queue.pools import BoundedPool, PoolBusy
from zizq.store.backup import Cancelled

STALLED = 8
QUERY_LIMIT_S = 2.0  # generous: measured ~20-60 ms on a 2-core box


def _stalled_backup(admin_url: str) -> socket.socket:
    """POST /backup from a client that never reads its answer (tiny receive window)."""
    host, port = admin_url.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    sock.sendall(f"POST /backup HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode())
    return sock


def _fill_store(url: str, megabytes: int) -> int:
    """Enough incompressible payload that a backup cannot fit in socket buffers."""
    jobs = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(megabytes):
            bulk = [
                {
                    "queue": "big",
                    "type": "t",
                    "priority": i % 20,
                    "payload": {"b": os.urandom(5000).hex()},
                }
                for i in range(100)
            ]
            response = client.post("/jobs/bulk", json={"jobs": bulk})
            assert response.status_code in (200, 201), response.text
            jobs += len(bulk)
    return jobs


def _timed_get(client: httpx.Client, path: str, **params) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = client.get(path, params=params)
    return response, time.monotonic() - started


def test_stalled_backups_do_not_block_queries(start_server):
    server = start_server()
    jobs = _fill_store(server.url, megabytes=40)
    sockets = []
    try:
        refused = 0
        for _ in range(STALLED):
            sock = _stalled_backup(server.admin_url)
            sockets.append(sock)
        # The ones past the limit are refused at once with a clear error.
        for sock in sockets[MAX_BACKUPS:]:
            head = sock.recv(65536).decode(errors="replace")
            assert head.startswith("HTTP/1.1 503"), head[:200]
            assert "backups are already running" in head, head
            assert "retry-after: 10" in head.lower(), head
            refused += 1
        assert refused == STALLED - MAX_BACKUPS
        time.sleep(1.0)  # let the running ones fill every buffer and block
        # They are really stalled (still holding their slots), not finished.
        late = _stalled_backup(server.admin_url)
        sockets.append(late)
        assert late.recv(65536).startswith(b"HTTP/1.1 503")

        worst = 0.0
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for _ in range(5):
                response, took = _timed_get(client, "/jobs/count", priority="0..10")
                assert response.status_code == 200, response.text
                assert 0 < response.json()["count"] < jobs
                worst = max(worst, took)
                response, took = _timed_get(client, "/jobs", limit="100")
                assert response.status_code == 200 and len(response.json()["jobs"]) == 100
                worst = max(worst, took)
                response, took = _timed_get(client, "/jobs", priority="3", order="desc")
                assert response.status_code == 200
                worst = max(worst, took)
        print(f"worst query latency with {STALLED} stalled backups: {worst * 1000:.0f} ms")
        assert worst < QUERY_LIMIT_S
        # Other admin work has its own threads too.
        with httpx.Client(base_url=server.admin_url, timeout=60) as admin:
            started = time.monotonic()
            assert admin.post("/compact").status_code == 200
            print(f"compaction beside stalled backups: {time.monotonic() - started:.2f} s")
            assert admin.get("/health").status_code == 200
    finally:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()

    # Once the stalled clients are gone, their slots are free again.
    def backup_size() -> int:
        with httpx.stream("POST", f"{server.admin_url}/backup", timeout=60) as response:
            if response.status_code != 200:
                return -response.status_code
            return sum(len(chunk) for chunk in response.iter_raw())

    deadline = time.monotonic() + 15
    while (size := backup_size()) < 0:
        assert time.monotonic() < deadline, f"backup slots were never released ({-size})"
        time.sleep(0.2)
    assert size > 1_000_000


def test_a_stalled_pipe_gives_up_after_the_stall_timeout():
    """The archiving thread stops waiting for a client that takes nothing."""

    async def run() -> tuple[BaseException | None, float]:
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()
        pipe = _ChunkPipe(loop, cancelled, stall_timeout=0.3)
        outcome: list[BaseException | None] = [None]

        def archiver() -> None:
            try:
                while True:  # nobody ever calls pipe.taken()
                    pipe.write(b"x" * 65536)
            except Cancelled as exc:
                outcome[0] = exc

        started = time.monotonic()
        await asyncio.wait_for(asyncio.to_thread(archiver), timeout=10)
        return outcome[0], time.monotonic() - started

    error, took = asyncio.run(run())
    assert isinstance(error, Cancelled) and "read nothing" in str(error)
    assert 0.3 <= took < 5


def test_bounded_pool_refuses_past_its_capacity():
    async def run() -> None:
        pool = BoundedPool("test-pool", workers=1, max_waiting=1)
        release = threading.Event()
        running = [asyncio.ensure_future(pool.run(release.wait, 10)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(PoolBusy):
            await pool.run(time.sleep, 0)
        # A cancelled caller does not free a slot its thread still holds.
        running[0].cancel()
        await asyncio.sleep(0.05)
        assert not pool.has_room()
        release.set()
        await asyncio.gather(*running, return_exceptions=True)
        await asyncio.sleep(0.05)
        assert pool.active == 0
        assert await pool.run(sum, [1, 2]) == 3
        pool.shutdown()

    asyncio.run(run())
