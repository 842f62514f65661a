"""Unit tests for the admin-API client bits of the CLI: sizes, URLs, the download check."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import ssl
import subprocess
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from zizq.cli import main
from zizq.cli.admin_client import AdminClient, human_rate, human_size, normalize_url
from zizq.cli.backup import ArchiveCheck, ArchiveCheckError, Progress
from zizq.cli.compact import describe_compaction
from zizq.cli.restore import describe_jobs
from zizq.store.backup import build_manifest, write_archive


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ZIZQ_"):
            monkeypatch.delenv(name)


# -- formatting --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (42 * 1024 * 1024, "42.0 MiB"),
        (int(2.25 * 1024**3), "2.2 GiB"),
        (3 * 1024**4, "3.0 TiB"),
        (5 * 1024**6, "5120.0 PiB"),
    ],
)
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


def test_human_rate() -> None:
    assert human_rate(45.6 * 1024 * 1024) == "45.6 MiB/s"


def test_describe_compaction_and_jobs() -> None:
    lines = describe_compaction(10 * 1024 * 1024, 2 * 1024 * 1024, 1.234)
    assert lines == [
        "Size before: 10.0 MiB",
        "Size after:  2.0 MiB (freed 8.0 MiB)",
        "Compaction took 1.23s",
    ]
    assert "grew by 1.0 KiB" in describe_compaction(1024, 2048, 0.1)[1]
    text = describe_jobs({"total": 1500, "ready": 1000, "in_flight": 500})
    assert text == "1,500 jobs (1,000 ready, 0 scheduled, 500 in flight, 0 completed, 0 dead)"


# -- urls and TLS flags ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("http://127.0.0.1:8901", "http://127.0.0.1:8901"),
        ("http://127.0.0.1:8901/", "http://127.0.0.1:8901"),
        ("HTTPS://zizq.internal:8901", "https://zizq.internal:8901"),
        ("https://zizq.internal/admin/", "https://zizq.internal/admin"),
        ("http://[::1]:8901", "http://[::1]:8901"),
        ("  http://localhost:1 ", "http://localhost:1"),
    ],
)
def test_normalize_url(url: str, normal: str) -> None:
    assert normalize_url(url) == normal


@pytest.mark.parametrize(
    "url",
    [
        "127.0.0.1:8901",
        "ftp://127.0.0.1:8901",
        "http://:8901",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:port",
        "http://user:pw@127.0.0.1:8901",
        "http://127.0.0.1:8901/?x=1",
    ],
)
def test_normalize_url_rejects(url: str) -> None:
    with pytest.raises(click.UsageError):
        normalize_url(url)


def test_client_url_parts() -> None:
    client = AdminClient("https://example.test/admin/")
    assert client.url == "https://example.test/admin"
    assert (client._host, client._port, client._prefix) == ("example.test", 443, "/admin")
    assert AdminClient("http://example.test")._port == 80


def test_tls_flags_need_https(tmp_path: Path) -> None:
    with pytest.raises(click.UsageError, match="https://"):
        AdminClient("http://127.0.0.1:8901", ca_cert=tmp_path / "ca.pem")


def test_client_cert_and_key_go_together(tmp_path: Path) -> None:
    with pytest.raises(click.UsageError, match="together"):
        AdminClient("https://127.0.0.1:8901", client_cert=tmp_path / "c.pem")


def test_unreadable_ca_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(click.ClickException, match="cannot read --ca-cert .*missing.pem"):
        AdminClient("https://127.0.0.1:8901", ca_cert=tmp_path / "missing.pem")


# -- the streaming archive check ------------------------------------------------------------


def _checkpoint(tmp_path: Path, long_name: bool = False) -> Path:
    root = tmp_path / "checkpoint"
    root.mkdir()
    (root / "CURRENT").write_bytes(b"MANIFEST-000001\n")
    (root / "000001.sst").write_bytes(os.urandom(300_000))
    (root / "empty.log").write_bytes(b"")
    (root / "OPTIONS-000007").write_bytes(b"[Version]\n" * 1000)
    if long_name:
        (root / ("x" * 150 + ".sst")).write_bytes(b"long name " * 100)
    return root


def _archive(tmp_path: Path, **kw) -> bytes:
    out = io.BytesIO()
    manifest = build_manifest("0.0.0", {"ready": 3})
    write_archive(_checkpoint(tmp_path, **kw), manifest, out, threading.Event())
    return out.getvalue()


def _check(data: bytes, chunk: int) -> dict:
    check = ArchiveCheck()
    for start in range(0, len(data), chunk):
        check.feed(data[start : start + chunk])
    return check.finish()


@pytest.mark.parametrize("chunk", [1, 7, 512, 4096, 10**9])
def test_check_accepts_a_whole_archive(tmp_path: Path, chunk: int) -> None:
    manifest = _check(_archive(tmp_path), chunk)
    assert manifest["jobs"]["ready"] == 3
    assert {entry["name"] for entry in manifest["files"]} == {
        "CURRENT",
        "000001.sst",
        "empty.log",
        "OPTIONS-000007",
    }


def test_check_follows_pax_long_names(tmp_path: Path) -> None:
    manifest = _check(_archive(tmp_path, long_name=True), 1000)
    assert "x" * 150 + ".sst" in {entry["name"] for entry in manifest["files"]}


def test_check_rejects_every_truncation(tmp_path: Path) -> None:
    data = _archive(tmp_path)
    cuts = sorted({*range(0, len(data), max(1, len(data) // 97)), len(data) - 1, len(data) - 8})
    for cut in cuts:
        with pytest.raises(ArchiveCheckError):
            _check(data[:cut], 4096)


def test_check_rejects_a_cleanly_ended_partial_archive(tmp_path: Path) -> None:
    """The server's archiver failing mid-way: a valid gzip stream holding half a tar."""
    data = gzip.decompress(_archive(tmp_path))
    for cut in (512, 100_000, len(data) // 2):
        with pytest.raises(ArchiveCheckError, match="truncated|manifest"):
            _check(gzip.compress(data[:cut]), 4096)
    # The tar without its end-of-archive blocks, but with the manifest: still refused.
    end = data.rfind(b"}") + 1
    with pytest.raises(ArchiveCheckError, match="truncated"):
        _check(gzip.compress(data[: -(-end // 512) * 512]), 4096)


def test_check_rejects_a_flipped_byte(tmp_path: Path) -> None:
    data = bytearray(_archive(tmp_path))
    data[len(data) // 2] ^= 0x01
    with pytest.raises(ArchiveCheckError):
        _check(bytes(data), 4096)


def test_check_rejects_a_changed_member(tmp_path: Path) -> None:
    """Intact gzip and tar, but one member's bytes differ from the manifest's hash."""
    raw = bytearray(gzip.decompress(_archive(tmp_path)))
    at = raw.find(b"[Version]")
    raw[at] = ord("(")
    with pytest.raises(ArchiveCheckError, match="does not match its manifest"):
        _check(gzip.compress(bytes(raw)), 4096)


def _tar_gz(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=out, mode="wb") as packed,
        tarfile.open(fileobj=packed, mode="w|") as tar,
    ):
        for info, body in members:
            info.size = len(body) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(body) if info.isreg() else None)
    return out.getvalue()


def _manifest_member(files: list[dict]) -> tuple[tarfile.TarInfo, bytes]:
    body = json.dumps({"format": "zizq-backup", "schema_version": 1, "files": files}).encode()
    return tarfile.TarInfo("manifest.json"), body


def test_check_rejects_missing_manifest_and_trailing_data(tmp_path: Path) -> None:
    with pytest.raises(ArchiveCheckError, match="no manifest"):
        _check(_tar_gz([(tarfile.TarInfo("CURRENT"), b"x")]), 4096)
    whole = _archive(tmp_path)
    with pytest.raises(ArchiveCheckError, match="after the end"):
        _check(whole + b"more", 4096)


def test_check_rejects_links_and_members_after_manifest() -> None:
    link = tarfile.TarInfo("CURRENT")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    with pytest.raises(ArchiveCheckError, match="not a regular file"):
        _check(_tar_gz([(link, b""), _manifest_member([])]), 4096)
    late = tarfile.TarInfo("late")
    with pytest.raises(ArchiveCheckError, match="must be last"):
        _check(_tar_gz([_manifest_member([]), (late, b"x")]), 4096)


def test_check_rejects_a_foreign_manifest() -> None:
    body = json.dumps({"hello": "world"}).encode()
    with pytest.raises(ArchiveCheckError, match="not a zizq backup manifest"):
        _check(_tar_gz([(tarfile.TarInfo("manifest.json"), body)]), 4096)


# -- progress ------------------------------------------------------------------------------


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_progress_on_a_terminal_redraws_one_line() -> None:
    stream = _Stream(tty=True)
    progress = Progress(stream)
    progress.started -= 1.0
    progress._last -= 1.0
    progress.update(12 * 1024 * 1024)
    progress.finish(24 * 1024 * 1024)
    text = stream.getvalue()
    assert text.startswith("\r") and text.count("\r") == 2 and text.endswith("\n")
    assert "12.0 MiB" in text and "MiB/s" in text


def test_progress_in_a_log_is_quiet_for_short_downloads() -> None:
    stream = _Stream(tty=False)
    progress = Progress(stream)
    progress.update(1024)
    progress.finish(2048)
    assert stream.getvalue() == ""
    progress._last -= Progress.PLAIN_INTERVAL_S
    progress.update(4096)
    assert stream.getvalue().count("\n") == 1 and "4.0 KiB" in stream.getvalue()


# -- `zizq backup` against a fake admin API: a response that ends cleanly but early -----------


class _Handler(BaseHTTPRequestHandler):
    body = b""
    status = 200
    content_type = "application/gzip"

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's naming
        self.send_response(self.status)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Connection", "close")
        self.end_headers()  # no Content-Length: the body ends when the connection closes
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_admin():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _run_backup(url: str, target: Path):
    return CliRunner().invoke(main, ["backup", "--url", url, str(target)])


def test_backup_refuses_a_short_archive_and_leaves_nothing(tmp_path: Path, fake_admin) -> None:
    whole = _archive(tmp_path)
    _Handler.status, _Handler.content_type = 200, "application/gzip"
    _Handler.body = whole[: len(whole) // 2]
    out = tmp_path / "out"
    out.mkdir()
    url = f"http://127.0.0.1:{fake_admin.server_address[1]}"
    result = _run_backup(url, out / "b.tar.gz")
    assert result.exit_code == 1, result.output
    assert "Error: the backup download is incomplete or damaged" in result.output
    assert list(out.iterdir()) == []

    _Handler.body = whole
    result = _run_backup(url, out / "b.tar.gz")
    assert result.exit_code == 0, result.output
    assert f"Backup saved to {out / 'b.tar.gz'} (" in result.output
    assert [p.name for p in out.iterdir()] == ["b.tar.gz"]
    assert (out / "b.tar.gz").read_bytes() == whole


def test_backup_reports_the_server_error(tmp_path: Path, fake_admin) -> None:
    _Handler.status, _Handler.content_type = 503, "application/json"
    _Handler.body = b'{"error": "backup already running"}'
    url = f"http://127.0.0.1:{fake_admin.server_address[1]}"
    result = _run_backup(url, tmp_path / "b.tar.gz")
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: the server answered 503 Service Unavailable: backup already running"]
    assert not (tmp_path / "b.tar.gz").exists()
    assert not list(tmp_path.glob(".b.tar.gz.*"))


class _PrimaryLikeHandler(BaseHTTPRequestHandler):
    """No /backup or /compact (404 or 405); GET /queues answers like the primary API."""

    status = 404
    queues = True

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's naming
        body = b'{"error": "not found"}'
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        ok = self.path == "/queues" and self.queues
        body = b'{"queues": []}' if ok else b'{"error": "not found"}'
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def primary_like():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PrimaryLikeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status", [404, 405])
@pytest.mark.parametrize("command", ["backup", "compact"])
def test_pointed_at_the_primary_api_says_so(
    tmp_path: Path, primary_like: str, command: str, status: int
) -> None:
    _PrimaryLikeHandler.status, _PrimaryLikeHandler.queues = status, True
    args = [command, "--url", primary_like] + (
        [str(tmp_path / "b.tgz")] if command == "backup" else []
    )
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert f"answered {status}" in errors[0] and f"/{command}" in errors[0]
    assert "that is the primary API, not the admin API" in errors[0]
    assert "--url or ZIZQ_ADMIN_URL" in errors[0] and "8901" in errors[0]
    assert not (tmp_path / "b.tgz").exists()


def test_a_404_from_something_else_says_not_the_admin_api(primary_like: str) -> None:
    _PrimaryLikeHandler.status, _PrimaryLikeHandler.queues = 404, False
    result = CliRunner().invoke(main, ["compact", "--url", primary_like])
    assert result.exit_code == 1
    assert "it is not a Zizq admin API" in result.output


# -- https and mutual TLS, against a local TLS server ------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=test ca", cwd=d)  # fmt: skip
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        _openssl(
            "req",
            *ec,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=d,
        )
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    return d


class _CompactHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the stdlib's naming
        body = b'{"before_bytes": 3145728, "after_bytes": 1048576}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def mtls_admin(pki: Path):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    context.load_verify_locations(pki / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CompactHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_compact_over_mutual_tls(pki: Path, mtls_admin: str) -> None:
    result = CliRunner().invoke(
        main,
        ["compact", "--url", mtls_admin, "--ca-cert", str(pki / "ca.pem")],
        env={
            "ZIZQ_CLIENT_CERT": str(pki / "client.pem"),
            "ZIZQ_CLIENT_KEY": str(pki / "client.key"),
        },
    )
    assert result.exit_code == 0, result.output
    assert "Size before: 3.0 MiB" in result.output
    assert "Size after:  1.0 MiB (freed 2.0 MiB)" in result.output


@pytest.mark.parametrize(
    "names",
    [
        # Reference: src/commands/mod.rs `AdminClientArgs` (the documented names).
        ("ZIZQ_ADMIN_TLS_CA", "ZIZQ_ADMIN_TLS_CLIENT_CERT", "ZIZQ_ADMIN_TLS_CLIENT_KEY"),
        # The names this CLI used first, kept as aliases.
        ("ZIZQ_CA_CERT", "ZIZQ_CLIENT_CERT", "ZIZQ_CLIENT_KEY"),
    ],
)
def test_admin_tls_env_names(pki: Path, mtls_admin: str, names: tuple[str, str, str]) -> None:
    ca, cert, key = names
    env = {
        "ZIZQ_ADMIN_URL": mtls_admin,
        ca: str(pki / "ca.pem"),
        cert: str(pki / "client.pem"),
        key: str(pki / "client.key"),
    }
    result = CliRunner().invoke(main, ["compact"], env=env)
    assert result.exit_code == 0, result.output
    assert f"Requesting compaction from {mtls_admin}" in result.output


def test_documented_env_name_wins_over_alias(pki: Path, mtls_admin: str) -> None:
    env = {
        "ZIZQ_ADMIN_URL": mtls_admin,
        "ZIZQ_ADMIN_TLS_CA": str(pki / "ca.pem"),
        "ZIZQ_CA_CERT": str(pki / "missing.pem"),
        "ZIZQ_ADMIN_TLS_CLIENT_CERT": str(pki / "client.pem"),
        "ZIZQ_ADMIN_TLS_CLIENT_KEY": str(pki / "client.key"),
    }
    result = CliRunner().invoke(main, ["compact"], env=env)
    assert result.exit_code == 0, result.output


def test_admin_help_shows_both_env_names() -> None:
    result = CliRunner().invoke(main, ["backup", "--help"])
    text = " ".join(result.output.split())
    assert "ZIZQ_ADMIN_URL" in text
    for documented, alias in (
        ("ZIZQ_ADMIN_TLS_CA", "ZIZQ_CA_CERT"),
        ("ZIZQ_ADMIN_TLS_CLIENT_CERT", "ZIZQ_CLIENT_CERT"),
        ("ZIZQ_ADMIN_TLS_CLIENT_KEY", "ZIZQ_CLIENT_KEY"),
    ):
        assert f"{documented}, {alias}" in text


def test_tls_failures_are_one_line(pki: Path, mtls_admin: str) -> None:
    runner = CliRunner()
    no_ca = runner.invoke(main, ["compact", "--url", mtls_admin])
    assert no_ca.exit_code == 1
    errors = [line for line in no_ca.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, no_ca.output
    assert errors[0].startswith(f"Error: TLS handshake with {mtls_admin} failed: "), errors
    assert "certificate" in errors[0], errors
    no_client_cert = runner.invoke(
        main, ["compact", "--url", mtls_admin, "--ca-cert", str(pki / "ca.pem")]
    )
    assert no_client_cert.exit_code == 1
    errors = [line for line in no_client_cert.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, no_client_cert.output
    assert errors[0].startswith("Error: "), errors
    # With TLS 1.3 the refusal comes after the handshake, as an alert or a plain EOF.
    assert errors[0].startswith(f"Error: TLS handshake with {mtls_admin} failed: "), errors
    assert "give --client-cert and --client-key)" in errors[0], errors


# -- `zizq restore` flag handling ---------------------------------------------------------------


@pytest.fixture
def restored(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, Path]]:
    import zizq.store.backup as store_backup

    calls: list[tuple[Path, Path]] = []

    def fake(archive: Path, root_dir: Path, report=None) -> dict:
        calls.append((Path(archive), Path(root_dir)))
        return {"created_at": 0, "jobs": {"total": 2, "ready": 1, "in_flight": 1}}

    monkeypatch.setattr(store_backup, "restore_archive", fake)
    return calls


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["restore", "--root-dir", "a", "b.tgz"], {}, "a"),
        (["--root-dir", "g", "restore", "b.tgz"], {}, "g"),
        (["--root-dir", "g", "restore", "--root-dir", "a", "b.tgz"], {}, "a"),
        (["restore", "b.tgz"], {"ZIZQ_ROOT_DIR": "e"}, "e"),
        (["restore", "b.tgz"], {}, "zizq-root"),
    ],
)
def test_restore_root_dir_sources(restored, args, env, expected) -> None:
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    assert restored == [(Path("b.tgz"), Path(expected))]
    lines = result.output.splitlines()
    assert lines[0] == f"Restoring from b.tgz to {Path(expected)}..."
    assert lines[1] == "Restore complete."
    assert "2 jobs (1 ready, 0 scheduled, 1 in flight" in lines[2]


def test_restore_errors_are_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["restore", "--root-dir", str(tmp_path / "new"), str(tmp_path / "missing.tgz")]
    )
    assert result.exit_code == 1
    assert [line for line in result.output.splitlines() if line.startswith("Error:")] == [
        f"Error: {tmp_path / 'missing.tgz'} does not exist"
    ]
    assert not (tmp_path / "new").exists()
