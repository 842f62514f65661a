"""One INFO line per HTTP request: method, path, status, duration, bytes, worker id.

Costs one `isEnabledFor` check per request when INFO is off. The ASGI wrapper
(zizq.api.app) fills in `status` and `bytes` as the response goes out; the line is
written when the response ends (for a take stream: when the stream closes).
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("zizq.http")

# Every request line is the same record but for its time and fields: copy the
# attributes of one made up front instead of running Logger.log's machinery per
# request (half the cost of the line). Handlers and formatters see an ordinary record.
_PROTOTYPE = dict(
    logger.makeRecord(logger.name, logging.INFO, "(unknown file)", 0, "request", (), None).__dict__
)
_LogRecord = logging.LogRecord


def _record(fields: dict) -> logging.LogRecord:
    record = _LogRecord.__new__(_LogRecord)
    attrs = record.__dict__
    attrs.update(_PROTOTYPE)
    created = time.time()
    attrs["created"] = created
    attrs["msecs"] = (created - int(created)) * 1000
    attrs["relativeCreated"] = (created - logging._startTime) * 1000
    attrs["fields"] = fields
    return record


def enabled() -> bool:
    return logger.isEnabledFor(logging.INFO)


class RequestLog:
    """One request's line: the ASGI wrapper sets `status` and `bytes`, then `finish`."""

    __slots__ = ("_scope", "_started", "status", "bytes")

    def __init__(self, scope: dict) -> None:
        self._scope = scope
        self._started = time.perf_counter()
        self.status = 0
        self.bytes = 0

    def finish(self) -> None:
        scope = self._scope
        fields = {
            "method": scope.get("method"),
            "path": scope.get("path"),
            "status": self.status or None,  # None: the client went away before any answer
            "duration_ms": round((time.perf_counter() - self._started) * 1000, 2),
            "bytes": self.bytes,
        }
        worker = _worker_id(scope)
        if worker is not None:
            fields["worker_id"] = worker
        logger.handle(_record(fields))


def _worker_id(scope: dict) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"worker-id":
            # Printable ASCII only, bounded: the header is the client's to choose.
            text = value[:128].decode("ascii", "replace")
            return "".join(ch if ch.isprintable() else "?" for ch in text)
    return None
