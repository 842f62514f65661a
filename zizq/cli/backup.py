"""`zizq backup`: download a point-in-time backup archive from a running server's admin API.

The archive is checked while it downloads (gzip intact to its trailer, every tar member
hashed, the manifest last and listing each member), so a server that dies or fails
mid-stream is noticed even when the HTTP response itself ended cleanly. A file target is
written to a temporary sibling, fsynced and renamed into place only when all of that holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import signal
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

import click

from zizq.cli.admin_client import AdminClient, AdminError, admin_options, human_rate, human_size
from zizq.cli.common import CONTEXT_SETTINGS

__all__ = ["ArchiveCheck", "ArchiveCheckError", "Progress", "backup"]

MANIFEST_NAME = "manifest.json"  # as written by zizq.store.backup
ARCHIVE_FORMAT = "zizq-backup"
GZIP = "application/gzip"
READ_CHUNK = 1 << 20
# The server takes its checkpoint and counts the jobs before the response starts.
READ_TIMEOUT_S = 120.0
BLOCK = tarfile.BLOCKSIZE
MAX_META_BYTES = 1 << 20  # pax / GNU long-name headers
MAX_MANIFEST_BYTES = 256 << 20
_META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


class ArchiveCheckError(Exception):
    """The bytes received so far are not (the start of) a whole zizq backup."""


class ArchiveCheck:
    """Follows a backup archive as it streams past; `finish()` says whether it is whole.

    It inflates the gzip stream (zlib checks its CRC and length at the trailer), walks
    the tar headers, hashes each member and, at the end, compares the members with the
    manifest, which must be the last member before the tar end-of-archive blocks.
    """

    def __init__(self) -> None:
        self._inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing only
        self._header = bytearray()
        self._remaining = 0  # data bytes left in the current member
        self._padding = 0  # zero bytes after it, up to the next block boundary
        self._member: tuple[str, int, hashlib._Hash] | None = None  # regular file being read
        self._collect: bytearray | None = None  # data kept whole: metadata or the manifest
        self._collect_kind = ""
        self._next_path: str | None = None  # from a pax or GNU long-name header
        self._next_size: int | None = None
        self._ended = False  # the first all-zero header block was seen
        self.members: dict[str, tuple[int, str]] = {}
        self.manifest: dict | None = None
        self.compressed_bytes = 0

    # -- feeding -------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.compressed_bytes += len(data)
        if self._inflate.eof:
            if data:
                raise ArchiveCheckError("data after the end of the gzip stream")
            return
        try:
            out = self._inflate.decompress(data, READ_CHUNK)
            self._tar(out)
            while self._inflate.unconsumed_tail:
                out = self._inflate.decompress(self._inflate.unconsumed_tail, READ_CHUNK)
                self._tar(out)
        except zlib.error as exc:
            raise ArchiveCheckError(f"the gzip stream is damaged ({exc})") from None
        if self._inflate.unused_data:
            raise ArchiveCheckError("data after the end of the gzip stream")

    def finish(self) -> dict:
        """The manifest, if everything fed so far is one whole backup; else raises."""
        if not self._inflate.eof:
            raise ArchiveCheckError("the gzip stream stops before its end (truncated download)")
        if self._remaining or self._padding or self._header or not self._ended:
            raise ArchiveCheckError("the tar archive stops before its end (truncated)")
        if self.manifest is None:
            raise ArchiveCheckError(f"the archive has no {MANIFEST_NAME}")
        try:
            listed = {
                entry["name"]: (int(entry["size"]), str(entry["sha256"]))
                for entry in self.manifest["files"]
            }
        except (KeyError, TypeError, ValueError):
            raise ArchiveCheckError(f"{MANIFEST_NAME} has a malformed file list") from None
        if listed != self.members:
            different = sorted(set(listed.items()) ^ set(self.members.items()))
            raise ArchiveCheckError(f"the archive does not match its manifest ({different[0][0]})")
        return self.manifest

    # -- tar walking ---------------------------------------------------------------

    def _tar(self, data: bytes) -> None:
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self._ended:
                if bytes(view[pos:]).strip(b"\0"):
                    raise ArchiveCheckError("data after the tar end-of-archive marker")
                return
            if self._remaining:
                take = min(self._remaining, end - pos)
                self._data(view[pos : pos + take])
                self._remaining -= take
                pos += take
                if not self._remaining:
                    self._member_done()
            elif self._padding:
                take = min(self._padding, end - pos)
                self._padding -= take
                pos += take
            else:
                take = min(BLOCK - len(self._header), end - pos)
                self._header += view[pos : pos + take]
                pos += take
                if len(self._header) == BLOCK:
                    block = bytes(self._header)
                    self._header.clear()
                    self._on_header(block)

    def _on_header(self, block: bytes) -> None:
        if not block.strip(b"\0"):
            self._ended = True
            return
        if self.manifest is not None:
            raise ArchiveCheckError(f"a member follows {MANIFEST_NAME}, which must be last")
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise ArchiveCheckError(f"a damaged tar header ({exc})") from None
        size = info.size
        if info.type in _META_TYPES:
            if size > MAX_META_BYTES:
                raise ArchiveCheckError("an oversized tar extended header")
            self._collect, self._collect_kind = bytearray(), info.type.decode()
        elif info.isreg():
            name = self._next_path if self._next_path is not None else info.name
            if self._next_size is not None:
                size = self._next_size
            self._next_path = self._next_size = None
            if name in self.members:
                raise ArchiveCheckError(f"member {name!r} appears twice")
            if name == MANIFEST_NAME:
                if size > MAX_MANIFEST_BYTES:
                    raise ArchiveCheckError(f"an oversized {MANIFEST_NAME}")
                self._collect, self._collect_kind = bytearray(), "manifest"
            else:
                self._member = (name, size, hashlib.sha256())
        elif info.isdir():
            self._next_path = self._next_size = None
        else:
            raise ArchiveCheckError(f"unexpected tar member {info.name!r} (not a regular file)")
        self._remaining = size
        self._padding = -size % BLOCK
        if not size:
            self._member_done()

    def _data(self, chunk: memoryview) -> None:
        if self._collect is not None:
            self._collect += chunk
        elif self._member is not None:
            self._member[2].update(chunk)

    def _member_done(self) -> None:
        if self._member is not None:
            name, size, digest = self._member
            self.members[name] = (size, digest.hexdigest())
            self._member = None
            return
        collected, kind = self._collect, self._collect_kind
        self._collect, self._collect_kind = None, ""
        if collected is None:
            return
        if kind == "manifest":
            self.manifest = _parse_manifest(bytes(collected))
        elif kind == tarfile.XHDTYPE.decode():
            self._pax(bytes(collected))
        elif kind == tarfile.GNUTYPE_LONGNAME.decode():
            self._next_path = bytes(collected).rstrip(b"\0").decode("utf-8", "surrogateescape")

    def _pax(self, data: bytes) -> None:
        """Apply the `path` and `size` records of a pax extended header to the next member."""
        pos = 0
        while pos < len(data):
            space = data.find(b" ", pos)
            try:
                length = int(data[pos:space])
            except ValueError:
                raise ArchiveCheckError("a damaged tar extended header") from None
            if space < 0 or length <= 0 or pos + length > len(data):
                raise ArchiveCheckError("a damaged tar extended header")
            key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
            if key == b"path":
                self._next_path = value.decode("utf-8", "surrogateescape")
            elif key == b"size":
                self._next_size = int(value)
            pos += length


def _parse_manifest(raw: bytes) -> dict:
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise ArchiveCheckError(f"{MANIFEST_NAME} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ARCHIVE_FORMAT:
        raise ArchiveCheckError(f"{MANIFEST_NAME} is not a zizq backup manifest")
    if not isinstance(manifest.get("files"), list):
        raise ArchiveCheckError(f"{MANIFEST_NAME} has no file list")
    return manifest


# -- progress ----------------------------------------------------------------------------


class Progress:
    """Bytes and rate: one `\\r`-updated line on a terminal, a line every 10 s otherwise."""

    TTY_INTERVAL_S = 0.1
    PLAIN_INTERVAL_S = 10.0

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        try:
            self.tty = stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.started = time.monotonic()
        self._last = self.started
        self._drawn = False
        self._width = 0

    def line(self, done: int, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.started, 1e-6)
        return f"  {human_size(done):>10}  {human_rate(done / elapsed):>12}"

    def update(self, done: int) -> None:
        now = time.monotonic()
        interval = self.TTY_INTERVAL_S if self.tty else self.PLAIN_INTERVAL_S
        if now - self._last < interval:
            return
        self._last = now
        self._emit(self.line(done, now))

    def _emit(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
            self._drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self, done: int) -> None:
        """Final figures on a terminal; nothing more in a log."""
        if self.tty:
            self._emit(self.line(done))
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def abort(self) -> None:
        """End a half-drawn terminal line so that the error starts on its own line."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


# -- downloading ---------------------------------------------------------------------------


def download(client: AdminClient, sink: BinaryIO, progress: Progress) -> tuple[int, dict]:
    """Stream POST /backup into `sink`; returns (bytes, manifest) once the archive is whole."""
    connection, response = client.post("/backup", GZIP, READ_TIMEOUT_S)
    check = ArchiveCheck()
    done = 0
    try:
        media = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if media != GZIP:
            raise AdminError(f"the server answered with {media or 'no content type'}, not {GZIP}")
        while True:
            try:
                chunk = response.read1(READ_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise _broken(client, exc, done) from None
            if not chunk:
                break
            check.feed(chunk)
            try:
                sink.write(chunk)
            except OSError as exc:
                raise AdminError(f"cannot write the archive: {exc.strerror or exc}") from None
            done += len(chunk)
            progress.update(done)
        manifest = check.finish()
    except ArchiveCheckError as exc:
        raise AdminError(f"the backup download is incomplete or damaged: {exc}") from None
    finally:
        connection.close()
    progress.finish(done)
    return done, manifest


def _broken(client: AdminClient, exc: BaseException, done: int) -> AdminError:
    if isinstance(exc, http.client.IncompleteRead | ConnectionError):
        return AdminError(
            f"the download from {client.url} broke off after {human_size(done)} "
            "(did the server stop?)"
        )
    error = client.network_error(exc)
    return AdminError(f"{error.message} (after {human_size(done)})")


@contextlib.contextmanager
def _sigterm_aborts() -> Iterator[None]:
    """SIGTERM unwinds like an error, so no temporary file is left behind."""

    def handler(_signum: int, _frame: object) -> None:
        raise AdminError("interrupted by SIGTERM; nothing was saved")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. under a test runner)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _save(client: AdminClient, target: Path, shown: str, progress: Progress) -> int:
    directory = target.parent
    if not directory.is_dir():
        raise AdminError(f"cannot save to {shown}: directory {directory} does not exist")
    if target.is_dir():
        raise AdminError(f"cannot save to {shown}: it is a directory")
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=directory)
    except OSError as exc:
        raise AdminError(f"cannot write in {directory}: {exc.strerror or exc}") from None
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as sink:
            size, _manifest = download(client, sink, progress)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    return size


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (where the platform lets a directory be fsynced)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@click.command("backup", context_settings=CONTEXT_SETTINGS)
@admin_options
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
def backup(
    url: str, ca_cert: Path | None, client_cert: Path | None, client_key: Path | None, file: str
) -> None:
    """Download a backup of the running server (through its admin API) to FILE.

    FILE is written only once the whole archive has arrived and checked out; `-` writes
    the archive to stdout. Restore it with `zizq restore`.
    """
    client = AdminClient(url, ca_cert, client_cert, client_key)
    to_stdout = file == "-"
    if to_stdout and sys.stdout.isatty():
        raise click.UsageError("refusing to write a binary archive to a terminal; redirect stdout")
    click.echo(f"Requesting backup from {client.url}...", err=to_stdout)
    progress = Progress(sys.stderr)
    try:
        with _sigterm_aborts():
            if to_stdout:
                size, _manifest = download(client, sys.stdout.buffer, progress)
                try:
                    sys.stdout.buffer.flush()
                except OSError as exc:
                    raise AdminError(f"cannot write the archive: {exc.strerror or exc}") from None
            else:
                size = _save(client, Path(file), file, progress)
    except BaseException:
        progress.abort()
        raise
    where = "stdout" if to_stdout else file
    verb = "written to" if to_stdout else "saved to"
    click.echo(f"Backup {verb} {where} ({human_size(size)})", err=to_stdout)
