"""Unique and batched enqueues as a ratio to plain ones, in one run (issue 10).

    .venv/bin/python scripts/bench/keyed.py                    # every variant, ~2.5 minutes
    .venv/bin/python scripts/bench/keyed.py --only plain,unique --seconds 5
    .venv/bin/python scripts/bench/keyed.py --profile /tmp/keyed-prof   # + py-spy per variant
    ZIZQ_BINARY=dist/zizq .venv/bin/python scripts/bench/keyed.py --license-key @lic.jwt

Each variant gets a fresh licensed server and the same load: POST /jobs from keep-alive
HTTP/1.1 connections (raw client, one request at a time per connection), bodies built per
request so every variant pays the same client cost. Variants:
  plain         no key
  unique        unique_key, every key distinct                           aim >= 0.8 of plain
  unique-dup    50% duplicates of keys taken ~1,000 requests earlier     aim >= 0.8 of plain
  unique-race   50% duplicates sent at the same moment (key i // 2): the second waits on
                the first's key lock until its write lands
  batch-true    batch {key: one of --batch-keys, when: "true", fold: "$existing + $new"},
                payload [n] (the array grows until the 2 MiB cap seals it)
  batch-cap     the same with when: "($existing | length) < 100"
  bulk-plain    POST /jobs/bulk, 1,000 jobs per request
  bulk-unique   the same, every job with its own unique_key
The license is --license-key, else a development one is minted (source tree only).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyspy
from rawhttp import Connection, post_json, timed_on_connections
from run import load_average
from server import BenchServer, CpuMeter, use_uvloop, zizq_command
from tls import license_key

HELD_DISTANCE = 1001  # odd: a duplicate of request i repeats the key of (even) i - 1001
CAP_WHEN = "($existing | length) < 100"
FOLD = "$existing + $new"

BodyOf = Callable[[int], dict]


def job(i: int, **extra) -> dict:
    return {"queue": "bench", "type": "bench", "payload": {"n": i}, **extra}


def held_duplicate_key(i: int) -> str:
    # Even requests take a new key, odd ones repeat one taken long enough ago to have landed.
    return f"u{i - HELD_DISTANCE}" if i % 2 and i >= HELD_DISTANCE else f"u{i}"


def batched(i: int, keys: int, when: str) -> dict:
    spec = {"key": f"b{i % keys}", "when": when, "fold": FOLD}
    return {"queue": "bench", "type": "bench", "payload": [i], "batch": spec}


@dataclass
class Variant:
    name: str
    body: BodyOf  # request number -> job
    bulk: bool = False
    aim: float | None = None  # ratio to plain (or bulk-plain) this variant should reach


def variants(batch_keys: int) -> dict[str, Variant]:
    found = [
        Variant("plain", lambda i: job(i)),
        Variant("unique", lambda i: job(i, unique_key=f"u{i}"), aim=0.8),
        Variant("unique-dup", lambda i: job(i, unique_key=held_duplicate_key(i)), aim=0.8),
        Variant("unique-race", lambda i: job(i, unique_key=f"u{i // 2}")),
        Variant("batch-true", lambda i: batched(i, batch_keys, "true")),
        Variant("batch-cap", lambda i: batched(i, batch_keys, CAP_WHEN)),
        Variant("bulk-plain", lambda i: job(i), bulk=True),
        Variant("bulk-unique", lambda i: job(i, unique_key=f"u{i}"), bulk=True, aim=0.8),
    ]
    return {v.name: v for v in found}


@dataclass
class Figures:
    rate: float = 0.0  # jobs (not requests) per second
    server_cpu: float = 0.0  # % of one core, the server process
    jq_cpu: float = 0.0  # % of one core, its child processes (jq workers)
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    profile: pyspy.Profile | None = None


# -- load ------------------------------------------------------------------------------------


def outcome_of(status: int, body: bytes) -> str:
    if status == 201:
        return "created"
    if status == 200 and b'"duplicate":true' in body:
        return "duplicate"
    if status == 200 and b'"folded":true' in body:
        return "folded"
    raise RuntimeError(f"enqueue answered {status}: {body[:300]!r}")


async def single_load(
    host: str, port: int, connections: int, seconds: float, body: BodyOf, numbers
) -> tuple[float, collections.Counter]:
    outcomes: collections.Counter = collections.Counter()
    stop_at = time.perf_counter() + seconds

    async def loop(conn: Connection) -> None:
        while time.perf_counter() < stop_at:
            status, answer = await conn.request(post_json("/jobs", body(next(numbers))))
            outcomes[outcome_of(status, answer)] += 1

    elapsed = await timed_on_connections(host, port, connections, loop)
    return sum(outcomes.values()) / elapsed, outcomes


def bulk_requests(body: BodyOf, numbers, total: int, per_request: int) -> list[bytes]:
    """Built before the clock starts: a 1,000-job body costs the client ~1 ms."""
    return [
        post_json("/jobs/bulk", {"jobs": [body(next(numbers)) for _ in range(per_request)]})
        for _ in range(total // per_request)
    ]


async def bulk_load(
    host: str, port: int, connections: int, requests: list[bytes], per_request: int
) -> tuple[float, collections.Counter]:
    outcomes: collections.Counter = collections.Counter()
    pending = iter(requests)

    async def loop(conn: Connection) -> None:
        for raw in pending:  # shared iterator: each request is sent once, by some connection
            status, answer = await conn.request(raw)
            if status != 201:
                raise RuntimeError(f"bulk enqueue answered {status}: {answer[:300]!r}")
            outcomes["created"] += answer.count(b'"duplicate":false')
            outcomes["duplicate"] += answer.count(b'"duplicate":true')

    elapsed = await timed_on_connections(host, port, connections, loop)
    return len(requests) * per_request / elapsed, outcomes


# -- measuring ------------------------------------------------------------------------------


def children_cpu_seconds(pid: int) -> float:
    """User + system CPU of the server's live child processes (the jq workers)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                stat = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(stat[11]) + int(stat[12])) / tick
    return total


def measure(variant: Variant, args, key: str, profile_dir: Path | None) -> Figures:
    figures = Figures()
    numbers = itertools.count()  # warm-up and measurement share it: no key comes twice
    with BenchServer("--license-key", key) as server:
        host, port = server.host, server.port
        if variant.bulk:
            warm = bulk_requests(variant.body, numbers, 20_000, 1000)
            asyncio.run(bulk_load(host, port, args.bulk_connections, warm, 1000))
            requests = bulk_requests(variant.body, numbers, args.bulk_jobs, 1000)
        else:
            asyncio.run(single_load(host, port, args.connections, 2, variant.body, numbers))
        spy = None
        if profile_dir is not None:
            out = profile_dir / f"{variant.name}.txt"
            spy = pyspy.record(server.pid, out, max_seconds=120)
            time.sleep(1.0)  # let py-spy attach before the load starts
        jq_before = children_cpu_seconds(server.pid)
        with CpuMeter(server) as cpu:
            started = time.perf_counter()
            if variant.bulk:
                figures.rate, figures.outcomes = asyncio.run(
                    bulk_load(host, port, args.bulk_connections, requests, 1000)
                )
            else:
                figures.rate, figures.outcomes = asyncio.run(
                    single_load(host, port, args.connections, args.seconds, variant.body, numbers)
                )
            wall = time.perf_counter() - started
        figures.server_cpu = cpu.percent
        figures.jq_cpu = 100 * (children_cpu_seconds(server.pid) - jq_before) / wall
        if spy is not None:
            pyspy.stop(spy)
            figures.profile = pyspy.load(out, jobs=sum(figures.outcomes.values()))
    return figures


# -- report ------------------------------------------------------------------------------------


def share(outcomes: collections.Counter) -> str:
    total = sum(outcomes.values()) or 1
    return ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in sorted(outcomes.items()))


def baseline_of(variant: Variant) -> str:
    return "bulk-plain" if variant.bulk else "plain"


def print_profiles(results: dict[str, list[Figures]], table: dict[str, Variant], top: int) -> None:
    for name, rounds in results.items():
        profile = rounds[0].profile
        if profile is None:
            continue
        print(f"\n== py-spy: {name} ==")
        for line in pyspy.report(profile, top):
            print(f"  {line}")
        base = results.get(baseline_of(table[name]))
        if base is not None and base[0].profile is not None and base is not rounds:
            for line in pyspy.diff(profile, base[0].profile, top):
                print(f"  {line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma list of variants (default: all)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every variant, in turn")
    parser.add_argument("--seconds", type=float, default=5, help="each single-enqueue run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--batch-keys", type=int, default=4, help="batch keys in rotation")
    parser.add_argument("--bulk-jobs", type=int, default=100_000)
    parser.add_argument("--bulk-connections", type=int, default=2)
    parser.add_argument("--license-key", help="token or @path (default: mint a dev license)")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the first round into DIR")
    parser.add_argument("--profile-top", type=int, default=20)
    args = parser.parse_args()
    table = variants(args.batch_keys)
    chosen = args.only.split(",") if args.only else list(table)
    unknown = [name for name in chosen if name not in table]
    if unknown:
        parser.error(f"unknown variant(s): {', '.join(unknown)}; known: {', '.join(table)}")
    key = license_key(args.license_key)
    if key is None:
        parser.error("no --license-key, and none can be minted here (a release binary?)")
    profile_dir = Path(args.profile) if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)

    use_uvloop()

    load_before = load_average()
    results: dict[str, list[Figures]] = {name: [] for name in chosen}
    # Round-robin, not one variant after another: load from elsewhere on the machine then
    # spreads over all variants instead of skewing one, and each round gives one ratio.
    for round_no in range(args.rounds):
        for name in chosen:
            spy_dir = profile_dir if round_no == 0 else None
            got = measure(table[name], args, key, spy_dir)
            results[name].append(got)
            print(
                f"[{round_no + 1}/{args.rounds} {name}] {got.rate:,.0f} jobs/s; "
                f"server CPU {got.server_cpu:.0f}%, jq workers {got.jq_cpu:.0f}%; "
                f"{share(got.outcomes)}",
                flush=True,
            )
    if profile_dir is not None:
        print_profiles(results, table, args.profile_top)

    print()
    print("command:", shlex.join([sys.executable, *sys.argv]))
    server_cmd = shlex.join([*zizq_command(), "serve", "--root-dir", "TMP", "--port", "0"])
    print(f"server:  {server_cmd} --no-admin --license-key <pro> (fresh TMP per run)")
    print(
        f"machine: {os.cpu_count()} CPUs; client and server share it; "
        f"load average before {load_before}, after {load_average()}"
    )
    print(
        f"single: {args.connections} keep-alive HTTP/1.1 connections, {args.seconds:g} s per run; "
        f"bulk: {args.bulk_jobs:,} jobs, 1,000/request, {args.bulk_connections} connections; "
        f"{args.rounds} round(s), medians shown"
        + (" (py-spy attached in round 1: its figures are lower)" if profile_dir else "")
    )
    print()
    print(
        f"{'variant':13}{'jobs/s':>10}{'ratio':>7}{'aim':>7}{'CPU':>6}{'jq':>5}{'per-CPU':>9}"
        "   per-round ratios   outcomes (round 1)"
    )
    missed = False
    for name, rounds in results.items():
        base = results.get(baseline_of(table[name]))
        # Each round's ratio uses that round's baseline; the median of those is shown.
        ratios = [
            got.rate / ref.rate for got, ref in zip(rounds, base or [], strict=False) if ref.rate
        ]
        ratio = statistics.median(ratios) if ratios else None
        # Jobs per server CPU-second against the baseline's: less swayed by CPU the server
        # did not get (2 shared cores), though contention also changes what a job costs.
        per_cpu = [
            (got.rate / got.server_cpu) / (ref.rate / ref.server_cpu)
            for got, ref in zip(rounds, base or [], strict=False)
            if got.server_cpu and ref.server_cpu and ref.rate
        ]
        efficiency = f"{statistics.median(per_cpu):.2f}" if per_cpu else "-"
        aim = table[name].aim
        verdict = ""
        if aim is not None and ratio is not None:
            verdict = f">={aim:.1f}" + ("" if ratio >= aim else "!")
            missed |= ratio < aim
        shown = f"{ratio:.2f}" if ratio is not None else "-"
        per_round = " ".join(f"{r:.2f}" for r in ratios)
        print(
            f"{name:13}{statistics.median(g.rate for g in rounds):>10,.0f}{shown:>7}{verdict:>7}"
            f"{statistics.median(g.server_cpu for g in rounds):>5.0f}%"
            f"{statistics.median(g.jq_cpu for g in rounds):>4.0f}%{efficiency:>9}"
            f"   {per_round:18} {share(rounds[0].outcomes)}"
        )
    print("(ratio: median over rounds of the run's rate / the same round's plain, bulk-plain")
    print(" for bulk-*; CPU: server process, % of one core; jq: its jq worker processes;")
    print(" per-CPU: the same ratio of jobs per server CPU-second; '!' marks a missed aim)")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
