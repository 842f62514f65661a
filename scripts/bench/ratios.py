"""Issue 15's ratios, measured in one run on this machine: zizq against its ceiling and its peers.

    .venv/bin/python scripts/bench/ratios.py                       # everything (~3 minutes)
    .venv/bin/python scripts/bench/ratios.py --skip sidekiq,bullmq  # zizq and the ceiling only
    .venv/bin/python scripts/bench/ratios.py --seconds 5 --bulk-jobs 100000 --drain-jobs 50000

Absolute rates move from machine to machine; what this prints is each ratio taken in one run,
every server fresh, client and server sharing the machine:

  single enqueue / bare-route ceiling   `POST /jobs` on zizq against a bare Falcon route that
                                        parses the JSON body and answers 201 (peers/ceiling.py,
                                        Granian with zizq's own primary-listener settings); same
                                        load generator (wrk, else h2load --h1, else the raw
                                        asyncio client), same connections, same duration
  bulk enqueue / Sidekiq push_bulk      1,000 jobs per `POST /jobs/bulk` against 1,000 per
                                        `Sidekiq::Client.push_bulk` (peers/sidekiq_bench.rb)
  end-to-end drain / BullMQ, Sidekiq    N jobs bulk-added, then drained by one worker process:
                                        zizq 4 take streams, prefetch 100, bulk acks
                                        (POST /jobs/success); BullMQ 5 one Worker
                                        (peers/node/bullmq_bench.js); Sidekiq one process
  enqueue-to-delivery p50/p99           on zizq while its drain runs (latency_probe.py, its own
                                        process and queue, one job every 10 ms)
  fsync / buffered single enqueue       `--default-commit-mode fsync --enqueue-commit-mode fsync`
                                        against the defaults

A peer whose runtime (redis-server, ruby + sidekiq, node + bullmq) is missing is skipped and the
table says so. See scripts/bench/README.md for installing the peers. Exit status 1 when a
measured ratio misses the issue's target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from run import (
    Worker,
    bulk_enqueue,
    percentile,
    pick_client,
    raw_single,
    run_h2load,
    run_wrk,
)
from server import BenchServer, CpuMeter, use_uvloop, zizq_command

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
SIDEKIQ_SCRIPT = PEERS / "sidekiq_bench.rb"
NODE_DIR = PEERS / "node"
BULLMQ_SCRIPT = NODE_DIR / "bullmq_bench.js"
FSYNC_FLAGS = ["--default-commit-mode", "fsync", "--enqueue-commit-mode", "fsync"]
SECTIONS = ("ceiling", "fsync", "bulk", "drain", "sidekiq", "bullmq")


def fmt_rate(value: float | None, unit: str = "jobs/s") -> str:
    return "-" if value is None else f"{value:,.0f} {unit}"


def log(message: str) -> None:
    print(message, flush=True)


def children_cpu() -> float:
    """CPU seconds of every child process waited for so far (for one-shot peer processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def fdatasync_ms(count: int = 100) -> float:
    """Mean time of a small write + fdatasync in the temp dir, where the zizq roots go: the
    fsync-mode ratio says little on a disk whose syncs cost nothing (a VM's write cache)."""
    fd, path = tempfile.mkstemp(prefix="zizq-bench-sync-")
    try:
        started = time.perf_counter()
        for _ in range(count):
            os.write(fd, b"x" * 128)
            os.fdatasync(fd)
        return (time.perf_counter() - started) / count * 1000
    finally:
        os.close(fd)
        os.unlink(path)


# -- processes we start: the ceiling app and Redis ---------------------------------------------


class CeilingServer(BenchServer):
    """peers/ceiling.py, started and stopped like a zizq server (it announces itself alike)."""

    @property
    def command(self) -> list[str]:
        return [sys.executable, str(PEERS / "ceiling.py")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A throwaway redis-server on loopback, no persistence; stopped and removed at exit."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="zizq-bench-redis-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.command("PING") == "PONG":
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def command(self, *args: str) -> str:
        """One command over RESP; returns a simple or integer reply as text."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"".join(parts))
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        text = reply.decode().strip()
        if text.startswith("-"):
            raise RuntimeError(f"redis: {text[1:]}")
        return text[1:]

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return proc_cpu(self.proc.pid)


# -- peers: which are installed ------------------------------------------------------------------


@dataclass
class Peer:
    name: str
    available: bool
    version: str = ""
    reason: str = ""  # why skipped


def redis_version() -> str | None:
    if not shutil.which("redis-server"):
        return None
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return out.strip() or "?"


def find_sidekiq(redis: str | None) -> Peer:
    if redis is None:
        return Peer("Sidekiq", False, reason="redis-server not installed")
    if not shutil.which("ruby"):
        return Peer("Sidekiq", False, reason="ruby not installed")
    if not shutil.which("sidekiq"):
        return Peer("Sidekiq", False, reason="the sidekiq command is not installed")
    done = subprocess.run(
        ["ruby", str(SIDEKIQ_SCRIPT), "version"], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["?"])[-1]
        return Peer("Sidekiq", False, reason=f"ruby cannot load sidekiq: {reason}")
    found = json.loads(done.stdout)
    return Peer(
        "Sidekiq",
        True,
        f"Sidekiq {found['sidekiq']} (ruby {found['ruby']}) on Redis {redis}",
    )


def find_bullmq(redis: str | None) -> Peer:
    if redis is None:
        return Peer("BullMQ", False, reason="redis-server not installed")
    if not shutil.which("node"):
        return Peer("BullMQ", False, reason="node not installed")
    if not (NODE_DIR / "node_modules" / "bullmq").is_dir():
        return Peer(
            "BullMQ", False, reason=f"bullmq not installed (run `npm install` in {NODE_DIR})"
        )
    done = subprocess.run(
        ["node", str(BULLMQ_SCRIPT), "version"], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["?"])[-1]
        return Peer("BullMQ", False, reason=f"node cannot load bullmq: {reason}")
    found = json.loads(done.stdout)
    return Peer(
        "BullMQ",
        True,
        f"BullMQ {found['bullmq']} (node {found['node']}, ioredis {found['ioredis']}) "
        f"on Redis {redis}",
    )


# -- single enqueue: zizq, the ceiling, fsync -------------------------------------------------------


def single_rate(args, server: BenchServer) -> tuple[float, str]:
    """Requests/s of `POST /jobs` (one small JSON job) on `server`, after a warm-up."""
    client = pick_client(args.client)
    url = f"http://{server.host}:{server.port}"
    if client == "wrk":
        run_wrk(url, args.connections, args.warmup_seconds)
        with CpuMeter(server) as cpu:
            rate, detail = run_wrk(url, args.connections, args.seconds)
    elif client == "h2load":
        run_h2load(url, args.connections, args.warmup_seconds, h1=True)
        with CpuMeter(server) as cpu:
            rate, detail = run_h2load(url, args.connections, args.seconds, h1=True)
    else:
        asyncio.run(raw_single(server.host, server.port, args.connections, args.warmup_seconds))
        with CpuMeter(server) as cpu:
            rate = asyncio.run(raw_single(server.host, server.port, args.connections, args.seconds))
        detail = f"raw asyncio client, {args.connections} connections, {args.seconds} s"
    return rate, f"{detail}; server CPU {cpu.percent:.0f}%"


# -- bulk enqueue ------------------------------------------------------------------------------------


def zizq_bulk(args) -> tuple[float, str]:
    with BenchServer() as server:
        asyncio.run(bulk_enqueue(server.host, server.port, 20_000, 1000, args.bulk_connections))
        with CpuMeter(server) as cpu:
            rate = asyncio.run(
                bulk_enqueue(server.host, server.port, args.bulk_jobs, 1000, args.bulk_connections)
            )
    return rate, (
        f"{args.bulk_jobs:,} jobs, POST /jobs/bulk x1,000 over {args.bulk_connections} "
        f"connections after 20,000 warm-up; server CPU {cpu.percent:.0f}%"
    )


def sidekiq_push(redis: RedisServer, total: int, threads: int, warmup_calls: int) -> dict:
    env = {**os.environ, "REDIS_URL": redis.url}
    cpu_before = redis.cpu_seconds()
    done = subprocess.run(
        ["ruby", str(SIDEKIQ_SCRIPT), "push", str(total), "1000", str(threads), str(warmup_calls)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"sidekiq push failed: {done.stderr.strip()[-500:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    queued = int(redis.command("LLEN", "queue:bench"))
    expected = out["jobs"] + out.get("warmup_jobs", 0)
    if queued != expected:
        raise RuntimeError(f"Redis holds {queued:,} Sidekiq jobs, expected {expected:,}")
    out["rate"] = out["jobs"] / out["seconds"]
    out["redis_cpu"] = redis.cpu_seconds() - cpu_before
    return out


def sidekiq_bulk(args) -> tuple[float, str]:
    with RedisServer() as redis:
        out = sidekiq_push(redis, args.bulk_jobs, args.sidekiq_push_threads, 10)
    return out["rate"], (
        f"{args.bulk_jobs:,} jobs, push_bulk x1,000 from {args.sidekiq_push_threads} "
        f"thread(s) after 10,000 warm-up; Redis CPU {100 * out['redis_cpu'] / out['seconds']:.0f}%"
        " (incl. warm-up)"
    )


# -- end-to-end drain ----------------------------------------------------------------------------------


async def zizq_drain_jobs(host: str, port: int, total: int, streams: int, prefetch: int) -> dict:
    """Drain `total` ready jobs with `streams` take streams; from the first job's arrival to
    the answer of the ack that covers the last one."""
    completed = 0
    finished = asyncio.Event()
    first: float | None = None

    def on_acked(n: int) -> None:
        nonlocal completed
        completed += n
        if completed >= total:
            finished.set()

    pool = [Worker(host, port, prefetch, on_acked) for _ in range(streams)]

    def on_first(job_id: str) -> None:
        nonlocal first
        if first is None:
            first = time.monotonic()
        for worker in pool:
            worker.on_job = None

    for worker in pool:
        worker.on_job = on_first
    opened = time.monotonic()
    tasks: list[asyncio.Task] = []
    try:
        for worker in pool:
            await worker.start()
            tasks.append(asyncio.create_task(worker.ack_forever()))
        waiter = asyncio.create_task(finished.wait())
        watched = {waiter, *tasks}
        deadline = time.monotonic() + drain_timeout(total)
        while not finished.is_set():
            if time.monotonic() > deadline:
                raise TimeoutError(f"zizq drained only {completed:,} of {total:,} jobs")
            done, watched = await asyncio.wait(
                watched, timeout=deadline - time.monotonic(), return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task is not waiter and task.exception() is not None:
                    raise task.exception()
        ended = time.monotonic()
    finally:
        for task in tasks:
            task.cancel()
        for worker in pool:
            worker.close()
    assert first is not None
    return {
        "seconds": ended - first,
        "opened": opened,
        "first": first,
        "ended": ended,
        "per_stream": [worker.received for worker in pool],
    }


def drain_timeout(total: int) -> float:
    return max(120.0, total / 500)


@dataclass
class Latency:
    p50_ms: float
    p99_ms: float
    max_ms: float
    samples: int
    timeouts: int


def start_probe(args, server: BenchServer) -> subprocess.Popen:
    probe = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "latency_probe.py"),
            server.host,
            str(server.port),
            "--interval-ms",
            str(args.probe_interval_ms),
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert probe.stdout is not None
    line = probe.stdout.readline().strip()  # the probe times itself out after 5 s per sample
    if line != "ready":
        probe.kill()
        probe.wait()
        raise RuntimeError(f"latency probe did not start (printed {line!r})")
    return probe


def stop_probe(probe: subprocess.Popen, since: float, until: float) -> Latency:
    probe.send_signal(signal.SIGTERM)
    try:
        out, _ = probe.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        probe.kill()
        probe.communicate()
        raise RuntimeError("latency probe did not stop") from None
    if probe.returncode != 0:
        raise RuntimeError(f"latency probe exited with {probe.returncode}")
    found = json.loads(out.strip().splitlines()[-1])
    ms = [lat * 1000 for sent, lat in found["samples"] if since <= sent <= until]
    timeouts = sum(1 for sent in found["timeouts"] if since <= sent <= until)
    ms += [5000.0] * timeouts  # at least that: counted as 5 s
    if not ms:
        raise RuntimeError("no latency sample fell inside the drain")
    return Latency(percentile(ms, 50), percentile(ms, 99), max(ms), len(ms), timeouts)


@dataclass
class Drain:
    rate: float
    fill_rate: float
    detail: str
    latency: Latency | None = None
    latency_error: str = ""


def zizq_drain(args) -> Drain:
    total = args.drain_jobs
    with BenchServer() as server:
        fill = asyncio.run(
            bulk_enqueue(server.host, server.port, total, 1000, args.bulk_connections)
        )
        probe = None
        latency_error = ""
        if args.probe_interval_ms > 0:
            try:
                probe = start_probe(args, server)
            except Exception as exc:
                latency_error = f"{type(exc).__name__}: {exc}"
        with CpuMeter(server) as cpu:
            cpu_self = resource.getrusage(resource.RUSAGE_SELF)
            try:
                out = asyncio.run(
                    zizq_drain_jobs(server.host, server.port, total, args.streams, args.prefetch)
                )
            except BaseException:
                if probe is not None:
                    probe.kill()
                    probe.wait()
                raise
            cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        latency = None
        if probe is not None:
            try:
                latency = stop_probe(probe, out["opened"], out["ended"])
            except Exception as exc:
                latency_error = f"{type(exc).__name__}: {exc}"
    client_cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_self.ru_utime + cpu_self.ru_stime)
    rate = total / out["seconds"]
    return Drain(
        rate,
        fill,
        f"{total:,} jobs; {args.streams} take streams, prefetch {args.prefetch}, bulk acks; "
        f"per stream {out['per_stream']}; server CPU {cpu.percent:.0f}%, worker (client) CPU "
        f"{100 * client_cpu / max(out['ended'] - out['opened'], 1e-9):.0f}%",
        latency,
        latency_error,
    )


def bullmq_drain(args) -> Drain:
    total = args.drain_jobs
    with RedisServer() as redis:
        env = {**os.environ, "REDIS_PORT": str(redis.port)}
        done = subprocess.run(
            ["node", str(BULLMQ_SCRIPT), "add", str(total), "1000", str(args.bulk_connections)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"bullmq add failed: {done.stderr.strip()[-500:]}")
        added = json.loads(done.stdout.strip().splitlines()[-1])
        waiting = int(redis.command("LLEN", "bull:bench:wait"))
        if waiting != total:
            raise RuntimeError(f"BullMQ holds {waiting:,} waiting jobs, expected {total:,}")
        redis_cpu = redis.cpu_seconds()
        worker_cpu = children_cpu()
        started = time.monotonic()
        done = subprocess.run(
            ["node", str(BULLMQ_SCRIPT), "work", str(total), str(args.bullmq_concurrency)],
            capture_output=True,
            text=True,
            env=env,
            timeout=drain_timeout(total),
        )
        wall = time.monotonic() - started
        worker_cpu = children_cpu() - worker_cpu
        redis_cpu = redis.cpu_seconds() - redis_cpu
        if done.returncode != 0:
            raise RuntimeError(f"bullmq worker failed: {done.stderr.strip()[-500:]}")
        out = json.loads(done.stdout.strip().splitlines()[-1])
        left = int(redis.command("LLEN", "bull:bench:wait"))
        if left:
            raise RuntimeError(f"{left:,} BullMQ jobs still waiting after the drain")
    return Drain(
        total / out["seconds"],
        added["jobs"] / added["seconds"],
        f"{total:,} jobs; one Worker process, concurrency {args.bullmq_concurrency}, "
        f"removeOnComplete; Redis CPU {100 * redis_cpu / wall:.0f}%, worker CPU "
        f"{100 * worker_cpu / wall:.0f}% (over the worker's {wall:.1f} s lifetime)",
    )


def sidekiq_drain(args) -> Drain:
    total = args.drain_jobs
    with RedisServer() as redis, tempfile.TemporaryDirectory(prefix="zizq-bench-sk-") as tmp:
        fill = sidekiq_push(redis, total, args.sidekiq_push_threads, 0)
        result = Path(tmp) / "result.json"
        env = {
            **os.environ,
            "REDIS_URL": redis.url,
            "BENCH_DRAIN_JOBS": str(total),
            "BENCH_RESULT": str(result),
        }
        log_path = Path(tmp) / "sidekiq.log"
        redis_cpu = redis.cpu_seconds()
        started = time.monotonic()
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(
                [
                    "sidekiq",
                    "-r",
                    str(SIDEKIQ_SCRIPT),
                    "-q",
                    "bench",
                    "-c",
                    str(args.sidekiq_concurrency),
                    "-e",
                    "production",
                    "-t",
                    "2",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=tmp,
            )
        try:
            deadline = time.monotonic() + drain_timeout(total)
            while not result.exists():
                if proc.poll() is not None:
                    tail = log_path.read_text()[-800:]
                    raise RuntimeError(f"sidekiq exited with {proc.returncode}: {tail}")
                if time.monotonic() > deadline:
                    raise TimeoutError("Sidekiq did not drain in time")
                time.sleep(0.05)
            wall = time.monotonic() - started
            worker_cpu = proc_cpu(proc.pid)
            redis_cpu = redis.cpu_seconds() - redis_cpu
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        out = json.loads(result.read_text())
        left = int(redis.command("LLEN", "queue:bench"))
        if left:
            raise RuntimeError(f"{left:,} Sidekiq jobs still queued after the drain")
    return Drain(
        total / out["seconds"],
        fill["rate"],
        f"{total:,} jobs; one Sidekiq process, concurrency {args.sidekiq_concurrency}, job "
        f"logging off; Redis CPU {100 * redis_cpu / wall:.0f}%, worker CPU "
        f"{100 * worker_cpu / wall:.0f}% (over the worker's {wall:.1f} s lifetime)",
    )


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Row:
    workload: str
    zizq: str
    against: str
    ratio: float | None
    target: str
    ok: bool | None
    note: str = ""


@dataclass
class Run:
    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)


def attempt(label: str, run: Run, fn, *fn_args):
    """Run one measurement; print and record its detail; None (and the error) if it failed."""
    log(f"[{label}] running...")
    started = time.perf_counter()
    try:
        value = fn(*fn_args)
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        log(f"[{label}] FAILED: {message}")
        run.details.append(f"{label}: FAILED: {message}")
        return None, message
    took = time.perf_counter() - started
    if isinstance(value, Drain):
        figure = f"{fmt_rate(value.rate)} (filled at {fmt_rate(value.fill_rate)}); {value.detail}"
        if value.latency is not None:
            lat = value.latency
            figure += (
                f"; probe p50 {lat.p50_ms:.2f} ms, p99 {lat.p99_ms:.2f} ms, "
                f"max {lat.max_ms:.1f} ms, {lat.samples} samples, {lat.timeouts} timeouts"
            )
    else:
        rate, detail = value
        figure = f"{fmt_rate(rate, 'req/s' if label.startswith('ceiling') else 'jobs/s')}; {detail}"
    log(f"[{label}] {figure} [{took:.0f} s]")
    run.details.append(f"{label}: {figure}")
    return value, ""


def ratio_row(
    workload: str,
    ours: float | None,
    theirs: float | None,
    against_label: str,
    target: float | None,
    skipped: str = "",
    error: str = "",
    unit: str = "jobs/s",
    ratio: float | None = None,
    note: str = "",
) -> Row:
    """A row `ours / theirs`; `ratio` overrides that quotient (a median of per-round ones)."""
    target_text = f">= {target:g}" if target is not None else "-"
    if skipped:
        return Row(workload, fmt_rate(ours), "skipped", None, target_text, None, skipped)
    if ours is None or theirs is None:
        return Row(
            workload, fmt_rate(ours), fmt_rate(theirs, unit), None, target_text, False, error
        )
    if ratio is None:
        ratio = ours / theirs
    ok = None if target is None else ratio >= target
    return Row(
        workload,
        fmt_rate(ours),
        f"{fmt_rate(theirs, unit)} {against_label}".strip(),
        ratio,
        target_text,
        ok,
        note,
    )


def median_of(values: list[float | None]) -> float | None:
    found = [value for value in values if value is not None]
    return statistics.median(found) if found else None


def paired_ratio(ours: list[float | None], theirs: list[float | None]) -> float | None:
    """The median over rounds of ours / theirs, each from the same round."""
    pairs = [a / b for a, b in zip(ours, theirs, strict=False) if a is not None and b]
    return statistics.median(pairs) if pairs else None


def parse_skip(text: str | None, parser: argparse.ArgumentParser) -> set[str]:
    chosen = {item.strip() for item in (text or "").split(",") if item.strip()}
    unknown = chosen - set(SECTIONS)
    if unknown:
        parser.error(f"unknown --skip item(s): {', '.join(sorted(unknown))}")
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--skip",
        metavar="LIST",
        help="comma list of parts not to run: " + ",".join(SECTIONS) + " (a peer or a workload)",
    )
    parser.add_argument("--client", choices=["auto", "wrk", "h2load", "raw"], default="auto")
    parser.add_argument(
        "--seconds", type=int, default=10, help="single-enqueue measuring time (10)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of the single-enqueue trio (ceiling, zizq, fsync), interleaved; their "
        "ratios are the medians of the per-round ratios (3)",
    )
    parser.add_argument("--warmup-seconds", type=int, default=2, help="single-enqueue warm-up (2)")
    parser.add_argument(
        "--connections", type=int, default=32, help="single-enqueue connections (32)"
    )
    parser.add_argument(
        "--bulk-jobs", type=int, default=300_000, help="jobs in the bulk-enqueue run (300,000)"
    )
    parser.add_argument(
        "--bulk-connections",
        type=int,
        default=2,
        help="bulk requests in flight for zizq and BullMQ fills (2)",
    )
    parser.add_argument(
        "--sidekiq-push-threads",
        type=int,
        default=1,
        help="Ruby threads calling push_bulk (1: more only contend for Ruby's GIL)",
    )
    parser.add_argument(
        "--drain-jobs", type=int, default=100_000, help="jobs in each drain (100,000)"
    )
    parser.add_argument("--streams", type=int, default=4, help="zizq take streams (4)")
    parser.add_argument("--prefetch", type=int, default=100, help="zizq prefetch (100)")
    parser.add_argument(
        "--bullmq-concurrency", type=int, default=100, help="BullMQ Worker concurrency (100)"
    )
    parser.add_argument(
        "--sidekiq-concurrency",
        type=int,
        default=10,
        help="Sidekiq threads (10, its default)",
    )
    parser.add_argument(
        "--probe-interval-ms",
        type=float,
        default=10.0,
        help="latency probe: one job every this many ms during the zizq drain (0: off)",
    )
    args = parser.parse_args()
    skip = parse_skip(args.skip, parser)
    if min(args.bulk_jobs, args.drain_jobs) < 1000:
        parser.error("--bulk-jobs and --drain-jobs must be at least 1,000")
    use_uvloop()

    redis = redis_version()
    sidekiq = (
        Peer("Sidekiq", False, reason="skipped by --skip")
        if "sidekiq" in skip
        else find_sidekiq(redis)
    )
    bullmq = (
        Peer("BullMQ", False, reason="skipped by --skip")
        if "bullmq" in skip
        else find_bullmq(redis)
    )
    for peer in (sidekiq, bullmq):
        log(
            f"peer {peer.name}: " + (peer.version if peer.available else f"SKIPPED ({peer.reason})")
        )

    load_before = load_average()
    sync_ms = fdatasync_ms()
    run = Run()

    def rate(value):
        if value is None:
            return None
        return value.rate if isinstance(value, Drain) else value[0]

    # single enqueue: the ceiling, zizq, zizq in fsync mode, interleaved, `--rounds` times
    def measure_ceiling():
        with CeilingServer() as server:
            return single_rate(args, server)

    def measure_single(*flags: str):
        with BenchServer(*flags) as server:
            return single_rate(args, server)

    singles: dict[str, list[float | None]] = {"ceiling": [], "zizq": [], "fsync": []}
    single_errors = {"ceiling": "", "zizq": "", "fsync": ""}
    for round_no in range(1, args.rounds + 1):
        tag = f" (round {round_no})" if args.rounds > 1 else ""
        for key, label, fn, flags in (
            ("ceiling", "ceiling", measure_ceiling, ()),
            ("zizq", "zizq single", measure_single, ()),
            ("fsync", "zizq fsync single", measure_single, FSYNC_FLAGS),
        ):
            if key in skip:
                continue
            value, error = attempt(label + tag, run, fn, *flags)
            singles[key].append(rate(value))
            single_errors[key] = single_errors[key] or error
    single = median_of(singles["zizq"])
    single_err = single_errors["zizq"]

    # bulk enqueue
    zbulk = zbulk_err = skbulk = skbulk_err = None
    if "bulk" not in skip:
        zbulk, zbulk_err = attempt("zizq bulk", run, zizq_bulk, args)
        if sidekiq.available:
            skbulk, skbulk_err = attempt("sidekiq push_bulk", run, sidekiq_bulk, args)

    # end-to-end drains
    zdrain = zdrain_err = bdrain = bdrain_err = sdrain = sdrain_err = None
    if "drain" not in skip:
        zdrain, zdrain_err = attempt("zizq drain", run, zizq_drain, args)
        if bullmq.available:
            bdrain, bdrain_err = attempt("bullmq drain", run, bullmq_drain, args)
        if sidekiq.available:
            sdrain, sdrain_err = attempt("sidekiq drain", run, sidekiq_drain, args)

    rows = run.rows
    rounds_note = f"median of {args.rounds} rounds" if args.rounds > 1 else ""
    if "ceiling" in skip:
        rows.append(
            ratio_row(
                "single enqueue / bare-route ceiling",
                single,
                None,
                "",
                0.6,
                skipped="--skip ceiling",
            )
        )
    else:
        rows.append(
            ratio_row(
                "single enqueue / bare-route ceiling",
                single,
                median_of(singles["ceiling"]),
                "(ceiling)",
                0.6,
                error=single_err or single_errors["ceiling"],
                unit="req/s",
                ratio=paired_ratio(singles["zizq"], singles["ceiling"]),
                note=rounds_note,
            )
        )
    if "bulk" in skip:
        rows.append(
            ratio_row(
                "bulk enqueue / Sidekiq push_bulk", None, None, "", 1.5, skipped="--skip bulk"
            )
        )
    else:
        rows.append(
            ratio_row(
                "bulk enqueue / Sidekiq push_bulk",
                rate(zbulk),
                rate(skbulk),
                "(Sidekiq)",
                1.5,
                skipped="" if sidekiq.available else f"Sidekiq: {sidekiq.reason}",
                error=zbulk_err or skbulk_err or "",
            )
        )
    for name, peer, value, err, target in (
        ("BullMQ", bullmq, bdrain, bdrain_err, 3.0),
        ("Sidekiq", sidekiq, sdrain, sdrain_err, None),
    ):
        workload = f"end-to-end drain / {name} drain"
        if "drain" in skip:
            rows.append(ratio_row(workload, None, None, "", target, skipped="--skip drain"))
            continue
        rows.append(
            ratio_row(
                workload,
                rate(zdrain),
                rate(value),
                f"({name})",
                target,
                skipped="" if peer.available else f"{name}: {peer.reason}",
                error=zdrain_err or err or "",
            )
        )
    if "drain" in skip or args.probe_interval_ms <= 0:
        rows.append(
            Row(
                "enqueue-to-delivery p99 during the drain",
                "-",
                "skipped",
                None,
                "< 20 ms",
                None,
                "--skip drain" if "drain" in skip else "probe off",
            )
        )
    elif zdrain is None or zdrain.latency is None:
        error = zdrain_err or (zdrain.latency_error if zdrain is not None else "")
        rows.append(
            Row(
                "enqueue-to-delivery p99 during the drain",
                "error",
                "-",
                None,
                "< 20 ms",
                False,
                error,
            )
        )
    else:
        lat = zdrain.latency
        rows.append(
            Row(
                "enqueue-to-delivery p99 during the drain",
                f"p99 {lat.p99_ms:.1f} ms",
                f"p50 {lat.p50_ms:.2f} ms, n={lat.samples}",
                None,
                "< 20 ms",
                lat.p99_ms < 20,
            )
        )
    rows.append(
        Row(
            "server start with 10,000,000 jobs",
            "not measured here",
            "-",
            None,
            "< 15 s, RSS < 3 GB",
            None,
            "issue 15 deliverable 4",
        )
    )
    if "fsync" in skip:
        rows.append(
            ratio_row(
                "fsync single enqueue / buffered",
                None,
                single,
                "",
                0.5,
                skipped="--skip fsync",
            )
        )
    else:
        rows.append(
            ratio_row(
                "fsync single enqueue / buffered",
                median_of(singles["fsync"]),
                single,
                "(buffered)",
                0.5,
                error=single_errors["fsync"] or single_err,
                ratio=paired_ratio(singles["fsync"], singles["zizq"]),
                note=rounds_note,
            )
        )

    print()
    print("command:", shlex.join([sys.executable, *sys.argv]))
    server_cmd = shlex.join([*zizq_command(), "serve", "--root-dir", "TMP", "--port", "0"])
    print(f"zizq:    {server_cmd} --no-admin [flags] (fresh TMP root per measurement)")
    print(
        f"client:  {pick_client(args.client)} for single enqueue ({args.connections} "
        f"connections, {args.seconds} s after {args.warmup_seconds} s warm-up); rawhttp.py "
        "for bulk, drain and probe"
    )
    print(
        f"machine: {os.cpu_count()} CPUs, client and servers share it; "
        f"load average before {load_before}, after {load_average()}"
    )
    print(f"disk:    write + fdatasync in {tempfile.gettempdir()}: {sync_ms:.2f} ms on average")
    for peer in (sidekiq, bullmq):
        print(
            f"peer:    {peer.name}: "
            + (f"ran, {peer.version}" if peer.available else f"SKIPPED: {peer.reason}")
        )
    print()
    print("details:")
    for line in run.details:
        print(f"  {line}")
    print()
    headers = ("workload", "zizq", "against", "ratio", "target", "result")
    table = [
        (
            row.workload,
            row.zizq,
            row.against,
            "-" if row.ratio is None else f"{row.ratio:.2f}",
            row.target,
            ("-" if row.ok is None else ("PASS" if row.ok else "FAIL"))
            + (f" ({row.note})" if row.note else ""),
        )
        for row in rows
    ]
    widths = [max(len(headers[i]), *(len(line[i]) for line in table)) for i in range(5)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)) + "  result")
    for line in table:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False)) + "  " + line[5]
        )
    missed = any(row.ok is False for row in rows)
    return 1 if missed else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
