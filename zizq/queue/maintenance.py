"""Keeping the store healthy while it serves: online backups, compaction, and
recovery after a failed write (disk full).

The slow parts (checkpoint, compaction, archiving) run on threads; RocksDB
releases the GIL for them, so enqueues and takes keep flowing. They run on
pools of their own, never asyncio's default executor, so that admin work can
never starve the primary API's queries, nor backups starve other admin work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

from zizq.config import DEFAULT_AUTO_COMPACT_THRESHOLD
from zizq.logs import log_event
from zizq.queue import pools
from zizq.queue.pools import BoundedPool, PoolBusy
from zizq.store import Store, StoreUnavailable, layout
from zizq.store import backup as backups
from zizq.store.handles import close_handles

logger = logging.getLogger("zizq.maintenance")

T = TypeVar("T")


ADMIN_WORKERS = 2  # threads for checkpoints, status counts, disk usage and compaction
ADMIN_MAX_WAITING = 8  # admin calls waiting for one of them; past this, 503
MAX_BACKUPS = 2  # backups streaming at once (documented); one more answers 503
BACKUP_RETRY_AFTER_S = 10
RECOVERY_CHECK_S = 0.5  # while the store is failed, how often we try to bring it back
REOPEN_BACKOFF_MAX_S = 30  # longest wait between two failed reopens


class BackupsBusy(PoolBusy):
    """MAX_BACKUPS backups are streaming already."""


@dataclass(eq=False)  # compared and hashed by identity: kept in a set of live backups
class BackupSnapshot:
    """A checkpoint waiting to be streamed; discard() must follow, whatever happens.

    It holds one backup slot until discarded. discard() is idempotent and
    thread-safe: the archiving thread calls it as soon as the archive is
    written (or abandoned), the response again when it ends.
    """

    directory: Path
    manifest: dict
    release: Callable[[BackupSnapshot], None] = lambda _s: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _discarded: bool = False

    def write_archive(self, out: BinaryIO, cancelled: threading.Event | None = None) -> None:
        backups.write_archive(
            self.directory / layout.DATA_DIR_NAME, self.manifest, out, cancelled or self.cancelled
        )

    def discard(self) -> None:
        with self._lock:
            if self._discarded:
                return
            self._discarded = True
        shutil.rmtree(self.directory, ignore_errors=True)
        self.release(self)


class Maintenance:
    def __init__(
        self,
        store: Store,
        version: str,
        auto_compact_threshold: int = DEFAULT_AUTO_COMPACT_THRESHOLD,
    ) -> None:
        self.store = store
        self._version = version
        self.auto_compact_threshold = auto_compact_threshold
        self._changed_since_compaction = 0
        self._compacting: asyncio.Task | None = None
        self._admin_pool = BoundedPool("zizq-admin", ADMIN_WORKERS, ADMIN_MAX_WAITING)
        # One thread per streaming backup; archiving reads checkpoint files, not the store.
        # (Slack in the waiting line: a finished backup frees its slot a moment
        # before its thread is counted as done.)
        self._archive_pool = BoundedPool(
            "zizq-backup", MAX_BACKUPS, max_waiting=MAX_BACKUPS, uses_store=False
        )
        self._backups: set[BackupSnapshot] = set()  # holding a slot (checkpoint on disk)
        self._backups_lock = threading.Lock()  # discard() runs on archiving threads
        self._recovering: asyncio.Task | None = None
        # Closes the database objects a reopen replaces (slow: RocksDB joins its threads).
        self._recovery_pool = BoundedPool("zizq-recovery", 1, max_waiting=2, uses_store=False)
        self._loop: asyncio.AbstractEventLoop | None = None

    def remove_stale_backups(self) -> None:
        backups.remove_stale_checkpoints(self.store.root_dir)

    async def run_admin(self, fn: Callable[..., T], *args) -> T:
        """Run a blocking admin call on the admin pool (PoolBusy when it is full)."""
        return await self._admin_pool.run(fn, *args)

    # -- backups ---------------------------------------------------------------

    async def snapshot(self) -> BackupSnapshot:
        """Checkpoint the store now; jobs written afterwards are not in the backup.

        Raises BackupsBusy when MAX_BACKUPS are streaming already: a backup
        holds a checkpoint (disk space) and a thread until it ends.
        """
        placeholder = BackupSnapshot(Path(), {})
        with self._backups_lock:
            if len(self._backups) >= MAX_BACKUPS:
                raise BackupsBusy(
                    f"{MAX_BACKUPS} backups are already running (the most at once); "
                    "retry when one finishes",
                    BACKUP_RETRY_AFTER_S,
                )
            self._backups.add(placeholder)  # the slot is ours from here
        try:
            directory = await self.run_admin(backups.create_checkpoint, self.store)
            try:
                counts = await self.run_admin(
                    backups.count_statuses, directory / layout.DATA_DIR_NAME
                )
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise
        except BaseException:
            self._release(placeholder)
            raise
        manifest = backups.build_manifest(self._version, counts)
        snapshot = BackupSnapshot(directory, manifest, self._release)
        with self._backups_lock:
            self._backups.discard(placeholder)
            self._backups.add(snapshot)
        log_event(logger, logging.INFO, "backup snapshot taken", jobs=manifest["jobs"]["total"])
        return snapshot

    def _release(self, snapshot: BackupSnapshot) -> None:
        with self._backups_lock:
            self._backups.discard(snapshot)

    async def run_archiver(self, archive: Callable[[], None]) -> None:
        """Run a backup's archiving loop on the backup pool (a slot is already held)."""
        await self._archive_pool.run(archive)

    # -- compaction ------------------------------------------------------------

    async def compact(self) -> tuple[int, int]:
        """Full compaction; returns the on-disk size before and after, in bytes."""
        # Measure first: a background compaction already under way counts as this one's work.
        before = await self.run_admin(self.store.disk_usage)
        if self._compacting is not None:
            await asyncio.shield(self._compacting)
        self._compacting = asyncio.create_task(self.run_admin(self.store.compact))
        try:
            await asyncio.shield(self._compacting)
        finally:
            self._compacting = None
        self._changed_since_compaction = 0
        after = await self.run_admin(self.store.disk_usage)
        log_event(
            logger, logging.INFO, "compaction finished", before_bytes=before, after_bytes=after
        )
        return before, after

    def note_deleted(self, count: int) -> None:
        """Called after bulk deletes and resets; compacts in the background past the threshold."""
        self._note_bulk_change(count)

    def note_patched(self, count: int) -> None:
        """Called after bulk patches: changed indexed fields leave tombstones in the indexes."""
        self._note_bulk_change(count)

    def _note_bulk_change(self, count: int) -> None:
        # Counted across operations (many small bulk deletes leave as many tombstones as
        # one big one), and reset by every compaction, automatic or `zizq compact`.
        if self.auto_compact_threshold <= 0 or count <= 0:
            return
        self._changed_since_compaction += count
        if (
            self._changed_since_compaction >= self.auto_compact_threshold
            and self._compacting is None
        ):
            self._changed_since_compaction = 0
            log_event(
                logger,
                logging.INFO,
                "auto-compaction started",
                threshold=self.auto_compact_threshold,
            )
            task = asyncio.get_running_loop().create_task(self._compact_quietly())
            task.add_done_callback(lambda _t: None)

    async def _compact_quietly(self) -> None:
        try:
            await self.compact()
        except Exception:  # a failed background compaction must not take the server down
            logger.exception("background compaction failed")

    # -- recovery from a failed store ----------------------------------------------

    def watch_store(self) -> None:
        """From now on, bring the store back by itself whenever a write fails (call on the loop)."""
        loop = asyncio.get_running_loop()
        self._loop = loop

        def failed(reason: str) -> None:  # on whichever thread the write failed
            with contextlib.suppress(RuntimeError):  # the loop is closed: we are exiting
                loop.call_soon_threadsafe(self._store_failed, reason)

        self.store.on_failure = failed
        if self.store.failure is not None:
            self._store_failed(self.store.failure)

    def _store_failed(self, reason: str) -> None:
        if self._recovering is not None and not self._recovering.done():
            return
        log_event(
            logger,
            logging.ERROR,
            "store failed: writes answer 503 until it recovers",
            error=reason,
        )
        self._recovering = asyncio.get_running_loop().create_task(
            self._recover(), name="zizq-store-recovery"
        )

    async def _recover(self) -> None:
        """Poll until writes land again; reopen the database if RocksDB does not resume.

        RocksDB resumes by itself only once a memtable's worth (64 MiB) is
        free; a reopen needs only room to replay the WAL. Reads never stop:
        during a reopen they are served by a read-only instance. The swap
        steps run on the loop thread (no request sees a half-swapped store),
        the slow closes on the recovery thread; the writable open waits until
        no pool thread is inside the store (their iterators would keep the old
        database, and its lock, alive).
        """
        store = self.store
        started = time.monotonic()
        failed_reopens = 0
        next_reopen = started
        while True:
            await asyncio.sleep(RECOVERY_CHECK_S)
            if store.probe():
                break
            if time.monotonic() < next_reopen or not store.room_to_reopen():
                continue
            try:
                if store.writable:
                    failed = store.detach_failed()
                    await self._recovery_pool.run(close_handles, failed)
                if not pools.store_idle():
                    continue
                read_only = store.attach_writable()
            except (StoreUnavailable, PoolBusy) as exc:
                failed_reopens += 1
                if failed_reopens == 1:  # once: a full disk must not fill the log too
                    log_event(logger, logging.WARNING, "store reopen failed", error=str(exc))
                # An open that fails with room to spare is not about space: back off.
                next_reopen = time.monotonic() + min(REOPEN_BACKOFF_MAX_S, 2**failed_reopens)
                continue
            await self._recovery_pool.run(close_handles, read_only)
            break
        log_event(
            logger,
            logging.INFO,
            "store recovered: writes accepted again",
            failed_for_s=round(time.monotonic() - started, 3),
        )

    def close(self) -> None:
        """At shutdown: abandon streaming backups and stop the pools (nothing waits for them)."""
        if self._recovering is not None:
            self._recovering.cancel()
        with self._backups_lock:
            live = list(self._backups)
        for snapshot in live:
            snapshot.cancelled.set()
        for pool in (self._admin_pool, self._archive_pool, self._recovery_pool):
            pool.shutdown()
