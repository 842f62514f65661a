"""How cost grows with the store: rates, RSS and start-up time at 100 k, 1 M and 10 M jobs.

    .venv/bin/python scripts/bench/scale.py                          # 100k, 1M, 10M
    .venv/bin/python scripts/bench/scale.py --sizes 100k,1M
    .venv/bin/python scripts/bench/scale.py --sizes 10M --profile /tmp/scale-prof

For each size N: a fresh root is filled with N jobs by bulk enqueue (1,000 per request,
--fill-connections keep-alive connections), 70 % ready and 30 % scheduled a day ahead; the
fill rate is taken over the last 10 % of the fill (a store of about N). At that size it
measures single enqueue (POST /jobs, 32 connections, --seconds), take + bulk ack (4 take
streams, prefetch 100, POST /jobs/success; --seconds or --take-jobs, whichever first, and
at most half the ready jobs) and the server's RSS. Then it stops the server (SIGTERM),
starts it again on the same root and times start-up: from spawning the process until
GET /health answers 200 and a take stream has received a ready job; then once more after
kill -9 with jobs in flight (their recovery). --profile DIR adds a third start
under py-spy (sizes >= --profile-min) and prints where its time went. Issue 15's target for 10 M jobs (7 M
ready): start-up < 15 s, RSS < 3 GB. See scripts/bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyspy
from rawhttp import Connection, LineSplitter, post_json, request_bytes
from run import JOB, Worker, load_average, raw_single
from server import LISTENING, BenchServer, CpuMeter, use_uvloop, zizq_command

QUEUE = "scale"
READY_JOB = {**JOB, "queue": QUEUE}
DAY_MS = 86_400_000
GB = 1024**3
MARGIN = 10 * GB


def parse_size(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def short_size(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000} M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000} k"
    return f"{n:,}"


def mb(kb: int) -> str:
    return f"{kb / 1024:,.0f} MB"


def du_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class ScaleServer(BenchServer):
    """A server on a given root that outlives its process: stop, restart, kill -9."""

    def __init__(self, root: Path, *flags: str) -> None:
        super().__init__(*flags)
        shutil.rmtree(self.root, ignore_errors=True)  # BenchServer made its own; not used
        self.root = root
        self.marks: dict[str, float] = {}  # log line -> seconds after spawn
        self.spawned = 0.0

    def start(self, timeout: float, on_spawn=None) -> float:
        """Spawn and wait for the listening line; returns seconds since spawn."""
        self.lines, self.marks, self.port = [], {}, 0
        self.spawned = time.perf_counter()
        self.proc = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        if on_spawn is not None:
            on_spawn(self.proc.pid)
        found = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                at = time.perf_counter() - self.spawned
                line = line.rstrip("\n")
                self.lines.append(line)
                # "in-memory indexes rebuilt", or "... loaded from the start-up index"
                for mark in ("store opened", "in-memory indexes"):
                    if mark in line and mark not in self.marks:
                        self.marks[mark] = at
                match = LISTENING.match(line)
                if match and not found.is_set():
                    self.host, self.port = match.group(2).strip("[]"), int(match.group(3))
                    self.marks["listening"] = at
                    found.set()
            found.set()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(timeout) or not self.port:
            self.kill()
            raise RuntimeError("zizq did not start:\n" + "\n".join(self.lines[-20:]))
        return self.marks["listening"]

    def stop(self, timeout: float = 600) -> float:
        """SIGTERM (as BenchServer does) and wait; returns the seconds it took."""
        assert self.proc is not None
        started = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
                raise RuntimeError(f"server did not stop within {timeout:.0f} s") from None
        return time.perf_counter() - started

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def line_with(self, text: str) -> str:
        return next((line for line in self.lines if text in line), "")

    def __exit__(self, *exc) -> None:
        self.kill()  # the root is removed by the caller


# -- fill --------------------------------------------------------------------------------


async def fill(host: str, port: int, total: int, connections: int, quiet: bool) -> dict:
    """Bulk-enqueue `total` jobs (70 % ready, 30 % a day ahead) in requests of 1,000."""
    ready_at = int(time.time() * 1000) + DAY_MS
    raw_ready = post_json("/jobs/bulk", {"jobs": [READY_JOB] * 1000})
    raw_later = post_json("/jobs/bulk", {"jobs": [{**READY_JOB, "ready_at": ready_at}] * 1000})
    requests = total // 1000
    tail_from = requests - max(1, requests // 10)
    next_index = done = 0
    tail_started = 0.0
    report_every = max(1, requests // 10)
    started = time.perf_counter()

    async def loop(conn: Connection) -> None:
        nonlocal next_index, done, tail_started
        while next_index < requests:
            index = next_index
            next_index += 1
            status, body = await conn.request(raw_later if index % 10 < 3 else raw_ready)
            if status != 201:
                raise RuntimeError(f"bulk enqueue answered {status}: {body[:200]!r}")
            done += 1
            if done == tail_from:
                tail_started = time.perf_counter()
            if not quiet and done % report_every == 0:
                elapsed = time.perf_counter() - started
                print(
                    f"    filled {done * 1000:,} in {elapsed:.0f} s "
                    f"({done * 1000 / elapsed:,.0f}/s)",
                    flush=True,
                )

    conns = [await Connection.open(host, port) for _ in range(connections)]
    try:
        await asyncio.gather(*(loop(conn) for conn in conns))
    finally:
        for conn in conns:
            conn.close()
    ended = time.perf_counter()
    tail_jobs = (requests - tail_from) * 1000
    if not tail_started:  # a single request: no tail to speak of
        tail_started, tail_jobs = started, requests * 1000
    return {
        "seconds": ended - started,
        "rate": requests * 1000 / (ended - started),
        "tail_rate": tail_jobs / (ended - tail_started),
        "ready": 1000 * sum(1 for i in range(requests) if i % 10 >= 3),
    }


# -- take + ack ----------------------------------------------------------------------------


async def take_and_ack(host: str, port: int, limit: int, seconds: float) -> dict:
    completed = 0

    def on_acked(n: int) -> None:
        nonlocal completed
        completed += n

    pool = [Worker(host, port, 100, on_acked) for _ in range(4)]
    for worker in pool:
        await worker.start(QUEUE)
    tasks = [asyncio.create_task(w.ack_forever()) for w in pool]
    started = time.perf_counter()
    try:
        while completed < limit and time.perf_counter() - started < seconds:
            await asyncio.sleep(0.005)
            for task in tasks:
                if task.done():
                    raise task.exception() or RuntimeError("acker ended")
        elapsed = time.perf_counter() - started
    finally:
        for task in tasks:
            task.cancel()
        for worker in pool:
            worker.close()
    return {"rate": completed / elapsed, "jobs": completed, "seconds": elapsed}


# -- start-up ------------------------------------------------------------------------------


async def until_dispatchable(host: str, port: int, timeout: float) -> tuple[float, float]:
    """Perf-counter times at which GET /health answered 200 and a ready job arrived."""
    deadline = time.perf_counter() + timeout
    while True:
        try:
            conn = await Connection.open(host, port)
            status, _ = await conn.request(request_bytes("GET", "/health"))
            conn.close()
            if status == 200:
                break
        except (OSError, RuntimeError):
            pass
        if time.perf_counter() > deadline:
            raise TimeoutError("GET /health did not answer 200")
        await asyncio.sleep(0.01)
    healthy = time.perf_counter()
    arrived = asyncio.get_running_loop().create_future()

    def on_line(line: bytes) -> None:
        if not arrived.done():
            arrived.set_result(time.perf_counter())

    stream = await Connection.open(host, port)
    try:
        status = await stream.open_stream(
            request_bytes(
                "GET", f"/jobs/take?queue={QUEUE}&prefetch=1", accept="application/x-ndjson"
            ),
            LineSplitter(on_line).feed,
        )
        if status != 200:
            raise RuntimeError(f"take answered {status}")
        first = await asyncio.wait_for(arrived, max(1.0, deadline - time.perf_counter()))
    finally:
        stream.close()  # the job goes back to ready
    return healthy, first


@dataclass
class Startup:
    seconds: float = 0.0  # spawn -> a ready job delivered
    health: float = 0.0  # spawn -> GET /health 200
    marks: dict[str, float] = field(default_factory=dict)
    rss_kb: int = 0
    hwm_kb: int = 0
    rebuilt_line: str = ""


def timed_start(server: ScaleServer, timeout: float, profile_out: Path | None) -> Startup:
    spy: list[subprocess.Popen] = []

    def on_spawn(pid: int) -> None:
        if profile_out is not None:
            spy.append(start_spy(pid, profile_out, timeout))

    server.start(timeout, on_spawn)
    healthy, first = asyncio.run(until_dispatchable(server.host, server.port, timeout))
    result = Startup(
        seconds=first - server.spawned,
        health=healthy - server.spawned,
        marks=dict(server.marks),
        rss_kb=server.status_kb("VmRSS"),
        hwm_kb=server.status_kb("VmHWM"),
        rebuilt_line=server.line_with("in-memory indexes"),
    )
    for proc in spy:
        pyspy.stop(proc)
    return result


def start_spy(pid: int, out: Path, max_seconds: float) -> subprocess.Popen:
    """py-spy on the server from (nearly) its spawn: all threads, not only the GIL holder."""
    local = Path(sys.executable).with_name("py-spy")
    command = [
        str(local if local.exists() else "py-spy"),
        "record", "--pid", str(pid), "--rate", str(pyspy.RATE_HZ),
        "--duration", str(int(max_seconds) + 1), "--threads",
        "--format", "raw", "--nonblocking", "--output", str(out),
    ]  # fmt: skip
    for _ in range(50):  # the interpreter needs a moment before py-spy can find it
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            proc.wait(0.3)
        except subprocess.TimeoutExpired:
            return proc
        time.sleep(0.05)
    return proc


def summarize_profile(path: Path, top: int) -> list[str]:
    profile = pyspy.load(path, jobs=1)
    if profile is None or not profile.total:
        return [f"no profile in {path}"]
    secs = 1 / pyspy.RATE_HZ
    lines = [f"{profile.total} samples at {pyspy.RATE_HZ} Hz ({profile.total * secs:.1f} s)"]
    lines.append("inclusive (zizq functions), seconds and share:")
    for frame, n in profile.inclusive.most_common(top):
        lines.append(f"  {n * secs:7.2f}  {100 * n / profile.total:5.1f}%  {frame}")
    lines.append("self (any function), seconds and share:")
    for frame, n in profile.own.most_common(top):
        lines.append(f"  {n * secs:7.2f}  {100 * n / profile.total:5.1f}%  {frame}")
    return lines


# -- one size ------------------------------------------------------------------------------


@dataclass
class Row:
    size: int
    fill_rate: float = 0.0
    single_rate: float = 0.0
    take_rate: float = 0.0
    fill_rss: tuple[int, int] = (0, 0)
    start: Startup | None = None
    crash_start: Startup | None = None
    disk_bytes: int = 0
    skipped: str = ""
    error: str = ""


async def hold_in_flight(host: str, port: int, want: int) -> int:
    """Open 4 take streams (prefetch want/4) and return once `want` jobs are held."""
    received = 0

    def on_line(line: bytes) -> None:
        nonlocal received
        received += 1

    conns = []
    for _ in range(4):
        conn = await Connection.open(host, port)
        await conn.open_stream(
            request_bytes(
                "GET",
                f"/jobs/take?queue={QUEUE}&prefetch={want // 4}",
                accept="application/x-ndjson",
            ),
            LineSplitter(on_line).feed,
        )
        conns.append(conn)
    deadline = time.perf_counter() + 10
    while received < want and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    return received  # connections stay open: the kill -9 comes first


def run_size(args, size: int, base: Path, bytes_per_job: float | None) -> Row:
    row = Row(size)
    free = shutil.disk_usage(base).free
    guess = bytes_per_job if bytes_per_job is not None else 1_000.0
    need = int(guess * size * 1.5)  # compaction needs room on top of the live files
    if free < need + MARGIN:
        row.skipped = (
            f"not enough disk in {base}: {free / GB:.1f} GB free, about {need / GB:.1f} GB "
            f"needed ({guess:.0f} B/job x 1.5) + {MARGIN / GB:.0f} GB margin"
        )
        return row
    root = Path(tempfile.mkdtemp(prefix="zizq-scale-", dir=base))
    server = ScaleServer(root, *args.server_flags)
    timeout = args.start_timeout
    try:
        server.start(timeout)
        print(f"  pid {server.pid}, root {root}", flush=True)
        with CpuMeter(server) as cpu:
            out = asyncio.run(
                fill(server.host, server.port, size, args.fill_connections, size < 1_000_000)
            )
        row.fill_rate = out["tail_rate"]
        ready = out["ready"]
        print(
            f"  fill: {size:,} jobs ({ready:,} ready) in {out['seconds']:.1f} s, "
            f"{out['rate']:,.0f}/s overall, {out['tail_rate']:,.0f}/s over the last 10 %; "
            f"server CPU {cpu.percent:.0f}%",
            flush=True,
        )
        time.sleep(1.0)
        row.fill_rss = (server.status_kb("VmRSS"), server.status_kb("VmHWM"))
        print(f"  RSS after fill {mb(row.fill_rss[0])} (peak {mb(row.fill_rss[1])})", flush=True)

        asyncio.run(raw_single(server.host, server.port, args.connections, 1))  # warm-up
        with CpuMeter(server) as cpu:
            row.single_rate = asyncio.run(
                raw_single(server.host, server.port, args.connections, args.seconds)
            )
        print(
            f"  single enqueue: {row.single_rate:,.0f}/s ({args.connections} connections, "
            f"{args.seconds:g} s); server CPU {cpu.percent:.0f}%",
            flush=True,
        )
        limit = min(args.take_jobs, ready // 2)
        with CpuMeter(server) as cpu:
            took = asyncio.run(take_and_ack(server.host, server.port, limit, args.seconds))
        row.take_rate = took["rate"]
        print(
            f"  take + ack: {took['rate']:,.0f}/s ({took['jobs']:,} jobs in "
            f"{took['seconds']:.1f} s, 4 streams, prefetch 100); server CPU {cpu.percent:.0f}%",
            flush=True,
        )
        stopped = server.stop()
        row.disk_bytes = du_bytes(root)
        print(
            f"  stopped (SIGTERM) in {stopped:.1f} s; root {row.disk_bytes / 1e6:,.0f} MB "
            f"({row.disk_bytes / size:.0f} B/job)",
            flush=True,
        )

        row.start = timed_start(server, timeout, None)
        print_start("  start", row.start)

        held = asyncio.run(hold_in_flight(server.host, server.port, args.in_flight))
        server.kill()
        print(f"  kill -9 with {held:,} jobs in flight", flush=True)
        row.crash_start = timed_start(server, timeout, None)
        print_start("  start after kill -9", row.crash_start)
        server.stop()
        if args.profile and size >= args.profile_min:
            # A third start, under py-spy, so the figures above carry no sampling cost.
            args.profile.mkdir(parents=True, exist_ok=True)
            profile = args.profile / f"startup-{short_size(size).replace(' ', '')}.txt"
            print_start("  start under py-spy", timed_start(server, timeout, profile))
            server.stop()
            for line in summarize_profile(profile, args.profile_top):
                print("    " + line)
            print(f"    raw profile: {profile}", flush=True)
    except Exception as exc:
        row.error = f"{type(exc).__name__}: {exc}"
        print(f"  error: {row.error}", flush=True)
    finally:
        server.kill()
        shutil.rmtree(root, ignore_errors=True)
    return row


def print_start(label: str, start: Startup) -> None:
    marks = ", ".join(f"{name} {at:.2f} s" for name, at in start.marks.items())
    print(
        f"{label}: {start.seconds:.2f} s to the first job (health {start.health:.2f} s; "
        f"{marks}); RSS {mb(start.rss_kb)} (peak {mb(start.hwm_kb)})",
        flush=True,
    )
    if start.rebuilt_line:
        print(f"    {start.rebuilt_line.strip()}", flush=True)


def table(rows: list[Row]) -> list[str]:
    head = (
        "size",
        "fill (jobs/s)",
        "single enqueue (jobs/s)",
        "take+ack (jobs/s)",
        "RSS after fill (peak)",
        "start-up (s)",
        "RSS after start (peak)",
        "start after kill -9 (s)",
    )
    body = []
    for r in rows:
        if r.skipped or r.error:
            body.append((short_size(r.size), "skipped" if r.skipped else "error", *[""] * 6))
            continue
        start, crash = r.start, r.crash_start
        body.append(
            (
                short_size(r.size),
                f"{r.fill_rate:,.0f}",
                f"{r.single_rate:,.0f}",
                f"{r.take_rate:,.0f}",
                f"{mb(r.fill_rss[0])} ({mb(r.fill_rss[1])})",
                f"{start.seconds:.1f}" if start else "-",
                f"{mb(start.rss_kb)} ({mb(start.hwm_kb)})" if start else "-",
                f"{crash.seconds:.1f}" if crash else "-",
            )
        )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100k,1M,10M", help="comma list, e.g. 100k,1M,10M")
    parser.add_argument("--seconds", type=float, default=5.0, help="single enqueue, take")
    parser.add_argument("--connections", type=int, default=32, help="single enqueue")
    parser.add_argument("--fill-connections", type=int, default=4)
    parser.add_argument("--take-jobs", type=int, default=100_000, help="take stops here")
    parser.add_argument("--in-flight", type=int, default=1_000, help="held at the kill -9")
    parser.add_argument("--start-timeout", type=float, default=900.0)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--profile", type=Path, help="py-spy the clean start-up into DIR")
    parser.add_argument("--profile-min", type=parse_size, default=1_000_000)
    parser.add_argument("--profile-top", type=int, default=15)
    parser.add_argument("--server-flags", default="", help="extra `zizq serve` flags")
    args = parser.parse_args()
    args.server_flags = shlex.split(args.server_flags)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]

    use_uvloop()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # roots are removed on the way out
    load_before = load_average()
    rows: list[Row] = []
    bytes_per_job: float | None = None
    for size in sizes:
        print(f"[{short_size(size)}] {size:,} jobs", flush=True)
        t0 = time.perf_counter()
        row = run_size(args, size, args.dir, bytes_per_job)
        if row.skipped:
            print(f"  skipped: {row.skipped}", flush=True)
        if row.disk_bytes:
            bytes_per_job = row.disk_bytes / size
        rows.append(row)
        print(f"  [{time.perf_counter() - t0:.0f} s]", flush=True)

    print()
    print("command:", shlex.join([sys.executable, *sys.argv]))
    server_cmd = shlex.join([*zizq_command(), "serve", "--root-dir", "TMP", "--port", "0"])
    print(f"server:  {server_cmd} --no-admin {shlex.join(args.server_flags)}".rstrip())
    print(
        f"machine: {os.cpu_count()} CPUs; client and server share it; "
        f"load average before {load_before}, after {load_average()}"
    )
    print()
    for line in table(rows):
        print(line)
    for row in rows:
        if row.skipped or row.error:
            print(f"{short_size(row.size)}: {row.skipped or row.error}")
    big = [r for r in rows if r.size >= 10_000_000 and r.start is not None]
    for r in big:
        ok = r.start.seconds < 15 and r.start.hwm_kb < 3 * 1024 * 1024
        print(
            f"target (10 M jobs, 7 M ready): start-up < 15 s, RSS < 3 GB: "
            f"{r.start.seconds:.1f} s, peak {mb(r.start.hwm_kb)} -> {'PASS' if ok else 'FAIL'}"
        )
    return 0 if all(not r.error for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
