"""Unique jobs: one job at a time holds a unique key, within its scope.

The store's unique index maps a key to the job that took it last. That job
holds the key only while its status is inside its own scope (`unique_while`):

- queued: scheduled or ready;
- active: scheduled, ready or in flight;
- exists: any status, until the job is deleted or purged.

So nothing has to be written when a holder leaves its scope (dispatched,
completed, dead, patched to another state): the index entry is checked
against the holder's current record whenever a duplicate is suspected, and
an entry whose job is gone is simply free. A deleted or purged holder's entry
is removed in the same write (KeyLocks.forget), so the index does not grow
with keys that are no longer used. A job that comes back into its scope (a
failed job retried) holds its key again if no other job took it meanwhile.
"""

from __future__ import annotations

from zizq.queue.records import COMPLETED, DEAD, IN_FLIGHT, READY, SCHEDULED, is_purged
from zizq.store import layout

SCOPE_STATUSES = {
    "queued": frozenset((SCHEDULED, READY)),
    "active": frozenset((SCHEDULED, READY, IN_FLIGHT)),
    "exists": frozenset((SCHEDULED, READY, IN_FLIGHT, COMPLETED, DEAD)),
}


def index_key(unique_key: str) -> bytes:
    return layout.keyed_index_key(layout.INDEX_UNIQUE, unique_key)


def holds_key(record: dict | None, now: int) -> bool:
    """Whether this record (the key's last taker) still holds its unique key."""
    if record is None or is_purged(record, now):
        return False
    scope = SCOPE_STATUSES.get(record.get("unique_while", "queued"), SCOPE_STATUSES["queued"])
    return record["status"] in scope
