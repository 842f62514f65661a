"""What TLS costs: the same benchmarks over plain HTTP, HTTPS and mutual TLS, in one run.

    .venv/bin/python scripts/bench/tls.py                    # plain, tls, mtls
    .venv/bin/python scripts/bench/tls.py --rounds 5 --seconds 10 --e2e-jobs 100000
    ZIZQ_BINARY=dist/zizq .venv/bin/python scripts/bench/tls.py --license-key @lic.jwt

For each mode a fresh server (certificates from `zizq tls init`, P-256 keys):
  single   single-job enqueue (POST /jobs), keep-alive HTTP/1.1 connections, raw client
  e2e      end-to-end drain: bulk enqueue + 4 workers taking (prefetch 100) and bulk-acking
  connect  new connections: connect (+ handshake) + GET /health + close, one after another
Figures for TLS are also given as a ratio to plain HTTP measured in the same run, which is
what to compare across machines (the absolute figures depend on the machine and its load).
Mutual TLS needs a license: --license-key, else a development one is minted when running
from the source tree (not possible against a release binary).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from rawhttp import Connection, request_bytes
from run import end_to_end, load_average, raw_single
from server import BenchServer, CpuMeter, use_uvloop, zizq_command

ROOT = Path(__file__).resolve().parents[2]
MODES = ("plain", "tls", "mtls")


# -- TLS for the shared raw client ---------------------------------------------------------
# rawhttp.Connection (shared by every benchmark) opens plain TCP; for this run its `open`
# also does the handshake when a context is set, so run.py's clients are measured unchanged.

_plain_open = Connection.open.__func__  # type: ignore[attr-defined]


@contextlib.contextmanager
def tls_connections(context: ssl.SSLContext | None) -> Iterator[None]:
    async def open_tls(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            cls, host, port, ssl=context, server_hostname="localhost"
        )
        sock = conn.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    if context is None:
        yield
        return
    Connection.open = classmethod(open_tls)  # type: ignore[method-assign]
    try:
        yield
    finally:
        Connection.open = classmethod(_plain_open)  # type: ignore[method-assign]


# -- set-up ------------------------------------------------------------------------------------


def make_certs(directory: Path) -> dict[str, Path]:
    subprocess.run(
        [*zizq_command(), "tls", "init", "--out-dir", str(directory), "--san", "localhost",
         "--san", "127.0.0.1", "--client", "bench"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return {
        "ca": directory / "ca-cert.pem",
        "cert": directory / "server-cert.pem",
        "key": directory / "server-key.pem",
        "client_cert": directory / "client-bench-cert.pem",
        "client_key": directory / "client-bench-key.pem",
    }


def license_key(given: str | None) -> str | None:
    if given:
        return given
    if os.environ.get("ZIZQ_BINARY"):
        return None  # a release binary does not trust the development issuer
    sys.path.insert(0, str(ROOT))
    try:
        from tests.licensing import mint
    except ImportError:
        return None
    return mint(expires_in_s=3600)


def mode_setup(
    mode: str, certs: dict[str, Path], key: str | None
) -> tuple[list[str], ssl.SSLContext | None]:
    """The server flags and the client context of one mode."""
    if mode == "plain":
        return [], None
    flags = ["--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"])]
    context = ssl.create_default_context(cafile=str(certs["ca"]))
    if mode == "mtls":
        assert key is not None
        flags += ["--tls-client-ca", str(certs["ca"]), "--license-key", key]
        context.load_cert_chain(str(certs["client_cert"]), str(certs["client_key"]))
    return flags, context


# -- measurements ------------------------------------------------------------------------------


async def connect_rate(host: str, port: int, count: int) -> float:
    """Connections per second, one after another: TCP (+ TLS) set-up, one request, close."""
    raw = request_bytes("GET", "/health")
    started = time.perf_counter()
    for _ in range(count):
        conn = await Connection.open(host, port)
        status, _body = await conn.request(raw)
        if status != 200:
            raise RuntimeError(f"GET /health answered {status}")
        conn.close()
    return count / (time.perf_counter() - started)


def measure(mode: str, args, certs: dict[str, Path], key: str | None) -> dict[str, str | float]:
    flags, context = mode_setup(mode, certs, key)
    figures: dict[str, str | float] = {}
    with BenchServer(*flags) as server, tls_connections(context):
        host, port = server.host, server.port
        asyncio.run(raw_single(host, port, args.connections, 2))  # warm-up
        with CpuMeter(server) as cpu:
            figures["single"] = asyncio.run(raw_single(host, port, args.connections, args.seconds))
        figures["single_cpu"] = cpu.percent
        asyncio.run(end_to_end(host, port, 10_000, 4, 100))  # warm-up
        with CpuMeter(server) as cpu:
            drained = asyncio.run(end_to_end(host, port, args.e2e_jobs, 4, 100))
        figures["e2e"] = drained["rate"]
        figures["e2e_cpu"] = cpu.percent
        figures["connect"] = asyncio.run(connect_rate(host, port, args.connects))
    return figures


FIGURES = ("single", "e2e", "connect")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="duration of the single enqueue")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--e2e-jobs", type=int, default=50_000)
    parser.add_argument("--connects", type=int, default=300, help="connections for `connect`")
    parser.add_argument(
        "--rounds", type=int, default=3, help="plain/tls/mtls rounds, interleaved; medians shown"
    )
    parser.add_argument("--license-key", help="token or @path, for the mtls mode")
    parser.add_argument("--modes", default=",".join(MODES), help="comma list of " + "/".join(MODES))
    args = parser.parse_args()
    modes = args.modes.split(",")
    key = license_key(args.license_key) if "mtls" in modes else None
    if "mtls" in modes and key is None:
        print("mtls skipped: no --license-key (and none can be minted here)", flush=True)
        modes.remove("mtls")

    use_uvloop()

    load_before = load_average()
    # Rounds interleave the modes so that a burst of other load on the machine hits all of
    # them alike; each ratio is taken within a round, then the median is reported.
    runs: dict[str, list[dict[str, str | float]]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory(prefix="zizq-bench-tls-") as tmp:
        certs = make_certs(Path(tmp))
        for round_no in range(1, args.rounds + 1):
            for mode in modes:
                got = measure(mode, args, certs, key)
                runs[mode].append(got)
                print(
                    f"[{round_no}/{args.rounds} {mode}] single {got['single']:,.0f} jobs/s "
                    f"(server CPU {got['single_cpu']:.0f}%), e2e {got['e2e']:,.0f} jobs/s "
                    f"(CPU {got['e2e_cpu']:.0f}%), connect {got['connect']:,.0f}/s",
                    flush=True,
                )

    print()
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(
        f"machine: {os.cpu_count()} CPUs; client and server share it; "
        f"load average before {load_before}, after {load_average()}"
    )
    print(
        f"single: {args.connections} keep-alive HTTP/1.1 connections, {args.seconds} s; "
        f"e2e: {args.e2e_jobs:,} jobs, 4 workers; connect: {args.connects} sequential; "
        f"{args.rounds} rounds, medians"
    )
    print()
    print(f"{'mode':7}{'single jobs/s':>15}{'e2e jobs/s':>12}{'connects/s':>12}   "
          "ratio to plain (median of rounds; range)")  # fmt: skip
    for mode, rounds in runs.items():
        medians = {name: statistics.median(float(r[name]) for r in rounds) for name in FIGURES}
        ratio = ""
        if "plain" in runs and mode != "plain":
            parts = []
            for name in FIGURES:
                per_round = [
                    float(r[name]) / float(p[name])
                    for r, p in zip(rounds, runs["plain"], strict=True)
                ]
                parts.append(
                    f"{name} {statistics.median(per_round):.2f} "
                    f"({min(per_round):.2f}-{max(per_round):.2f})"
                )
            ratio = "  ".join(parts)
        print(
            f"{mode:7}{medians['single']:>15,.0f}{medians['e2e']:>12,.0f}"
            f"{medians['connect']:>12,.0f}   {ratio}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
