"""The jq worker process: evaluates jq programs sent by `zizq.queue.jq_sandbox`.

libjq holds the GIL while a program runs, so a runaway filter would freeze
the server; here it can only freeze this process, which the server kills at
its deadline. This module is run on its own (by file path, or through the
frozen executable's hidden entry point), never imported by the server, and
imports nothing but the standard library, msgpack, orjson and jq: a worker starts in
tens of milliseconds and holds little memory under its cap.

Protocol on stdin/stdout: frames of a 4-byte big-endian length, then msgpack.
Request: [op, expression, items, budget_s, limit_s]
  op "check": compile only.                  Reply [0, None]
  op "match": items are msgpack payloads      Reply [0, [bool, ...]] (a prefix of
              (bytes) or None; a payload      the items when budget_s ran out)
              matches when an output is
              neither null nor false.
  op "eval":  items are msgpack values.       Reply [0, [[1, outputs] | [0, error], ...]]
A compile error replies [1, message]; a "match" that spent more than budget_s on a
single payload replies [2, seconds]. Anything else wrong ends the process.
"""

from __future__ import annotations

import os
import signal
import sys
import time

try:
    import resource
except ImportError:  # Windows: no rlimits; the server's deadline still applies
    resource = None

import jq
import msgpack
import orjson

# Shadow the builtins that read module files, and make every module directive a
# syntax error: `import`/`include` must come first in a program, so they cannot
# follow these definitions. The server also rejects them by name for a clearer
# message; this is what makes the rule hold whatever the lexer thinks.
GUARD = 'def modulemeta: error("modulemeta is not allowed"); def get_search_list: [];\n'
EXIT_MEMORY = 3  # the worker ran out of memory (its RLIMIT_AS cap)
MAX_OUTPUT = 64 * 1024 * 1024  # bytes of outputs one eval reply may carry
_CACHE_SIZE = 8


def _limit_memory(limit: int) -> None:
    if resource is None or limit <= 0:
        return
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # an abort must not write a core file


def _limit_cpu(limit_s: float) -> None:
    """Backstop for an orphan: if the server died mid-call, SIGXCPU ends a runaway program."""
    if resource is None:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(usage.ru_utime + usage.ru_stime + limit_s) + 2
    resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))


def _read_exactly(stream, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def _json_text(item: bytes | None) -> str:
    """The input as JSON text: orjson is several times faster than the binding's json.dumps."""
    if item is None:
        return "null"
    value = msgpack.unpackb(item, strict_map_key=False)
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _truthy(program, item: bytes | None) -> bool:
    try:
        outputs = program.input_text(_json_text(item)).all()
    except MemoryError:
        raise
    except Exception:  # a runtime error (e.g. indexing a number) is simply not a match
        return False
    return any(out is not None and out is not False for out in outputs)


def _evaluate(program, item: bytes | None) -> list:
    try:
        return [1, program.input_text(_json_text(item)).all()]
    except MemoryError:
        raise
    except Exception as exc:
        return [0, _first_line(str(exc))]


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "error"


class _Programs:
    """Compiled programs of the last few expressions (a scan sends the same one each call)."""

    def __init__(self) -> None:
        self._cache: dict[str, object] = {}

    def get(self, expression: str):
        program = self._cache.get(expression)
        if program is None:
            program = jq.compile(GUARD + expression)  # ValueError on a compile error
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[expression] = program
        return program


def _handle(programs: _Programs, request: list) -> list:
    op, expression, items, budget_s, limit_s = request
    _limit_cpu(limit_s)
    try:
        program = programs.get(expression)
    except ValueError as exc:
        return [1, str(exc)]
    if op == "check":
        return [0, None]
    started = time.monotonic()
    results = []
    for index, item in enumerate(items):
        before = time.monotonic()
        if index and before - started > budget_s:
            break  # hand back what is done; the server sends the rest in a new call
        results.append(_truthy(program, item) if op == "match" else _evaluate(program, item))
        took = time.monotonic() - before
        if op == "match" and took > budget_s:
            # A filter this slow on ONE payload would make a scan take hours: refuse it
            # now rather than after the N-th payload.
            return [2, took]
    return [0, results]


def _pack(reply: list) -> bytes:
    body = msgpack.packb(reply, default=_unpackable)
    if len(body) > MAX_OUTPUT:
        body = msgpack.packb([1, f"the outputs exceed {MAX_OUTPUT // (1024 * 1024)} MiB"])
    return body


def _unpackable(value):
    raise TypeError(f"cannot encode {type(value).__name__}")


def serve(stdin, stdout) -> None:
    programs = _Programs()
    while True:
        header = _read_exactly(stdin, 4)
        if header is None:
            return  # the server closed the pipe: it is done with us
        body = _read_exactly(stdin, int.from_bytes(header, "big"))
        if body is None:
            return
        reply = _handle(programs, msgpack.unpackb(body, strict_map_key=False))
        try:
            data = _pack(reply)
        except (OverflowError, TypeError, ValueError) as exc:  # e.g. an integer past 64 bits
            data = msgpack.packb([0, [[0, f"output cannot be encoded: {exc}"]] * len(reply[1])])
        stdout.write(len(data).to_bytes(4, "big"))
        stdout.write(data)
        stdout.flush()


def main(argv: list[str]) -> int:
    # Whatever the OS or a launcher put in the environment, jq's `$ENV` and
    # `env` must see nothing: clearing os.environ unsets each variable in C too.
    os.environ.clear()
    # Ctrl-C in a terminal signals the whole process group; the server decides
    # when its workers end (it closes their stdin or kills them).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A runaway program must not win the CPU from the server it was isolated from.
    if hasattr(os, "nice"):
        os.nice(10)
    _limit_memory(int(argv[0]) if argv else 0)
    try:
        serve(sys.stdin.buffer, sys.stdout.buffer)
    except MemoryError:
        os._exit(EXIT_MEMORY)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
