"""TLS material: check the server's certificate files at start, and make new ones.

Granian terminates TLS in Rust (rustls with the ring provider) and reads the files itself
when its worker starts, after the listener has been announced. A bad file found there
would be a traceback in a worker task; so every file is read and checked here first and a
problem is one line naming the flag: unreadable, not PEM, a key that does not match the
certificate, a certificate that has expired or is not valid yet, a key type rustls cannot
sign with. Generation (`zizq tls`) uses `cryptography` and small P-256 keys: quick to make,
and accepted by every TLS stack the official clients use.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "DEFAULT_CA_CN",
    "DEFAULT_SERVER_CN",
    "MAX_DAYS",
    "CertificateAuthority",
    "TlsError",
    "TlsFiles",
    "check_listener_files",
    "client_name_error",
    "generate_ca",
    "issue_client_cert",
    "issue_server_cert",
    "key_pem",
    "listener_files",
    "load_ca",
    "parse_san",
    "write_pem",
]

DEFAULT_CA_CN = "Zizq CA"
DEFAULT_SERVER_CN = "Zizq Server"
# Validity is bounded so that "now + days" stays a date X.509 can encode (year 9999) for
# centuries; a hundred years is far beyond any sensible certificate.
MAX_DAYS = 36_500
# Certificates start a few minutes in the past so that a client whose clock is slightly
# behind the machine that made them does not see "not yet valid".
BACKDATE = dt.timedelta(minutes=5)
MAX_PEM_BYTES = 1 << 20  # a certificate chain or key file; anything larger is not one
# X.509's upper bound for a common name (RFC 5280 ub-common-name).
MAX_CN_CHARS = 64
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class TlsError(Exception):
    """A certificate, key or CA that cannot be used; the message is one line for the user."""


# -- checking the server's files at start -----------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A listener's TLS files as given on the command line (`client_ca` turns on mTLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


def listener_files(
    cert: Path | None, key: Path | None, client_ca: Path | None, prefix: str = "--"
) -> TlsFiles | None:
    """The TLS files of one listener, or None for plain HTTP; `TlsError` for a half pair."""
    cert_flag, key_flag, ca_flag = (f"{prefix}tls-{name}" for name in ("cert", "key", "client-ca"))
    if cert is None and key is None:
        if client_ca is not None:
            raise TlsError(f"{ca_flag} requires {cert_flag} and {key_flag}")
        return None
    if cert is None or key is None:
        missing = cert_flag if cert is None else key_flag
        raise TlsError(f"{cert_flag} and {key_flag} must be given together; missing {missing}")
    return TlsFiles(cert, key, client_ca)


def _read(path: Path, flag: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise TlsError(f"{flag} {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_PEM_BYTES:
        raise TlsError(f"{flag} {str(path)!r} is larger than 1 MiB: not a PEM file")
    return data


def _certificates(data: bytes, path: Path, flag: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise TlsError(f"{flag} {str(path)!r} holds no PEM certificate (BEGIN CERTIFICATE)")
    return certs


def _private_key(data: bytes, path: Path, flag: str):
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsError(
            f"{flag} {str(path)!r} is encrypted with a passphrase; give an unencrypted key"
        ) from None
    except ValueError as exc:
        reason = "holds no PEM private key" if b"PRIVATE KEY" not in data else f"is unusable: {exc}"
        raise TlsError(f"{flag} {str(path)!r} {reason}") from None
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for odd key types
        raise TlsError(f"{flag} {str(path)!r} is unusable: {exc}") from None
    # What rustls (ring) can sign a handshake with; anything else fails in the worker.
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise TlsError(
                f"{flag} {str(path)!r}: EC curve {key.curve.name} is not supported "
                "(use P-256 or P-384)"
            )
    elif isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise TlsError(f"{flag} {str(path)!r}: RSA keys must have at least 2048 bits")
    elif not isinstance(key, ed25519.Ed25519PrivateKey):
        raise TlsError(
            f"{flag} {str(path)!r}: unsupported key type (use ECDSA P-256/P-384, RSA or Ed25519)"
        )
    return key


def _public_bytes(key) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _when(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def check_listener_files(
    files: TlsFiles, prefix: str = "--", now: dt.datetime | None = None
) -> None:
    """Raise `TlsError` unless the files make a working TLS listener.

    `prefix` is `--` or `--admin-`, so the message names the flag that was given.
    """
    now = now or dt.datetime.now(dt.UTC)
    cert_flag, key_flag, ca_flag = (f"{prefix}tls-{name}" for name in ("cert", "key", "client-ca"))
    certs = _certificates(_read(files.cert, cert_flag), files.cert, cert_flag)
    key = _private_key(_read(files.key, key_flag), files.key, key_flag)
    leaf = certs[0]
    if _public_bytes(leaf.public_key()) != _public_bytes(key.public_key()):
        raise TlsError(
            f"{key_flag} {str(files.key)!r} does not match the certificate in {cert_flag} "
            f"{str(files.cert)!r} (the first certificate must be the server's own)"
        )
    if leaf.not_valid_after_utc <= now:
        raise TlsError(
            f"{cert_flag} {str(files.cert)!r} expired on {_when(leaf.not_valid_after_utc)}"
        )
    if leaf.not_valid_before_utc > now:
        raise TlsError(
            f"{cert_flag} {str(files.cert)!r} is not valid until {_when(leaf.not_valid_before_utc)}"
        )
    if files.client_ca is not None:
        cas = _certificates(_read(files.client_ca, ca_flag), files.client_ca, ca_flag)
        if all(ca.not_valid_after_utc <= now for ca in cas):
            raise TlsError(
                f"{ca_flag} {str(files.client_ca)!r} expired on "
                f"{_when(cas[0].not_valid_after_utc)}: no client certificate could be verified"
            )


# -- making certificates -----------------------------------------------------------------


@dataclass(frozen=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key) -> bytes:
    """PKCS#8 PEM (`BEGIN PRIVATE KEY`), unencrypted: what rustls and every client read."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    if not common_name.strip():
        raise TlsError("the common name is empty")
    if len(common_name) > MAX_CN_CHARS:
        raise TlsError(f"the common name is longer than {MAX_CN_CHARS} characters")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(ca: bool) -> x509.KeyUsage:
    """Signatures only; a CA also signs certificates and revocation lists."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _validity(
    days: int, not_before: dt.datetime | None, not_after: dt.datetime | None
) -> tuple[dt.datetime, dt.datetime]:
    if not 1 <= days <= MAX_DAYS:
        raise TlsError(f"the validity must be from 1 to {MAX_DAYS} days, not {days}")
    now = dt.datetime.now(dt.UTC)
    start = not_before or now - BACKDATE
    return start, not_after or now + dt.timedelta(days=days)


def _hash_for(key) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def generate_ca(
    common_name: str = DEFAULT_CA_CN,
    days: int = 3650,
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> CertificateAuthority:
    """A self-signed CA that may sign server and client certificates."""
    key = _new_key()
    start, end = _validity(days, not_before, not_after)
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            _key_usage(ca=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert, key)


def _signed_by_itself(cert: x509.Certificate) -> bool:
    public = cert.public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(
                cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
            )
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(
                cert.signature,
                cert.tbs_certificate_bytes,
                padding.PKCS1v15(),
                cert.signature_hash_algorithm,
            )
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def load_ca(cert_path: Path, key_path: Path) -> CertificateAuthority:
    """An existing CA (its certificate and key files), checked to be able to sign."""
    certs = _certificates(_read(cert_path, "--ca-cert"), cert_path, "--ca-cert")
    key = _private_key(_read(key_path, "--ca-key"), key_path, "--ca-key")
    cert = certs[0]
    if _public_bytes(cert.public_key()) != _public_bytes(key.public_key()):
        raise TlsError(
            f"--ca-key {str(key_path)!r} does not match the CA certificate {str(cert_path)!r}"
        )
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        # A v1 self-signed root has no extensions; verifiers accept it as a trust anchor.
        is_ca = _signed_by_itself(cert)
    if not is_ca:
        raise TlsError(f"--ca-cert {str(cert_path)!r} is not a CA certificate")
    if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise TlsError(f"--ca-cert {str(cert_path)!r} expired on {_when(cert.not_valid_after_utc)}")
    return CertificateAuthority(cert, key)


def parse_san(text: str) -> x509.GeneralName:
    """A subject alternative name: an IP address (v4 or v6) or a DNS name (`*.` allowed)."""
    value = text.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        pass
    name = value.rstrip(".").lower()
    labels = name.split(".")
    if labels and labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    if not name or len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise TlsError(
            f"invalid --san {text[:80]!r}: expected a DNS name (letters, digits, '-', '.', "
            "optionally '*.' first) or an IP address"
        )
    return x509.DNSName(name)


def client_name_error(name: str) -> str | None:
    """Why `name` cannot name a client certificate (it becomes the CN and a file name)."""
    if _CLIENT_NAME.fullmatch(name):
        return None
    return (
        f"invalid client name {name[:80]!r}: 1 to 64 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit"
    )


def _leaf(
    ca: CertificateAuthority,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
    days: int,
    not_before: dt.datetime | None,
    not_after: dt.datetime | None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    start, end = _validity(days, not_before, not_after)
    # A leaf must not outlive its CA: verifiers would reject the chain from that day on.
    end = min(end, ca.cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(ca=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca.key, _hash_for(ca.key)), key


def issue_server_cert(
    ca: CertificateAuthority,
    sans: Iterable[str],
    common_name: str = DEFAULT_SERVER_CN,
    days: int = 365,
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for a server reached by any of `sans`."""
    names = [parse_san(san) for san in sans]
    if not names:
        raise TlsError("a server certificate needs at least one --san")
    cert, key = _leaf(
        ca,
        _name(common_name),
        ExtendedKeyUsageOID.SERVER_AUTH,
        list(dict.fromkeys(names)),
        days,
        not_before,
        not_after,
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)


def issue_client_cert(
    ca: CertificateAuthority,
    name: str,
    days: int = 365,
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for a client; `name` is its common name."""
    error = client_name_error(name)
    if error is not None:
        raise TlsError(error)
    cert, key = _leaf(
        ca, _name(name), ExtendedKeyUsageOID.CLIENT_AUTH, [], days, not_before, not_after
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)


def write_pem(path: Path, data: bytes, *, private: bool) -> None:
    """Write `data` to `path` whole or not at all; a private key is mode 0600 from the start.

    A temporary sibling is renamed over the target, so a crash never leaves half a key,
    and an existing world-readable file is not reused with its old mode.
    """
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; a certificate is public and others may need to read it.
        os.chmod(temp, 0o600 if private else 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
