"""Server CPU per request, event-loop thread apart from the others, under wrk (issue 15).

    .venv/bin/python scripts/bench/threads.py                       # zizq and the bare route
    .venv/bin/python scripts/bench/threads.py -- --log-level warn   # flags for `zizq serve`

Single `POST /jobs` from wrk (32 connections) against a fresh server, then the same against
the bare-route ceiling (peers/ceiling.py). The server's Python code runs on its event-loop
thread, which is what limits it: the figure to compare with `inproc.py` (the same app with
no HTTP server) is that thread's CPU per request. Needs wrk (see README.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from run import run_wrk
from server import BenchServer

HERE = Path(__file__).resolve().parent


def thread_ticks(pid: int) -> dict[str, int]:
    ticks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        fields = stat.rsplit(")", 1)[1].split()
        ticks[tid] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


def measure(label: str, pid: int, url: str, seconds: int) -> None:
    run_wrk(url, 32, 2)  # warm-up
    before, started = thread_ticks(pid), time.monotonic()
    requests = run_wrk(url, 32, seconds)[0] * seconds
    after, elapsed = thread_ticks(pid), time.monotonic() - started
    hz = os.sysconf("SC_CLK_TCK")
    loop = (after[str(pid)] - before.get(str(pid), 0)) / hz
    others = sum(t - before.get(tid, 0) for tid, t in after.items() if tid != str(pid)) / hz
    print(
        f"{label}: {requests / elapsed:,.0f} req/s; event-loop thread "
        f"{loop / requests * 1e6:.1f} us a request ({100 * loop / elapsed:.0f} % busy), "
        f"other threads {others / requests * 1e6:.1f} us",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("flags", nargs="*", help="extra `zizq serve` flags, after --")
    args = parser.parse_args()
    with BenchServer(*args.flags) as server:
        measure(
            "zizq single enqueue",
            server.pid,
            f"http://{server.host}:{server.port}",
            args.seconds,
        )
    ceiling = subprocess.Popen(
        [sys.executable, str(HERE / "peers" / "ceiling.py")], stdout=subprocess.PIPE, text=True
    )
    try:
        line = ceiling.stdout.readline()  # "Listening on http://HOST:PORT (primary)"
        address = line.split("http://", 1)[1].split()[0]
        measure("bare route", ceiling.pid, f"http://{address}", args.seconds)
    finally:
        ceiling.terminate()
        ceiling.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
