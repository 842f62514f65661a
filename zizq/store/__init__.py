"""Persistent storage: the RocksDB layout, write batches and commit modes.

Nothing here knows about HTTP or about the job lifecycle; the engine decides
what to write, this package decides how it lands on disk.
"""

from zizq.store.commit import CommitMode, Committer
from zizq.store.db import SchemaVersionError, Store, StoreLockedError, WriteBatch

__all__ = [
    "CommitMode",
    "Committer",
    "SchemaVersionError",
    "Store",
    "StoreLockedError",
    "WriteBatch",
]
