"""Start a throwaway `zizq serve --port 0` for one benchmark and find its port."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

LISTENING = re.compile(r"^Listening on (\w+)://(\S+):(\d+) \(primary\)$")


def zizq_command() -> list[str]:
    binary = os.environ.get("ZIZQ_BINARY")
    return shlex.split(binary) if binary else [sys.executable, "-m", "zizq"]


class BenchServer:
    """Context manager: a fresh root dir, a server on a free port, killed and removed at exit."""

    def __init__(self, *flags: str) -> None:
        self.flags = list(flags)
        self.root = Path(tempfile.mkdtemp(prefix="zizq-bench-"))
        self.proc: subprocess.Popen | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.lines: list[str] = []

    @property
    def command(self) -> list[str]:
        return [
            *zizq_command(),
            "serve",
            "--root-dir",
            str(self.root),
            "--port",
            "0",
            "--no-admin",
            *self.flags,
        ]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> BenchServer:
        self.proc = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        found = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                line = line.rstrip("\n")
                self.lines.append(line)
                match = LISTENING.match(line)
                if match and not found.is_set():
                    self.host, self.port = match.group(2).strip("[]"), int(match.group(3))
                    found.set()
            found.set()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(30) or not self.port:
            self.__exit__(None, None, None)
            raise RuntimeError("zizq did not start:\n" + "\n".join(self.lines))
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def status_kb(self, field: str) -> int:
        """A /proc/<pid>/status figure in kB, e.g. VmHWM (peak RSS) or VmRSS."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used so far (all threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Server CPU use over a block, as a percentage of one core."""

    def __init__(self, server: BenchServer) -> None:
        self.server = server
        self.percent = 0.0

    def __enter__(self) -> CpuMeter:
        self._cpu = self.server.cpu_seconds()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._wall
        self.percent = 100 * (self.server.cpu_seconds() - self._cpu) / max(wall, 1e-9)


def use_uvloop() -> None:
    """Run the benchmark client on uvloop where it exists, as the server does."""
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()
