"""This checkout against an earlier commit, interleaved in one run (issue 15).

    .venv/bin/python scripts/bench/ab.py --base d64fc5f             # 3 rounds, ~4 minutes
    .venv/bin/python scripts/bench/ab.py --base HEAD~3 --rounds 5

The base is checked out into a temporary git worktree and run with this venv (so only zizq's
own code differs). Each round runs both, one after the other: single enqueue (wrk, 32
connections, 5 s), then a bulk fill of `--jobs` (1,000 per request) and the drain of those
jobs (4 take streams, prefetch 100, bulk acks). Prints each round and the medians, with
new/base ratios: on a shared machine, only figures from the same run compare.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ratios import zizq_drain_jobs
from run import bulk_enqueue, run_wrk
from server import BenchServer, use_uvloop

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def single_enqueue() -> float:
    with BenchServer() as server:
        url = f"http://{server.host}:{server.port}"
        run_wrk(url, 32, 2)  # warm-up
        return run_wrk(url, 32, 5)[0]


def fill_and_drain(jobs: int) -> tuple[float, float]:
    with BenchServer() as server:
        started = time.perf_counter()
        asyncio.run(bulk_enqueue(server.host, server.port, jobs, 1000, 2))
        fill = jobs / (time.perf_counter() - started)
        drained = asyncio.run(zizq_drain_jobs(server.host, server.port, jobs, 4, 100))
        return fill, jobs / drained["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=100_000)
    args = parser.parse_args()
    use_uvloop()
    worktree = Path(tempfile.mkdtemp(prefix="zizq-ab-")) / "base"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(worktree), args.base],
        check=True,
    )
    python = sys.executable
    # Compiled once, so neither side pays for compiling at each server start.
    subprocess.run([python, "-m", "compileall", "-q", str(worktree / "zizq"), str(ROOT / "zizq")])
    base_command = f"env PYTHONPATH={shlex.quote(str(worktree))} {shlex.quote(python)} -m zizq"
    figures: dict[str, list[tuple[float, float, float]]] = {"base": [], "new": []}
    try:
        for round_no in range(1, args.rounds + 1):
            for side in ("base", "new"):
                if side == "base":
                    os.environ["ZIZQ_BINARY"] = base_command
                else:
                    os.environ.pop("ZIZQ_BINARY", None)
                single = single_enqueue()
                fill, drain = fill_and_drain(args.jobs)
                figures[side].append((single, fill, drain))
                print(
                    f"round {round_no} {side:4}: single {single:,.0f}  bulk fill {fill:,.0f}  "
                    f"drain {drain:,.0f} jobs/s",
                    flush=True,
                )
    finally:
        os.environ.pop("ZIZQ_BINARY", None)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)])
        shutil.rmtree(worktree.parent, ignore_errors=True)
    print(f"medians of {args.rounds} rounds, base {args.base}:")
    for index, name in enumerate(("single enqueue", "bulk fill", "drain")):
        base = statistics.median(row[index] for row in figures["base"])
        new = statistics.median(row[index] for row in figures["new"])
        print(f"  {name:15} base {base:9,.0f}  new {new:9,.0f}  new/base {new / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
