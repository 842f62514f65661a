"""Budgets (issue 13): does a tight budget slow the jobs it does not throttle?

    .venv/bin/python scripts/bench/budgets.py                     # every variant, 3 rounds
    .venv/bin/python scripts/bench/budgets.py --only plain,wif-same --rounds 5
    ZIZQ_BINARY=dist/zizq .venv/bin/python scripts/bench/budgets.py --license-key @lic.jwt

Each run gets a fresh licensed server and a backlog of --jobs jobs, enqueued with
POST /jobs/bulk (1,000 per request) before any worker connects. Then --workers take
streams (prefetch --prefetch, bulk acks of whatever arrived, as run.py's end-to-end
benchmark) drain it, and the clock runs until every *unbudgeted* job is acked:
  plain           every job unbudgeted (the baseline: the time to ack half of them)
  wif-same        half the jobs bound to a while_in_flight budget of 2, interleaved with the
                  unbudgeted half in one queue (the gate parks them as they come up)
  wif-separate    the same, the budgeted half in a queue of its own (workers take both)
  rate-same       half bound to a time_based budget of 100 per second, one queue
  rate-separate   the same in separate queues
The figure is the unbudgeted half's rate (jobs acked per second); the ratio is that rate
over the same round's plain, median over rounds (aim >= 0.8). The budgeted jobs dispatched
meanwhile are counted as a check on the budget (at most 2 at once; at most 100 + 100/s).
The license is --license-key, else a development one is minted (source tree only).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass

from rawhttp import Connection, LineSplitter, job_id_of, post_json, request_bytes
from run import load_average
from server import BenchServer, CpuMeter, use_uvloop, zizq_command
from tls import license_key

BUDGET = "tight"
WIF_ALLOCATION = 2
RATE_PER_S = 100
MARK = b'"budgets"'  # only budgeted jobs carry the field on the take stream


@dataclass(frozen=True)
class Variant:
    name: str
    policy: dict | None  # the budget's policy; None: no budgeted jobs at all
    separate: bool = False  # budgeted jobs in a queue of their own
    aim: float | None = 0.8


VARIANTS = {
    v.name: v
    for v in [
        Variant("plain", None, aim=None),
        Variant(
            "wif-same", {"allocation": WIF_ALLOCATION, "strategy": {"type": "while_in_flight"}}
        ),
        Variant(
            "wif-separate",
            {"allocation": WIF_ALLOCATION, "strategy": {"type": "while_in_flight"}},
            separate=True,
        ),
        Variant(
            "rate-same",
            {"allocation": RATE_PER_S, "strategy": {"type": "time_based", "duration_ms": 1000}},
        ),
        Variant(
            "rate-separate",
            {"allocation": RATE_PER_S, "strategy": {"type": "time_based", "duration_ms": 1000}},
            separate=True,
        ),
    ]
}


@dataclass
class Figures:
    rate: float  # unbudgeted jobs acked per second
    seconds: float
    server_cpu: float
    budgeted_taken: int  # budgeted jobs dispatched while the clock ran
    budgeted_peak: int  # most budgeted jobs held by workers at once


def backlog(variant: Variant, total: int) -> list[bytes]:
    """Bulk requests of 1,000 jobs: odd jobs budgeted (unless plain), interleaved."""
    requests = []
    for start in range(0, total, 1000):
        jobs = []
        for n in range(start, min(total, start + 1000)):
            budgeted = variant.policy is not None and n % 2 == 1
            queue = "bench-b" if budgeted and variant.separate else "bench"
            body = {"queue": queue, "type": "bench", "payload": {"n": n}}
            if budgeted:
                body["budgets"] = [{"key": BUDGET}]
            jobs.append(body)
        requests.append(post_json("/jobs/bulk", {"jobs": jobs}))
    return requests


class Drain:
    """Workers: a take stream and an ack connection each; counts what was acked."""

    def __init__(self, target: int) -> None:
        self.target = target  # unbudgeted jobs to ack
        self.unbudgeted = 0
        self.budgeted_taken = 0
        self.budgeted_held = 0
        self.budgeted_peak = 0
        self.finished = asyncio.Event()

    async def worker(self, host: str, port: int, queues: str, prefetch: int) -> None:
        stream = await Connection.open(host, port)
        acks = await Connection.open(host, port)
        pending: list[tuple[str, bool]] = []
        wake = asyncio.Event()

        def on_line(line: bytes) -> None:
            budgeted = MARK in line
            if budgeted:
                self.budgeted_taken += 1
                self.budgeted_held += 1
                self.budgeted_peak = max(self.budgeted_peak, self.budgeted_held)
            pending.append((job_id_of(line), budgeted))
            wake.set()

        try:
            path = f"/jobs/take?queue={queues}&prefetch={prefetch}"
            status = await stream.open_stream(
                request_bytes("GET", path, accept="application/x-ndjson"),
                LineSplitter(on_line).feed,
            )
            if status != 200:
                raise RuntimeError(f"take answered {status}")
            while not self.finished.is_set():
                await wake.wait()
                wake.clear()
                if not pending:
                    continue
                batch, pending[:] = list(pending), []
                budgeted = sum(1 for _, b in batch if b)
                self.budgeted_held -= budgeted  # before the ack: never above the server's count
                status, body = await acks.request(
                    post_json("/jobs/success", {"ids": [job_id for job_id, _ in batch]})
                )
                if status != 204:
                    raise RuntimeError(f"bulk ack answered {status}: {body[:200]!r}")
                self.unbudgeted += len(batch) - budgeted
                if self.unbudgeted >= self.target:
                    self.finished.set()
        finally:
            stream.close()
            acks.close()


async def create_budget(host: str, port: int, policy: dict) -> None:
    conn = await Connection.open(host, port)
    try:
        status, body = await conn.request(post_json(f"/budgets/{BUDGET}", policy))
        if status != 201:
            raise RuntimeError(f"POST /budgets answered {status}: {body[:200]!r}")
    finally:
        conn.close()


async def enqueue(host: str, port: int, requests: list[bytes]) -> None:
    pending = iter(requests)

    async def loop() -> None:
        conn = await Connection.open(host, port)
        try:
            for raw in pending:  # shared: each request is sent once
                status, body = await conn.request(raw)
                if status != 201:
                    raise RuntimeError(f"bulk enqueue answered {status}: {body[:200]!r}")
        finally:
            conn.close()

    await asyncio.gather(loop(), loop())


async def drain(host: str, port: int, variant: Variant, args, server) -> Figures:
    if variant.policy is not None:
        await create_budget(host, port, variant.policy)
    await enqueue(host, port, backlog(variant, args.jobs))
    half = args.jobs // 2
    state = Drain(half)
    queues = "bench,bench-b" if variant.separate else "bench"
    with CpuMeter(server) as cpu:
        started = time.perf_counter()
        tasks = [
            asyncio.create_task(state.worker(host, port, queues, args.prefetch))
            for _ in range(args.workers)
        ]
        waiter = asyncio.create_task(state.finished.wait())
        done, _ = await asyncio.wait(
            [waiter, *tasks], timeout=args.timeout, return_when=asyncio.FIRST_COMPLETED
        )
        elapsed = time.perf_counter() - started
    for task in tasks:
        if task.done() and task.exception() is not None:
            raise task.exception()
    if not state.finished.is_set():
        raise TimeoutError(f"{variant.name}: {state.unbudgeted:,} of {half:,} in {args.timeout} s")
    for task in [waiter, *tasks]:
        task.cancel()
    await asyncio.gather(waiter, *tasks, return_exceptions=True)
    return Figures(half / elapsed, elapsed, cpu.percent, state.budgeted_taken, state.budgeted_peak)


def measure(variant: Variant, args, key: str) -> Figures:
    with BenchServer("--license-key", key) as server:
        asyncio.run(warm_up(server.host, server.port))
        return asyncio.run(drain(server.host, server.port, variant, args, server))


async def warm_up(host: str, port: int) -> None:
    """A few budgeted jobs through a throwaway budget: the first requests pay for imports."""
    policy = {"allocation": 1, "strategy": {"type": "while_in_flight"}}
    jobs = [{"queue": "warm", "type": "w", "payload": {}, "budgets": [{"key": "warm"}]}] * 10
    conn = await Connection.open(host, port)
    try:
        for raw, expected in (
            (post_json("/budgets/warm", policy), 201),
            (post_json("/jobs/bulk", {"jobs": jobs}), 201),
            (request_bytes("DELETE", "/jobs?queue=warm"), 200),
            (request_bytes("DELETE", "/budgets/warm"), 204),
        ):
            status, body = await conn.request(raw)
            if status != expected:
                raise RuntimeError(f"warm-up answered {status}: {body[:200]!r}")
    finally:
        conn.close()


def check_of(variant: Variant, got: Figures) -> str:
    """Whether the budget held while the clock ran (client-side view)."""
    if variant.policy is None:
        return "-"
    if variant.policy["strategy"]["type"] == "while_in_flight":
        # A worker stops counting a job before sending its ack, so what it counts is never
        # more than the server holds in flight: above the allocation is a broken budget.
        ok = got.budgeted_peak <= WIF_ALLOCATION
        return f"peak {got.budgeted_peak}" + ("" if ok else " (!)")
    allowed = RATE_PER_S + RATE_PER_S * got.seconds
    ok = got.budgeted_taken <= allowed + 1
    return f"{got.budgeted_taken} <= {allowed:.0f}" + ("" if ok else " (!)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma list of variants: " + ",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3, help="runs of every variant, in turn")
    parser.add_argument("--jobs", type=int, default=60_000, help="backlog per run (half budgeted)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--prefetch", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=120, help="seconds per drain")
    parser.add_argument("--license-key", help="token or @path (default: mint a dev license)")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [name for name in chosen if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s): {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if "plain" not in chosen:
        chosen.insert(0, "plain")  # every ratio needs the same round's baseline
    key = license_key(args.license_key)
    if key is None:
        parser.error("no --license-key, and none can be minted here (a release binary?)")
    use_uvloop()

    load_before = load_average()
    results: dict[str, list[Figures]] = {name: [] for name in chosen}
    for round_no in range(args.rounds):
        for name in chosen:
            got = measure(VARIANTS[name], args, key)
            results[name].append(got)
            print(
                f"[{round_no + 1}/{args.rounds} {name}] unbudgeted {got.rate:,.0f} jobs/s "
                f"({got.seconds:.2f} s); server CPU {got.server_cpu:.0f}%; "
                f"budgeted dispatched {got.budgeted_taken}",
                flush=True,
            )

    print()
    print("command:", shlex.join([sys.executable, *sys.argv]))
    server_cmd = shlex.join([*zizq_command(), "serve", "--root-dir", "TMP", "--port", "0"])
    print(f"server:  {server_cmd} --no-admin --license-key <pro> (fresh TMP per run)")
    print(
        f"machine: {os.cpu_count()} CPUs; client and server share it; "
        f"load average before {load_before}, after {load_average()}"
    )
    print(
        f"backlog: {args.jobs:,} jobs (half budgeted, except plain), {args.workers} workers, "
        f"prefetch {args.prefetch}, bulk acks; {args.rounds} round(s), medians shown"
    )
    print()
    print(
        f"{'variant':15}{'unbudgeted/s':>13}{'ratio':>7}{'aim':>7}{'CPU':>6}{'per-CPU':>9}   "
        f"{'per-round ratios':20}budget check (round 1)"
    )
    missed = False
    base = results["plain"]
    for name, rounds in results.items():
        variant = VARIANTS[name]
        ratios = [got.rate / ref.rate for got, ref in zip(rounds, base, strict=True)]
        ratio = statistics.median(ratios)
        verdict = ""
        if variant.aim is not None:
            verdict = f">={variant.aim:.1f}" + ("" if ratio >= variant.aim else "!")
            missed |= ratio < variant.aim
        per_round = " ".join(f"{r:.2f}" for r in ratios)
        # Unbudgeted jobs per server CPU-second against plain's: less swayed by CPU the
        # server did not get on a busy machine.
        per_cpu = statistics.median(
            (got.rate / got.server_cpu) / (ref.rate / ref.server_cpu)
            for got, ref in zip(rounds, base, strict=True)
        )
        print(
            f"{name:15}{statistics.median(g.rate for g in rounds):>13,.0f}{ratio:>7.2f}"
            f"{verdict:>7}{statistics.median(g.server_cpu for g in rounds):>5.0f}%{per_cpu:>9.2f}   "
            f"{per_round:20}{check_of(variant, rounds[0])}"
        )
    print("(ratio: median over rounds of the unbudgeted half's drain rate / the same round's")
    print(" plain; CPU: server process, % of one core; per-CPU: the same ratio of unbudgeted")
    print(" jobs per server CPU-second; '!' marks a missed aim)")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
