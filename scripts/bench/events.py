"""Single enqueue throughput with and without a live `/events` viewer (issue 14).

    .venv/bin/python scripts/bench/events.py                 # 3 rounds of 8 s per side
    .venv/bin/python scripts/bench/events.py --seconds 5 --rounds 2 --limit 50
    .venv/bin/python scripts/bench/events.py --anchor tail --prefill 100000  # a deep window
    ZIZQ_BINARY=dist/zizq .venv/bin/python scripts/bench/events.py

One server (admin API on) takes POST /jobs from keep-alive HTTP/1.1 connections (the raw
client of run.py) in alternating phases: no viewer, then a viewer connected to the admin
`/events` WebSocket and subscribed to the ready list (the list every enqueue changes): its head by
default (new jobs land behind the window: refreshes find nothing to send), or with
`--anchor tail` its end (every refresh sends the new rows), and so on. `--prefill N` first
enqueues N jobs in bulk, so that with `--anchor tail` the viewer's window sits N jobs deep
from the first phase on (the server keeps a sorted snapshot of the list for such windows and
brings it up to date at each refresh). The viewer is a separate process that reads every message. Phases
alternate on the same server so that the growing ready list and the warming of the
server weigh on both sides alike. Licensed (pro) when a key is at hand, so that windows are not capped at
10 rows. Prints each phase, the medians and their ratio
(aim: >= 0.95).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time

import httpx
from run import JOB, load_average, raw_single
from server import BenchServer, CpuMeter, use_uvloop
from tls import license_key


class AdminBenchServer(BenchServer):
    """A BenchServer with the admin API on a free port (`admin_port` once started)."""

    @property
    def command(self) -> list[str]:
        command = super().command
        command[command.index("--no-admin")] = "--admin-port=0"
        return command

    @property
    def admin_port(self) -> int:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for line in self.lines:
                if line.startswith("Listening on ") and line.endswith("(admin)"):
                    return int(line.split()[2].rsplit(":", 1)[1])
            time.sleep(0.05)
        raise RuntimeError("no admin listener:\n" + "\n".join(self.lines))


def viewer_main(url: str, limit: int, anchor: str) -> None:
    """Subscribe to the ready list's head and read until stdin closes; print what came."""
    import threading

    from websockets.sync.client import connect

    counts: dict[str, int] = {}
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    with connect(url, open_timeout=10, max_size=None) as ws:
        ws.send(
            json.dumps(
                {"type": "subscribe", "list": "ready", "anchor": {"kind": anchor}, "limit": limit}
            )
        )
        print("subscribed", flush=True)
        while not stop.is_set():
            try:
                message = json.loads(ws.recv(timeout=0.5))
            except TimeoutError:
                continue
            counts[message["event"]] = counts.get(message["event"], 0) + 1
    print(json.dumps(counts), flush=True)


class Viewer:
    def __init__(self, url: str, limit: int, anchor: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--viewer", url, "--limit", str(limit), "--anchor", anchor],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "subscribed":
            raise RuntimeError(f"viewer did not start: {line!r}")

    def stop(self) -> dict[str, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        counts = json.loads(self.proc.stdout.readline())
        self.proc.wait(10)
        return counts


def prefill(url: str, count: int, chunk: int = 1000) -> None:
    """Enqueue `count` jobs like the benchmark's own (same queue, type, priority) in bulk."""
    with httpx.Client(base_url=url, timeout=60.0) as client:
        for start in range(0, count, chunk):
            jobs = [JOB] * min(chunk, count - start)
            response = client.post("/jobs/bulk", json={"jobs": jobs})
            if response.status_code not in (200, 201):
                raise RuntimeError(f"bulk enqueue answered {response.status_code}")


def ready_count(url: str) -> int:
    response = httpx.get(f"{url}/jobs/count", params={"status": "ready"}, timeout=30.0)
    return response.json()["count"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per phase")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of phases")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--limit", type=int, default=200, help="rows the viewer subscribes to")
    parser.add_argument(
        "--anchor",
        choices=("head", "tail"),
        default="head",
        help="head: new jobs land behind the window; tail: every enqueue changes it",
    )
    parser.add_argument(
        "--prefill", type=int, default=0, help="jobs enqueued (in bulk) before the first phase"
    )
    parser.add_argument("--license-key", help="default: a development license (source tree)")
    parser.add_argument("--viewer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.viewer:
        viewer_main(args.viewer, args.limit, args.anchor)
        return 0
    use_uvloop()
    plain: list[float] = []
    watched: list[float] = []
    print(f"load average before: {load_average()}")
    key = license_key(args.license_key)  # pro: the viewer sees whole lists, not 10 rows
    with AdminBenchServer(*(["--license-key", key] if key else [])) as server:
        url = f"ws://{server.host}:{server.admin_port}/events"
        api = f"http://{server.host}:{server.port}"
        if args.prefill:
            started = time.monotonic()
            prefill(api, args.prefill)
            print(f"prefilled {args.prefill:,} jobs in {time.monotonic() - started:.1f} s")
        asyncio.run(raw_single(server.host, server.port, args.connections, 2))  # warm-up
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}: ready list {ready_count(api):,} jobs")
            with CpuMeter(server) as cpu:
                rate = asyncio.run(
                    raw_single(server.host, server.port, args.connections, args.seconds)
                )
            plain.append(rate)
            print(
                f"round {round_ + 1}: no viewer  {rate:>9,.0f} jobs/s  server CPU {cpu.percent:.0f}%"
            )
            viewer = Viewer(url, args.limit, args.anchor)
            with CpuMeter(server) as cpu:
                rate = asyncio.run(
                    raw_single(server.host, server.port, args.connections, args.seconds)
                )
            counts = viewer.stop()
            watched.append(rate)
            print(
                f"round {round_ + 1}: one viewer {rate:>9,.0f} jobs/s  server CPU {cpu.percent:.0f}%"
                f"  (viewer got {counts})"
            )
    ratio = statistics.median(watched) / statistics.median(plain)
    print(
        f"median: no viewer {statistics.median(plain):,.0f} jobs/s, "
        f"one viewer {statistics.median(watched):,.0f} jobs/s, ratio {ratio:.3f} (aim >= 0.95)"
    )
    print(f"load average after: {load_average()}")
    return 0 if ratio >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
