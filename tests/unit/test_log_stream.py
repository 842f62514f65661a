"""The log handler's stdout has a buffer of its own, even under PYTHONUNBUFFERED=1."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator

from zizq import logs


@contextlib.contextmanager
def unbuffered_stdout(monkeypatch) -> Iterator[int]:
    """stdout as Python makes it under PYTHONUNBUFFERED=1 (every write goes straight
    out), over a pipe; yields the pipe's read end. Used inside the test body: pytest
    puts its own capture back on sys.stdout between a fixture's setup and the test."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    try:
        with (
            io.TextIOWrapper(io.FileIO(write_end, "w"), write_through=True) as stream,
            monkeypatch.context() as patch,
        ):
            patch.setattr(sys, "stdout", stream)
            yield read_end
    finally:
        os.close(read_end)


def _handler() -> logging.Handler:
    handler = logs.BatchingStreamHandler(logs._buffered_stdout())
    handler.setFormatter(logs.CompactFormatter())
    return handler


def _readable(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""


def test_request_lines_wait_in_a_buffer_until_the_flush(monkeypatch):
    with unbuffered_stdout(monkeypatch) as out:
        handler = _handler()
        handler.emit(logging.LogRecord("zizq.http", logging.INFO, "", 0, "request", (), None))
        assert _readable(out) == b""  # not one write syscall per line
        handler.flush()
        assert b"zizq.http: request" in _readable(out)


def test_important_lines_are_flushed_at_once(monkeypatch):
    with unbuffered_stdout(monkeypatch) as out:
        handler = _handler()
        record = logging.LogRecord("zizq.server", logging.WARNING, "", 0, "disk full", (), None)
        handler.emit(record)
        assert b"disk full" in _readable(out)


def test_a_stdout_that_is_not_a_file_is_used_as_it_is(monkeypatch):
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stdout", captured)
    assert logs._buffered_stdout() is captured
