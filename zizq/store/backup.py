"""Backups of a live store and restores onto a new root directory.

A backup is a gzipped tar of a RocksDB checkpoint (hard links to the live,
immutable SST files plus a copy of the small mutable ones, taken atomically
across every column family) and a manifest. The manifest is the last member:
it lists every other member with its size and SHA-256, so a restore can
check the whole archive before it writes anything.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import rocksdict

from zizq.store import layout
from zizq.store.db import Store, StoreUnavailable

MANIFEST_NAME = "manifest.json"
FORMAT = "zizq-backup"
TEMP_PREFIX = ".zizq-backup-"  # checkpoints in progress, inside the root dir
STATUSES = ("scheduled", "ready", "in_flight", "completed", "dead")


class BackupError(RuntimeError):
    """A backup or restore cannot proceed; the message is meant for the user."""


class Cancelled(BackupError):
    """The client went away; the archive is abandoned."""


# -- taking a backup ----------------------------------------------------------------


def create_checkpoint(store: Store) -> Path:
    """A consistent point-in-time copy of the database, next to it (hard links).

    Slow-ish (it flushes the memtable) but releases the GIL: call it from a thread.
    Raises StoreUnavailable (and leaves nothing behind) if RocksDB cannot write,
    e.g. on a full disk.
    """
    target = store.root_dir / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
    try:
        target.mkdir()
        checkpoint_dir = target / layout.DATA_DIR_NAME
        # Checkpoint holds the GIL while it flushes the memtables; flush() does not, so flush first.
        for name in (*layout.COLUMN_FAMILIES, None):
            (store.db if name is None else store.db.get_column_family(name)).flush(True)
        rocksdict.Checkpoint(store.db).create_checkpoint(str(checkpoint_dir))
    except BaseException as exc:
        shutil.rmtree(target, ignore_errors=True)
        if (
            isinstance(exc, OSError)
            or type(exc) is Exception
            or isinstance(exc, rocksdict.DbClosedError)
        ):
            raise StoreUnavailable(f"cannot take a backup: {exc}") from None
        raise
    return target


def remove_stale_checkpoints(root_dir: Path) -> None:
    """Checkpoints left by a server that died mid-backup are garbage."""
    for path in Path(root_dir).glob(f"{TEMP_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


def count_statuses(data_dir: Path) -> dict[str, int]:
    """Jobs per status in a (checkpoint) database, read from its status index."""
    options = {name: rocksdict.Options(raw_mode=True) for name in layout.COLUMN_FAMILIES}
    db = rocksdict.Rdict(
        str(data_dir),
        rocksdict.Options(raw_mode=True),
        column_families=options,
        access_type=rocksdict.AccessType.read_only(),
    )
    try:
        index = db.get_column_family(layout.CF_INDEX)
        counts = {}
        for status in STATUSES:
            prefix = layout.index_prefix(layout.INDEX_STATUS, status)
            count = 0
            for key in index.keys(from_key=prefix):
                if not key.startswith(prefix):
                    break
                count += 1
            counts[status] = count
        return counts
    finally:
        db.close()


def build_manifest(version: str, counts: dict[str, int]) -> dict:
    return {
        "format": FORMAT,
        "zizq_version": version,
        "schema_version": layout.SCHEMA_VERSION,
        "created_at": int(time.time() * 1000),
        "jobs": {"total": sum(counts.values()), **counts},
        "files": [],
    }


def write_archive(
    checkpoint: Path, manifest: dict, out: BinaryIO, cancelled: threading.Event
) -> None:
    """Stream `checkpoint` as tar.gz into `out`, manifest last; stop if `cancelled`."""
    # Level 1: the archive streams while it is made, and speed matters more than size.
    with (
        gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1) as packed,
        tarfile.open(fileobj=packed, mode="w|") as tar,
    ):
        for path in sorted(checkpoint.rglob("*")):
            if cancelled.is_set():
                raise Cancelled("backup cancelled")
            if not path.is_file():
                continue
            name = path.relative_to(checkpoint).as_posix()
            digest = hashlib.sha256()
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with path.open("rb") as source:
                tar.addfile(info, _Hashing(source, digest, cancelled))
            manifest["files"].append(
                {"name": name, "size": info.size, "sha256": digest.hexdigest()}
            )
        body = json.dumps(manifest, indent=2).encode()
        info = tarfile.TarInfo(MANIFEST_NAME)
        info.size = len(body)
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(body))


class _Hashing(io.RawIOBase):
    """Reads through to a file, hashing what tarfile copies into the archive."""

    def __init__(self, source: BinaryIO, digest, cancelled: threading.Event) -> None:
        self._source = source
        self._digest = digest
        self._cancelled = cancelled

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._cancelled.is_set():
            raise Cancelled("backup cancelled")
        chunk = self._source.read(size)
        self._digest.update(chunk)
        return chunk


# -- restoring -----------------------------------------------------------------------


def _check_member(member: tarfile.TarInfo) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith(("/", "\\")) or ":" in path.parts[0]:
        raise BackupError(f"archive member {member.name!r} has an absolute path")
    if ".." in path.parts:
        raise BackupError(f"archive member {member.name!r} points outside the root directory")
    if member.issym() or member.islnk():
        raise BackupError(
            f"archive member {member.name!r} is a link, which a zizq backup never has"
        )
    if not (member.isfile() or member.isdir()):
        raise BackupError(f"archive member {member.name!r} is not a regular file")


def verify_archive(archive: Path) -> dict:
    """Read the whole archive once: safe paths, manifest present, every file intact."""
    seen: dict[str, tuple[int, str]] = {}
    manifest = None
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                _check_member(member)
                if member.isdir():
                    continue
                source = tar.extractfile(member)
                assert source is not None
                if member.name == MANIFEST_NAME:
                    manifest = _parse_manifest(source.read())
                    continue
                seen[member.name] = (member.size, hashlib.file_digest(source, "sha256").hexdigest())
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupError(f"{archive} is not a readable zizq backup ({exc})") from None
    if manifest is None:
        raise BackupError(f"{archive} has no {MANIFEST_NAME}: not a zizq backup, or truncated")
    listed = {entry["name"]: (entry["size"], entry["sha256"]) for entry in manifest["files"]}
    if listed != seen:
        damaged = sorted(set(listed.items()) ^ set(seen.items()))
        raise BackupError(
            f"{archive} does not match its manifest (first difference: {damaged[0][0]})"
        )
    return manifest


def _parse_manifest(raw: bytes) -> dict:
    try:
        manifest = json.loads(raw)
        valid = manifest.get("format") == FORMAT and isinstance(manifest.get("files"), list)
    except (ValueError, AttributeError):
        valid = False
    if not valid:
        raise BackupError("the archive's manifest is not a zizq backup manifest")
    version = manifest.get("schema_version")
    if version != layout.SCHEMA_VERSION:
        raise BackupError(
            f"the backup has schema version {version}; this zizq restores version {layout.SCHEMA_VERSION}"
        )
    return manifest


def restore_archive(
    archive: Path, root_dir: Path, report: Callable[[str], None] = lambda _m: None
) -> dict:
    """Verify `archive`, then extract it into a new `root_dir` atomically. Returns the manifest."""
    archive, root_dir = Path(archive), Path(root_dir)
    if root_dir.exists() and (not root_dir.is_dir() or any(root_dir.iterdir())):
        raise BackupError(
            f"{root_dir} already exists and is not empty; restore into a new directory"
        )
    if not archive.is_file():
        raise BackupError(f"{archive} does not exist")
    manifest = verify_archive(archive)
    root_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = root_dir.parent / f".{root_dir.name}.restoring-{uuid.uuid4().hex[:8]}"
    try:
        data_dir = staging / layout.DATA_DIR_NAME
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                _check_member(member)
                if member.name == MANIFEST_NAME or member.isdir():
                    continue
                target = data_dir / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with target.open("wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
        counts = count_statuses(data_dir)
        expected = {status: manifest["jobs"].get(status, 0) for status in STATUSES}
        if counts != expected:
            raise BackupError(f"restored jobs {counts} do not match the manifest {expected}")
        _fsync_tree(staging)
        if root_dir.exists():
            root_dir.rmdir()  # empty, checked above
        os.replace(staging, root_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report(f"restored {manifest['jobs']['total']} jobs")
    return manifest


def _fsync_tree(root: Path) -> None:
    """Make the restored files durable before the rename publishes them."""
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
