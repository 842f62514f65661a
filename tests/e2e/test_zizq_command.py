"""The `zizq` command as the reference defines it (issue 9, points 14-18 and 20): serve's
flags without `serve`, humantime durations, log formats and destinations, stdout that is
only log records, auto-compaction, admin-client environment names, the start-up lines.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import threading
import time

import pytest

import zizq
from tests.e2e.zizq_process import Api, zizq_command


class _SplitOutput:
    """A `zizq` process with stdout and stderr read apart (each on its own thread)."""

    def __init__(self, args: list[str], env: dict | None = None) -> None:
        self.proc = subprocess.Popen(
            [*zizq_command(), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=dict(os.environ, **(env or {})),
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _pump(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_for_stderr(self, pattern: str, timeout: float = 30.0) -> re.Match:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.err):
                match = regex.search(line)
                if match:
                    return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} on stderr; stderr={self.err} stdout={self.out}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for thread in self._threads:
            thread.join(10)
        return code


def test_bare_zizq_takes_serve_flags_and_json_stdout_is_pure(tmp_path):
    """`zizq --port 0 ...` (no `serve`), stdout only JSON records, banners on stderr.

    Reference: src/main.rs (no subcommand runs serve), src/commands/serve/mod.rs:262-265,
    329-333, 394-398 (banner and `Listening on` on stderr, `listening` log with api/addr).
    """
    run = _SplitOutput(
        ["--root-dir", str(tmp_path / "r"), "--port", "0", "--admin-port", "0",
         "--log-format", "json", "-l", "7"]
    )  # fmt: skip
    try:
        port = int(run.wait_for_stderr(r"^Listening on http://127\.0\.0\.1:(\d+) \(primary\)$")[1])
        with Api(f"http://127.0.0.1:{port}") as api:
            assert api.get("/health")[0] == 200
    finally:
        code = run.stop()
    assert code == 0, (run.err, run.out)
    # stderr: the `Listening on` lines and, after a clean stop, the reference's last line.
    assert [line.split(" (")[-1] for line in run.err[:2]] == ["admin)", "primary)"], run.err
    assert run.err[2:] == ["Server stopped."], run.err
    assert run.out, "no log records on stdout"
    records = [json.loads(line) for line in run.out]  # every stdout line is one JSON object
    primary = [r for r in records if r["fields"].get("api") == "primary"]
    assert len(primary) == 1 and primary[0]["fields"]["addr"] == f"127.0.0.1:{port}"
    assert '"api":"primary"' in run.out[records.index(primary[0])]
    # The start-up record of the tier and the effective configuration.
    tier = [
        r
        for r in records
        if r["fields"]["message"] == "no license key provided, running in free tier"
    ]
    assert len(tier) == 1
    (config,) = [r["fields"] for r in records if r["fields"]["message"] == "configuration"]
    assert config["tier"] == "free"
    assert config["root_dir"] == str(tmp_path / "r")
    assert config["global_in_flight_limit"] == 7
    assert (config["default_commit_mode"], config["enqueue_commit_mode"]) == (
        "buffered",
        "buffered",
    )
    assert config["jq_time_limit_ms"] == 5000 and config["jq_memory_limit"] == 512 * 1024**2
    assert config["idle_timeout_ms"] == 75_000 and config["cache_size"] == 256 * 1024**2
    assert config["auto_compact_threshold"] == 10_000
    assert config["log_format"] == "json"
    assert config["version"] == zizq.__version__


def test_terminal_gets_banner_and_pretty_colours(tmp_path):
    """On a terminal: the banner first, then coloured `pretty` records (the default there).

    Reference: src/commands/serve/mod.rs:261-265 (banner when stderr is a TTY) and
    src/logging.rs:111-120 (pretty with ANSI on a TTY).
    """
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*zizq_command(), "--root-dir", str(tmp_path / "r"), "--port", "0", "--no-admin"],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"(primary)" not in seen:
            assert time.monotonic() < deadline and proc.poll() is None, seen
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:  # the terminal closed: the process ended
                    break
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        os.close(master)
    text = seen.decode()
    assert code == 0
    assert text.startswith(f"Zizq {zizq.__version__}\r\n"), text[:200]
    assert "\x1b[32m INFO\x1b[0m" in text  # pretty, coloured
    assert re.search(r"Listening on http://127\.0\.0\.1:\d+ \(primary\)", text)


def test_default_log_format_is_compact_when_piped(start_server):
    server = start_server(
        "--heartbeat-interval", "1s 500ms", "--idle-timeout", "1m30s",
        "--default-dead-job-retention", "90d", "--enqueue-commit-mode", "fsync",
    )  # fmt: skip
    config = next(line for line in server.lines if " zizq.server: configuration " in line)
    assert "\x1b[" not in server.output  # no colours into a pipe
    assert re.match(
        r"^\d{4}-\d\d-\d\dT[\d:.]+Z  INFO zizq\.server: configuration version=\S+ tier=free ",
        config,
    )
    for pair in (
        "heartbeat_interval_ms=1500",
        "idle_timeout_ms=90000",
        f"dead_retention_ms={90 * 86_400_000}",
        "default_commit_mode=buffered",
        "enqueue_commit_mode=fsync",
        "log_format=compact",
        f"root_dir={server.root_dir}",
    ):
        assert f" {pair}" in config, config


def test_log_to_disk_writes_root_dir_log(start_server):
    # Reference: src/commands/serve/mod.rs:80-82 and `init_logging` (<root>/log/zizq.log).
    server = start_server("--log-to-disk")
    with Api(server.url) as api:
        assert api.get("/health")[0] == 200
    log_file = server.root_dir / "log" / "zizq.log"
    deadline = time.monotonic() + 5
    while "primary API listening" not in (log_file.read_text() if log_file.exists() else ""):
        assert time.monotonic() < deadline, server.output
        time.sleep(0.05)
    text = log_file.read_text()
    assert (
        "configuration version=" in text
        and " tier=free " in text
        and f"log_dir={server.root_dir / 'log'}" in text
    )
    # Nothing but the banner and the `Listening on` lines reach the terminal.
    assert all(line.startswith(("Zizq ", "Listening on ")) for line in server.lines), server.lines


def _enqueue_many(api: Api, queue: str, count: int) -> None:
    status, body, _ = api.post(
        "/jobs/bulk", {"jobs": [{"queue": queue, "type": "t", "payload": {}} for _ in range(count)]}
    )
    assert status in (200, 201), (status, body)


def test_auto_compaction_after_bulk_deletes_past_the_threshold(start_server):
    # Reference: src/store/storage_config.rs:120-123, 215 and src/store/delete.rs:208-214.
    server = start_server(env={"ZIZQ_AUTO_COMPACT_THRESHOLD": "5"})
    with Api(server.url) as api:
        _enqueue_many(api, "ac", 6)
        status, body, _ = api.request("DELETE", "/jobs?queue=ac")
        assert status == 200 and body == {"deleted": 6}, (status, body)
    server.wait_for_line(
        lambda line: "auto-compaction started" in line and "threshold=5" in line, 10
    )
    server.wait_for_line(lambda line: "compaction finished" in line, 30)


def test_auto_compaction_off_with_zero(start_server):
    server = start_server("--auto-compact-threshold", "0")
    with Api(server.url) as api:
        _enqueue_many(api, "ac", 20)
        assert api.request("DELETE", "/jobs?queue=ac")[0] == 200
        assert api.post("/reset")[0] in (200, 204)
        time.sleep(0.5)  # the line would be written before the DELETE answered
        assert api.get("/health")[0] == 200
    assert "auto_compact_threshold=0" in server.output
    assert "auto-compaction started" not in server.output
    assert "compaction finished" not in server.output


def test_auto_compaction_after_bulk_patches(start_server):
    server = start_server(env={"ZIZQ_AUTO_COMPACT_THRESHOLD": "5"})
    with Api(server.url) as api:
        _enqueue_many(api, "ap", 6)
        status, body, _ = api.request("PATCH", "/jobs?queue=ap", {"priority": 7})
        assert status == 200 and body == {"patched": 6}, (status, body)
    server.wait_for_line(lambda line: "auto-compaction started" in line, 10)


@pytest.mark.parametrize("command", ["backup", "compact"])
def test_admin_commands_against_the_primary_port_say_so(server, tmp_path, command):
    target = [str(tmp_path / "b.tar.gz")] if command == "backup" else []
    result = subprocess.run(
        [*zizq_command(), command, "--url", server.url, *target],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert "that is the primary API, not the admin API" in errors[0], errors
    assert "ZIZQ_ADMIN_URL" in errors[0]
    assert not (tmp_path / "b.tar.gz").exists()


def test_admin_url_env_name(server, tmp_path):
    env = dict(os.environ, ZIZQ_ADMIN_URL=server.admin_url)
    result = subprocess.run(
        [*zizq_command(), "compact"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    assert f"Requesting compaction from {server.admin_url}" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--port", "9" * 5000],
        ["--heartbeat-interval", "9" * 5000 + "s"],
        ["--cache-size", "9" * 5000],
    ],
    ids=["port", "duration", "size"],
)
def test_huge_flag_values_are_one_short_line(tmp_path, args):
    cmd = [*zizq_command(), "--root-dir", str(tmp_path / "root"), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    assert result.returncode == 2, (result.returncode, result.stdout[:300], result.stderr[:300])
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and len(lines[0]) < 400, lines
    assert args[0] in lines[0]
    assert not (tmp_path / "root").exists()


def test_log_to_disk_unwritable_is_one_error_line(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "log").write_text("a file where the log directory should be")
    cmd = [*zizq_command(), "--root-dir", str(root), "--port", "0", "--no-admin", "--log-to-disk"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: --log-to-disk "), lines
    assert str(root / "log") in lines[0]
