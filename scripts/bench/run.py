"""Zizq benchmarks (not tests): each one starts its own server and prints figures.

    .venv/bin/python scripts/bench/run.py                 # everything
    .venv/bin/python scripts/bench/run.py --only a,e      # a subset

a  single-job enqueue (POST /jobs), 32 keep-alive connections      target >= 10,000 jobs/s
a2 the same over h2c (h2load, 32 connections x 1 stream; extra)
b  bulk enqueue, 1,000 jobs per request                              target >= 100,000 jobs/s
c  end-to-end: bulk enqueue + take (prefetch 100) + bulk ack, 4 workers
                                                                     target >= 20,000 jobs/s
d  (a) with --enqueue-commit-mode fsync                              target >= 5,000 jobs/s
e  enqueue-to-delivery latency on an idle server, ~1,000 samples    target p99 < 5 ms
f  peak RSS (VmHWM) of the server holding 1,000,000 ready jobs      target < 600 MB

See scripts/bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from rawhttp import (
    Connection,
    LineSplitter,
    job_id_of,
    post_json,
    request_bytes,
    timed_on_connections,
)
from server import BenchServer, CpuMeter, use_uvloop, zizq_command

HERE = Path(__file__).resolve().parent
JOB = {"queue": "bench", "type": "bench", "payload": {"n": 1}}


@dataclass
class Result:
    key: str
    name: str
    figure: str
    target: str
    ok: bool | None
    detail: str = ""


def fmt_rate(value: float) -> str:
    return f"{value:,.0f} jobs/s"


# -- single enqueue: wrk, h2load, or the raw asyncio client ------------------------------


def pick_client(preferred: str) -> str:
    if preferred != "auto":
        return preferred
    if shutil.which("wrk"):
        return "wrk"
    if shutil.which("h2load"):
        return "h2load"
    return "raw"


def run_wrk(url: str, connections: int, seconds: int) -> tuple[float, str]:
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "-s",
        str(HERE / "post_job.lua"),
        f"{url}/jobs",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad or errors:
        raise RuntimeError(f"wrk saw failures:\n{out}")
    latency = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    detail = f"wrk -t1 -c{connections} -d{seconds}s" + (
        f"; latency avg {latency.group(1)}, max {latency.group(3)}" if latency else ""
    )
    return rate, detail


def run_h2load(url: str, connections: int, seconds: int, h1: bool) -> tuple[float, str]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as body:
        body.write(orjson.dumps(JOB))
    try:
        cmd = [
            "h2load",
            *(["--h1"] if h1 else ["-m", "1"]),
            "-t1",
            f"-c{connections}",
            f"-D{seconds}",
            "-d",
            body.name,
            "-H",
            "content-type: application/json",
            f"{url}/jobs",
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    finally:
        os.unlink(body.name)
    rate = float(re.search(r"finished in [^,]+, ([\d.]+) req/s", out).group(1))
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    failed = re.search(r"requests: .* (\d+) failed", out)
    if (
        status
        and (int(status.group(3)) or int(status.group(4)))
        or (failed and int(failed.group(1)))
    ):
        raise RuntimeError(f"h2load saw failures:\n{out}")
    return rate, f"h2load {'--h1' if h1 else 'h2c -m1'} -t1 -c{connections} -D{seconds}"


async def raw_single(host: str, port: int, connections: int, seconds: float) -> float:
    raw = post_json("/jobs", JOB)
    done = 0
    stop_at = time.perf_counter() + seconds

    async def loop(conn: Connection) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            status, body = await conn.request(raw)
            if status != 201:
                raise RuntimeError(f"enqueue answered {status}: {body[:200]!r}")
            done += 1

    elapsed = await timed_on_connections(host, port, connections, loop)
    return done / elapsed  # read `done` only after the work has run


def single_enqueue(args, key: str, flags: list[str], target: float, label: str) -> Result:
    client = pick_client(args.client)
    with BenchServer(*flags) as server:
        url = f"http://{server.host}:{server.port}"
        if client == "wrk":
            run_wrk(url, args.connections, 2)  # warm-up
            with CpuMeter(server) as cpu:
                rate, detail = run_wrk(url, args.connections, args.seconds)
        elif client == "h2load":
            run_h2load(url, args.connections, 2, h1=True)
            with CpuMeter(server) as cpu:
                rate, detail = run_h2load(url, args.connections, args.seconds, h1=True)
        else:
            asyncio.run(raw_single(server.host, server.port, args.connections, 2))
            with CpuMeter(server) as cpu:
                rate = asyncio.run(
                    raw_single(server.host, server.port, args.connections, args.seconds)
                )
            detail = f"raw asyncio client, {args.connections} connections"
        detail += f"; server CPU {cpu.percent:.0f}%"
    return Result(key, label, fmt_rate(rate), f">= {target:,.0f}/s", rate >= target, detail)


def bench_a(args) -> Result:
    return single_enqueue(
        args, "a", [], 10_000, f"single enqueue, {args.connections} conns, HTTP/1.1"
    )


def bench_d(args) -> Result:
    return single_enqueue(
        args,
        "d",
        ["--enqueue-commit-mode", "fsync"],
        5_000,
        f"single enqueue, {args.connections} conns, fsync",
    )


def bench_a2(args) -> Result:
    if not shutil.which("h2load"):
        return Result("a2", "single enqueue, h2c", "skipped", "-", None, "h2load not installed")
    with BenchServer() as server:
        url = f"http://{server.host}:{server.port}"
        run_h2load(url, args.connections, 2, h1=False)
        with CpuMeter(server) as cpu:
            rate, detail = run_h2load(url, args.connections, args.seconds, h1=False)
        detail += f"; server CPU {cpu.percent:.0f}%"
    return Result(
        "a2", f"single enqueue, {args.connections} conns, h2c", fmt_rate(rate), "-", None, detail
    )


# -- bulk enqueue --------------------------------------------------------------------------


async def bulk_enqueue(
    host: str, port: int, total: int, per_request: int, connections: int
) -> float:
    raw = post_json("/jobs/bulk", {"jobs": [JOB] * per_request})
    requests = total // per_request
    next_index = 0

    async def loop(conn: Connection) -> None:
        nonlocal next_index
        while next_index < requests:
            next_index += 1
            status, body = await conn.request(raw)
            if status != 201:
                raise RuntimeError(f"bulk enqueue answered {status}: {body[:200]!r}")

    return requests * per_request / await timed_on_connections(host, port, connections, loop)


def bench_b(args) -> Result:
    with BenchServer() as server:
        asyncio.run(bulk_enqueue(server.host, server.port, 20_000, 1000, args.bulk_connections))
        with CpuMeter(server) as cpu:
            rate = asyncio.run(
                bulk_enqueue(server.host, server.port, args.bulk_jobs, 1000, args.bulk_connections)
            )
    return Result(
        "b",
        "bulk enqueue, 1,000 jobs/request",
        fmt_rate(rate),
        ">= 100,000/s",
        rate >= 100_000,
        f"{args.bulk_jobs:,} jobs over {args.bulk_connections} connections; "
        f"server CPU {cpu.percent:.0f}%",
    )


# -- end-to-end ------------------------------------------------------------------------------


class Worker:
    """A take stream plus an ack connection; acks whatever arrived since the last ack."""

    def __init__(self, host: str, port: int, prefetch: int, on_acked) -> None:
        self.host, self.port, self.prefetch = host, port, prefetch
        self.pending: list[str] = []
        self.wake = asyncio.Event()
        self.on_acked = on_acked
        self.received = 0
        self.stream: Connection | None = None
        self.acks: Connection | None = None
        self.on_job = None  # optional hook: called with each job id on arrival

    def _line(self, line: bytes) -> None:
        job_id = job_id_of(line)
        self.received += 1
        self.pending.append(job_id)
        if self.on_job is not None:
            self.on_job(job_id)
        self.wake.set()

    async def start(self, queue: str = "bench") -> None:
        self.stream = await Connection.open(self.host, self.port)
        self.acks = await Connection.open(self.host, self.port)
        splitter = LineSplitter(self._line)
        status = await self.stream.open_stream(
            request_bytes(
                "GET",
                f"/jobs/take?queue={queue}&prefetch={self.prefetch}",
                accept="application/x-ndjson",
            ),
            splitter.feed,
        )
        if status != 200:
            raise RuntimeError(f"take answered {status}")

    async def ack_forever(self) -> None:
        assert self.acks is not None
        while True:
            await self.wake.wait()
            self.wake.clear()
            if not self.pending:
                continue
            ids, self.pending = self.pending, []
            status, body = await self.acks.request(post_json("/jobs/success", {"ids": ids}))
            if status != 204:
                raise RuntimeError(f"bulk ack answered {status}: {body[:200]!r}")
            self.on_acked(len(ids))

    def close(self) -> None:
        for conn in (self.stream, self.acks):
            if conn is not None:
                conn.close()


async def end_to_end(host: str, port: int, total: int, workers: int, prefetch: int) -> dict:
    completed = 0
    finished = asyncio.Event()

    def on_acked(n: int) -> None:
        nonlocal completed
        completed += n
        if completed >= total:
            finished.set()

    pool = [Worker(host, port, prefetch, on_acked) for _ in range(workers)]
    for worker in pool:
        await worker.start()
    producer = await Connection.open(host, port)
    raw = post_json("/jobs/bulk", {"jobs": [JOB] * 1000})
    enqueue_done = 0.0

    async def produce() -> None:
        nonlocal enqueue_done
        for _ in range(total // 1000):
            status, body = await producer.request(raw)
            if status != 201:
                raise RuntimeError(f"bulk enqueue answered {status}: {body[:200]!r}")
        enqueue_done = time.perf_counter()

    started = time.perf_counter()
    tasks = [asyncio.create_task(w.ack_forever()) for w in pool]
    producing = asyncio.create_task(produce())
    waiter = asyncio.create_task(finished.wait())
    watched = {waiter, producing, *tasks}
    deadline = time.monotonic() + 120
    while not finished.is_set():
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {completed:,} of {total:,} jobs completed in 120 s")
        done, watched = await asyncio.wait(
            watched, timeout=deadline - time.monotonic(), return_when=asyncio.FIRST_COMPLETED
        )
        for task in done:
            if task.exception() is not None:
                raise task.exception()
    elapsed = time.perf_counter() - started
    for task in tasks:
        task.cancel()
    producer.close()
    for worker in pool:
        worker.close()
    return {
        "rate": total / elapsed,
        "enqueue_rate": total / (enqueue_done - started) if enqueue_done else 0.0,
        "per_worker": [w.received for w in pool],
    }


def bench_c(args) -> Result:
    with BenchServer() as server:
        asyncio.run(end_to_end(server.host, server.port, 10_000, 4, 100))  # warm-up
        with CpuMeter(server) as cpu:
            out = asyncio.run(end_to_end(server.host, server.port, args.e2e_jobs, 4, 100))
    rate = out["rate"]
    return Result(
        "c",
        "end-to-end, 4 workers, prefetch 100",
        fmt_rate(rate),
        ">= 20,000/s",
        rate >= 20_000,
        f"{args.e2e_jobs:,} jobs; enqueue side {out['enqueue_rate']:,.0f}/s; "
        f"per worker {out['per_worker']}; server CPU {cpu.percent:.0f}%",
    )


# -- latency ---------------------------------------------------------------------------------


async def latency(host: str, port: int, samples: int, warmup: int) -> list[float]:
    arrived: asyncio.Future | None = None

    def on_job(job_id: str) -> None:
        if arrived is not None and not arrived.done():
            arrived.set_result((time.perf_counter(), job_id))

    worker = Worker(host, port, 10, lambda n: None)
    worker.on_job = on_job
    await worker.start("latency")
    acker = asyncio.create_task(worker.ack_forever())
    enqueuer = await Connection.open(host, port)
    raw = post_json("/jobs", {"queue": "latency", "type": "bench", "payload": {"n": 1}})
    results = []
    loop = asyncio.get_running_loop()
    for i in range(samples + warmup):
        arrived = loop.create_future()
        sent = time.perf_counter()
        status, body = await enqueuer.request(raw)
        if status != 201:
            raise RuntimeError(f"enqueue answered {status}: {body[:200]!r}")
        received_at, job_id = await asyncio.wait_for(arrived, 5)
        if job_id != orjson.loads(body)["id"]:
            raise RuntimeError("delivered a different job than enqueued")
        if i >= warmup:
            results.append(received_at - sent)
        await asyncio.sleep(0.003)  # let the ack land: the server is idle at each send
    acker.cancel()
    worker.close()
    enqueuer.close()
    return results


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def bench_e(args) -> Result:
    with BenchServer() as server:
        values = asyncio.run(latency(server.host, server.port, args.latency_samples, 50))
    ms = [v * 1000 for v in values]
    p50, p99 = percentile(ms, 50), percentile(ms, 99)
    return Result(
        "e",
        "enqueue-to-delivery latency, idle",
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms",
        "p99 < 5 ms",
        p99 < 5,
        f"{len(ms)} samples; mean {statistics.mean(ms):.2f} ms, max {max(ms):.2f} ms",
    )


# -- memory ----------------------------------------------------------------------------------


def bench_f(args) -> Result:
    with BenchServer() as server:
        base = server.status_kb("VmRSS")
        started = time.perf_counter()
        rate = asyncio.run(
            bulk_enqueue(server.host, server.port, args.rss_jobs, 1000, args.bulk_connections)
        )
        elapsed = time.perf_counter() - started
        time.sleep(1.0)
        hwm, rss = server.status_kb("VmHWM"), server.status_kb("VmRSS")
    mb = hwm / 1024
    return Result(
        "f",
        f"peak RSS with {args.rss_jobs:,} ready jobs",
        f"{mb:,.0f} MB",
        "< 600 MB",
        mb < 600,
        f"VmRSS at start {base / 1024:.0f} MB, after {rss / 1024:.0f} MB; "
        f"enqueued in {elapsed:.1f} s ({rate:,.0f}/s)",
    )


def load_average() -> str:
    """1-minute load average: other work on the machine skews every figure."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


BENCHES = {
    "a": bench_a,
    "a2": bench_a2,
    "b": bench_b,
    "c": bench_c,
    "d": bench_d,
    "e": bench_e,
    "f": bench_f,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma list of benchmarks: " + ",".join(BENCHES))
    parser.add_argument("--client", choices=["auto", "wrk", "h2load", "raw"], default="auto")
    parser.add_argument("--seconds", type=int, default=10, help="duration of (a), (a2), (d)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--bulk-jobs", type=int, default=300_000)
    parser.add_argument("--bulk-connections", type=int, default=2)
    parser.add_argument("--e2e-jobs", type=int, default=200_000)
    parser.add_argument("--latency-samples", type=int, default=1000)
    parser.add_argument("--rss-jobs", type=int, default=1_000_000)
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(BENCHES)
    unknown = [key for key in chosen if key not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")

    use_uvloop()

    load_before = load_average()
    results: list[Result] = []
    for key in chosen:
        print(f"[{key}] running...", flush=True)
        t0 = time.perf_counter()
        try:
            result = BENCHES[key](args)
        except Exception as exc:
            result = Result(key, key, "error", "-", False, f"{type(exc).__name__}: {exc}")
        results.append(result)
        print(
            f"[{key}] {result.name}: {result.figure}  ({result.detail}) "
            f"[{time.perf_counter() - t0:.0f} s]",
            flush=True,
        )

    print()
    print("command:", shlex.join([sys.executable, *sys.argv]))
    server_cmd = shlex.join([*zizq_command(), "serve", "--root-dir", "TMP", "--port", "0"])
    print(f"server:  {server_cmd} --no-admin [flags] (fresh TMP root per benchmark)")
    print(
        f"machine: {os.cpu_count()} CPUs; client and server share it; "
        f"load average before {load_before}, after {load_average()}"
    )
    print()
    width = max(len(r.name) for r in results) + 2
    print(f"{'':3}{'benchmark':{width}}{'figure':28}{'target':16}result")
    for r in results:
        verdict = "-" if r.ok is None else ("PASS" if r.ok else "FAIL")
        print(f"{r.key:3}{r.name:{width}}{r.figure:28}{r.target:16}{verdict}")
    return 0 if all(r.ok is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
