"""Benchmark: query, count and bulk patch on a store of 1,000,000 jobs (issue 3, point 10).

    .venv/bin/python scripts/bench/query.py                  # 1,000,000 jobs
    .venv/bin/python scripts/bench/query.py --jobs 200000    # a quicker run

Starts `python -m zizq serve --port 0 --log-level warn` (or $ZIZQ_BINARY) on a fresh root
dir, loads the jobs across queues q0..q9 with POST /jobs/bulk (1,000 jobs per request,
a few keep-alive HTTP/1.1 connections), then prints:

- GET /jobs?queue=q3&status=ready&limit=50, first page      median of 20   target < 20 ms
- the same from a cursor in the middle of q3 (from=<id>)    median of 20   target < 20 ms
- GET /jobs/count?status=ready                              median of 20   target < 300 ms
- PATCH /jobs?queue=q3 {"queue":"q3b"} (100,000 jobs)       total time     target < 10 s
  while a prober sends GET /health every 10 ms on its own connection
  and records the worst latency                                            target < 100 ms
- server RSS (VmRSS, and peak VmHWM) after loading and at the end.

Extra figures without targets: a count that has to read records (a priority range),
and the health-probe latency while idle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import quote

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rawhttp import Connection, request_bytes, timed_on_connections  # noqa: E402
from server import BenchServer  # noqa: E402

QUEUES = 10
PER_REQUEST = 1000


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


async def load(host: str, port: int, total: int, connections: int) -> tuple[float, str]:
    """Bulk-enqueue `total` jobs round-robin over q0..q9; returns (seconds, a middle q3 id)."""
    requests = total // PER_REQUEST
    jobs = [
        {"queue": f"q{i % QUEUES}", "type": "bench", "payload": {"i": i}}
        for i in range(PER_REQUEST)
    ]
    raw = request_bytes("POST", "/jobs/bulk", orjson.dumps({"jobs": jobs}))
    middle_request = requests // 2
    middle_id: list[str] = []
    next_index = 0

    async def worker(conn: Connection) -> None:
        nonlocal next_index
        while next_index < requests:
            index = next_index
            next_index += 1
            status, body = await conn.request(raw)
            if status != 201:
                raise RuntimeError(f"bulk enqueue answered {status}: {body[:200]!r}")
            if index == middle_request:
                for job in orjson.loads(body)["jobs"]:
                    if job["queue"] == "q3":
                        middle_id.append(job["id"])
                        break
            if index % 100 == 0 and sys.stdout.isatty():
                print(f"  loaded {index * PER_REQUEST:,} jobs", end="\r", flush=True)

    elapsed = await timed_on_connections(host, port, connections, worker)
    if sys.stdout.isatty():
        print(" " * 40, end="\r")
    return elapsed, middle_id[0]


async def timed_get(conn: Connection, path: str) -> tuple[float, dict]:
    raw = request_bytes("GET", path)
    started = time.perf_counter()
    status, body = await conn.request(raw)
    elapsed = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
    return elapsed, orjson.loads(body)


async def median_of(conn: Connection, path: str, samples: int = 20) -> tuple[float, float, dict]:
    times, body = [], {}
    await timed_get(conn, path)  # warm-up
    for _ in range(samples):
        elapsed, body = await timed_get(conn, path)
        times.append(elapsed)
    return statistics.median(times), max(times), body


class Prober:
    """GET /health every `interval` seconds on its own connection; keeps the worst latency."""

    def __init__(self, conn: Connection, interval: float = 0.010) -> None:
        self.conn = conn
        self.interval = interval
        self.latencies: list[float] = []
        self._stop = asyncio.Event()
        self._raw = request_bytes("GET", "/health")

    async def run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            status, _ = await self.conn.request(self._raw)
            self.latencies.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"/health answered {status}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    def stop(self) -> None:
        self._stop.set()

    @property
    def worst(self) -> float:
        return max(self.latencies) if self.latencies else 0.0


async def bench(host: str, port: int, server: BenchServer, args) -> bool:
    ok = True
    seconds, middle_id = await load(host, port, args.jobs, args.connections)
    print(
        f"loaded {args.jobs:,} jobs over {QUEUES} queues in {seconds:.1f} s "
        f"({args.jobs / seconds:,.0f} jobs/s)"
    )
    rss, hwm = server.status_kb("VmRSS"), server.status_kb("VmHWM")
    print(f"server RSS after load: {rss / 1024:.0f} MB (peak {hwm / 1024:.0f} MB)")

    conn = await Connection.open(host, port)
    per_queue = args.jobs // QUEUES

    path = "/jobs?queue=q3&status=ready&limit=50"
    median, worst, body = await median_of(conn, path)
    assert len(body["jobs"]) == 50 and body["pages"]["next"], body["pages"]
    good = median < 0.020
    ok &= good
    print(
        f"{verdict(good)}  first page  GET {path}: median {ms(median)} (max {ms(worst)})"
        "  target < 20 ms"
    )

    path = f"/jobs?queue=q3&status=ready&limit=50&from={middle_id}"
    median, worst, body = await median_of(conn, path)
    assert len(body["jobs"]) == 50, body["pages"]
    assert all(j["queue"] == "q3" for j in body["jobs"])
    good = median < 0.020
    ok &= good
    print(
        f"{verdict(good)}  deep page   GET /jobs?queue=q3&status=ready&limit=50&from=<middle>: "
        f"median {ms(median)} (max {ms(worst)})  target < 20 ms"
    )

    # the prev link of a deep page
    prev = body["pages"]["prev"]
    median, worst, _ = await median_of(conn, prev)
    print(f"      deep page via its prev link: median {ms(median)} (max {ms(worst)})")

    path = "/jobs/count?status=ready"
    median, worst, body = await median_of(conn, path)
    assert body["count"] == args.jobs, body
    good = median < 0.300
    ok &= good
    print(
        f"{verdict(good)}  count       GET {path}: median {ms(median)} (max {ms(worst)}),"
        f" count={body['count']:,}  target < 300 ms"
    )

    path = "/jobs/count?queue=q3&priority=" + quote("0..40000")
    median, worst, body = await median_of(conn, path, samples=3)
    assert body["count"] == per_queue, body
    print(
        f"      count reading records  GET {path}: median {ms(median)} (max {ms(worst)}),"
        f" count={body['count']:,}  (no target)"
    )

    probe_conn = await Connection.open(host, port)
    idle = Prober(probe_conn)
    idle_task = asyncio.create_task(idle.run())
    await asyncio.sleep(1.0)
    idle.stop()
    await idle_task
    print(
        f"      /health while idle: {len(idle.latencies)} probes, "
        f"median {ms(statistics.median(idle.latencies))}, worst {ms(idle.worst)}"
    )

    prober = Prober(probe_conn)
    probe_task = asyncio.create_task(prober.run())
    await asyncio.sleep(0.1)
    raw = request_bytes("PATCH", "/jobs?queue=q3", orjson.dumps({"queue": "q3b"}))
    started = time.perf_counter()
    status, body = await conn.request(raw)
    patch_seconds = time.perf_counter() - started
    await asyncio.sleep(0.1)
    prober.stop()
    await probe_task
    if status != 200:
        raise RuntimeError(f"PATCH answered {status}: {body[:300]!r}")
    patched = orjson.loads(body)["patched"]
    good = patch_seconds < 10.0 and patched == per_queue
    ok &= good
    print(
        f'{verdict(good)}  bulk patch  PATCH /jobs?queue=q3 {{"queue":"q3b"}}: '
        f"{patched:,} jobs in {patch_seconds:.2f} s "
        f"({patched / patch_seconds:,.0f} jobs/s)  target < 10 s"
    )
    good = prober.worst < 0.100
    ok &= good
    print(
        f"{verdict(good)}  /health during the patch: {len(prober.latencies)} probes, "
        f"median {ms(statistics.median(prober.latencies))}, worst {ms(prober.worst)}"
        "  target < 100 ms"
    )

    _, moved = await timed_get(conn, "/jobs/count?queue=q3b")
    _, left = await timed_get(conn, "/jobs/count?queue=q3")
    assert moved["count"] == per_queue and left["count"] == 0, (moved, left)
    median, worst, _ = await median_of(conn, "/jobs?queue=q3b&status=ready&limit=50")
    print(f"      first page of the moved queue q3b: median {ms(median)}")

    rss, hwm = server.status_kb("VmRSS"), server.status_kb("VmHWM")
    print(f"server RSS at the end: {rss / 1024:.0f} MB (peak {hwm / 1024:.0f} MB)")
    conn.close()
    probe_conn.close()
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    if args.jobs % (PER_REQUEST * QUEUES):
        parser.error(f"--jobs must be a multiple of {PER_REQUEST * QUEUES}")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional
        uvloop = None
    if uvloop is not None:
        uvloop.install()
    with BenchServer("--log-level", "warn") as server:
        print(f"server: {' '.join(server.command)} (pid {server.pid})")
        ok = asyncio.run(bench(server.host, server.port, server, args))
    print("all targets met" if ok else "some targets missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
