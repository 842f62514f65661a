"""Backup benchmark (not a test): `zizq backup` of 1,000,000 jobs under a light enqueue probe.

    .venv/bin/python scripts/bench/backup.py                 # 1,000,000 jobs
    .venv/bin/python scripts/bench/backup.py --jobs 200000   # quicker

It starts a server (`--log-level warn`, admin API on a free port), bulk-loads the jobs,
then runs the real `zizq backup` command while a prober enqueues one job every 5 ms on a
keep-alive connection and records each enqueue's latency. It reports the backup time,
the archive size, the longest enqueue stall during the backup (target < 100 ms) and the
time of `zizq restore` into a new directory; then it starts a server on the restored
directory and checks that it holds every job of the backup.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from rawhttp import Connection, post_json, request_bytes, timed_on_connections
from server import BenchServer, zizq_command

JOB = {"queue": "bench", "type": "bench", "payload": {"n": 1}}
PROBE = post_json("/jobs", {"queue": "probe", "type": "probe", "payload": {"n": 1}})
ADMIN = re.compile(r"^Listening on (\w+://\S+) \(admin\)$")
STALL_TARGET_MS = 100.0


class AdminBenchServer(BenchServer):
    """A BenchServer with its admin API on a free port (and any root dir)."""

    def __init__(self, *flags: str, root: Path | None = None) -> None:
        super().__init__(*flags)
        if root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = root

    @property
    def command(self) -> list[str]:
        command = [arg for arg in super().command if arg != "--no-admin"]
        return [*command, "--admin-port", "0"]

    @property
    def admin_url(self) -> str:
        for line in self.lines:
            match = ADMIN.match(line)
            if match:
                return match.group(1)
        raise RuntimeError("no admin listener:\n" + "\n".join(self.lines))


async def load(host: str, port: int, total: int, per_request: int = 1000, conns: int = 2) -> float:
    raw = post_json("/jobs/bulk", {"jobs": [JOB] * per_request})
    left = total // per_request

    async def loop(conn: Connection) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            status, body = await conn.request(raw)
            if status != 201:
                raise RuntimeError(f"bulk enqueue answered {status}: {body[:200]!r}")

    return await timed_on_connections(host, port, conns, loop)


async def probe_until(host: str, port: int, done: asyncio.Event, every_s: float) -> list[float]:
    """Enqueue one job every `every_s` until `done`; returns each request's latency in ms.

    A request that is still waiting when the next one is due delays it: the list then
    holds the stall, which is what we want to see.
    """
    conn = await Connection.open(host, port)
    latencies: list[float] = []
    next_at = time.perf_counter()
    try:
        while not done.is_set():
            started = time.perf_counter()
            status, body = await conn.request(PROBE)
            latencies.append((time.perf_counter() - started) * 1000)
            if status != 201:
                raise RuntimeError(f"probe enqueue answered {status}: {body[:200]!r}")
            next_at += every_s
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    finally:
        conn.close()
    return latencies


async def backup_with_probe(
    server: AdminBenchServer, archive: Path, every_s: float
) -> tuple[float, list[float], list[float], str]:
    # A second of probing first: the latencies of an idle server, for comparison.
    idle_done = asyncio.Event()
    idle = asyncio.create_task(probe_until(server.host, server.port, idle_done, every_s))
    await asyncio.sleep(1.0)
    idle_done.set()
    baseline = await idle

    done = asyncio.Event()
    prober = asyncio.create_task(probe_until(server.host, server.port, done, every_s))
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *zizq_command(),
        "backup",
        "--url",
        server.admin_url,
        str(archive),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    elapsed = time.perf_counter() - started
    done.set()
    during = await prober
    if proc.returncode != 0:
        raise RuntimeError(f"zizq backup failed ({proc.returncode}):\n{output.decode()}")
    return elapsed, baseline, during, output.decode()


def manifest_of(archive: Path) -> dict:
    with tarfile.open(archive, "r:gz") as tar:
        last = None
        for member in tar:
            last = member
        assert last is not None and last.name == "manifest.json"
        data = tar.extractfile(last)
        assert data is not None
        return json.loads(data.read())


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def count_jobs(host: str, port: int) -> int:
    conn = await Connection.open(host, port)
    try:
        status, body = await conn.request(request_bytes("GET", "/jobs/count"))
        if status != 200:
            raise RuntimeError(f"count answered {status}")
        return json.loads(body)["count"]
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--probe-interval-ms", type=float, default=5.0)
    parser.add_argument("--keep", action="store_true", help="keep the archive and restored dir")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="zizq-bench-backup-"))
    archive = work / "backup.tar.gz"
    restored = work / "restored"
    ok = True
    try:
        with AdminBenchServer("--log-level", "warn") as server:
            load_s = asyncio.run(load(server.host, server.port, args.jobs))
            print(f"loaded {args.jobs:,} jobs in {load_s:.1f}s ({args.jobs / load_s:,.0f} jobs/s)")
            elapsed, baseline, during, output = asyncio.run(
                backup_with_probe(server, archive, args.probe_interval_ms / 1000)
            )
            print(output.rstrip())
            data_bytes = sum(p.stat().st_size for p in server.root.rglob("*") if p.is_file())
        manifest = manifest_of(archive)
        size = archive.stat().st_size

        started = time.perf_counter()
        result = subprocess.run(
            [*zizq_command(), "restore", "--root-dir", str(restored), str(archive)],
            capture_output=True,
            text=True,
        )
        restore_s = time.perf_counter() - started
        print(result.stdout.rstrip())
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            return 1

        started = time.perf_counter()
        with AdminBenchServer("--log-level", "warn", root=restored) as again:
            start_s = time.perf_counter() - started
            restored_count = asyncio.run(count_jobs(again.host, again.port))
        stall = max(during)
        ok = stall < STALL_TARGET_MS and restored_count == manifest["jobs"]["total"]

        print()
        print("| figure | value | target |")
        print("|---|---|---|")
        print(f"| jobs in the backup | {manifest['jobs']['total']:,} | {args.jobs:,} |")
        print(f"| `zizq backup` time (request to file saved) | {elapsed:.2f} s | - |")
        print(
            f"| archive size | {size / 2**20:.1f} MiB (root dir {data_bytes / 2**20:.1f} MiB) | - |"
        )
        print(
            f"| longest enqueue stall during the backup | {stall:.1f} ms "
            f"(p99 {percentile(during, 99):.1f}, median {statistics.median(during):.1f}, "
            f"{len(during)} probes) | < {STALL_TARGET_MS:.0f} ms |"
        )
        print(
            f"| enqueue latency before the backup (idle) | max {max(baseline):.1f} ms, "
            f"median {statistics.median(baseline):.1f} ms | - |"
        )
        print(f"| `zizq restore` time | {restore_s:.2f} s | - |")
        print(
            f"| server start on the restored dir | {start_s:.2f} s, "
            f"{restored_count:,} jobs | = backup |"
        )
        print()
        print("OK" if ok else "MISSED A TARGET")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
