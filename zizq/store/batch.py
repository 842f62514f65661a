"""Write batches: the atomic unit of every change, and how it keeps the indexes exact.

A WriteBatch holds RocksDB operations across column families plus the counter
deltas they imply; `Store.write` (zizq.store.db) applies both. A deferred batch
records its operations instead (OpLog), for the commit lanes (zizq.store.commit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgpack
import rocksdict

from zizq.store import layout

if TYPE_CHECKING:
    from zizq.store.db import Store

# (queue, type, status): the dimensions of the secondary indexes. A job's
# IndexKey decides which index entries it has and which counter it counts in.
IndexKey = tuple[str, str, str]


def index_key_of(record: dict) -> IndexKey:
    return record["queue"], record["type"], record["status"]


_INDEX_TAGS = (layout.INDEX_QUEUE, layout.INDEX_TYPE, layout.INDEX_STATUS)  # IndexKey order


class OpLog:
    """Stands in for a rocksdict.WriteBatch: records the operations to replay later.

    A deferred batch (Store.batch(deferred=True)) writes into one of these, so
    that the commit lanes (zizq.store.commit) can put the operations of many
    small requests into one RocksDB write; a request that never commits
    leaves nothing behind in the shared write. Column families are recorded
    by name, never as handles: a recording kept alive by a request (an error's
    traceback) must not keep a failed database open past a reopen.
    """

    __slots__ = ("ops", "_names")

    def __init__(self, store: Store) -> None:
        self.ops: list[tuple] = []
        self._names = store.handle_names

    def _name(self, column_family) -> str | None:
        if column_family is None:
            return None
        try:
            return self._names[id(column_family)]
        except KeyError:
            raise ValueError("a write batch names a column family of another database") from None

    def put(self, key: bytes, value: bytes, column_family=None) -> None:
        self.ops.append((0, key, value, self._name(column_family)))

    def delete(self, key: bytes, column_family=None) -> None:
        self.ops.append((1, key, None, self._name(column_family)))

    def delete_range(self, start: bytes, end: bytes, column_family=None) -> None:
        self.ops.append((2, start, end, self._name(column_family)))


def replay(ops: list[tuple], raw: rocksdict.WriteBatch, store: Store) -> None:
    """Apply recorded operations (OpLog.ops) to a real write batch of `store`, in order."""
    put, delete, delete_range = raw.put, raw.delete, raw.delete_range
    for kind, first, second, name in ops:
        column_family = None if name is None else getattr(store, name)
        if kind == 0:
            if column_family is None:
                put(first, second)
            else:
                put(first, second, column_family)
        elif kind == 1:
            if column_family is None:
                delete(first)
            else:
                delete(first, column_family)
        elif column_family is None:
            delete_range(first, second)
        else:
            delete_range(first, second, column_family)


class WriteBatch:
    """An atomic set of changes across column families, committed in one write.

    Every job write names the job's previous IndexKey (None for a new job), so
    the batch keeps the secondary indexes and the per-(queue, type, status)
    counters exact without reading anything back.
    """

    __slots__ = ("_store", "generation", "raw", "count", "deltas")

    def __init__(self, store: Store, deferred: bool = False) -> None:
        self._store = store
        # Column family handles belong to one open database: a batch built
        # before a reopen must not be written after it.
        self.generation = store.generation
        self.raw: rocksdict.WriteBatch | OpLog = (
            OpLog(store) if deferred else rocksdict.WriteBatch(raw_mode=True)
        )
        self.count = 0
        self.deltas: dict[IndexKey, int] = {}  # a plain dict: Counter() costs ~1 us to make

    def materialize(self) -> None:
        """Turn a deferred batch into a real one (to be written on its own)."""
        if isinstance(self.raw, OpLog):
            raw = rocksdict.WriteBatch(raw_mode=True)
            replay(self.raw.ops, raw, self._store)
            self.raw = raw

    def _index(
        self, job_id: str, key: IndexKey, present: bool, dims: tuple[int, ...] = (0, 1, 2)
    ) -> None:
        handle = self._store.h_index
        id_bytes = job_id.encode("ascii")
        for dim in dims:
            entry = layout.index_prefix(_INDEX_TAGS[dim], key[dim]) + id_bytes
            if present:
                self.raw.put(entry, b"", handle)
            else:
                self.raw.delete(entry, handle)

    def _count(self, key: IndexKey, delta: int) -> None:
        deltas = self.deltas
        deltas[key] = deltas.get(key, 0) + delta

    def put_job(self, job_id: str, record: dict, previous: IndexKey | None) -> None:
        self.raw.put(layout.job_key(job_id), msgpack.packb(record), self._store.h_jobs)
        self.count += 1
        current = index_key_of(record)
        if current == previous:
            return
        if previous is None:
            self._index(job_id, current, present=True)
        else:
            # Usually only the status moves: touch only the dimensions that changed.
            changed = tuple(dim for dim in (0, 1, 2) if current[dim] != previous[dim])
            self._index(job_id, previous, present=False, dims=changed)
            self._index(job_id, current, present=True, dims=changed)
            self._count(previous, -1)
        self._count(current, 1)

    def put_payload(self, job_id: str, payload_bytes: bytes) -> None:
        self.raw.put(layout.job_key(job_id), payload_bytes, self._store.h_payloads)
        self.count += 1

    def put_keyed(self, index_key: bytes, job_id: str) -> None:
        """Point a unique or batch key (layout.keyed_index_key) at a job."""
        self.raw.put(index_key, job_id.encode("ascii"), self._store.h_index)
        self.count += 1

    def delete_keyed(self, index_key: bytes) -> None:
        self.raw.delete(index_key, self._store.h_index)
        self.count += 1

    def put_cron(self, key: bytes, record: dict) -> None:
        """A cron group or entry record (layout.cron_group_key / cron_entry_key)."""
        self.raw.put(key, msgpack.packb(record))
        self.count += 1

    def delete_cron(self, key: bytes) -> None:
        self.raw.delete(key)
        self.count += 1

    def delete_cron_range(self, start: bytes, end: bytes) -> None:
        """Every cron key in [start, end): a group's entries, or all of cron."""
        self.raw.delete_range(start, end)
        self.count += 1

    def put_budget(self, key: str, record: dict) -> None:
        """A budget policy record (zizq.queue.budgets)."""
        self.raw.put(layout.budget_key(key), msgpack.packb(record))
        self.count += 1

    def delete_budget(self, key: str) -> None:
        self.raw.delete(layout.budget_key(key))
        self.count += 1

    def delete_every_budget(self) -> None:
        self.raw.delete_range(layout.BUDGET_PREFIX, layout.BUDGET_END)
        self.count += 1

    def put_error(self, job_id: str, attempt: int, error: dict) -> None:
        self.raw.put(layout.error_key(job_id, attempt), msgpack.packb(error), self._store.h_errors)
        self.count += 1

    def delete_job(self, job_id: str, record: dict) -> None:
        """Remove a job (`record`: as stored) with its payload, index entries and every
        recorded error.

        A job that never failed (`attempts` 0: errors are written only with a
        failure, which counts an attempt) has no errors to delete, and gets no
        range tombstone: one per acked job made every write and flush dearer.
        """
        key = layout.job_key(job_id)
        self.raw.delete(key, self._store.h_jobs)
        self.raw.delete(key, self._store.h_payloads)
        if record.get("attempts", 1) != 0:
            start, end = layout.error_key_range(job_id)
            self.raw.delete_range(start, end, self._store.h_errors)
        previous = index_key_of(record)
        self._index(job_id, previous, present=False)
        self._count(previous, -1)
        self.count += 3

    def delete_everything(self) -> None:
        """Every job, payload, error and index entry (POST /reset)."""
        for handle in (
            self._store.h_jobs,
            self._store.h_payloads,
            self._store.h_errors,
            self._store.h_index,
        ):
            self.raw.delete_range(b"\x00", b"\xff" * 64, handle)
        for key, count in self._store.counts.items():
            self._count(key, -count)
        self.count += 4
