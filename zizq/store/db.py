"""Opening the RocksDB store and reading from it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgpack
import rocksdict

from zizq.store import layout


class StoreLockedError(RuntimeError):
    """Another process already has this root directory open."""


class SchemaVersionError(RuntimeError):
    """The root directory was written by a layout this build cannot read."""


def _options(cache_size: int) -> rocksdict.Options:
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.increase_parallelism(2)
    table = rocksdict.BlockBasedOptions()
    table.set_block_cache(rocksdict.Cache(cache_size))
    table.set_bloom_filter(10, False)
    opts.set_block_based_table_factory(table)
    opts.set_max_background_jobs(2)
    return opts


class WriteBatch:
    """An atomic set of changes across column families, committed in one write."""

    __slots__ = ("_store", "raw", "count")

    def __init__(self, store: Store) -> None:
        self._store = store
        self.raw = rocksdict.WriteBatch(raw_mode=True)
        self.count = 0

    def put_job(self, job_id: str, record: dict) -> None:
        self.raw.put(layout.job_key(job_id), msgpack.packb(record), self._store.h_jobs)
        self.count += 1

    def put_payload(self, job_id: str, payload_bytes: bytes) -> None:
        self.raw.put(layout.job_key(job_id), payload_bytes, self._store.h_payloads)
        self.count += 1

    def put_error(self, job_id: str, attempt: int, error: dict) -> None:
        self.raw.put(layout.error_key(job_id, attempt), msgpack.packb(error), self._store.h_errors)
        self.count += 1

    def delete_job(self, job_id: str) -> None:
        """Remove a job with its payload and every recorded error."""
        key = layout.job_key(job_id)
        self.raw.delete(key, self._store.h_jobs)
        self.raw.delete(key, self._store.h_payloads)
        start, end = layout.error_key_range(job_id)
        self.raw.delete_range(start, end, self._store.h_errors)
        self.count += 3


class Store:
    """The RocksDB database under `<root_dir>/data`."""

    def __init__(self, root_dir: Path, cache_size: int = 256 * 1024 * 1024) -> None:
        self.root_dir = Path(root_dir)
        self.path = self.root_dir / layout.DATA_DIR_NAME
        self.path.mkdir(parents=True, exist_ok=True)
        opts = _options(cache_size)
        cf_opts = {name: _options(cache_size) for name in layout.COLUMN_FAMILIES}
        try:
            self.db = rocksdict.Rdict(str(self.path), opts, column_families=cf_opts)
        except Exception as exc:  # rocksdict raises a bare Exception with RocksDB's text
            if "lock" in str(exc).lower():
                raise StoreLockedError(
                    f"root directory {self.root_dir} is already in use by another zizq process"
                ) from exc
            raise
        self.h_jobs = self.db.get_column_family_handle(layout.CF_JOBS)
        self.h_payloads = self.db.get_column_family_handle(layout.CF_PAYLOADS)
        self.h_errors = self.db.get_column_family_handle(layout.CF_ERRORS)
        self.jobs = self.db.get_column_family(layout.CF_JOBS)
        self.payloads = self.db.get_column_family(layout.CF_PAYLOADS)
        self.errors = self.db.get_column_family(layout.CF_ERRORS)
        self._sync_options = rocksdict.WriteOptions()
        self._sync_options.sync = True
        self._buffered_options = rocksdict.WriteOptions()
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

    def write(self, batch: WriteBatch, sync: bool = False) -> None:
        """Apply a batch atomically; with sync the WAL is fsynced before returning.

        RocksDB releases the GIL while it syncs, so a sync from a helper thread
        does not stall the event loop.
        """
        self.db.write(batch.raw, self._sync_options if sync else self._buffered_options)

    # -- reads ----------------------------------------------------------

    def get_job(self, job_id: str) -> dict | None:
        raw = self.jobs.get(layout.job_key(job_id))
        return None if raw is None else msgpack.unpackb(raw)

    def get_jobs(self, job_ids: list[str]) -> list[dict | None]:
        raws = self.jobs.get([layout.job_key(i) for i in job_ids])
        return [None if raw is None else msgpack.unpackb(raw) for raw in raws]

    def get_payload(self, job_id: str) -> bytes | None:
        return self.payloads.get(layout.job_key(job_id))

    def get_payloads(self, job_ids: list[str]) -> list[bytes | None]:
        return self.payloads.get([layout.job_key(i) for i in job_ids])

    def iter_jobs(self) -> Iterator[tuple[str, dict]]:
        for key, raw in self.jobs.items():
            yield key.decode("ascii"), msgpack.unpackb(raw)

    def iter_errors(self, job_id: str) -> Iterator[tuple[int, dict]]:
        start, end = layout.error_key_range(job_id)
        for key, raw in self.errors.items(from_key=start):
            if key >= end:
                break
            yield int.from_bytes(key[-4:], "big"), msgpack.unpackb(raw)

    def close(self) -> None:
        self.db.flush_wal(True)
        self.db.close()
