"""`zizq tls` (run in-process with click's CliRunner) and the start-up checks of zizq.tls."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from zizq.cli import main as cli
from zizq.tls import (
    TlsError,
    TlsFiles,
    check_listener_files,
    generate_ca,
    issue_client_cert,
    issue_server_cert,
    key_pem,
    listener_files,
    load_ca,
    parse_san,
)


def _tls(*args: str, root: Path | None = None):
    prefix = ["--root-dir", str(root)] if root is not None else []
    return CliRunner().invoke(cli, [*prefix, "tls", *args], catch_exceptions=False)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def _lines(output: str) -> list[str]:
    return output.strip().splitlines()


# -- the CLI ----------------------------------------------------------------------------


def test_init_writes_ca_server_and_clients_as_the_reference_shows(tmp_path):
    out = tmp_path / "certs"
    result = _tls(
        "init", "--out-dir", str(out), "--san", "localhost", "--san", "zizq.internal",
        "--san", "10.0.0.7", "--client", "worker", "--client", "other",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert _lines(result.output) == [
        "Generating CA (Zizq CA):",
        f"  wrote: {out / 'ca-cert.pem'}",
        f"  wrote: {out / 'ca-key.pem'}",
        "Generating server certificate (SANs: localhost, zizq.internal, 10.0.0.7):",
        f"  wrote: {out / 'server-cert.pem'}",
        f"  wrote: {out / 'server-key.pem'}",
        "Generating client certificate (worker):",
        f"  wrote: {out / 'client-worker-cert.pem'}",
        f"  wrote: {out / 'client-worker-key.pem'}",
        "Generating client certificate (other):",
        f"  wrote: {out / 'client-other-cert.pem'}",
        f"  wrote: {out / 'client-other-key.pem'}",
    ]
    ca, server, client = (_cert(out / n) for n in ("ca-cert.pem", "server-cert.pem",
                                                     "client-worker-cert.pem"))  # fmt: skip
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "zizq.internal"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "worker"
    key = serialization.load_pem_private_key((out / "server-key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    days = (server.not_valid_after_utc - dt.datetime.now(dt.UTC)).days
    assert (
        363 <= days <= 365 and (ca.not_valid_after_utc - server.not_valid_before_utc).days >= 3640
    )


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_keys_are_private_and_certificates_readable(tmp_path):
    out = tmp_path / "certs"
    assert _tls("init", "--out-dir", str(out), "--client", "w").exit_code == 0
    for path in out.iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if path.name.endswith("-key.pem") else 0o644), path.name


def test_init_again_keeps_everything_and_adds_a_client(tmp_path):
    out = tmp_path / "certs"
    assert _tls("init", "--out-dir", str(out)).exit_code == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    result = _tls("init", "--out-dir", str(out), "--client", "new-worker")
    assert result.exit_code == 0, result.output
    assert _lines(result.output) == [
        "CA already exists, reusing:",
        f"  skip: {out / 'ca-cert.pem'} (already exists)",
        f"  skip: {out / 'ca-key.pem'} (already exists)",
        "Generating server certificate (SANs: localhost):",
        f"  skip: {out / 'server-cert.pem'} (already exists)",
        f"  skip: {out / 'server-key.pem'} (already exists)",
        "Generating client certificate (new-worker):",
        f"  wrote: {out / 'client-new-worker-cert.pem'}",
        f"  wrote: {out / 'client-new-worker-key.pem'}",
    ]
    assert all((out / name).read_bytes() == data for name, data in before.items())
    _cert(out / "client-new-worker-cert.pem").verify_directly_issued_by(_cert(out / "ca-cert.pem"))


def test_init_overwrite_regenerates(tmp_path):
    out = tmp_path / "certs"
    assert _tls("init", "--out-dir", str(out)).exit_code == 0
    old_key = (out / "ca-key.pem").read_bytes()
    result = _tls("init", "--out-dir", str(out), "--overwrite")
    assert result.exit_code == 0 and "skip" not in result.output
    assert (out / "ca-key.pem").read_bytes() != old_key
    _cert(out / "server-cert.pem").verify_directly_issued_by(_cert(out / "ca-cert.pem"))


def test_init_defaults_to_root_dir_tls_and_takes_an_external_ca(tmp_path):
    root = tmp_path / "root"
    assert _tls("init", root=root).exit_code == 0
    assert (root / "tls" / "server-cert.pem").exists()
    assert _tls("init", "--root-dir", str(tmp_path / "after")).exit_code == 0  # after `init`
    assert (tmp_path / "after" / "tls" / "ca-cert.pem").exists()
    out = tmp_path / "ext-out"
    result = _tls(
        "init", "--out-dir", str(out), "--ca-cert", str(root / "tls" / "ca-cert.pem"),
        "--ca-key", str(root / "tls" / "ca-key.pem"), "--client", "w",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert _lines(result.output)[0] == "Using external CA:"
    assert not (out / "ca-cert.pem").exists() and (out / "server-cert.pem").exists()
    _cert(out / "client-w-cert.pem").verify_directly_issued_by(_cert(root / "tls" / "ca-cert.pem"))


def test_init_refuses_half_pairs_and_foreign_certificates_before_writing(tmp_path):
    out = tmp_path / "certs"
    assert _tls("init", "--out-dir", str(out)).exit_code == 0
    (out / "server-key.pem").unlink()
    result = _tls("init", "--out-dir", str(out), "--client", "w")
    assert (
        result.exit_code == 1 and "server-cert.pem exists without server-key.pem" in result.output
    )
    assert not (out / "client-w-cert.pem").exists()  # nothing written
    # A server pair from another CA would be kept beside a CA that did not sign it.
    other = tmp_path / "other"
    assert _tls("init", "--out-dir", str(other)).exit_code == 0
    for name in ("server-cert.pem", "server-key.pem"):
        (out / name).write_bytes((other / name).read_bytes())
    result = _tls("init", "--out-dir", str(out))
    assert result.exit_code == 1 and "was not signed by this CA" in result.output


def test_ca_server_cert_client_cert(tmp_path):
    out = tmp_path / "certs"
    result = _tls("ca", "--out-dir", str(out), "--cn", "My Org CA", "--days", "7300")
    assert result.exit_code == 0, result.output
    assert _lines(result.output)[0] == "Generating CA (My Org CA):"
    again = _tls("ca", "--out-dir", str(out))
    assert again.exit_code == 1
    assert f"CA files already exist in {out}. Use --overwrite to replace them." in again.output
    result = _tls("server-cert", "--out-dir", str(out), "--san", "localhost", "--san", "::1")
    assert result.exit_code == 0, result.output
    assert _lines(result.output)[0] == "Generating server certificate (SANs: localhost, ::1):"
    assert _tls("server-cert", "--out-dir", str(out)).exit_code == 1  # exists
    assert _tls("server-cert", "--out-dir", str(out), "--overwrite").exit_code == 0
    result = _tls("client-cert", "--out-dir", str(out), "--name", "external-worker")
    assert _lines(result.output) == [
        "Generating client certificate (external-worker):",
        f"  wrote: {out / 'client-external-worker-cert.pem'}",
        f"  wrote: {out / 'client-external-worker-key.pem'}",
    ]
    again = _tls("client-cert", "--out-dir", str(out), "--name", "external-worker")
    assert again.exit_code == 1 and "Client cert files for 'external-worker'" in again.output
    explicit = _tls(
        "client-cert", "--out-dir", str(tmp_path / "elsewhere"), "--name", "w",
        "--ca-cert", str(out / "ca-cert.pem"), "--ca-key", str(out / "ca-key.pem"),
    )  # fmt: skip
    assert explicit.exit_code == 0, explicit.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["server-cert"], "no CA in"),
        (["client-cert", "--name", "w"], "no CA in"),
        (["client-cert"], "Missing option '--name'"),
        (["client-cert", "--name", "../escape"], "invalid client name"),
        (["init", "--client", "a b"], "invalid client name"),
        (["init", "--san", "bad name"], "invalid --san"),
        (["init", "--san", "-bad.example"], "invalid --san"),
        (["init", "--days", "0"], "--days"),
        (["init", "--cn", "x" * 65], "longer than 64"),
        (["init", "--ca-cert", "only.pem"], "--ca-cert and --ca-key must be given together"),
        (["server-cert", "--ca-cert", "nope.pem", "--ca-key", "nope.pem"], "cannot be read"),
    ],
)
def test_bad_arguments_are_one_error_line_and_write_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    result = _tls(*args, "--out-dir", str(out))
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert not out.exists() or not any(out.iterdir())


def test_a_leaf_key_cannot_serve_as_ca(tmp_path):
    out = tmp_path / "certs"
    assert _tls("init", "--out-dir", str(out)).exit_code == 0
    result = _tls(
        "client-cert", "--out-dir", str(tmp_path / "x"), "--name", "w",
        "--ca-cert", str(out / "server-cert.pem"), "--ca-key", str(out / "server-key.pem"),
    )  # fmt: skip
    assert result.exit_code == 1 and "is not a CA certificate" in result.output


def test_san_parsing():
    assert parse_san("127.0.0.1") == x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    assert parse_san("[::1]") == x509.IPAddress(ipaddress.ip_address("::1"))
    assert parse_san("Zizq.Internal.") == x509.DNSName("zizq.internal")
    assert parse_san("*.zizq.internal") == x509.DNSName("*.zizq.internal")
    for bad in ("", "a..b", "*.com.", "under_score.example", "x" * 64 + ".example", "a b"):
        with pytest.raises(TlsError):
            parse_san(bad)


# -- start-up checks ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("pair")
    ca = generate_ca()
    cert, key = issue_server_cert(ca, ["localhost"])
    for name, data in (("ca.pem", ca.cert_pem), ("cert.pem", cert), ("key.pem", key)):
        (base / name).write_bytes(data)
    return base / "cert.pem", base / "key.pem", base / "ca.pem"


def test_listener_files_pairs():
    assert listener_files(None, None, None) is None
    files = listener_files(Path("c"), Path("k"), None)
    assert files == TlsFiles(Path("c"), Path("k"))
    with pytest.raises(TlsError, match="missing --tls-key"):
        listener_files(Path("c"), None, None)
    with pytest.raises(TlsError, match="missing --admin-tls-cert"):
        listener_files(None, Path("k"), None, "--admin-")
    with pytest.raises(TlsError, match="--tls-client-ca requires --tls-cert and --tls-key"):
        listener_files(None, None, Path("ca"))


def test_good_files_pass(pair):
    cert, key, ca = pair
    check_listener_files(TlsFiles(cert, key, ca))


def _check(tmp_path: Path, cert: bytes, key: bytes, prefix: str = "--") -> str:
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    with pytest.raises(TlsError) as caught:
        check_listener_files(TlsFiles(tmp_path / "c.pem", tmp_path / "k.pem"), prefix)
    return str(caught.value)


def test_start_checks_name_the_problem(tmp_path, pair):
    cert, key, _ca = pair
    ca = generate_ca()
    other_cert, other_key = issue_server_cert(ca, ["localhost"])
    now = dt.datetime.now(dt.UTC)
    expired = issue_server_cert(
        ca, ["localhost"], not_before=now - dt.timedelta(days=9), not_after=now - dt.timedelta(1)
    )
    future = issue_server_cert(
        ca, ["localhost"], not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(9)
    )
    assert "does not match the certificate" in _check(tmp_path, cert.read_bytes(), other_key)
    assert "--admin-tls-key" in _check(tmp_path, cert.read_bytes(), other_key, "--admin-")
    assert "expired on" in _check(tmp_path, *expired)
    assert "is not valid until" in _check(tmp_path, *future)
    assert "holds no PEM certificate" in _check(tmp_path, b"junk", other_key)
    assert "holds no PEM private key" in _check(tmp_path, other_cert, other_cert)
    encrypted = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    assert "encrypted with a passphrase" in _check(tmp_path, other_cert, encrypted)
    p521 = key_pem(ec.generate_private_key(ec.SECP521R1()))
    assert "secp521r1 is not supported" in _check(tmp_path, other_cert, p521)
    with pytest.raises(TlsError, match="cannot be read"):
        check_listener_files(TlsFiles(cert, tmp_path))  # a directory
    (tmp_path / "big.pem").write_bytes(b"x" * (2 << 20))
    with pytest.raises(TlsError, match="larger than 1 MiB"):
        check_listener_files(TlsFiles(tmp_path / "big.pem", key))
    with pytest.raises(TlsError, match="--tls-client-ca .* holds no PEM certificate"):
        check_listener_files(TlsFiles(cert, key, key))


def test_leaf_never_outlives_its_ca():
    now = dt.datetime.now(dt.UTC)
    ca = generate_ca(days=30)
    cert, _key = issue_client_cert(ca, "w", days=365)
    leaf = x509.load_pem_x509_certificate(cert)
    assert leaf.not_valid_after_utc == ca.cert.not_valid_after_utc
    assert leaf.not_valid_before_utc < now


def test_load_ca_checks_the_key(tmp_path):
    ca, other = generate_ca(), generate_ca()
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "other-key.pem").write_bytes(key_pem(other.key))
    with pytest.raises(TlsError, match="does not match the CA certificate"):
        load_ca(tmp_path / "ca.pem", tmp_path / "other-key.pem")
