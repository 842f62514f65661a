"""HTTPS and mutual TLS on both listeners, with certificates made by `zizq tls`.

Real handshakes only: httpx (h2 and HTTP/1.1), curl and openssl where installed, and raw
`ssl` sockets for the refusals. Two servers serve the whole module (one TLS, one mTLS);
the start-up refusals are servers that must not start.
"""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import h2.connection
import h2.events
import pytest
from click.testing import CliRunner

from tests.e2e.zizq_process import Api, TakeStream, ZizqServer, tls_context, zizq_command
from tests.licensing import mint
from zizq.cli import main as cli
from zizq.tls import issue_client_cert, issue_server_cert, load_ca

# The mTLS server's license runs out this long after it was minted: the last test checks
# that the listener still requires (and accepts) client certificates once it has.
LICENSE_LIFETIME_S = 8.0
READ_TIMEOUT_S = 5.0
CURL = shutil.which("curl")
OPENSSL = shutil.which("openssl")


def _zizq_tls(*args: str) -> str:
    result = CliRunner().invoke(cli, ["tls", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    """One CA with a server and a client certificate, a stranger CA, and expired ones."""
    base = tmp_path_factory.mktemp("tls")
    main, other = base / "main", base / "other"
    _zizq_tls(
        "init", "--out-dir", str(main), "--san", "localhost", "--san", "127.0.0.1",
        "--client", "worker",
    )  # fmt: skip
    _zizq_tls("ca", "--out-dir", str(other), "--cn", "Stranger CA")
    _zizq_tls("client-cert", "--out-dir", str(other), "--name", "stranger")
    # Expired certificates cannot be asked of the CLI (--days is at least 1); the same
    # generator makes them with explicit dates.
    ca = load_ca(main / "ca-cert.pem", main / "ca-key.pem")
    past = dict(
        not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=30),
        not_after=dt.datetime.now(dt.UTC) - dt.timedelta(days=1),
    )
    files = {
        "ca": main / "ca-cert.pem",
        "server_cert": main / "server-cert.pem",
        "server_key": main / "server-key.pem",
        "client_cert": main / "client-worker-cert.pem",
        "client_key": main / "client-worker-key.pem",
        "other_ca": other / "ca-cert.pem",
        "other_cert": other / "client-stranger-cert.pem",
        "other_key": other / "client-stranger-key.pem",
    }
    for name, pems in (
        ("expired_client", issue_client_cert(ca, "old-worker", **past)),
        ("expired_server", issue_server_cert(ca, ["localhost", "127.0.0.1"], **past)),
    ):
        for part, data in zip(("cert", "key"), pems, strict=True):
            path = base / f"{name}-{part}.pem"
            path.write_bytes(data)
            files[f"{name}_{part}"] = path
    return files


@pytest.fixture(scope="module")
def tls_server(certs, tmp_path_factory):
    """Primary API over HTTPS, admin API plain HTTP (the listeners may be mixed)."""
    server = ZizqServer(
        tmp_path_factory.mktemp("tls-root"),
        "--tls-cert", str(certs["server_cert"]), "--tls-key", str(certs["server_key"]),
    )  # fmt: skip
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(certs, tmp_path_factory):
    """Both listeners over mutual TLS, licensed by a key that expires during the module."""
    license_file = tmp_path_factory.mktemp("license") / "license.jwt"
    expires_at = time.time() + LICENSE_LIFETIME_S
    license_file.write_text(mint(exp=int(expires_at)))
    tls = ("--tls-cert", str(certs["server_cert"]), "--tls-key", str(certs["server_key"]))
    server = ZizqServer(
        tmp_path_factory.mktemp("mtls-root"),
        "--license-key", f"@{license_file}",
        *tls, "--tls-client-ca", str(certs["ca"]),
        *(f"--admin{flag[1:]}" if flag.startswith("--") else flag for flag in tls),
        "--admin-tls-client-ca", str(certs["ca"]),
    )  # fmt: skip
    server.license_expires_at = int(expires_at)
    try:
        server.start()
    except RuntimeError:
        if "Error: --license-key" not in server.output:
            raise
        # A release binary (ZIZQ_BINARY) trusts its own issuer, not the development one.
        pytest.skip("this build does not trust development licenses: no mTLS server")
    yield server
    server.stop()


@pytest.fixture
def client_ctx(certs) -> ssl.SSLContext:
    return tls_context(certs["ca"], certs["client_cert"], certs["client_key"])


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _enqueue_take_ack(url: str, context: ssl.SSLContext, http2: bool) -> None:
    with Api(url, http2=http2, verify=context) as api:
        job = api.enqueue("tls", "greet", {"over": "tls"})
        with TakeStream(url, queues="tls", http2=http2, verify=context) as stream:
            taken = stream.next_job()
            assert taken["id"] == job["id"] and taken["payload"] == {"over": "tls"}
            assert api.ack(job["id"]) == 204
        assert api.get(f"/jobs/{job['id']}")[0] == 404


def _request_over(port: int, context: ssl.SSLContext) -> bytes | Exception:
    """Handshake, send a request, read: the answer's first bytes, or what stopped it."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S) as sock,
            context.wrap_socket(sock, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            return tls.recv(4096)
    except (ssl.SSLError, OSError) as exc:
        return exc


def _assert_refused(port: int, context: ssl.SSLContext, alert: str = "") -> None:
    """No answer: the handshake fails, with `alert` when the client gets to read it."""
    outcome = _request_over(port, context)
    if isinstance(outcome, TimeoutError):
        pytest.fail("the server neither refused nor answered; it should refuse at once")
    # TLS 1.3 clients finish their side of the handshake before the server has checked the
    # certificate: the refusal then arrives as an alert on the first read (or, if the
    # server's close wins the race, as a reset or EOF).
    if isinstance(outcome, ssl.SSLError):
        assert alert in str(outcome).lower(), outcome
    else:
        assert isinstance(outcome, ConnectionError) or outcome == b"", outcome


def _curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CURL, "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=20
    )


# -- HTTPS -------------------------------------------------------------------------------


def test_listeners_announce_their_scheme(tls_server):
    assert tls_server.url.startswith("https://") and tls_server.admin_url.startswith("http://")
    lines = tls_server.output.splitlines()
    assert any("primary API listening" in line and "scheme=https" in line for line in lines)
    assert any("admin API listening" in line and "scheme=http " in line + " " for line in lines)


@pytest.mark.parametrize("http2", [True, False], ids=["h2", "h1"])
def test_enqueue_take_ack_over_tls(tls_server, certs, http2):
    _enqueue_take_ack(tls_server.url, tls_context(certs["ca"]), http2)


def test_alpn_offers_h2_and_http11(tls_server, certs):
    for offered, chosen in ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")):
        context = tls_context(certs["ca"])
        context.set_alpn_protocols(offered)
        with (
            socket.create_connection(("127.0.0.1", _port(tls_server.url)), timeout=5) as sock,
            context.wrap_socket(sock, server_hostname="localhost") as tls,
        ):
            assert tls.selected_alpn_protocol() == chosen
            # TLS 1.2 stays available for older clients; the default stack picks 1.3.
            assert tls.version() == "TLSv1.3"
    old = tls_context(certs["ca"])
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    assert _request_over(_port(tls_server.url), old).startswith(b"HTTP/1.1 200")


def test_h2_with_prior_knowledge_over_tls(tls_server, certs):
    """HTTP/2 without ALPN, as clients with "prior knowledge" (the Rust client) speak it."""
    context = tls_context(certs["ca"])  # offers no ALPN protocol
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    headers = [(":method", "GET"), (":path", "/health"), (":scheme", "https"),
               (":authority", "localhost")]  # fmt: skip
    conn.send_headers(1, headers, end_stream=True)
    status, body = None, b""
    with (
        socket.create_connection(("127.0.0.1", _port(tls_server.url)), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() is None
        tls.sendall(conn.data_to_send())
        ended = False
        while not ended:
            data = tls.recv(65536)
            assert data, "the server closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            tls.sendall(conn.data_to_send())
    assert (status, body) == (b"200", b'{"status":"ok"}')


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
def test_openssl_s_client_shows_alpn_h2(tls_server, certs):
    port = _port(tls_server.url)
    result = subprocess.run(
        [OPENSSL, "s_client", "-alpn", "h2", "-connect", f"127.0.0.1:{port}",
         "-servername", "localhost", "-CAfile", str(certs["ca"])],
        input="", capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert "ALPN protocol: h2" in result.stdout, result.stdout + result.stderr
    assert "Verify return code: 0 (ok)" in result.stdout


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@pytest.mark.parametrize("version", ["--http2", "--http1.1"])
def test_curl_with_cacert(tls_server, certs, version):
    result = _curl("-i", version, "--cacert", str(certs["ca"]), f"{tls_server.url}/health")
    expected = "HTTP/2 200" if version == "--http2" else "HTTP/1.1 200"
    assert result.stdout.startswith(expected), result.stdout + result.stderr
    assert '{"status":"ok"}' in result.stdout
    # The announced address is an IP: the certificate names it too (--san 127.0.0.1).
    untrusted = _curl(version, f"{tls_server.url}/health")
    assert untrusted.returncode == 60, untrusted  # SSL certificate problem


def test_plain_http_and_untrusted_clients_get_no_answer(tls_server):
    port = _port(tls_server.url)
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        try:
            answer = sock.recv(4096)
        except OSError:
            answer = b""
    assert not answer.startswith(b"HTTP/")
    outcome = _request_over(port, ssl.create_default_context())  # system CAs only
    assert isinstance(outcome, ssl.SSLCertVerificationError), outcome


# -- mutual TLS ----------------------------------------------------------------------------


def test_mtls_listeners_announce_https(mtls_server):
    assert mtls_server.url.startswith("https://") and mtls_server.admin_url.startswith("https://")


@pytest.mark.parametrize("http2", [True, False], ids=["h2", "h1"])
def test_enqueue_take_ack_over_mtls(mtls_server, client_ctx, http2):
    _enqueue_take_ack(mtls_server.url, client_ctx, http2)


@pytest.mark.parametrize(
    ("client", "alert"),
    [
        (None, "certificate required"),
        ("other", "unknown ca"),
        ("expired_client", "certificate expired"),
    ],
    ids=["no-client-cert", "other-ca", "expired-client-cert"],
)
def test_mtls_refuses_clients_without_a_valid_certificate(mtls_server, certs, client, alert):
    cert, key = (certs[f"{client}_cert"], certs[f"{client}_key"]) if client else (None, None)
    context = tls_context(certs["ca"], cert, key)
    for url in (mtls_server.url, mtls_server.admin_url):
        _assert_refused(_port(url), context, alert)


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@pytest.mark.parametrize("version", ["--http2", "--http1.1"])
def test_curl_with_client_certificate(mtls_server, certs, version):
    trust = ("--cacert", str(certs["ca"]))
    identity = ("--cert", str(certs["client_cert"]), "--key", str(certs["client_key"]))
    result = _curl("-i", version, *trust, *identity, f"{mtls_server.url}/health")
    expected = "HTTP/2 200" if version == "--http2" else "HTTP/1.1 200"
    assert result.stdout.startswith(expected), result.stdout + result.stderr
    refused = _curl(version, *trust, f"{mtls_server.url}/health")
    assert refused.returncode != 0 and "HTTP/" not in refused.stdout


def _admin(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_admin_clients_over_mtls(mtls_server, certs, tmp_path):
    flags = (
        "--url", mtls_server.admin_url, "--ca-cert", str(certs["ca"]),
        "--client-cert", str(certs["client_cert"]), "--client-key", str(certs["client_key"]),
    )  # fmt: skip
    compacted = _admin("compact", *flags)
    assert compacted.exit_code == 0 and "Size after:" in compacted.output, compacted.output
    env = {
        "ZIZQ_ADMIN_URL": mtls_server.admin_url,
        "ZIZQ_ADMIN_TLS_CA": str(certs["ca"]),
        "ZIZQ_ADMIN_TLS_CLIENT_CERT": str(certs["client_cert"]),
        "ZIZQ_ADMIN_TLS_CLIENT_KEY": str(certs["client_key"]),
    }
    archive = tmp_path / "backup.tar.gz"
    backed_up = _admin("backup", str(archive), env=env)
    assert backed_up.exit_code == 0, backed_up.output
    assert archive.stat().st_size > 0
    without = _admin("compact", "--url", mtls_server.admin_url, "--ca-cert", str(certs["ca"]))
    assert without.exit_code == 1
    assert "TLS handshake with" in without.output or "closed the connection" in without.output
    untrusted = _admin("compact", "--url", mtls_server.admin_url)
    assert untrusted.exit_code == 1 and "certificate" in untrusted.output


def test_admin_client_names_a_missing_file(mtls_server, certs, tmp_path):
    missing = tmp_path / "nope.pem"
    for flags, named in (
        (("--ca-cert", str(missing)), "--ca-cert"),
        (("--client-cert", str(missing), "--client-key", str(certs["client_key"])), "--client-cert"),
        (("--client-cert", str(certs["client_cert"]), "--client-key", str(missing)), "--client-key"),
    ):  # fmt: skip
        result = _admin("compact", "--url", mtls_server.admin_url, *flags)
        assert result.exit_code == 1 and f"cannot read {named}" in result.output, result.output


# -- refused at start ------------------------------------------------------------------------


def _refusals(certs: dict[str, Path], tmp: Path) -> list[tuple[list[str], str]]:
    cert, key = str(certs["server_cert"]), str(certs["server_key"])
    return [
        (["--tls-cert", cert], "--tls-cert and --tls-key must be given together"),
        (["--admin-tls-key", key], "--admin-tls-cert and --admin-tls-key must be given"),
        (["--tls-cert", str(tmp / "missing.pem"), "--tls-key", key], "cannot be read"),
        (["--tls-cert", cert, "--tls-key", str(tmp)], "cannot be read"),  # a directory
        (["--tls-cert", cert, "--tls-key", str(certs["client_key"])], "does not match"),
        (
            ["--tls-cert", str(certs["expired_server_cert"]), "--tls-key", key],
            "does not match",  # the expired pair's own key is below
        ),
        (
            [
                "--tls-cert",
                str(certs["expired_server_cert"]),
                "--tls-key",
                str(certs["expired_server_key"]),
            ],
            "expired on",
        ),
        (["--tls-cert", str(certs["ca"]).replace("cert", "key"), "--tls-key", key], "no PEM"),
        (
            ["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", str(certs["ca"])],
            "cannot enable mutual TLS (--tls-client-ca): mutual TLS requires a pro license",
        ),
        (
            ["--admin-tls-cert", cert, "--admin-tls-key", key, "--admin-tls-client-ca", cert],
            "cannot enable mutual TLS (--admin-tls-client-ca)",
        ),
    ]


def test_bad_tls_settings_are_refused_at_start(certs, tmp_path):
    """Each is one `Error:` line on stderr, exit 1, and the root dir is never created."""
    started = []
    for index, (flags, message) in enumerate(_refusals(certs, tmp_path)):
        root = tmp_path / f"root{index}"
        command = [*zizq_command(), "serve", "--root-dir", str(root), "--port", "0",
                   "--admin-port", "0", *flags]  # fmt: skip
        # All at once: each is a whole interpreter start, and none of them binds a port.
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        started.append((proc, flags, message, root))
    for proc, flags, message, root in started:
        try:
            _out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"zizq serve {flags} started instead of refusing")
        lines = err.strip().splitlines()
        assert proc.returncode == 1, (flags, err)
        assert len(lines) == 1 and lines[0].startswith("Error: "), (flags, err)
        assert message in lines[0], (flags, lines[0])
        assert not root.exists(), flags


def test_mtls_keeps_requiring_client_certs_after_the_license_expires(mtls_server, certs):
    """Checked at start: expiry must neither open the port nor lock out the clients.

    Last in the module, so the wait for the expiry overlaps the tests before it.
    """
    deadline = mtls_server.license_expires_at + 15.0
    while "license expired" not in mtls_server.output:
        assert time.time() < deadline, "the server never logged the license's expiry"
        time.sleep(0.1)
    client = tls_context(certs["ca"], certs["client_cert"], certs["client_key"])
    assert _request_over(_port(mtls_server.url), client).startswith(b"HTTP/1.1 200")
    _assert_refused(_port(mtls_server.url), tls_context(certs["ca"]), "certificate required")
