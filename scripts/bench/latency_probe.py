"""Enqueue-to-delivery prober for `ratios.py`: runs as its own process beside a busy server.

    .venv/bin/python scripts/bench/latency_probe.py HOST PORT [--interval-ms 10] [--queue latency]

Holds one take stream on its own queue (prefetch 10, bulk acks, as in run.py's (e)) and, every
`--interval-ms`, enqueues one job there with `POST /jobs` and times from just before the request
is written to the moment the job arrives on the stream (the job's id is checked against the
enqueue's answer). It prints `ready` once its stream is open and a few warm-up samples are
done, and on SIGTERM or SIGINT prints one JSON line,
`{"samples": [[sent_monotonic, seconds], ...], "timeouts": [sent_monotonic, ...]}`, so the
caller can keep only the samples sent inside its own measured window (`time.monotonic()` is
the same clock in every process on one machine). A job not delivered within 5 s is a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time

import orjson
from rawhttp import Connection, post_json
from run import Worker
from server import use_uvloop

TIMEOUT_S = 5.0
WARMUP = 20


async def probe(host: str, port: int, interval_s: float, queue: str) -> dict:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    arrived: asyncio.Future | None = None

    def on_job(job_id: str) -> None:
        if arrived is not None and not arrived.done():
            arrived.set_result((time.monotonic(), job_id))

    worker = Worker(host, port, 10, lambda n: None)
    worker.on_job = on_job
    await worker.start(queue)
    acker = asyncio.create_task(worker.ack_forever())
    enqueuer = await Connection.open(host, port)
    raw = post_json("/jobs", {"queue": queue, "type": "probe", "payload": {"n": 1}})
    samples: list[list[float]] = []
    timeouts: list[float] = []
    count = 0
    try:
        while not stop.is_set():
            arrived = loop.create_future()
            sent = time.monotonic()
            status, body = await enqueuer.request(raw)
            if status != 201:
                raise RuntimeError(f"enqueue answered {status}: {body[:200]!r}")
            try:
                received_at, job_id = await asyncio.wait_for(arrived, TIMEOUT_S)
            except TimeoutError:
                timeouts.append(sent)
            else:
                if job_id != orjson.loads(body)["id"]:
                    raise RuntimeError("delivered a different job than enqueued")
                if count >= WARMUP:
                    samples.append([sent, received_at - sent])
            count += 1
            if count == WARMUP:
                print("ready", flush=True)
            if acker.done():
                acker.result()  # raises what stopped the acks
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
    finally:
        acker.cancel()
        worker.close()
        enqueuer.close()
    return {"samples": samples, "timeouts": timeouts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--interval-ms", type=float, default=10.0)
    parser.add_argument("--queue", default="latency")
    args = parser.parse_args()
    use_uvloop()
    result = asyncio.run(probe(args.host, args.port, args.interval_ms / 1000, args.queue))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
