"""Persistent storage: the RocksDB layout, write batches and commit modes.

Nothing here knows about HTTP or about the job lifecycle; the engine decides
what to write, this package decides how it lands on disk.
"""

from zizq.store.commit import DEFAULT_BATCH_SIZE, CommitMode, Committer, Lane
from zizq.store.db import (
    IndexKey,
    SchemaVersionError,
    Store,
    StoreError,
    StoreLockedError,
    StoreUnavailable,
    WriteBatch,
    index_key_of,
)

__all__ = [
    "CommitMode",
    "DEFAULT_BATCH_SIZE",
    "Lane",
    "IndexKey",
    "Committer",
    "SchemaVersionError",
    "Store",
    "StoreError",
    "StoreLockedError",
    "StoreUnavailable",
    "WriteBatch",
    "index_key_of",
]
