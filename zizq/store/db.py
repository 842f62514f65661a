"""Opening the RocksDB store, writing batches and reading back."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgpack
import rocksdict

from zizq.store import layout

# (queue, type, status): the dimensions of the secondary indexes. A job's
# IndexKey decides which index entries it has and which counter it counts in.
IndexKey = tuple[str, str, str]


def index_key_of(record: dict) -> IndexKey:
    return record["queue"], record["type"], record["status"]


_INDEX_TAGS = (layout.INDEX_QUEUE, layout.INDEX_TYPE, layout.INDEX_STATUS)  # IndexKey order


class StoreLockedError(RuntimeError):
    """Another process already has this root directory open."""


class SchemaVersionError(RuntimeError):
    """The root directory was written by a layout this build cannot read."""


def _options(cache: rocksdict.Cache) -> rocksdict.Options:
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.increase_parallelism(2)
    table = rocksdict.BlockBasedOptions()
    table.set_block_cache(cache)
    table.set_bloom_filter(10, False)
    opts.set_block_based_table_factory(table)
    opts.set_max_background_jobs(2)
    # Queues delete as much as they write: let RocksDB compact away SST files
    # that are mostly tombstones instead of waiting for size-triggered compactions.
    opts.add_compact_on_deletion_collector_factory(10_000, 5_000, 0.5)
    return opts


class WriteBatch:
    """An atomic set of changes across column families, committed in one write.

    Every job write names the job's previous IndexKey (None for a new job), so
    the batch keeps the secondary indexes and the per-(queue, type, status)
    counters exact without reading anything back.
    """

    __slots__ = ("_store", "raw", "count", "deltas")

    def __init__(self, store: Store) -> None:
        self._store = store
        self.raw = rocksdict.WriteBatch(raw_mode=True)
        self.count = 0
        self.deltas: Counter[IndexKey] = Counter()

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
            self.deltas[previous] -= 1
        self.deltas[current] += 1

    def put_payload(self, job_id: str, payload_bytes: bytes) -> None:
        self.raw.put(layout.job_key(job_id), payload_bytes, self._store.h_payloads)
        self.count += 1

    def put_error(self, job_id: str, attempt: int, error: dict) -> None:
        self.raw.put(layout.error_key(job_id, attempt), msgpack.packb(error), self._store.h_errors)
        self.count += 1

    def delete_job(self, job_id: str, previous: IndexKey) -> None:
        """Remove a job with its payload, index entries and every recorded error."""
        key = layout.job_key(job_id)
        self.raw.delete(key, self._store.h_jobs)
        self.raw.delete(key, self._store.h_payloads)
        start, end = layout.error_key_range(job_id)
        self.raw.delete_range(start, end, self._store.h_errors)
        self._index(job_id, previous, present=False)
        self.deltas[previous] -= 1
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
            self.deltas[key] -= count
        self.count += 4


class Store:
    """The RocksDB database under `<root_dir>/data`."""

    def __init__(self, root_dir: Path, cache_size: int = 256 * 1024 * 1024) -> None:
        self.root_dir = Path(root_dir)
        self.path = self.root_dir / layout.DATA_DIR_NAME
        self.path.mkdir(parents=True, exist_ok=True)
        cache = rocksdict.Cache(cache_size)  # one block cache shared by every column family
        cf_opts = {name: _options(cache) for name in layout.COLUMN_FAMILIES}
        try:
            self.db = rocksdict.Rdict(str(self.path), _options(cache), column_families=cf_opts)
        except Exception as exc:  # rocksdict raises a bare Exception with RocksDB's text
            if "lock" in str(exc).lower():
                raise StoreLockedError(
                    f"root directory {self.root_dir} is already in use by another zizq process"
                ) from exc
            raise
        self.h_jobs = self.db.get_column_family_handle(layout.CF_JOBS)
        self.h_payloads = self.db.get_column_family_handle(layout.CF_PAYLOADS)
        self.h_errors = self.db.get_column_family_handle(layout.CF_ERRORS)
        self.h_index = self.db.get_column_family_handle(layout.CF_INDEX)
        self.jobs = self.db.get_column_family(layout.CF_JOBS)
        self.payloads = self.db.get_column_family(layout.CF_PAYLOADS)
        self.errors = self.db.get_column_family(layout.CF_ERRORS)
        self.index = self.db.get_column_family(layout.CF_INDEX)
        self._sync_options = rocksdict.WriteOptions()
        self._sync_options.sync = True
        self._buffered_options = rocksdict.WriteOptions()
        # Jobs per (queue, type, status), kept exact by every committed batch;
        # they answer counts and GET /queues without touching the disk.
        self.counts: Counter[IndexKey] = Counter()
        self._check_schema_version()

    def _check_schema_version(self) -> None:
        stored = self.db.get(layout.META_SCHEMA_VERSION)
        if stored is None:
            self.db.put(layout.META_SCHEMA_VERSION, str(layout.SCHEMA_VERSION).encode())
            return
        version = int(stored)
        if version != layout.SCHEMA_VERSION:
            # Later layouts add their migrations here, keyed by the stored version.
            raise SchemaVersionError(
                f"root directory {self.root_dir} has schema version {version}; "
                f"this zizq reads version {layout.SCHEMA_VERSION}"
            )

    # -- writes ---------------------------------------------------------

    def batch(self) -> WriteBatch:
        return WriteBatch(self)

    def write_raw(self, batch: WriteBatch, sync: bool = False) -> None:
        """Apply a batch atomically, without touching the counters (safe off the loop thread).

        RocksDB releases the GIL while it syncs, so a sync from a helper thread
        does not stall the event loop.
        """
        self.db.write(batch.raw, self._sync_options if sync else self._buffered_options)

    def applied(self, batch: WriteBatch) -> None:
        """Count a committed batch (on the loop thread, which owns the counters)."""
        counts = self.counts
        for key, delta in batch.deltas.items():
            total = counts[key] + delta
            if total:
                counts[key] = total
            else:
                del counts[key]

    def write(self, batch: WriteBatch, sync: bool = False) -> None:
        self.write_raw(batch, sync)
        self.applied(batch)

    # -- reads ----------------------------------------------------------

    def get_job(self, job_id: str) -> dict | None:
        raw = self.jobs.get(layout.job_key(job_id))
        return None if raw is None else msgpack.unpackb(raw)

    def get_payload(self, job_id: str) -> bytes | None:
        return self.payloads.get(layout.job_key(job_id))

    def get_payloads(self, job_ids: list[str]) -> list[bytes | None]:
        return self.payloads.get([layout.job_key(i) for i in job_ids])

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
        raw = self.errors.get(layout.error_key(job_id, attempt))
        return None if raw is None else msgpack.unpackb(raw)

    # -- maintenance ----------------------------------------------------

    def disk_usage(self) -> int:
        """Bytes the database occupies on disk."""
        return sum(path.stat().st_size for path in self.path.rglob("*") if path.is_file())

    def compact(self) -> None:
        """Full compaction of every column family (slow; releases the GIL: run it on a thread)."""
        options = rocksdict.CompactOptions()
        # Rewrite the bottom level too: that is where deleted jobs' tombstones meet their data.
        options.set_bottommost_level_compaction(rocksdict.BottommostLevelCompaction.force())
        for name in (*layout.COLUMN_FAMILIES, None):
            target = self.db if name is None else self.db.get_column_family(name)
            target.compact_range(None, None, options)

    def close(self) -> None:
        self.db.flush_wal(True)
        self.db.close()
