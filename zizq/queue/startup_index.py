"""The start-up index: the in-memory indexes saved at a clean shutdown.

Rebuilding the indexes means reading and decoding every job record (about
3 us a job in Python: 30 s or more for 10 M jobs). At a clean shutdown,
once nothing can write any more, the server saves what that scan would find
(ready jobs per queue with their priorities, scheduled and retained jobs with
their times, the per-(queue, type, status) counters, and what draws on each
budget) to `<root>/startup-index.msgpack`; the next start reads it back in a
few seconds instead.

It is used only if it describes exactly the store being opened: it records
the database's identity (RocksDB's IDENTITY file) and its last sequence
number, and any later write, by this server or any other tool, changes that
number. It is deleted before the server writes anything, so a crash after a
start always falls back to the full scan (zizq.queue.recovery), as does a
file that is missing, stale, truncated or unreadable.

What is saved is exactly the running server's own view: every ready job is in
the ready index, parked on a budget, or held by a fold (in-flight jobs went
back to ready when their streams closed). Entries that went stale (a job
acked or patched since it was indexed) are saved too; they are checked
against the stored record when reached, as always.

Format: a msgpack stream of a header map, then chunks `["r", queue, [priority,
id, ...]]`, `["s", [ready_at, id, ...]]`, `["x", [purge_at, id, ...]]`, then
`["end", entries]`, so that a cut-off file is recognised.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgpack

from zizq.logs import log_event
from zizq.queue.recovery import Recovered
from zizq.store import Store

logger = logging.getLogger("zizq.engine")

FILE_NAME = "startup-index.msgpack"
FORMAT = 1
CHUNK = 65_536  # entries per chunk: bounded memory when writing and reading


def path_of(store: Store) -> Path:
    return store.root_dir / FILE_NAME


def _identity(store: Store) -> str | None:
    try:
        return (store.path / "IDENTITY").read_text().strip()
    except OSError:
        return None


def _flat(pairs: Iterable[tuple[int, str]]) -> Iterator[list]:
    """(number, id) pairs as flat lists [n, id, n, id, ...] of at most CHUNK pairs."""
    chunk: list = []
    for number, job_id in pairs:
        chunk.append(number)
        chunk.append(job_id)
        if len(chunk) >= 2 * CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def save(
    store: Store,
    ready: dict[str, list[tuple[int, str]]],
    scheduled: Iterable[tuple[int, str]],
    retained: Iterable[tuple[int, str]],
    costs: list[tuple[str, int, int]],
) -> bool:
    """Write the start-up index (atomically: a temp file, fsync, rename). False if not."""
    identity = _identity(store)
    if identity is None:
        return False
    target = path_of(store)
    temp = target.with_suffix(".tmp")
    entries = 0
    try:
        sequence = store.db.latest_sequence_number()
        with temp.open("wb") as out:
            header = {
                "format": FORMAT,
                "identity": identity,
                "sequence": sequence,
                "counts": [[q, t, s, n] for (q, t, s), n in store.counts.items()],
                "costs": [list(row) for row in costs],
            }
            out.write(msgpack.packb(header))
            for queue, heap in ready.items():
                for chunk in _flat(heap):
                    out.write(msgpack.packb(["r", queue, chunk]))
                    entries += len(chunk) // 2
            for tag, pairs in (("s", scheduled), ("x", retained)):
                for chunk in _flat(pairs):
                    out.write(msgpack.packb([tag, chunk]))
                    entries += len(chunk) // 2
            out.write(msgpack.packb(["end", entries]))
            out.flush()
            os.fsync(out.fileno())
        if store.db.latest_sequence_number() != sequence:
            raise OSError("the store was written while the index was saved")
        os.replace(temp, target)
        _sync_dir(target.parent)
    except OSError as exc:
        log_event(logger, logging.WARNING, "start-up index not saved", error=str(exc))
        temp.unlink(missing_ok=True)
        return False
    log_event(logger, logging.INFO, "start-up index saved", entries=entries, file=str(target))
    return True


def load(store: Store) -> Recovered | None:
    """The saved indexes if they describe this store exactly; the file is removed either way."""
    path = path_of(store)
    if not path.exists():
        return None
    try:
        found = _read(store, path)
    except (OSError, ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        found = None
        log_event(logger, logging.WARNING, "start-up index unreadable: scanning", error=str(exc))
    try:
        path.unlink()  # before any write: after a crash, the next start scans
        _sync_dir(path.parent)
    except OSError as exc:
        log_event(logger, logging.WARNING, "start-up index not removed: scanning", error=str(exc))
        return None
    return found


def _read(store: Store, path: Path) -> Recovered | None:
    with path.open("rb") as source:
        unpacker = msgpack.Unpacker(source, max_buffer_size=64 * 1024 * 1024)
        header = next(unpacker)
        if header.get("format") != FORMAT:
            return _stale("another format")
        if header.get("identity") != _identity(store):
            return _stale("another database")
        if header.get("sequence") != store.db.latest_sequence_number():
            return _stale("the store changed after it was saved")
        found = Recovered()
        entries = 0
        for item in unpacker:
            tag = item[0]
            if tag == "end":
                if item[1] != entries:
                    raise ValueError("entry count differs from the trailer")
                break
            if tag == "r":
                pairs = _pairs(item[2])
                heap = found.ready.get(item[1])
                if heap is None:
                    found.ready[item[1]] = pairs
                else:
                    heap.extend(pairs)
            elif tag == "s":
                pairs = _pairs(item[1])
                found.scheduled.extend(pairs)
            elif tag == "x":
                pairs = _pairs(item[1])
                found.retained.extend(pairs)
            else:
                raise ValueError(f"unknown chunk {tag!r}")
            entries += len(pairs)
        else:
            raise ValueError("the file ends before its trailer")
    store.counts.clear()
    for queue, job_type, status, count in header["counts"]:
        store.counts[(queue, job_type, status)] = count
    found.costs = [(key, cost, count) for key, cost, count in header["costs"]]
    log_event(
        logger,
        logging.INFO,
        "in-memory indexes loaded from the start-up index",
        ready=sum(len(heap) for heap in found.ready.values()),
        scheduled=len(found.scheduled),
        retained=len(found.retained),
    )
    return found


def _pairs(flat: list) -> list[tuple[int, str]]:
    values = iter(flat)
    return list(zip(values, values, strict=True))


def _stale(why: str) -> None:
    log_event(logger, logging.INFO, "start-up index not used: scanning", reason=why)
    return None


def _sync_dir(directory: Path) -> None:
    if os.name == "nt":
        return  # directories cannot be opened for fsync on Windows
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
