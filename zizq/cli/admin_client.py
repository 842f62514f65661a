"""A small stdlib HTTP(S) client for the admin API, shared by `zizq backup` and `zizq compact`.

Only the standard library (http.client + ssl): the CLI must not depend on a dev-only
HTTP package. Every failure becomes one `AdminError` line meant for the user.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from zizq.cli.common import F, option

__all__ = [
    "DEFAULT_ADMIN_URL",
    "AdminClient",
    "AdminError",
    "admin_options",
    "human_rate",
    "human_size",
    "normalize_url",
]

DEFAULT_ADMIN_PORT = 8901
DEFAULT_ADMIN_URL = f"http://127.0.0.1:{DEFAULT_ADMIN_PORT}"
CONNECT_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 3.0  # the follow-up question after a 404, asked only to word the error
_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


class AdminError(click.ClickException):
    """A failure talking to the admin API; printed as one `Error: ...` line, exit 1."""


# -- formatting ------------------------------------------------------------------------


def human_size(size: float) -> str:
    """Bytes in binary units with one decimal: 512 B, 1.5 KiB, 42.0 MiB."""
    if size < 1024:
        return f"{int(size)} B"
    for unit in _UNITS:
        size /= 1024
        if size < 1024 or unit == _UNITS[-1]:
            return f"{size:.1f} {unit}"
    raise AssertionError("unreachable")


def human_rate(bytes_per_second: float) -> str:
    return f"{human_size(bytes_per_second)}/s"


# -- urls and TLS -----------------------------------------------------------------------


def normalize_url(url: str) -> str:
    """Check an admin URL (`http[s]://host[:port][/prefix]`) and drop a trailing slash."""
    text = url.strip()
    if "://" not in text:
        raise click.UsageError(f"invalid --url {url!r}: expected http://HOST:PORT or https://...")
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        raise click.UsageError(f"invalid --url {url!r}: the scheme must be http or https")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise click.UsageError(f"invalid --url {url!r}: bad port") from None
    if not parts.hostname:
        raise click.UsageError(f"invalid --url {url!r}: no host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise click.UsageError(f"invalid --url {url!r}: no credentials, query or fragment allowed")
    return f"{parts.scheme.lower()}://{parts.netloc}{parts.path.rstrip('/')}"


def _readable(path: Path, flag: str) -> str:
    """`path` as a string once it can be opened; else an AdminError naming `flag`."""
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise AdminError(f"cannot read {flag} {str(path)!r}: {exc.strerror or exc}") from None
    return str(path)


def ssl_context(
    ca_cert: Path | None, client_cert: Path | None, client_key: Path | None
) -> ssl.SSLContext:
    """Verify the server against `ca_cert` (else the system CAs); present a client cert if given.

    Each file is opened first so that an error names the flag whose file is wrong; OpenSSL
    alone would say "No such file" or "PEM lib" without saying which.
    """
    if (client_cert is None) != (client_key is None):
        raise click.UsageError("--client-cert and --client-key must be given together")
    context = ssl.create_default_context()
    if ca_cert is not None:
        try:
            context.load_verify_locations(cafile=_readable(ca_cert, "--ca-cert"))
        except ssl.SSLError:
            raise AdminError(
                f"--ca-cert {str(ca_cert)!r} holds no PEM certificate (BEGIN CERTIFICATE)"
            ) from None
    if client_cert is not None and client_key is not None:
        cert, key = _readable(client_cert, "--client-cert"), _readable(client_key, "--client-key")
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            if "KEY_VALUES_MISMATCH" in str(exc).upper() or "key values mismatch" in str(exc):
                reason = f"--client-key {key!r} does not match --client-cert {cert!r}"
            else:
                reason = (
                    f"--client-cert {cert!r} and --client-key {key!r} must be a PEM "
                    "certificate and its unencrypted PEM key"
                )
            raise AdminError(reason) from None
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or str(exc)
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return "the server closed the connection during the TLS handshake"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# -- the client -------------------------------------------------------------------------


@dataclass
class AdminClient:
    url: str  # normalized, no trailing slash
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def __post_init__(self) -> None:
        self.url = normalize_url(self.url)
        parts = urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path
        tls_flags = (self.ca_cert, self.client_cert, self.client_key)
        if not self._https and any(flag is not None for flag in tls_flags):
            raise click.UsageError(
                "--ca-cert, --client-cert and --client-key need an https:// --url"
            )
        self._context = (
            ssl_context(self.ca_cert, self.client_cert, self.client_key) if self._https else None
        )

    def _connection(self) -> http.client.HTTPConnection:
        if self._context is not None:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=CONNECT_TIMEOUT_S, context=self._context
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=CONNECT_TIMEOUT_S)

    def post(
        self, path: str, accept: str, read_timeout: float | None
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """POST `path` with no body; returns the open connection and a 2xx response.

        A non-2xx answer becomes an AdminError carrying the server's `error` message.
        The caller reads the response and closes the connection.
        """
        connection = self._connection()
        try:
            connection.connect()
            assert connection.sock is not None
            connection.sock.settimeout(read_timeout)
            connection.request(
                "POST",
                self._prefix + path,
                headers={"Accept": accept, "Content-Length": "0", "User-Agent": "zizq-cli"},
            )
            response = connection.getresponse()
            if response.status in (404, 405):
                # No such endpoint: most likely --url names the primary API (port 7890),
                # which has no /backup or /compact. Say so rather than "404 Not Found".
                status = f"{response.status} {response.reason}".strip()
                connection.close()
                raise AdminError(self._not_admin_api(path, status))
            if not 200 <= response.status < 300:
                raise AdminError(self._http_error(response))
            return connection, response
        except AdminError:
            connection.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise self.network_error(exc) from None

    def _not_admin_api(self, path: str, status: str) -> str:
        where = f"{self.url} answered {status} to POST {path}"
        hint = (
            f"the admin API listens on port {DEFAULT_ADMIN_PORT} by default (serve "
            "--admin-port); give its address with --url or ZIZQ_ADMIN_URL"
        )
        if self._is_primary_api():
            return f"{where}: that is the primary API, not the admin API; {hint}"
        return f"{where}: it is not a Zizq admin API; {hint}"

    def _is_primary_api(self) -> bool:
        """Whether the server answers the primary API's `GET /queues` (best effort, quick)."""
        connection = self._connection()
        try:
            connection.timeout = PROBE_TIMEOUT_S
            connection.request(
                "GET",
                self._prefix + "/queues",
                headers={"Accept": "application/json", "User-Agent": "zizq-cli"},
            )
            response = connection.getresponse()
            body = response.read(64 * 1024)
            return response.status == 200 and isinstance(json.loads(body), dict)
        except (OSError, http.client.HTTPException, ValueError):
            return False
        finally:
            connection.close()

    def network_error(self, exc: BaseException) -> AdminError:
        if isinstance(exc, ConnectionRefusedError):
            return AdminError(
                f"cannot connect to {self.url}: connection refused (is the server running with its admin API?)"
            )
        if isinstance(exc, socket.timeout | TimeoutError):
            return AdminError(f"{self.url} did not answer in time")
        if isinstance(exc, socket.gaierror):
            return AdminError(f"cannot resolve {self._host}: {exc.strerror or exc}")
        if isinstance(exc, ssl.SSLError | ssl.CertificateError):
            hint = ""
            if self.client_cert is None and not isinstance(exc, ssl.SSLCertVerificationError):
                hint = " (if it requires a client certificate, give --client-cert and --client-key)"
            return AdminError(f"TLS handshake with {self.url} failed: {_reason(exc)}{hint}")
        if isinstance(exc, http.client.IncompleteRead):
            return AdminError(f"the connection to {self.url} broke off mid-response")
        if isinstance(exc, http.client.RemoteDisconnected | http.client.BadStatusLine):
            # What a TLS listener does with a plain-HTTP request.
            hint = "" if self._https else " (if it serves HTTPS, give an https:// --url)"
            return AdminError(f"{self.url} closed the connection without answering{hint}")
        return AdminError(f"request to {self.url} failed: {_reason(exc)}")

    def _http_error(self, response: http.client.HTTPResponse) -> str:
        try:
            body = response.read(64 * 1024)
        except (OSError, http.client.HTTPException):
            body = b""
        message = ""
        try:
            decoded = json.loads(body)
            if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
                message = decoded["error"]
        except ValueError:
            message = body.decode("utf-8", "replace").strip().splitlines()[0][:200] if body else ""
        status = f"{response.status} {response.reason}".strip()
        return f"the server answered {status}" + (f": {message}" if message else "")


# -- the shared flags ---------------------------------------------------------------------
# Environment names as the reference documents them (src/commands/mod.rs); the first
# names this CLI used (ZIZQ_CA_CERT, ZIZQ_CLIENT_CERT, ZIZQ_CLIENT_KEY) still work, second.

_ADMIN_OPTIONS: list[Callable[[Any], Any]] = [
    option(
        "--url",
        "Base URL of the server's admin API.",
        envvar="ZIZQ_ADMIN_URL",
        default=DEFAULT_ADMIN_URL,
    ),
    option(
        "--ca-cert",
        "CA certificate (PEM) to verify an https:// admin API with (default: system CAs).",
        envvar=["ZIZQ_ADMIN_TLS_CA", "ZIZQ_CA_CERT"],
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        show_default=False,
    ),
    option(
        "--client-cert",
        "Client certificate (PEM) for a mutual-TLS admin API (with --client-key).",
        envvar=["ZIZQ_ADMIN_TLS_CLIENT_CERT", "ZIZQ_CLIENT_CERT"],
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        show_default=False,
    ),
    option(
        "--client-key",
        "Private key (PEM) of --client-cert.",
        envvar=["ZIZQ_ADMIN_TLS_CLIENT_KEY", "ZIZQ_CLIENT_KEY"],
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        show_default=False,
    ),
]


def admin_options(func: F) -> F:
    """`--url`, `--ca-cert`, `--client-cert`, `--client-key`, in that order."""
    for each in reversed(_ADMIN_OPTIONS):
        func = each(func)
    return func
