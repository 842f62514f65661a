"""The RocksDB objects of one open database, opened and closed together.

A reopen (after a failed write) swaps one set for another while the server
runs, so they travel as one value. RocksDB closes a database only when the
last object holding it goes: every column family object and handle, and
every live iterator.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import rocksdict

from zizq.store import layout


def options(cache: rocksdict.Cache) -> rocksdict.Options:
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


@dataclass
class Handles:
    db: rocksdict.Rdict
    jobs: rocksdict.Rdict
    payloads: rocksdict.Rdict
    errors: rocksdict.Rdict
    index: rocksdict.Rdict
    # Column family handles for write batches; None on a read-only instance.
    h_jobs: rocksdict.ColumnFamily | None
    h_payloads: rocksdict.ColumnFamily | None
    h_errors: rocksdict.ColumnFamily | None
    h_index: rocksdict.ColumnFamily | None
    writable: bool


def open_handles(path: Path, cache: rocksdict.Cache, read_only: bool = False) -> Handles:
    """Open the database (raises RocksDB's bare Exception on failure).

    A read-only instance takes no lock and replays the WAL into memory, so it
    can open next to a failed writable one and see every acknowledged write.
    """
    cf_opts = {name: options(cache) for name in layout.COLUMN_FAMILIES}
    extra = {"access_type": rocksdict.AccessType.read_only()} if read_only else {}
    db = rocksdict.Rdict(str(path), options(cache), column_families=cf_opts, **extra)
    cf = db.get_column_family
    handle = None if read_only else db.get_column_family_handle
    return Handles(
        db=db,
        jobs=cf(layout.CF_JOBS),
        payloads=cf(layout.CF_PAYLOADS),
        errors=cf(layout.CF_ERRORS),
        index=cf(layout.CF_INDEX),
        h_jobs=handle and handle(layout.CF_JOBS),
        h_payloads=handle and handle(layout.CF_PAYLOADS),
        h_errors=handle and handle(layout.CF_ERRORS),
        h_index=handle and handle(layout.CF_INDEX),
        writable=not read_only,
    )


def close_handles(handles: Handles) -> None:
    """Close a detached set (slow: RocksDB waits for its background threads).

    Call it on a helper thread: close() releases the GIL while RocksDB shuts
    down, dropping the last handle would not. So the handles go first and the
    database object last. Flush errors are expected (the set failed) and
    harmless: the WAL holds every acknowledged write.
    """
    handles.h_jobs = handles.h_payloads = handles.h_errors = handles.h_index = None
    for rdict in (handles.jobs, handles.payloads, handles.errors, handles.index, handles.db):
        with contextlib.suppress(Exception):
            rdict.close()
