"""jq isolated from the server: a small pool of worker processes with hard limits.

libjq holds the GIL while a program runs, so in the serving process one
runaway filter (`def f: f; f`) would stop every thread and the event loop for
good. Every jq program therefore runs in a worker process
(`zizq/queue/jq_worker.py`) that:

- starts with an empty environment (jq's `$ENV` and `env` are `{}`; on
  Windows only SYSTEMROOT, which Python needs to start; a frozen executable
  also passes PyInstaller's private `_PYI_*` variables so the worker reuses
  the unpacked bundle) and clears even that once Python is up;
- runs in an empty temporary directory, with stderr discarded;
- is capped at `memory_limit` bytes of address space (RLIMIT_AS; not on
  Windows, which has no `resource` module: there only the deadline applies);
- may not load jq modules (`import`, `include`, `modulemeta`).

Deadline: each call to a worker must answer within `time_limit_ms`, counted
from when the caller started waiting for a free worker. Over it the worker is
killed (SIGKILL) and replaced, and the caller gets `InvalidInput` naming the
limit. A scan sends payloads in calls of at most MATCH_BATCH payloads /
MATCH_BATCH_BYTES bytes, and a worker hands back a partial answer once it has
spent a quarter of the limit, so the limit bounds how long jq may spend on a
single payload, not how long a scan of a large store may take. A filter that
spends more than that quarter on any single payload fails the request at once
(400): a scan at that pace would take hours, and it would hold a worker all along.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import msgpack

from zizq.queue.errors import InvalidInput
from zizq.queue.pools import BoundedPool

DEFAULT_WORKERS = 2
DEFAULT_TIME_LIMIT_MS = 5_000
DEFAULT_MEMORY_LIMIT = 512 * 1024 * 1024
MIN_MEMORY_LIMIT = 64 * 1024 * 1024  # below this Python itself cannot start
MAX_EXPRESSION_BYTES = 16 * 1024
MATCH_BATCH = 256  # payloads per call: a 1M-job scan is ~4k round trips, not 1M
MATCH_BATCH_BYTES = 1024 * 1024  # ...and at most this much payload data per call
MAX_REPLY_BYTES = 80 * 1024 * 1024  # a worker's eval outputs are capped at 64 MiB
WORKER_FLAG = "--zizq-jq-worker"  # hidden argv of the frozen executable (specs/entry.py)
EXIT_MEMORY = 3  # jq_worker.EXIT_MEMORY (not imported: the server never loads jq)

_WORKER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jq_worker.py")
_DIRECTIVES = ("import", "include", "module")
_NO_DIRECTIVES = "module directives (import, include) are not allowed"


# -- checks that need no worker ---------------------------------------------


def check_text(expression: str, field: str = "filter") -> None:
    """Reject what must never reach jq: oversized text, NUL, bad UTF-8, module directives."""
    try:
        size = len(expression.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput(f"{field}: must be valid UTF-8") from None
    if size > MAX_EXPRESSION_BYTES:
        raise InvalidInput(f"{field}: jq expression longer than {MAX_EXPRESSION_BYTES} bytes")
    if "\0" in expression:
        raise InvalidInput(f"{field}: jq expression must not contain NUL characters")
    if _first_word(expression) in _DIRECTIVES:
        raise InvalidInput(f"{field}: {_NO_DIRECTIVES}")


def _first_word(text: str) -> str:
    """The program's first identifier, past whitespace and `#` comments.

    Only for a clear message: the worker makes every directive a syntax error anyway.
    """
    position = 0
    while position < len(text):
        if text[position].isspace():
            position += 1
        elif text[position] == "#":
            end = text.find("\n", position)
            position = len(text) if end < 0 else end + 1
        else:
            break
    end = position
    while end < len(text) and (text[end].isalnum() or text[end] == "_"):
        end += 1
    return text[position:end]


def _compile_message(message: str, field: str) -> str:
    """libjq's compile error, minus its banner, with lines numbered as the client wrote them."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("jq: ") or "compile error" not in line]
    first = lines[0].removeprefix("jq: error: ") if lines else "invalid program"
    if any(f"unexpected {word}" in first for word in _DIRECTIVES):
        return f"{field}: {_NO_DIRECTIVES}"
    first = _renumber(first).rstrip(":")  # libjq goes on with the program's text
    return f"{field}: invalid jq expression: {first}"


def _renumber(text: str) -> str:
    # The worker compiles a one-line guard before the client's program (jq_worker.GUARD).
    marker = "line "
    at = text.find(marker)
    if at < 0:
        return text
    digits = ""
    for char in text[at + len(marker) :]:
        if not char.isdigit():
            break
        digits += char
    if not digits or int(digits) < 2:
        return text
    return text[:at] + marker + str(int(digits) - 1) + text[at + len(marker) + len(digits) :]


# -- the worker processes ---------------------------------------------------


def worker_command(memory_limit: int) -> list[str]:
    if getattr(sys, "frozen", False):
        return [sys.executable, WORKER_FLAG, str(memory_limit)]
    # -I: no environment variables, no user site, no script directory on sys.path.
    return [sys.executable, "-I", _WORKER_FILE, str(memory_limit)]


def worker_environment() -> dict[str, str]:
    """Only what the OS or the frozen executable's bootloader strictly needs."""
    env = {}
    if sys.platform == "win32" and "SYSTEMROOT" in os.environ:
        env["SYSTEMROOT"] = os.environ["SYSTEMROOT"]  # needed by Python's start-up on Windows
    if getattr(sys, "frozen", False):
        # Without these the one-file bootloader would unpack the whole bundle again for
        # every worker (slow, and a killed worker would leave its copy behind).
        env.update(
            (key, value)
            for key, value in os.environ.items()
            if key.startswith(("_PYI_", "_MEIPASS"))
        )
    return env


class _WorkerGone(Exception):
    pass


class _Worker:
    def __init__(self, command: list[str], cwd: str) -> None:
        self.timed_out = False
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=cwd,
            env=worker_environment(),
            close_fds=True,
        )

    def exchange(self, body: bytes) -> bytes:
        try:
            self.proc.stdin.write(len(body).to_bytes(4, "big"))
            self.proc.stdin.write(body)
            self.proc.stdin.flush()
            header = self.proc.stdout.read(4)
            if len(header) < 4:
                raise _WorkerGone
            size = int.from_bytes(header, "big")
            if size > MAX_REPLY_BYTES:
                raise _WorkerGone
            reply = self.proc.stdout.read(size)
        except (OSError, ValueError):  # broken pipe, or closed by the watchdog
            raise _WorkerGone from None
        if len(reply) < size:
            raise _WorkerGone
        return reply

    def kill(self) -> int | None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None


class _Watchdog:
    """One thread that kills workers whose call has passed its deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: dict[_Worker, float] = {}
        self._thread: threading.Thread | None = None
        self._stopped = False

    def arm(self, worker: _Worker, deadline: float) -> None:
        with self._cond:
            self._armed[worker] = deadline
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="zizq-jq-watchdog")
                self._thread.daemon = True
                self._thread.start()
            self._cond.notify()

    def disarm(self, worker: _Worker) -> None:
        with self._cond:
            self._armed.pop(worker, None)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                for worker, deadline in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[worker]
                        worker.timed_out = True
                        with contextlib.suppress(OSError):
                            worker.proc.kill()  # the caller's blocked read then sees EOF
                wake = min(self._armed.values(), default=now + 60) - now
                self._cond.wait(max(wake, 0.001))


class JqSandbox:
    """A pool of jq worker processes; every method is safe to call from any thread."""

    def __init__(
        self,
        workers: int = DEFAULT_WORKERS,
        time_limit_ms: int = DEFAULT_TIME_LIMIT_MS,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
    ) -> None:
        if workers < 1 or time_limit_ms <= 0:
            raise ValueError("a jq sandbox needs at least one worker and a positive time limit")
        self.workers = workers
        self.time_limit_ms = time_limit_ms
        self.memory_limit = memory_limit
        self._command = worker_command(memory_limit)
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._started = 0  # workers alive or being started
        self._busy: set[_Worker] = set()
        self._closed = False
        self._cwd: str | None = None
        self._watchdog = _Watchdog()
        # The loop's own waits on workers (acheck, aevaluate) block threads of
        # their own, never the shared default executor; past its cap a call is a 503.
        self._waiters = BoundedPool(
            "zizq-jq-wait", workers=2 * workers, max_waiting=64, uses_store=False
        )

    # -- life cycle ---------------------------------------------------------

    def start(self) -> None:
        """Start every worker now rather than on first use (a call pays the start-up)."""
        while True:
            with self._cond:
                if self._closed or self._started >= self.workers:
                    return
                self._started += 1
            self._add_idle()

    def close(self) -> None:
        """Kill every worker; calls still running fail with InvalidInput."""
        with self._cond:
            self._closed = True
            workers = self._idle + list(self._busy)
            self._idle.clear()
            self._cond.notify_all()
        for worker in workers:
            worker.kill()
        self._watchdog.stop()
        if self._cwd is not None:
            shutil.rmtree(self._cwd, ignore_errors=True)

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for diagnostics and tests)."""
        with self._cond:
            return sorted(w.proc.pid for w in self._idle + list(self._busy))

    # -- the calls ----------------------------------------------------------

    def check(self, expression: str, field: str = "filter") -> None:
        """Raise InvalidInput (400) unless `expression` is a valid jq program."""
        check_text(expression, field)
        self._call("check", expression, [], field, self._deadline())

    async def acheck(self, expression: str, field: str = "filter") -> None:
        """`check` for the event loop: the wait happens on a thread, the deadline starts now."""
        check_text(expression, field)
        deadline = self._deadline()
        await self._waiters.run(self._call, "check", expression, [], field, deadline)

    def match(
        self, expression: str, payloads: Sequence[bytes | None], field: str = "filter"
    ) -> list[bool]:
        """For each msgpack-encoded payload (None = null): does the program yield a value
        other than null and false? A runtime error on a payload means no match."""
        verdicts: list[bool] = []
        position = 0
        while position < len(payloads):
            end, size = position, 0
            while end < len(payloads) and end - position < MATCH_BATCH:
                size += len(payloads[end] or b"")
                end += 1
                if size >= MATCH_BATCH_BYTES:
                    break
            got = self._call("match", expression, payloads[position:end], field, self._deadline())
            if not got:
                raise InvalidInput(f"{field}: the jq worker answered nothing")
            verdicts.extend(got)
            position += len(got)
        return verdicts

    def evaluate(self, expression: str, value: Any, field: str = "filter") -> list[Any]:
        """Every output of the program on one JSON value, as JSON values.

        A runtime error of the program raises InvalidInput naming `field`.
        """
        check_text(expression, field)
        packed = msgpack.packb(value)
        [(ok, result)] = self._call("eval", expression, [packed], field, self._deadline())
        if not ok:
            raise InvalidInput(f"{field}: jq error: {result}")
        return result

    async def aevaluate(self, expression: str, value: Any, field: str = "filter") -> list[Any]:
        return await self._waiters.run(self.evaluate, expression, value, field)

    def evaluate_many(
        self, expression: str, values: Sequence[Any], field: str = "filter"
    ) -> list[tuple[bool, Any]]:
        """One program over many JSON values: per value (True, outputs) or (False, error).

        Values go to the workers in calls of at most MATCH_BATCH values /
        MATCH_BATCH_BYTES bytes, each call with its own deadline; a worker that has
        spent a quarter of the limit answers what it has done and gets the rest anew.
        """
        check_text(expression, field)
        packed = [msgpack.packb(value) for value in values]
        results: list[tuple[bool, Any]] = []
        position = 0
        while position < len(packed):
            end, size = position, 0
            while end < len(packed) and end - position < MATCH_BATCH:
                size += len(packed[end])
                end += 1
                if size >= MATCH_BATCH_BYTES:
                    break
            got = self._call("eval", expression, packed[position:end], field, self._deadline())
            if not got:
                raise InvalidInput(f"{field}: the jq worker answered nothing")
            # A worker past a quarter of the limit answers a prefix: send the rest again.
            results.extend((bool(ok), result) for ok, result in got)
            position += len(got)
        return results

    async def aevaluate_many(
        self, expression: str, values: Sequence[Any], field: str = "filter"
    ) -> list[tuple[bool, Any]]:
        return await self._waiters.run(self.evaluate_many, expression, values, field)

    # -- machinery ----------------------------------------------------------

    def _deadline(self) -> float:
        return time.monotonic() + self.time_limit_ms / 1000

    def _limit_text(self) -> str:
        ms = self.time_limit_ms
        return f"{ms / 1000:g}s" if ms % 100 == 0 else f"{ms}ms"

    def _memory_text(self) -> str:
        mib = self.memory_limit / (1024 * 1024)
        return f"{mib:g} MiB"

    def _call(self, op: str, expression: str, items: list, field: str, deadline: float) -> Any:
        limit_s = self.time_limit_ms / 1000
        # The worker answers early once it has spent a quarter of the limit on a batch.
        body = msgpack.packb([op, expression, list(items), limit_s / 4, limit_s])
        worker = self._acquire(field, deadline)
        if time.monotonic() >= deadline:  # the wait for it used up the whole time limit
            self._release(worker, True)
            raise InvalidInput(self._busy_message(field))
        healthy = False
        try:
            self._watchdog.arm(worker, deadline)
            try:
                reply = worker.exchange(body)
            finally:
                self._watchdog.disarm(worker)
            healthy = not worker.timed_out
            status, result = msgpack.unpackb(reply, strict_map_key=False)
        except _WorkerGone:
            raise self._failure(worker, field) from None
        finally:
            self._release(worker, healthy)
        if status == 2:
            raise InvalidInput(
                f"{field}: the jq program took {result:.1f}s on one payload; each may take at "
                f"most a quarter of the time limit of {self._limit_text()}"
            )
        if status != 0:
            raise InvalidInput(_compile_message(result, field))
        return result

    def _busy_message(self, field: str) -> str:
        return (
            f"{field}: no jq worker became free within the time limit of "
            f"{self._limit_text()} (the server is busy with other jq programs)"
        )

    def _failure(self, worker: _Worker, field: str) -> InvalidInput:
        if worker.timed_out:
            return InvalidInput(
                f"{field}: the jq program exceeded the time limit of {self._limit_text()}"
            )
        code = worker.kill()
        if self._closed:
            return InvalidInput(f"{field}: the server is shutting down")
        # libjq aborts when an allocation fails; Python exits with EXIT_MEMORY.
        if code in (EXIT_MEMORY, -signal.SIGABRT):
            return InvalidInput(
                f"{field}: the jq program exceeded the memory limit of {self._memory_text()}"
            )
        return InvalidInput(
            f"{field}: the jq program crashed its worker (exit status {code}); "
            f"memory limit {self._memory_text()}"
        )

    def _acquire(self, field: str, deadline: float) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise InvalidInput(f"{field}: the server is shutting down")
                while self._idle:
                    worker = self._idle.pop()
                    if worker.proc.poll() is None:
                        self._busy.add(worker)
                        return worker
                    self._started -= 1  # died while idle: forget it
                    worker.kill()
                if self._started < self.workers:
                    self._started += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise InvalidInput(self._busy_message(field))
                self._cond.wait(remaining)
        try:
            worker = self._spawn()
        except BaseException:
            with self._cond:
                self._started -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._busy.add(worker)
        return worker

    def _release(self, worker: _Worker, healthy: bool) -> None:
        with self._cond:
            self._busy.discard(worker)
            if healthy and not self._closed:
                self._idle.append(worker)
                self._cond.notify()
                return
        worker.kill()
        with self._cond:
            if self._closed:
                self._started -= 1
                return
        self._add_idle()  # keep the pool warm for the next caller

    def _add_idle(self) -> None:
        """Start a worker into a slot already counted in _started; give the slot back on failure."""
        try:
            worker = self._spawn()
        except InvalidInput:
            with self._cond:
                self._started -= 1
                self._cond.notify()
            return
        with self._cond:
            if self._closed:
                self._started -= 1
                closed = True
            else:
                self._idle.append(worker)
                self._cond.notify()
                closed = False
        if closed:
            worker.kill()

    def _spawn(self) -> _Worker:
        with self._cond:
            if self._cwd is None:
                self._cwd = tempfile.mkdtemp(prefix="zizq-jq-")
            cwd = self._cwd
        try:
            return _Worker(self._command, cwd)
        except OSError as exc:  # e.g. out of processes or file descriptors
            raise InvalidInput(f"filter: could not start a jq worker process: {exc}") from None


_default: JqSandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> JqSandbox:
    """A process-wide pool with the default limits, for callers not given one."""
    global _default
    with _default_lock:
        if _default is None:
            _default = JqSandbox()
            atexit.register(_default.close)  # its workers and their empty directory
        return _default
