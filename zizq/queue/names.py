"""Names clients choose: queues, types, budget keys, cron groups; and integer bounds.

A name is 1..MAX_NAME_BYTES UTF-8 bytes, with no leading or trailing whitespace
(query strings strip it, so such a name could never be filtered on) and none
of RESERVED_NAME_CHARS (comma lists and globs in filters use them).
"""

from __future__ import annotations

import functools
from typing import Any

from zizq.queue.errors import InvalidInput

RESERVED_NAME_CHARS = frozenset(",*?[]{}\\")
MAX_NAME_BYTES = 1024
MAX_I64 = 2**63 - 1
MAX_I32 = 2**31 - 1


def check_name(value: Any, label: str, where: str = "") -> str:
    """A queue or type name, from a body or a query string; `where` + `label` name it."""
    if type(value) is not str:
        raise InvalidInput(f"{where}{label}: must be a string")
    # Length first: nothing longer than a valid name reaches the cache below.
    problem = name_problem(value) if len(value) <= MAX_NAME_BYTES else _TOO_LONG
    if problem is not None:
        raise InvalidInput(f"{where}{label}: {problem}")
    return value


_TOO_LONG = f"must be at most {MAX_NAME_BYTES} bytes (UTF-8)"


@functools.lru_cache(maxsize=4096)  # <= 4096 names of <= 1 KiB: a few MiB at most
def name_problem(name: str) -> str | None:
    # Cached: a bulk enqueue repeats the same few queue and type names many times.
    if not name:
        return "must not be empty"
    # Up to 256 characters cannot exceed 1024 bytes; only longer names need encoding.
    if (
        len(name) > MAX_NAME_BYTES // 4
        and len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES
    ):
        return _TOO_LONG
    if name[0].isspace() or name[-1].isspace():
        return "must not start or end with whitespace"
    bad = RESERVED_NAME_CHARS.intersection(name)
    if bad:
        return f"must not contain the reserved characters {' '.join(sorted(bad))}"
    return None


def shown_key(key: Any) -> str:
    """A client's key as an error message may quote it: short, whatever its type."""
    text = key if isinstance(key, str) else repr(key)
    return text if len(text) <= 64 else text[:64] + "..."
