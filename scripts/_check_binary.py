"""Checks of the frozen `zizq` executable as users run it (called by scripts/test-binary).

    python scripts/_check_binary.py /abs/path/to/zizq

Prints one PASS/FAIL line per check, then the figures (size, cold start, idle RSS), and
exits non-zero when a check failed. Runs with the project's venv python, whose installed
`zizq` package is the source of truth for the expected version and subcommands.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from importlib.metadata import version as dist_version
from pathlib import Path

WINDOWS = sys.platform == "win32"
LISTENING = re.compile(r"^Listening on (\w+)://(\S+) \((primary|admin)\)$")
START_TIMEOUT_S = 30.0
TARGETS = {"size_mb": 40.0, "cold_start_s": 1.5, "idle_rss_mb": 80.0}

failures: list[str] = []


def result(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'}: {name}{f' ({detail})' if detail else ''}", flush=True)
    if not ok:
        failures.append(name)


def minimal_env(**extra: str) -> dict[str, str]:
    """An empty environment, as `env -i` gives. On Windows keep what the OS itself needs:
    SYSTEMROOT (sockets fail without it) and TEMP/TMP (where the executable unpacks)."""
    kept = ("SYSTEMROOT", "SystemRoot", "TEMP", "TMP") if WINDOWS else ()
    env = {k: os.environ[k] for k in kept if k in os.environ}
    env.update(extra)
    return env


class Server:
    """`zizq serve --port 0 --admin-port 0 ...` started with a given env and cwd."""

    def __init__(self, binary: str, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [binary, "serve", "--port", "0", "--admin-port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        self.lines: list[str] = []
        self.primary: str | None = None
        self.listening_after: float | None = None
        self.context: ssl.SSLContext | None = None  # the client side of an https:// server
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            match = LISTENING.match(line)
            if match and match.group(3) == "primary" and self.primary is None:
                self.listening_after = time.monotonic() - self.started
                self.primary = f"{match.group(1)}://{match.group(2)}"
                self._ready.set()
        self._ready.set()

    def wait_listening(self) -> bool:
        self._ready.wait(START_TIMEOUT_S)
        return self.primary is not None

    def get(self, path: str) -> dict:
        return self.get_with_headers(path)[0]

    def get_with_headers(self, path: str) -> tuple[dict, dict]:
        with urllib.request.urlopen(
            self.primary + path, timeout=10, context=self.context
        ) as response:
            return json.loads(response.read()), {k.lower(): v for k, v in response.headers.items()}

    def stop(self) -> int | None:
        """SIGTERM and wait; the exit code (None on Windows, which has no SIGTERM)."""
        if self.proc.poll() is None:
            if WINDOWS:
                self.proc.terminate()
            else:
                self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return -999
        return None if WINDOWS else code

    @property
    def output(self) -> str:
        return "\n".join(self.lines[-20:])


def check_start(name: str, binary: str, args: list[str], env: dict[str, str], cwd: Path) -> Server:
    server = Server(binary, args, env, cwd)
    try:
        if not server.wait_listening():
            result(name, False, f"no 'Listening ... (primary)' line; output:\n{server.output}")
            return server
        health = server.get("/health")
        # /version is the reference API level; the build's own version is a header.
        body, headers = server.get_with_headers("/version")
        build = headers.get("zizq-build")
        code = server.stop()
        ok = health == {"status": "ok"} and build == VERSION and code in (0, None)
        result(name, ok, f"GET /version {body!r}, Zizq-Build {build!r}, exit {code}")
    except Exception as exc:
        result(name, False, f"{exc!r}; output:\n{server.output}")
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    return server


def run(binary: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def child_pids(pid: int) -> list[int]:
    if sys.platform.startswith("linux"):
        children = Path(f"/proc/{pid}/task/{pid}/children")
        return [int(p) for p in children.read_text().split()] if children.exists() else []
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def alive(pid: int) -> bool:
    if sys.platform.startswith("linux"):
        status = Path(f"/proc/{pid}/status")
        try:
            return "State:\tZ" not in status.read_text()  # a zombie has exited
        except FileNotFoundError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def rss_kb(pid: int) -> int | None:
    if sys.platform.startswith("linux"):
        match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
        return int(match.group(1)) if match else None
    out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True)
    return int(out.stdout.strip()) if out.stdout.strip() else None


def guarded(label: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as exc:
        result(label, False, repr(exc))


def main() -> int:
    binary = os.path.abspath(sys.argv[1])
    scratch = Path(tempfile.mkdtemp(prefix="zizq-binary-check-"))
    # One-file executables unpack under $TMPDIR; a kill -9 leaves that copy behind.
    unpack_tmp = scratch / "tmp"
    unpack_tmp.mkdir()
    try:
        checks(binary, scratch, unpack_tmp)
        figures(binary, scratch, unpack_tmp)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"binary checks: {'all passed' if not failures else f'{len(failures)} failed'}")
    return 1 if failures else 0


def checks(binary: str, scratch: Path, unpack_tmp: Path) -> None:
    proc = run(binary, "--version")
    result(
        "--version prints 'zizq <version>'",
        proc.returncode == 0 and proc.stdout.strip() == f"zizq {VERSION}",
        f"got {proc.stdout.strip()!r}, package metadata {VERSION!r}",
    )

    from zizq.cli import main as cli  # the subcommands this source tree defines

    proc = run(binary, "--help")
    listed = re.findall(r"^  (\S+)", proc.stdout.split("Commands:", 1)[-1], re.M)
    expected = sorted(cli.commands)
    result(
        "--help lists every subcommand",
        proc.returncode == 0 and set(expected) <= set(listed),
        f"expected {expected}, listed {sorted(listed)}",
    )

    proc = run(binary, env={**os.environ, "ZIZQ_BUNDLE_CHECK": "1"})
    result("bundled modules import and work (ZIZQ_BUNDLE_CHECK)", proc.returncode == 0)
    if proc.returncode != 0:
        print(proc.stdout + proc.stderr)

    (scratch / "a").mkdir()
    check_start(
        "serve starts with an empty environment (env -i)",
        binary,
        ["--root-dir", str(scratch / "root-env-i")],
        minimal_env(),
        scratch / "a",
    )

    other = scratch / "elsewhere"
    other.mkdir()
    check_start(
        "serve starts from another working directory (default ./zizq-root)",
        binary,
        [],
        {**os.environ, "TMPDIR": str(unpack_tmp)},
        other,
    )
    result("default root dir created in the working directory", (other / "zizq-root").is_dir())

    no_python = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    no_python["PATH"] = str(scratch / "nonexistent")
    check_start(
        "serve starts with PATH lacking python",
        binary,
        ["--root-dir", str(scratch / "root-no-path")],
        no_python,
        scratch / "a",
    )

    guarded("serve over HTTPS with certificates from `zizq tls init`",
            lambda: tls_start(binary, scratch, unpack_tmp))  # fmt: skip

    if not WINDOWS:
        guarded("kill -9 of the executable stops the server too", lambda: kill9(binary, scratch))


def tls_start(binary: str, scratch: Path, unpack_tmp: Path) -> None:
    """`zizq tls init` (bundled `cryptography`), an HTTPS start, and a refused bad key."""
    certs = scratch / "certs"
    env = {**os.environ, "TMPDIR": str(unpack_tmp)}
    proc = run(binary, "tls", "init", "--out-dir", str(certs), "--san", "localhost",
               "--san", "127.0.0.1", "--client", "check", env=env)  # fmt: skip
    key_mode = (certs / "server-key.pem").stat().st_mode & 0o777 if proc.returncode == 0 else None
    result(
        "zizq tls init writes a CA, server and client certificates",
        proc.returncode == 0 and proc.stdout.count("wrote:") == 6
        and (WINDOWS or key_mode == 0o600),
        f"exit {proc.returncode}, key mode {oct(key_mode or 0)}; {proc.stderr.strip()[:200]}",
    )  # fmt: skip
    tls = ["--tls-cert", str(certs / "server-cert.pem"), "--tls-key", str(certs / "server-key.pem")]
    server = Server(binary, ["--root-dir", str(scratch / "root-tls"), *tls], env, scratch)
    server.context = ssl.create_default_context(cafile=str(certs / "ca-cert.pem"))
    try:
        listening = server.wait_listening()
        health = server.get("/health") if listening else None
        ok = (
            listening
            and (server.primary or "").startswith("https://")
            and health == {"status": "ok"}
        )
        result("serve over HTTPS answers GET /health", bool(ok),
               f"{server.primary}, {health!r}; output:\n{server.output}" if not ok
               else f"{server.primary}")  # fmt: skip
    finally:
        server.stop()
    bad = [*tls[:3], str(certs / "client-check-key.pem")]
    proc = run(binary, "serve", "--root-dir", str(scratch / "root-bad-tls"), "--port", "0",
               "--admin-port", "0", *bad, env=env)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    result(
        "serve refuses a key that does not match --tls-cert (one Error line)",
        proc.returncode == 1 and len(lines) == 1 and "does not match" in lines[0],
        f"exit {proc.returncode}, stderr {proc.stderr.strip()[:300]!r}",
    )


def kill9(binary: str, scratch: Path) -> None:
    """A crash of the bootloader must not leave the server running (port and lock held)."""
    name = "kill -9 of the executable stops the server too"
    root = scratch / "root-kill9"
    env = {**os.environ, "TMPDIR": str(scratch / "tmp")}
    server = Server(binary, ["--root-dir", str(root)], env, scratch)
    if not server.wait_listening():
        result(name, False, server.output)
        return
    children = child_pids(server.proc.pid)
    server.proc.kill()
    server.proc.wait()
    deadline = time.monotonic() + 5
    while any(alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [c for c in children if alive(c)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    result(name, not left, f"one-file child pids {children}, still running {left}")
    check_start("serve restarts on the same root dir after kill -9", binary,
                ["--root-dir", str(root)], env, scratch)  # fmt: skip


def figures(binary: str, scratch: Path, unpack_tmp: Path) -> None:
    size_mb = os.path.getsize(binary) / 1e6
    starts: list[float] = []
    rss: list[tuple[int, int]] = []
    for i in range(10):
        env = {**os.environ, "TMPDIR": str(unpack_tmp)}
        server = Server(binary, ["--root-dir", str(scratch / f"root-cold-{i}")], env, scratch)
        if server.wait_listening() and server.listening_after is not None:
            starts.append(server.listening_after)
            if i == 0 and not WINDOWS:
                time.sleep(2)  # let start-up work settle before reading "idle" memory
                pids = [server.proc.pid, *child_pids(server.proc.pid)]
                rss = [(pid, rss_kb(pid) or 0) for pid in pids]
        server.stop()
    print("FIGURES:")
    report("binary size", size_mb, "MB", TARGETS["size_mb"])
    if starts:
        cold = statistics.median(starts)
        report(f"cold start to 'Listening (primary)', median of {len(starts)}", cold, "s",
               TARGETS["cold_start_s"], f"min {min(starts):.2f}, max {max(starts):.2f}")  # fmt: skip
    if rss:
        server_kb = rss[-1][1]  # the server process: the one-file child, else the only one
        detail = ", ".join(f"pid {pid}: {kb / 1024:.1f} MB" for pid, kb in rss)
        report("idle RSS of the server process", server_kb / 1024, "MB", TARGETS["idle_rss_mb"],
               f"{detail}; total {sum(kb for _, kb in rss) / 1024:.1f} MB")  # fmt: skip


def report(label: str, value: float, unit: str, target: float, detail: str = "") -> None:
    verdict = "within target" if value < target else "OVER TARGET"
    extra = f"; {detail}" if detail else ""
    print(f"  {label}: {value:.2f} {unit} (target < {target:g} {unit}: {verdict}{extra})")


VERSION = dist_version("zizq")

if __name__ == "__main__":
    sys.exit(main())
