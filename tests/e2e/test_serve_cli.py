"""The `zizq serve` process contract: start-up output, listeners, signals, the root-dir
lock, flag validation, --version, and curl over h2c."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import orjson
import pytest

import zizq
from tests.e2e.helpers_semantics import get_job
from tests.e2e.zizq_process import Api, TakeStream, zizq_command


def _version(server) -> str:
    with Api(server.url) as api:
        status, body, _ = api.get("/version")
    assert status == 200
    return body["version"]


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_startup_output(server):
    lines = [line for line in server.lines if line.strip()]
    # The `Zizq <version>` banner is for terminals only (see test_terminal_gets_banner_...);
    # in a pipe the build's version is in the configuration log line.
    assert not any(line.startswith("Zizq ") for line in lines), lines[:3]
    assert any(f" version={zizq.__version__} tier=free " in line for line in lines), lines[:4]
    admin_port, primary_port = _port(server.admin_url), _port(server.url)
    assert admin_port > 0 and primary_port > 0 and admin_port != primary_port
    assert f"Listening on http://127.0.0.1:{admin_port} (admin)" in lines
    assert f"Listening on http://127.0.0.1:{primary_port} (primary)" in lines
    # The announced ports are the real ones.
    for url in (server.url, server.admin_url):
        for http2 in (False, True):
            with Api(url, http2=http2) as api:
                assert api.get("/health")[:2] == (200, {"status": "ok"})


def _json_listen_lines(lines: list[str]) -> dict[str, dict]:
    found = {}
    for line in lines:
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        fields = record.get("fields", {})
        api = record.get("api", fields.get("api"))
        if api in ("primary", "admin"):
            assert api not in found, f"two {api} listener lines"
            found[api] = record
    return found


def test_json_log_format_announces_listeners(start_server):
    server = start_server("--log-format", "json")
    for line in server.lines:
        if line.strip() and not line.startswith(("Zizq ", "Listening on ")):
            json.loads(line)  # every other line is one JSON object
    found = _json_listen_lines(server.lines)
    assert set(found) == {"primary", "admin"}, server.output
    for api, url in (("primary", server.url), ("admin", server.admin_url)):
        fields = found[api]["fields"]
        assert fields["addr"] == f"127.0.0.1:{_port(url)}"
        assert fields["scheme"] == "http"
        assert f'"api":"{api}"' in json.dumps(found[api], separators=(",", ":"))


def test_no_admin(start_server):
    server = start_server("--no-admin", "--log-format", "json")
    assert "admin" not in server.urls
    assert not any(line.endswith("(admin)") for line in server.lines)
    assert set(_json_listen_lines(server.lines)) == {"primary"}
    with Api(server.url) as api:
        assert api.get("/health")[0] == 200


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2c"])
def test_admin_and_primary_apis_are_apart(server, http2):
    with Api(server.admin_url, fmt="msgpack", http2=http2) as admin:
        assert admin.get("/health")[:2] == (200, {"status": "ok"})
        status, body, _ = admin.get("/version")
        assert status == 200 and body["version"] == _version(server)
        status, body, _ = admin.post("/jobs", {"queue": "q", "type": "t", "payload": {}})
        assert status == 404 and body == {"error": "not found"}, (status, body)
        assert admin.get("/jobs/take")[0] == 404
        assert admin.get("/jobs/03fr1jkpcsipbsckqj0y6pgr7")[0] == 404
    # ...and the primary listener serves none of the admin API.
    with Api(server.url, fmt="msgpack", http2=http2) as primary:
        for path in ("/backup", "/compact"):
            status, body, _ = primary.post(path)
            assert status == 404 and body == {"error": "not found"}, (path, status, body)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_shuts_down_cleanly_with_open_stream(start_server, sig):
    server = start_server()
    with Api(server.url) as api:
        job = api.enqueue("sig", "t", {"n": 1})
    stream = TakeStream(server.url, queues="sig")
    try:
        assert stream.next_job(5)["id"] == job["id"]
        started = time.monotonic()
        code = server.stop(sig, timeout=5)
        elapsed = time.monotonic() - started
        assert code == 0, server.output
        assert elapsed < 5, elapsed
        # The stream was closed by the server.
        deadline = time.monotonic() + 2
        ended = False
        while time.monotonic() < deadline and not ended:
            ended = stream.next_item(2) is None
        assert ended, "take stream still open after shutdown"
    finally:
        stream.close()
    server.start()
    with Api(server.url) as api:
        again = get_job(api, job["id"])
    assert again["status"] == "ready" and again["attempts"] == 0


def test_second_server_on_same_root_dir_refuses(server, tmp_path):
    cmd = [
        *zizq_command(),
        "serve",
        "--root-dir",
        str(server.root_dir),
        "--port",
        "0",
        "--admin-port",
        "0",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert str(server.root_dir) in output, output
    assert "Listening on" not in output
    # The first server is unharmed.
    with Api(server.url) as api:
        assert api.get("/health")[0] == 200


BAD_FLAGS = [
    (["--port", "abc"], "--port"),
    (["--heartbeat-interval", "5x"], "--heartbeat-interval"),
    (["--default-backoff-base", "1s"], "--default-backoff"),
    (["--reaper-check-interval", "soon"], "--reaper-check-interval"),
    (["--cache-size", "12XB"], "--cache-size"),
    (["--log-format", "xml"], "--log-format"),
    (["--default-commit-mode", "maybe"], "--default-commit-mode"),
]


@pytest.mark.parametrize(("args", "flag"), BAD_FLAGS, ids=[" ".join(args) for args, _ in BAD_FLAGS])
def test_bad_flag_value_exits_2_with_one_line(tmp_path, args, flag):
    cmd = [*zizq_command(), "serve", "--root-dir", str(tmp_path / "root"), "--port", "0", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {lines}"
    assert flag in lines[0], lines[0]
    assert not (tmp_path / "root").exists(), "nothing started"


def test_bad_env_var_value_exits_2(tmp_path):
    cmd = [*zizq_command(), "serve", "--root-dir", str(tmp_path / "root")]
    env = dict(os.environ, ZIZQ_HEARTBEAT_INTERVAL="5x")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=20, env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    output = result.stdout + result.stderr
    assert "--heartbeat-interval" in output or "ZIZQ_HEARTBEAT_INTERVAL" in output, output


def test_version_flag_matches_api(server):
    result = subprocess.run(
        [*zizq_command(), "--version"], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0, result.stderr
    # `--version` is this build's version; GET /version is the API level it implements.
    assert result.stdout.strip() == f"zizq {zizq.__version__}"
    assert _version(server)


CURL = shutil.which("curl")


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_http2_prior_knowledge_health(server):
    result = subprocess.run(
        [
            CURL,
            "-sS",
            "--http2-prior-knowledge",
            "--max-time",
            "5",
            "-w",
            "\n%{http_version} %{http_code}",
            f"{server.url}/health",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 0, result.stderr
    body, _, meta = result.stdout.rpartition("\n")
    assert meta == "2 200", result.stdout
    assert orjson.loads(body) == {"status": "ok"}


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_http2_prior_knowledge_take_stream(server):
    with Api(server.url, http2=True) as api:
        job = api.enqueue("curl", "t", {"via": "curl"})
        result = subprocess.run(
            [
                CURL,
                "-sS",
                "-N",
                "--http2-prior-knowledge",
                "--max-time",
                "1.5",
                "-w",
                "\n%{http_version} %{http_code}",
                f"{server.url}/jobs/take?queue=curl",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert result.returncode == 28, (result.returncode, result.stderr)  # --max-time hit
        items = [line for line in result.stdout.splitlines() if line.strip()]
        taken = orjson.loads(items[0])
        assert taken["id"] == job["id"] and taken["payload"] == {"via": "curl"}
        assert taken["status"] == "in_flight"
        # curl hung up: the job is ready again at once.
        deadline = time.monotonic() + 1
        while get_job(api, job["id"])["status"] != "ready":
            assert time.monotonic() < deadline, get_job(api, job["id"])
            time.sleep(0.02)
