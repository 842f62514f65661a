"""Opening the RocksDB store, writing batches and reading back.

A write RocksDB cannot complete (disk full, I/O error) puts the store in a
failed state: every later write raises StoreUnavailable at once, reads keep
working, and `failure` says why. RocksDB resumes by itself once a memtable's
worth of space (64 MiB) is free, which probe() notices; otherwise the owner
reopens the database (detach_failed, then attach_writable; driven by
zizq.queue.maintenance), which needs only room to replay the WAL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import rocksdict

from zizq.store import layout
from zizq.store.batch import (  # noqa: F401 (re-exported)
    IndexKey,
    OpLog,
    WriteBatch,
    index_key_of,
    replay,
)
from zizq.store.handles import Handles, close_handles, open_handles

logger = logging.getLogger("zizq.store")


class StoreError(RuntimeError):
    """Base of every failure the store reports; the message is meant for the user."""


class StoreLockedError(StoreError):
    """Another process already has this root directory open."""


class SchemaVersionError(StoreError):
    """The root directory was written by a layout this build cannot read."""


class StoreUnavailable(StoreError):
    """The store cannot write right now (disk full, I/O error, being reopened).

    Nothing of the failed call was stored. The API answers 503 with the reason.
    Reads raise it only after close().
    """


# RocksDB reports its Status as a bare Exception; these prefixes are our own
# mistakes (a bug, not a failed disk) and must not put the store in a failed state.
_CALLER_ERRORS = ("Invalid argument", "Not implemented", "Not supported")
_PROBE_KEY = b"zizq:probe"  # default column family; written only to test the store
REOPEN_HEADROOM = 4 * 1024 * 1024  # free bytes wanted beyond the WAL before reopening


def _is_store_failure(exc: BaseException) -> bool:
    return type(exc) is Exception and not str(exc).startswith(_CALLER_ERRORS)


class Store:
    """The RocksDB database under `<root_dir>/data`."""

    def __init__(self, root_dir: Path, cache_size: int = 256 * 1024 * 1024) -> None:
        self.root_dir = Path(root_dir)
        self.path = self.root_dir / layout.DATA_DIR_NAME
        self._cache = rocksdict.Cache(cache_size)  # one block cache shared by every CF
        self._sync_options = rocksdict.WriteOptions()
        self._sync_options.sync = True
        self._buffered_options = rocksdict.WriteOptions()
        # Jobs per (queue, type, status), kept exact by every committed batch;
        # they answer counts and GET /queues without touching the disk.
        self.counts: Counter[IndexKey] = Counter()
        # In the fsync commit mode every write is synced before it counts as done
        # (dispatch, requeues, promotions, reaping too), as the reference does.
        self.sync_writes = False
        # Why writes fail right now (None: healthy). Set from any thread.
        self.failure: str | None = None
        self.failed_at: float | None = None  # time.monotonic() of the first failed write
        # Called (on the failing thread) when the store enters the failed state.
        self.on_failure: Callable[[str], None] | None = None
        self.generation = 0  # bumped whenever the database objects are swapped (reopen)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create {self.path}: {exc.strerror}") from None
        self._install(self._open())
        try:
            self._check_schema_version()
        except BaseException:
            self.close()
            raise

    def _open(self, read_only: bool = False) -> Handles:
        try:
            return open_handles(self.path, self._cache, read_only)
        except Exception as exc:  # rocksdict raises a bare Exception with RocksDB's text
            if "lock" not in str(exc).lower():
                raise StoreUnavailable(f"{exc}") from None
            if self.generation:  # our own failed database is not fully closed yet
                raise StoreUnavailable("the failed database is still in use") from None
            raise StoreLockedError(
                f"root directory {self.root_dir} is already in use by another zizq process"
            ) from None

    def _install(self, handles: Handles) -> None:
        """Make these the objects every read and write uses (on the loop thread)."""
        self._handles = handles
        self.db = handles.db
        self.jobs = handles.jobs
        self.payloads = handles.payloads
        self.errors = handles.errors
        self.index = handles.index
        self.h_jobs = handles.h_jobs
        self.h_payloads = handles.h_payloads
        self.h_errors = handles.h_errors
        self.h_index = handles.h_index
        # id() of each column family handle -> its name, for recorded batches
        # (zizq.store.batch.OpLog), which must hold names, never handles. The
        # handles live as long as their database, so no id is reused meanwhile.
        self.handle_names = {
            id(handles.h_jobs): "h_jobs",
            id(handles.h_payloads): "h_payloads",
            id(handles.h_errors): "h_errors",
            id(handles.h_index): "h_index",
        }
        self.writable = handles.writable

    def _check_schema_version(self) -> None:
        stored = self.db.get(layout.META_SCHEMA_VERSION)
        if stored is None:
            try:
                self.db.put(layout.META_SCHEMA_VERSION, str(layout.SCHEMA_VERSION).encode())
            except Exception as exc:
                raise StoreUnavailable(f"cannot write to the store in {self.path}: {exc}") from None
            return
        version = int(stored)
        if version != layout.SCHEMA_VERSION:
            # Later layouts add their migrations here, keyed by the stored version.
            raise SchemaVersionError(
                f"root directory {self.root_dir} has schema version {version}; "
                f"this zizq reads version {layout.SCHEMA_VERSION}"
            )

    # -- writes ---------------------------------------------------------

    def batch(self, deferred: bool = False) -> WriteBatch:
        """A new write batch; `deferred` records it for a commit lane (zizq.store.commit)."""
        if not self.writable:
            raise StoreUnavailable(self._reopening_reason())
        return WriteBatch(self, deferred)

    def write_raw(self, batch: WriteBatch, sync: bool = False) -> None:
        """Apply a batch atomically, without touching the counters (safe off the loop thread).

        RocksDB releases the GIL while it syncs, so a sync from a helper thread
        does not stall the event loop. Raises StoreUnavailable (nothing written)
        while the store is failed.
        """
        if self.failure is not None:
            raise StoreUnavailable(self.failure)
        if batch.generation != self.generation:
            raise StoreUnavailable("the store was reopened while this write was prepared")
        batch.materialize()  # a deferred batch written on its own (a no-op otherwise)
        with self._write_errors():
            self.db.write(batch.raw, self._sync_options if sync else self._buffered_options)

    def sync_wal(self) -> None:
        """fsync the write-ahead log (group commit); StoreUnavailable if that fails."""
        if self.failure is not None or not self.writable:
            raise StoreUnavailable(self._reopening_reason())
        with self._write_errors():
            self.db.flush_wal(True)

    @contextlib.contextmanager
    def _write_errors(self) -> Iterator[None]:
        """RocksDB's write errors as StoreUnavailable; a real failure enters the failed state."""
        try:
            yield
        except rocksdict.DbClosedError:
            raise StoreUnavailable(self._reopening_reason()) from None
        except Exception as exc:
            if not _is_store_failure(exc):
                raise
            raise StoreUnavailable(self._failed(str(exc))) from None

    def _failed(self, reason: str) -> str:
        """Enter (or stay in) the failed state; returns the reason to report."""
        if self.failure is None:
            self.failed_at = time.monotonic()
            self.failure = f"storage write failed: {reason}"
            callback = self.on_failure
            if callback is not None:
                callback(self.failure)
        return self.failure

    def _reopening_reason(self) -> str:
        return self.failure or "the store is closed or being reopened"

    def applied(self, batch: WriteBatch) -> None:
        """Count a committed batch (on the loop thread, which owns the counters)."""
        counts = self.counts
        for key, delta in batch.deltas.items():
            total = counts[key] + delta
            if total:
                counts[key] = total
            else:
                del counts[key]

    def write(self, batch: WriteBatch, sync: bool | None = None) -> None:
        """Write and count a batch; `sync` defaults to `sync_writes` (the fsync commit mode)."""
        self.write_raw(batch, self.sync_writes if sync is None else sync)
        self.applied(batch)

    # -- reads ----------------------------------------------------------

    # Reads keep working while writes fail, and during a reopen (from a
    # read-only instance). A closed database (only after close()) is
    # StoreUnavailable, never a crash.

    def get_job(self, job_id: str) -> dict | None:
        try:
            raw = self.jobs.get(layout.job_key(job_id))
        except rocksdict.DbClosedError:
            raise StoreUnavailable(self._reopening_reason()) from None
        return None if raw is None else msgpack.unpackb(raw)

    def get_payload(self, job_id: str) -> bytes | None:
        try:
            return self.payloads.get(layout.job_key(job_id))
        except rocksdict.DbClosedError:
            raise StoreUnavailable(self._reopening_reason()) from None

    def get_payloads(self, job_ids: list[str]) -> list[bytes | None]:
        try:
            return self.payloads.get([layout.job_key(i) for i in job_ids])
        except rocksdict.DbClosedError:
            raise StoreUnavailable(self._reopening_reason()) from None

    def get_keyed(self, index_key: bytes) -> str | None:
        """The job a unique or batch key points at (it may be gone or out of scope)."""
        try:
            raw = self.index.get(index_key)
        except rocksdict.DbClosedError:
            raise StoreUnavailable(self._reopening_reason()) from None
        return None if raw is None else raw.decode("ascii")

    def iter_keyed(self, tag: bytes) -> Iterator[tuple[bytes, str]]:
        """Every (index key, job id) of one keyed index (layout.INDEX_UNIQUE or INDEX_BATCH)."""
        for key, raw in self.index.items(from_key=tag):
            if not key.startswith(tag):
                return
            yield key, raw.decode("ascii")

    def iter_crons(self) -> Iterator[tuple[bytes, dict]]:
        """Every cron group and entry record, in key order (groups first)."""
        try:
            for key, raw in self.db.items(from_key=layout.CRON_PREFIX):
                if not key.startswith(layout.CRON_PREFIX):
                    return
                yield key, msgpack.unpackb(raw)
        except rocksdict.DbClosedError:
            raise StoreUnavailable(self._reopening_reason()) from None

    def iter_budgets(self) -> Iterator[tuple[str, dict]]:
        """Every budget policy record, by key."""
        try:
            for key, raw in self.db.items(from_key=layout.BUDGET_PREFIX):
                if not key.startswith(layout.BUDGET_PREFIX):
                    return
                yield key[len(layout.BUDGET_PREFIX) :].decode("utf-8"), msgpack.unpackb(raw)
        except rocksdict.DbClosedError:
            raise StoreUnavailable(self._reopening_reason()) from None

    def iter_jobs(self) -> Iterator[tuple[str, dict]]:
        for key, raw in self.jobs.items():
            yield key.decode("ascii"), msgpack.unpackb(raw)

    def iter_job_ids(self, after: str | None = None, backwards: bool = False) -> Iterator[str]:
        """Every job id in id order (or reverse), strictly after `after` in that direction."""
        start = None if after is None else layout.job_key(after)
        for key in self.jobs.keys(backwards=backwards, from_key=start):
            if key == start:
                continue
            yield key.decode("ascii")

    def iter_index(
        self, tag: bytes, value: str, after: str | None = None, backwards: bool = False
    ) -> Iterator[str]:
        """Ids with this index value in id order (or reverse), strictly after `after`."""
        prefix = layout.index_prefix(tag, value)
        if after is not None:
            start = prefix + after.encode("ascii")
        elif backwards:
            start = prefix + b"\xff"
        else:
            start = prefix
        for key in self.index.keys(backwards=backwards, from_key=start):
            if not key.startswith(prefix):
                return
            if key == start:
                continue
            yield key[len(prefix) :].decode("ascii")

    def iter_errors(
        self, job_id: str, after: int | None = None, backwards: bool = False
    ) -> Iterator[tuple[int, dict]]:
        start, end = layout.error_key_range(job_id)
        if after is not None:
            from_key = layout.error_key(job_id, after)
        else:
            from_key = end if backwards else start
        for key, raw in self.errors.items(backwards=backwards, from_key=from_key):
            if not start <= key < end:
                return
            attempt = int.from_bytes(key[-4:], "big")
            if attempt == after:
                continue
            yield attempt, msgpack.unpackb(raw)

    def get_error(self, job_id: str, attempt: int) -> dict | None:
        try:
            raw = self.errors.get(layout.error_key(job_id, attempt))
        except rocksdict.DbClosedError:
            raise StoreUnavailable(self._reopening_reason()) from None
        return None if raw is None else msgpack.unpackb(raw)

    # -- maintenance ----------------------------------------------------

    def disk_usage(self) -> int:
        """Bytes the database occupies on disk."""
        total = 0
        for path in self.path.rglob("*"):
            with contextlib.suppress(FileNotFoundError):  # a compaction just removed it
                if path.is_file():
                    total += path.stat().st_size
        return total

    def compact(self) -> None:
        """Full compaction of every column family (slow; releases the GIL: run it on a thread).

        StoreUnavailable if RocksDB cannot write (a full disk: compaction needs room).
        """
        options = rocksdict.CompactOptions()
        # Rewrite the bottom level too: that is where deleted jobs' tombstones meet their data.
        options.set_bottommost_level_compaction(rocksdict.BottommostLevelCompaction.force())
        try:
            for name in (*layout.COLUMN_FAMILIES, None):
                target = self.db if name is None else self.db.get_column_family(name)
                target.compact_range(None, None, options)
        except rocksdict.DbClosedError:
            raise StoreUnavailable(self._reopening_reason()) from None
        except Exception as exc:
            if not _is_store_failure(exc):
                raise
            raise StoreUnavailable(f"compaction failed: {exc}") from None

    # -- failure and recovery ------------------------------------------

    def probe(self) -> bool:
        """Try one tiny write; if it lands, the store is healthy again (clears `failure`).

        RocksDB resumes by itself once a memtable's worth of space is free; this
        is how we notice. Call it on the loop thread.
        """
        if not self.writable:
            return False
        batch = rocksdict.WriteBatch(raw_mode=True)
        batch.put(_PROBE_KEY, str(time.time_ns()).encode())
        try:
            self.db.write(batch, self._buffered_options)
        except Exception:
            return False
        self.failure = None
        self.failed_at = None
        return True

    def free_bytes(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def room_to_reopen(self) -> bool:
        """Whether the disk has room for an open: it replays the WAL into new table files."""
        try:
            wal = sum(p.stat().st_size for p in self.path.glob("*.log"))
            return self.free_bytes() >= wal + REOPEN_HEADROOM
        except OSError:
            return False

    # A reopen clears a background error RocksDB does not resume from by
    # itself. In two steps, each on the loop thread and quick, so no request
    # sees a half-swapped store; the slow closes happen on a helper thread
    # (zizq.store.handles.close_handles) in between and after.

    def detach_failed(self) -> Handles:
        """Step 1: serve reads from a read-only instance; returns the failed set to close.

        Raises StoreUnavailable (and changes nothing) if even that cannot open.
        """
        read_only = self._open(read_only=True)
        failed = self._handles
        self.generation += 1
        self._install(read_only)
        return failed

    def attach_writable(self) -> Handles:
        """Step 2, once the failed set is closed: open for writing; returns the read-only set.

        Raises StoreUnavailable if the open fails (reads stay on the read-only
        instance; try again later). A successful open clears `failure`.
        """
        writable = self._open()
        read_only = self._handles
        self.generation += 1
        self._install(writable)
        if not self.probe():
            raise StoreUnavailable(self.failure or "the store cannot write after reopening")
        return read_only

    def close(self) -> None:
        if not self.writable:
            close_handles(self._handles)
            return
        try:
            self.db.flush_wal(True)
            self.db.close()
        except Exception as exc:
            # A failed store still closes: acknowledged writes are in the WAL
            # already and are replayed at the next start.
            logger.warning("closed a failed store: %s", exc)
