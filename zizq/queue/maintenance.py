"""Keeping the store healthy while it serves: online backups and compaction.

Both run their slow parts (checkpoint, compaction, archiving) on threads;
RocksDB releases the GIL for them, so enqueues and takes keep flowing.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from zizq.logs import log_event
from zizq.store import Store, layout
from zizq.store import backup as backups

logger = logging.getLogger("zizq.maintenance")

# After this many jobs were deleted by bulk deletes since the last compaction,
# compact in the background so tombstones do not pile up (documented in README).
AUTO_COMPACT_AFTER_DELETES = 100_000


@dataclass
class BackupSnapshot:
    """A checkpoint waiting to be streamed; discard() must follow, whatever happens."""

    directory: Path
    manifest: dict

    def write_archive(self, out: BinaryIO, cancelled: threading.Event) -> None:
        backups.write_archive(self.directory / layout.DATA_DIR_NAME, self.manifest, out, cancelled)

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class Maintenance:
    def __init__(self, store: Store, version: str) -> None:
        self._store = store
        self._version = version
        self._deleted_since_compaction = 0
        self._compacting: asyncio.Task | None = None

    def remove_stale_backups(self) -> None:
        backups.remove_stale_checkpoints(self._store.root_dir)

    async def snapshot(self) -> BackupSnapshot:
        """Checkpoint the store now; jobs written afterwards are not in the backup."""
        directory = await asyncio.to_thread(backups.create_checkpoint, self._store)
        try:
            counts = await asyncio.to_thread(
                backups.count_statuses, directory / layout.DATA_DIR_NAME
            )
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        manifest = backups.build_manifest(self._version, counts)
        log_event(logger, logging.INFO, "backup snapshot taken", jobs=manifest["jobs"]["total"])
        return BackupSnapshot(directory, manifest)

    async def compact(self) -> tuple[int, int]:
        """Full compaction; returns the on-disk size before and after, in bytes."""
        # Measure first: a background compaction already under way counts as this one's work.
        before = await asyncio.to_thread(self._store.disk_usage)
        if self._compacting is not None:
            await asyncio.shield(self._compacting)
        self._compacting = asyncio.create_task(asyncio.to_thread(self._store.compact))
        try:
            await asyncio.shield(self._compacting)
        finally:
            self._compacting = None
        self._deleted_since_compaction = 0
        after = await asyncio.to_thread(self._store.disk_usage)
        log_event(
            logger, logging.INFO, "compaction finished", before_bytes=before, after_bytes=after
        )
        return before, after

    def note_deleted(self, count: int) -> None:
        """Called after bulk deletes; compacts in the background past the threshold."""
        self._deleted_since_compaction += count
        if (
            self._deleted_since_compaction >= AUTO_COMPACT_AFTER_DELETES
            and self._compacting is None
        ):
            self._deleted_since_compaction = 0
            task = asyncio.get_running_loop().create_task(self._compact_quietly())
            task.add_done_callback(lambda _t: None)

    async def _compact_quietly(self) -> None:
        try:
            await self.compact()
        except Exception:  # a failed background compaction must not take the server down
            logger.exception("background compaction failed")
