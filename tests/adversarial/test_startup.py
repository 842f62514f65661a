"""Start-up mistakes: each must end in one `Error: ...` line on stderr and a non-zero exit,
never a traceback, and a busy port must be refused (no second server sharing it)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.zizq_process import Api, zizq_command


def _serve(root: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run `zizq serve` expecting it to refuse to start (a started server is killed)."""
    cmd = [*zizq_command(), "serve", "--root-dir", str(root), *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"zizq serve started instead of refusing: {exc.stdout}") from None


def _assert_one_error_line(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Listening on" not in result.stdout
    return lines[0]


def _free_ports() -> tuple[str, str]:
    return "--port", "0", "--admin-port", "0"


def test_host_name_localhost_works(start_server):
    server = start_server("--host", "localhost", "--admin-host", "localhost")
    assert server.url.startswith("http://127.0.0.1:"), server.url
    assert server.admin_url.startswith("http://127.0.0.1:"), server.admin_url
    for url in (server.url, server.admin_url):
        with Api(url.replace("127.0.0.1", "localhost")) as api:
            assert api.get("/health")[0] == 200


@pytest.mark.parametrize(
    ("flag", "host", "needle"),
    [
        ("--host", "192.0.2.1", "192.0.2.1"),  # TEST-NET-1: never on this machine
        ("--admin-host", "192.0.2.1", "admin"),
        ("--host", "no-such-host.invalid", "no-such-host.invalid"),
        ("--admin-host", "no-such-host.invalid", "--admin-host"),
    ],
    ids=["addr-primary", "addr-admin", "name-primary", "name-admin"],
)
def test_bad_address_is_one_error_line(tmp_path, flag, host, needle):
    result = _serve(tmp_path / "root", *_free_ports(), flag, host)
    _assert_one_error_line(result, needle)


def test_busy_primary_port_is_refused(server, tmp_path):
    port = server.url.rsplit(":", 1)[1]
    result = _serve(tmp_path / "other", "--port", port, "--admin-port", "0")
    _assert_one_error_line(result, port, "--port")
    with Api(server.url) as api:  # the first server is unharmed and alone on its port
        assert api.get("/health")[0] == 200


def test_busy_admin_port_is_refused(server, tmp_path):
    port = server.admin_url.rsplit(":", 1)[1]
    result = _serve(tmp_path / "other", "--port", "0", "--admin-port", port)
    _assert_one_error_line(result, port, "admin")


def test_port_held_by_another_program_is_refused(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        result = _serve(tmp_path / "root", "--port", port, "--admin-port", "0")
    _assert_one_error_line(result, port)


@contextlib.contextmanager
def _read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody can write to, root included: a read-only tmpfs mount."""
    target = tmp_path / "ro"
    target.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        if os.geteuid() == 0:
            pytest.skip("cannot mount a read-only tmpfs here (root ignores mode bits)")
        target.chmod(0o555)  # enough for a non-root user
    try:
        yield target
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", str(target)], capture_output=True)


def test_root_dir_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    result = _serve(tmp_path / "file" / "root", *_free_ports())
    _assert_one_error_line(result, "--root-dir", "file")


def test_root_dir_not_writable(tmp_path):
    with _read_only_dir(tmp_path) as ro:
        result = _serve(ro / "root", *_free_ports())
        _assert_one_error_line(result, "--root-dir")
        result = _serve(ro, *_free_ports())  # exists, but cannot be written
        _assert_one_error_line(result, "--root-dir")


def test_log_dir_not_writable(tmp_path):
    (tmp_path / "file").write_text("x")
    result = _serve(tmp_path / "root", *_free_ports(), "--log-dir", str(tmp_path / "file" / "logs"))
    _assert_one_error_line(result, "--log-dir")
    with _read_only_dir(tmp_path) as ro:
        result = _serve(tmp_path / "root", *_free_ports(), "--log-dir", str(ro))
        _assert_one_error_line(result, "--log-dir")


def test_store_that_cannot_open_is_one_error_line(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "data").write_text("not a RocksDB directory")
    result = _serve(root, *_free_ports())
    _assert_one_error_line(result, "store")


def test_idle_timeout_must_exceed_heartbeat(tmp_path):
    result = _serve(tmp_path / "root", *_free_ports(), "--idle-timeout", "2s")
    assert result.returncode == 2, result
    assert "--idle-timeout" in result.stderr and "Traceback" not in result.stderr


def test_a_clean_restart_uses_the_startup_index_and_a_kill_does_not(start_server):
    """A clean stop saves the indexes; the next start reads them (and removes the file);
    after kill -9 the start scans, and either way every job is still there and served."""
    server = start_server()
    with Api(server.url) as api:
        jobs = [
            {"queue": "s", "type": "t", "payload": {"n": n}, "priority": 9 - n} for n in range(5)
        ]
        assert api.post("/jobs/bulk", {"jobs": jobs})[0] == 201
    server.restart()
    assert "loaded from the start-up index" in server.output, server.output
    index = server.root_dir / "startup-index.msgpack"
    assert not index.exists()
    with Api(server.url) as api:
        assert api.get("/jobs/count?queue=s&status=ready")[1] == {"count": 5}
        assert api.post("/jobs", {"queue": "s", "type": "t", "payload": {"n": 5}})[0] == 201
    server.kill()
    server.start()
    assert not index.exists()
    with Api(server.url) as api:
        status, body, _ = api.get("/jobs?queue=s&order=asc&limit=10")
        assert status == 200 and len(body["jobs"]) == 6
    assert server.output.count("in-memory indexes rebuilt") >= 1
