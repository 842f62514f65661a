"""What the ASGI app costs per request with no HTTP server around it (issue 15's profile).

    .venv/bin/python scripts/bench/inproc.py                 # bare route, enqueue, enqueue + log
    .venv/bin/python scripts/bench/inproc.py --bulk          # POST /jobs/bulk, per job
    .venv/bin/python scripts/bench/inproc.py --profile       # + py-spy's split of the enqueue

The app is called directly, `--concurrency` requests at a time, on uvloop, with the
collector set as `zizq serve` sets it. CPU per request (or per job with --bulk) is
process time over the measured round (the second of two), so Granian, the socket and the
load generator are out of the figure: what is left is Falcon, our code and RocksDB.
Compare with the per-thread figures of `threads.py` to see what the HTTP server adds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE / "peers")]

JOB = {"queue": "bench", "type": "bench", "payload": {"n": 1}}

# py-spy leaf-to-root attribution for --profile: the first rule a frame matches names it.
STEPS = [
    ("the INFO request log line", ("RequestLog.finish", "access_log")),
    ("RocksDB write (shared by the lane)", ("Store.write_raw",)),
    ("commit lane: join, flush, settle", ("Committer.",)),
    ("new id", ("new_id",)),
    ("write batch: record, payload, index puts", ("WriteBatch.", "OpLog", "Store.batch", "replay")),
    ("read, decode, check the body", ("read_parsed",)),
    ("in-memory index and counters", ("landed", "Store.applied")),
    ("rest of the engine call", ("Engine.enqueue", "Engine._enqueue")),
    ("response: view, JSON, headers", ("respond", "enqueue_view", "is_new_job", "response_type")),
    ("our ASGI wrapper, connection tracking", ("_wrap.", "ConnectionTracker")),
    ("Falcon", ("App.__call__", "falcon")),
]


def request_scope(path: str, body: bytes, client_port: int) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", client_port),
        "server": ("127.0.0.1", 8000),
    }


async def measure(app, path: str, body: bytes, requests: int, concurrency: int) -> float:
    """CPU seconds per request over the second of two rounds (the first warms up)."""

    async def one(index: int) -> None:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await app(request_scope(path, body, 40000 + index % concurrency), receive, send)
        if sent[0]["status"] not in (200, 201):
            raise RuntimeError(f"{path} answered {sent[0]['status']}: {sent[1:]}")

    cpu = 0.0
    for _ in range(2):
        started = time.process_time()
        for _ in range(requests // concurrency):
            await asyncio.gather(*(one(i) for i in range(concurrency)))
        cpu = time.process_time() - started
    return cpu / requests


def quiet_log_handler() -> None:
    """The handler `zizq serve` installs (compact lines), writing to /dev/null."""
    from zizq import logs

    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logs.BatchingStreamHandler(open(os.devnull, "w"))  # noqa: SIM115
    handler.setFormatter(logs.CompactFormatter())
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)


async def run_variant(variant: str, args) -> float:
    body = json.dumps(JOB).encode()
    path = "/jobs"
    if args.bulk:
        body = json.dumps({"jobs": [dict(JOB, payload={"n": i}) for i in range(1000)]}).encode()
        path = "/jobs/bulk"
    if variant == "bare route":
        import ceiling

        app = ceiling.create_app()
        return await measure(app, "/jobs", json.dumps(JOB).encode(), args.requests, 32)
    from zizq.api.app import create_primary_app
    from zizq.queue import Engine, EngineSettings
    from zizq.store import Store

    if variant.endswith("+ log line"):
        quiet_log_handler()
    store = Store(Path(tempfile.mkdtemp(prefix="zizq-inproc-")), cache_size=64 << 20)
    engine = Engine(store, EngineSettings())
    await engine.start()
    try:
        app = create_primary_app(engine, "bench")
        gc.freeze()  # as `zizq serve` does once its indexes are built
        gc.set_threshold(50_000, 20, 20)
        requests = max(args.requests // 1000, 4) if args.bulk else args.requests
        concurrency = 2 if args.bulk else 32
        per_request = await measure(app, path, body, requests, concurrency)
        return per_request / 1000 if args.bulk else per_request
    finally:
        await engine.stop()
        store.close()


def profile(args) -> None:
    """Run the logged enqueue variant under py-spy and split its time into STEPS."""
    out = Path(tempfile.mkdtemp(prefix="zizq-inproc-prof-")) / "raw.txt"
    spy = Path(sys.executable).with_name("py-spy")
    command = [str(spy if spy.exists() else "py-spy"), "record", "--rate", "500"]
    command += ["--format", "raw", "-o", str(out), "--", sys.executable, __file__]
    command += ["--only", "enqueue + log line", "--requests", str(args.requests)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    steps: collections.Counter[str] = collections.Counter()
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any("asgi" in f or "_flush" in f for f in frames):
            continue  # start-up, set-up
        label = next(
            (name for f in reversed(frames) for name, keys in STEPS if any(k in f for k in keys)),
            "other",
        )
        steps[label] += int(count)
    total = sum(steps.values())
    print(f"py-spy split of one enqueue with its log line ({total} samples):")
    for label, samples in steps.most_common():
        print(f"  {100 * samples / total:5.1f} %  {label}")


VARIANTS = ("bare route", "enqueue", "enqueue + log line")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=30_000, help="per round (30,000)")
    parser.add_argument("--bulk", action="store_true", help="POST /jobs/bulk, 1,000 a request")
    parser.add_argument("--only", choices=VARIANTS, help="one variant (each runs alone anyway)")
    parser.add_argument("--profile", action="store_true", help="py-spy split of the enqueue")
    args = parser.parse_args()
    import uvloop

    if args.only:
        unit = "job" if args.bulk else "request"
        cost = uvloop.run(run_variant(args.only, args))
        print(f"{args.only}: {cost * 1e6:.1f} us CPU a {unit}", flush=True)
        return 0
    for variant in VARIANTS if not args.bulk else VARIANTS[1:]:
        # One process per variant: the log handler and gc.freeze() must not leak across.
        command = [sys.executable, __file__, "--only", variant, "--requests", str(args.requests)]
        subprocess.run(command + (["--bulk"] if args.bulk else []), check=True)
    if args.profile:
        profile(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
