"""10,000 cron entries firing every second: the scheduler's CPU share and its lag (issue 12).

    .venv/bin/python scripts/bench/cron.py                        # ~1.5 minutes
    .venv/bin/python scripts/bench/cron.py --groups 10 --seconds 20
    .venv/bin/python scripts/bench/cron.py --profile /tmp/cron-prof   # + py-spy
    ZIZQ_BINARY=dist/zizq .venv/bin/python scripts/bench/cron.py --license-key @lic.jwt

One fresh licensed server. First it idles, with no entries, for --idle-seconds: its CPU
share then is the baseline (timers, the license check, the reaper). Then one PUT per group
defines --entries entries (split over --groups groups) with the 6-field expression
`* * * * * *`, each job's payload naming its entry, and after a warm-up the server's CPU
share is measured over --seconds (from /proc/<pid>/stat utime+stime against wall time,
100 % = one core). A prober then polls GET /jobs/count every 10 ms for a few seconds to see
when each second's jobs become visible (the write has landed). Finally DELETE /crons stops
the firing and every job is listed: per job, the lag is its ready_at (the engine's clock
when the firing enqueued it) minus the whole second it belongs to; per entry and second,
a second with no job is missed, one with two is doubled.
"""

from __future__ import annotations

import argparse
import collections
import math
import statistics
import sys
import time
from pathlib import Path

import httpx
import pyspy
from server import BenchServer, CpuMeter
from tls import license_key

EXPRESSION = "* * * * * *"


def entries_of(group: int, count: int) -> list[dict]:
    return [
        {
            "name": f"e{i}",
            "expression": EXPRESSION,
            "job": {"queue": "cron", "type": "tick", "payload": {"g": group, "e": i}},
        }
        for i in range(count)
    ]


def sleep_until(at: float) -> None:
    while (left := at - time.time()) > 0:
        time.sleep(min(left, 0.05))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def list_jobs(client: httpx.Client) -> list[tuple[int, int, int]]:
    """(group, entry, ready_at) of every job, by a full listing walk."""
    found, path = [], "/jobs?limit=2000"
    while path:
        page = client.get(path).raise_for_status().json()
        found += [(j["payload"]["g"], j["payload"]["e"], j["ready_at"]) for j in page["jobs"]]
        path = page["pages"]["next"]
    return found


def visibility_lags(client: httpx.Client, seconds: float, per_second: int) -> list[float]:
    """For each whole second: ms from it until GET /jobs/count shows its jobs (10 ms polls)."""
    lags = []
    end = time.time() + seconds
    sleep_until(math.ceil(time.time()))
    while time.time() < end:
        second = math.floor(time.time())
        # Read just after the boundary, before this second's firing (milliseconds) lands.
        before = client.get("/jobs/count").json()["count"]
        target = (before // per_second + 1) * per_second
        while time.time() < second + 1.5:
            if client.get("/jobs/count").json()["count"] >= target:
                lags.append((time.time() - second) * 1000)
                break
            time.sleep(0.01)
        sleep_until(second + 1)
    return lags


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured firing window")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="baseline window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--probe-seconds", type=float, default=5.0)
    parser.add_argument("--license-key", help="JWT or @path (default: a minted dev license)")
    parser.add_argument("--profile", type=Path, help="py-spy the firing window into DIR")
    args = parser.parse_args()
    key = license_key(args.license_key)
    if key is None:
        print("a license is needed: --license-key", file=sys.stderr)
        return 2
    per_group = math.ceil(args.entries / args.groups)

    with BenchServer("--license-key", key) as server:
        client = httpx.Client(base_url=f"http://{server.host}:{server.port}", timeout=120.0)
        time.sleep(1.0)  # start-up work out of the way
        with CpuMeter(server) as idle:
            time.sleep(args.idle_seconds)
        print(f"idle server, no entries: CPU {idle.percent:.2f} % of one core")

        started = time.perf_counter()
        made = 0
        for group in range(args.groups):
            count = min(per_group, args.entries - made)
            body = {"entries": entries_of(group, count)}
            client.put(f"/crons/g{group}", json=body).raise_for_status()
            made += count
        print(
            f"defined {made} entries in {args.groups} group(s): {time.perf_counter() - started:.2f} s"
        )

        sleep_until(math.ceil(time.time() + args.warmup))
        window_start = time.time()
        spy = None
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            spy = pyspy.record(server.pid, args.profile / "cron.txt", args.seconds)
        with CpuMeter(server) as firing:
            sleep_until(window_start + args.seconds)
        window_end = time.time()
        if spy is not None:
            pyspy.stop(spy)
        rss_mb = server.status_kb("VmRSS") / 1024

        visible = visibility_lags(client, args.probe_seconds, made)
        client.delete("/crons").raise_for_status()
        started = time.perf_counter()
        jobs = list_jobs(client)
        listed_in = time.perf_counter() - started
        client.close()

    # Seconds wholly inside the window (the edges belong to the warm-up and the probe).
    first, last = math.ceil(window_start), math.floor(window_end) - 1
    in_window = [(g, e, at) for g, e, at in jobs if first <= at // 1000 <= last]
    lags = [at - at // 1000 * 1000 for _, _, at in in_window]
    per_cell = collections.Counter((g, e, at // 1000) for g, e, at in in_window)
    doubled = sum(1 for n in per_cell.values() if n > 1)
    seconds = last - first + 1
    missed = made * seconds - len(per_cell)
    per_second = collections.Counter(at // 1000 for _, _, at in in_window)

    print(f"firing window: {seconds} whole seconds, {len(in_window)} jobs "
          f"({len(in_window) / seconds:.0f} jobs/s; {len(jobs)} listed in {listed_in:.1f} s)")  # fmt: skip
    print(f"server CPU while firing: {firing.percent:.1f} % of one core "
          f"(idle baseline {idle.percent:.2f} %), RSS {rss_mb:.0f} MB")  # fmt: skip
    print(f"lag fire time -> ready_at: p50 {percentile(lags, 0.5):.0f} ms, "
          f"p99 {percentile(lags, 0.99):.0f} ms, max {max(lags, default=0):.0f} ms")  # fmt: skip
    if visible:
        print(f"lag fire time -> visible (GET /jobs/count, 10 ms polls, {len(visible)} s): "
              f"p50 {statistics.median(visible):.0f} ms, max {max(visible):.0f} ms")  # fmt: skip
    else:
        print("lag fire time -> visible: no second's jobs were seen landing")
    short = {s: n for s, n in per_second.items() if n != made}
    print(f"entry-seconds missed: {missed}, doubled: {doubled}; "
          f"seconds without all {made} jobs: {len(short)} {dict(sorted(short.items())[:5])}")  # fmt: skip
    if spy is not None:
        profile = pyspy.load(args.profile / "cron.txt", jobs=len(in_window))
        if profile is not None:
            for line in pyspy.report(profile, 15):
                print(f"  {line}")
    return 1 if missed or doubled else 0


if __name__ == "__main__":
    sys.exit(main())
