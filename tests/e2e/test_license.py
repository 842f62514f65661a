"""Licenses end to end: start-up with and without a key, pro gating, live rotation of an
@path key file, and degrading to the free tier at `exp` on a running server.

Every server is a real `zizq serve --port 0` subprocess; timings are generous (the box is
shared), and the real figures are printed (`-s` shows them).
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import nacl.signing
import orjson
import pytest

from tests.e2e.zizq_process import Api, ZizqServer, zizq_command
from tests.licensing import dev_signing_key, mint

OTHER_KEY = nacl.signing.SigningKey(b"\x07" * 32)  # an issuer this build does not trust

VALIDATED = re.compile(
    r"INFO zizq\.license: license validated licensee=(?P<name>.+) tier=(?P<tier>\w+) "
    r"expires_at=(?P<exp>\d+) remaining=(?P<remaining>.+)$"
)
FREE_TIER = "no license key provided, running in free tier"
CHANGED = "license key file changed, updating license"
CHANGED_INVALID = "license key file changed but the new key is not valid"
UNREADABLE = "cannot re-read the license key file, keeping the current license"
EXPIRED = "license expired, running in free tier"
UNIQUE_403 = "unique jobs requires a pro license"
CRON_ROUTES = [
    ("GET", "/crons"),
    ("PUT", "/crons/nightly"),
    ("DELETE", "/crons/nightly"),
    ("POST", "/crons/nightly/entries"),  # the collection has no GET (405), as in the reference
    ("PATCH", "/crons/nightly/entries/e1"),
]
TIMEOUT_S = 10.0


def signed(header: dict | None = None, **claims) -> str:
    """A token signed by the development issuer with any header and claims (None drops)."""
    body = {"sub": "s", "name": "n", "tier": "pro", "exp": int(time.time()) + 3600, **claims}
    parts = [
        orjson.dumps(header or {"alg": "EdDSA"}),
        orjson.dumps({k: v for k, v in body.items() if v is not None}),
    ]
    head, claims_part = (base64.urlsafe_b64encode(p).rstrip(b"=").decode() for p in parts)
    signature = dev_signing_key().sign(f"{head}.{claims_part}".encode()).signature
    return f"{head}.{claims_part}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def validated(server: ZizqServer) -> re.Match:
    """The next `license validated` line (after a rotation)."""
    line = server.wait_for_line(lambda line: VALIDATED.search(line) is not None, TIMEOUT_S)
    match = VALIDATED.search(line)
    assert match is not None
    return match


def startup_line(server: ZizqServer, text: str) -> str:
    """A line logged before the listeners came up (start() has read past those)."""
    found = [line for line in server.lines if text in line]
    assert found, f"no {text!r} line in:\n{server.output}"
    return found[0]


def startup_license(server: ZizqServer) -> re.Match:
    match = VALIDATED.search(startup_line(server, "license validated"))
    assert match is not None, server.output
    return match


def unique_enqueue(api: Api, key: str) -> tuple[int, dict]:
    status, body, _ = api.post(
        "/jobs", {"queue": "lic", "type": "t", "payload": {"k": key}, "unique_key": key}
    )
    return status, body


def retried(action) -> None:
    """On Windows a file the watcher has open for its read cannot be replaced or removed."""
    for _ in range(50):
        try:
            return action()
        except PermissionError:
            time.sleep(0.02)
    action()


def replace_file(path: Path, text: str) -> None:
    """Write a new key atomically, as a deployment tool (or Kubernetes) would."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    retried(lambda: os.replace(tmp, path))


def line_with(text: str):
    return lambda line: text in line


@pytest.fixture(scope="module")
def dev_trusted(tmp_path_factory) -> bool:
    """Whether the server under test trusts the development issuer (a release build does not).

    Its root dir is below a regular file, so a server that accepts the license stops at once.
    """
    not_a_dir = tmp_path_factory.mktemp("trust") / "file"
    not_a_dir.write_text("")
    proc = subprocess.run(
        [*zizq_command(), "serve", "--root-dir", str(not_a_dir / "root"), "-k", mint()],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    return "--license-key" not in proc.stderr


@pytest.fixture
def dev_licenses(dev_trusted) -> None:
    if not dev_trusted:
        pytest.skip("this build does not trust development licenses")


# --- start-up -------------------------------------------------------------------------------


def test_raw_token_on_the_command_line_enables_pro(dev_licenses, start_server):
    exp = int(time.time()) + 30 * 86_400
    token = mint(tier="enterprise", name="Acme Ltd", exp=exp)
    # The command line wins over the env var (which here would stop start-up).
    server = start_server("-k", token, env={"ZIZQ_LICENSE_KEY": "not-a-license"})
    match = startup_license(server)
    assert match["name"] == "Acme Ltd" and match["tier"] == "enterprise"
    assert int(match["exp"]) == exp
    assert match["remaining"].startswith(("29d 23h", "30d"))
    assert "tier=enterprise" in startup_line(server, "configuration")
    assert "license key file watcher" not in server.output  # a raw token cannot change
    with Api(server.url) as api:
        first = unique_enqueue(api, "u1")
        assert first[0] == 201 and first[1]["duplicate"] is False
        again = unique_enqueue(api, "u1")
        assert again[0] == 200 and again[1]["duplicate"] is True
        assert again[1]["id"] == first[1]["id"]


@pytest.mark.parametrize("via", ["flag", "env"])
def test_key_file_and_env_vars(dev_licenses, start_server, tmp_path, via):
    path = tmp_path / "license.jwt"
    path.write_text(mint(tier="pro", name="File Corp") + "\n")
    if via == "flag":
        server = start_server("--license-key", f"@{path}")
    else:
        server = start_server(
            env={"ZIZQ_LICENSE_KEY": f"@{path}", "ZIZQ_LICENSE_KEY_CHECK_INTERVAL": "250ms"}
        )
    match = startup_license(server)
    assert (match["name"], match["tier"]) == ("File Corp", "pro")
    watcher = startup_line(server, "license key file watcher started")
    assert f"path={path}" in watcher
    assert f"interval_ms={5000 if via == 'flag' else 250}" in watcher
    with Api(server.url) as api:
        assert unique_enqueue(api, "f1")[0] == 201


def test_raw_token_in_the_env_var(dev_licenses, start_server):
    server = start_server(env={"ZIZQ_LICENSE_KEY": mint(name="Env Corp")})
    assert startup_license(server)["name"] == "Env Corp"


def test_without_a_license_pro_features_answer_403(start_server):
    server = start_server(env={"ZIZQ_LICENSE_KEY": ""})  # set but empty: no license
    startup_line(server, FREE_TIER)
    assert "tier=free" in startup_line(server, "configuration")
    for fmt, http2 in [("json", False), ("msgpack", True)]:
        with Api(server.url, fmt=fmt, http2=http2) as api:
            assert unique_enqueue(api, "u1") == (403, {"error": UNIQUE_403})
            bulk = api.post(
                "/jobs/bulk",
                {"jobs": [{"queue": "q", "type": "t", "payload": {}, "unique_key": "b1"}]},
            )
            # a bulk may name the refused job's index before the message
            assert bulk[0] == 403 and bulk[1]["error"].endswith(UNIQUE_403), bulk[:2]
            batch = {"key": "b", "when": "true", "fold": "$new"}
            folded = api.post("/jobs", {"queue": "q", "type": "t", "payload": {}, "batch": batch})
            assert folded[:2] == (403, {"error": "batched jobs requires a pro license"})
            for method, route in CRON_ROUTES:
                status, body, _ = api.request(method, route, body={} if method != "GET" else None)
                assert status == 403, (method, route, status, body)
                assert body == {"error": "cron scheduling requires a pro license"}
            # nothing of the refused requests was stored; plain jobs still work
            assert api.get("/jobs/count")[1] == {"count": 0}
            assert api.post("/jobs", {"queue": "q", "type": "t", "payload": {}})[0] == 201
            api.post("/reset")


SIGNED_CASES = {"unknown tier", "no name", "expired file"}


def failed_start(
    tmp_path: Path, before: list[str], after: list[str], env: dict | None
) -> tuple[int, str, Path]:
    root = tmp_path / "never-created"
    proc = subprocess.run(
        [*zizq_command(), *before, "serve", "--root-dir", str(root), "--port", "0", *after],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=30,  # a server that wrongly starts would run until killed
        env={**os.environ, **(env or {})},
    )
    return proc.returncode, proc.stderr, root


def test_unusable_keys_stop_start_up_with_one_error_line(tmp_path, dev_trusted):
    expired = tmp_path / "expired.jwt"
    expired.write_text(mint(exp=int(time.time()) - 60))
    empty = tmp_path / "empty.jwt"
    empty.write_text("\n")
    # name: (flags before `serve`, flags after it, env, part of the message)
    cases = {
        "not a jwt": ([], ["-k", "hello"], None, "not a JWT"),
        "bad signature": ([], ["-k", mint(key=OTHER_KEY)], None, "signature is not valid"),
        "alg none": ([], ["-k", signed({"alg": "none"})], None, "signed with 'none', not EdDSA"),
        "unknown tier": ([], ["-k", signed(tier="gold")], None, "unknown tier 'gold'"),
        "no name": ([], ["-k", signed(name=None)], None, "no 'name' claim"),
        "expired file": ([], ["-k", f"@{expired}"], None, "expired at"),
        "missing file": ([], ["-k", f"@{tmp_path / 'no.jwt'}"], None, "No such file"),
        "empty file": ([], ["-k", f"@{empty}"], None, "license key is empty"),
        "a directory": ([], ["-k", f"@{tmp_path}"], None, "cannot read license key file"),
        "global position": (["--license-key=junk"], [], None, "not a JWT"),
        "env var": ([], [], {"ZIZQ_LICENSE_KEY": "a.b.c"}, "not base64url"),
    }
    took = []
    for name, (before, after, env, expected) in cases.items():
        if not dev_trusted and name in SIGNED_CASES:
            expected = "signature is not valid"  # checked before the claims
        started = time.monotonic()
        code, stderr, root = failed_start(tmp_path, before, after, env)
        took.append(time.monotonic() - started)
        lines = stderr.splitlines()
        assert code == 1, (name, code, stderr)
        assert len(lines) == 1, (name, stderr)
        assert lines[0].startswith("Error: --license-key: "), (name, stderr)
        assert expected in lines[0], (name, stderr)
        assert not root.exists(), name  # refused before the store was opened
    print(f"\nfailed start-ups: {len(took)}, slowest {max(took):.2f}s")


# --- rotation -------------------------------------------------------------------------------


def test_rotating_the_key_file_under_a_running_server(dev_licenses, start_server, tmp_path):
    path = tmp_path / "license.jwt"
    path.write_text(mint(tier="pro", name="First"))
    server = start_server("-k", f"@{path}", "--license-key-check-interval", "200ms")
    assert startup_license(server)["name"] == "First"
    api = Api(server.url)

    def rotated_to(text: str, writer=replace_file) -> re.Match:
        started = time.monotonic()
        writer(path, text)
        server.wait_for_line(line_with(CHANGED), TIMEOUT_S)
        match = validated(server)
        took.append(time.monotonic() - started)
        return match

    def refused(text: str) -> str:
        replace_file(path, text)
        line = server.wait_for_line(line_with(CHANGED_INVALID), TIMEOUT_S)
        assert " ERROR " in line
        return line

    took: list[float] = []
    try:
        assert unique_enqueue(api, "r1")[0] == 201

        # A valid new key: swapped in live (written in place this time, as `echo > file`
        # does; a read between the truncation and the write is a harmless ERROR line).
        match = rotated_to(mint(tier="enterprise", name="Second"), Path.write_text)
        assert (match["name"], match["tier"]) == ("Second", "enterprise")

        # Changed but invalid: logged, the current license stays.
        assert "not a JWT" in refused("garbage")
        assert "expired at" in refused(mint(name="Stale", exp=int(time.time()) - 5))
        assert "signature is not valid" in refused(mint(name="Forged", key=OTHER_KEY))
        assert unique_enqueue(api, "r2")[0] == 201

        # A symlink retargeted to another file counts as a change (Kubernetes secrets).
        third, fourth = tmp_path / "third.jwt", tmp_path / "fourth.jwt"
        third.write_text(mint(name="Third"))
        fourth.write_text(mint(name="Fourth", tier="pro"))

        def link_to(target: Path):
            def write(link: Path, _text: str) -> None:
                tmp = link.with_name("link.tmp")
                tmp.symlink_to(target)
                retried(lambda: os.replace(tmp, link))

            return write

        if os.name != "nt":  # symlinks need privileges there
            assert rotated_to("", link_to(third))["name"] == "Third"
            assert rotated_to("", link_to(fourth))["name"] == "Fourth"

        # The file disappears: a warning (once), the license stays.
        retried(path.unlink)
        line = server.wait_for_line(line_with(UNREADABLE), TIMEOUT_S)
        assert " WARN" in line and "No such file" in line
        assert unique_enqueue(api, "r3")[0] == 201
        time.sleep(0.5)
        assert server.output.count(UNREADABLE) == 1

        # It comes back: read again, and a license that expires soon is swapped in...
        exp = int(time.time()) + 3
        match = rotated_to(mint(name="Short", exp=exp))
        assert (match["name"], int(match["exp"])) == ("Short", exp)
        # ...and when it expires, the server degrades to the free tier at once.
        first_403 = wait_for_403_after(api, exp)
        expired_line = server.wait_for_line(line_with(EXPIRED), TIMEOUT_S)
        assert " WARN" in expired_line and "licensee=Short" in expired_line
        assert -0.01 <= log_time(expired_line) - exp < 1.0

        # Rotating a valid key in brings pro back without a restart.
        assert rotated_to(mint(name="Renewed"))["name"] == "Renewed"
        assert unique_enqueue(api, "r5")[0] == 201
        assert api.get("/health")[0] == 200
    finally:
        api.close()
    assert "Traceback" not in server.output
    print(f"\nrotation picked up after {', '.join(f'{t:.2f}s' for t in took)} (interval 200ms)")
    print(f"first 403 answered {first_403:.3f}s after exp")
    assert max(took) < 3.0


def wait_for_403_after(api: Api, exp: int) -> float:
    """Enqueue unique jobs across `exp` until one is refused; how long after `exp` that was.

    A request answered 201 must have been sent before `exp`; one answered 403 must have
    been answered after it (server and test share this machine's clock).
    """
    time.sleep(max(0.0, exp - time.time() - 0.7))
    n = 0
    while True:
        n += 1
        sent = time.time()
        status, body = unique_enqueue(api, f"exp-{n}")
        answered = time.time()
        if status == 403:
            break
        assert status == 201, (status, body)
        assert sent < exp + 0.01, f"pro still allowed {sent - exp:.3f}s after exp"
        assert answered < exp + 10, "never degraded"
        time.sleep(0.05)
    assert body == {"error": f"license expired: {UNIQUE_403}"}
    assert answered >= exp - 0.01, f"refused {exp - answered:.3f}s before exp"
    # Polling every 50 ms: the first request after exp is the one refused.
    assert sent < exp + 1.0, f"first 403 only {sent - exp:.3f}s after exp"
    return answered - exp


def log_time(line: str) -> float:
    """The Unix time of a compact log line (`2026-01-02T03:04:05.123456Z  INFO ...`)."""
    stamp = line.split()[0]
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def test_a_license_expiring_while_the_server_runs(dev_licenses, start_server, tmp_path):
    # Start-up takes under a second here; the margin is for a busy machine.
    exp = int(time.time()) + 5
    server = start_server("-k", mint(name="Brief Corp", exp=exp))
    assert startup_license(server)["name"] == "Brief Corp"
    with Api(server.url) as api:
        status, job = unique_enqueue(api, "held")
        assert status == 201
        after = wait_for_403_after(api, exp)
        line = server.wait_for_line(line_with(EXPIRED), TIMEOUT_S)
        logged_after = log_time(line) - exp
        assert " WARN" in line and f"expires_at={exp}" in line
        assert -0.01 <= logged_after < 1.0
        # The server keeps running: free features work, what pro created keeps its meaning.
        assert api.get("/health")[:2] == (200, {"status": "ok"})
        assert api.post("/jobs", {"queue": "q", "type": "t", "payload": {}})[0] == 201
        kept = api.get(f"/jobs/{job['id']}")[1]
        assert kept["unique_key"] == "held" and kept["status"] == "ready"
        assert api.request("GET", "/crons")[0] == 403
    assert server.proc.poll() is None
    print(f"\nfirst 403 answered {after:.3f}s after exp; expiry logged {logged_after:.3f}s after")
