"""`zizq tls`: make a CA, server and client certificates for `zizq serve` (TLS and mTLS).

Everything a command will write is decided (and checked) before the first file is written,
so a refused command leaves the output directory as it was. Existing files are never
clobbered without `--overwrite`; a certificate and its key are always written or kept as a
pair, so a key never ends up beside another key's certificate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from zizq.cli.common import CONTEXT_SETTINGS, F, global_value, root_dir_option, with_options

__all__ = ["tls"]

DAYS = click.IntRange(1, 36_500)  # zizq.tls.MAX_DAYS, without importing cryptography here


@dataclass
class _Pair:
    """A certificate and its key: to be written, or kept as they are."""

    title: str  # "Generating server certificate (SANs: localhost)"
    cert: Path
    key: Path
    pems: tuple[bytes, bytes] | None = None  # None = keep the existing files


def _out_dir(ctx: click.Context, out_dir: Path | None) -> Path:
    return out_dir if out_dir is not None else Path(global_value(ctx, "root_dir")) / "tls"


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"cannot create {path}: {exc.strerror or exc}") from None


def _write(pairs: list[_Pair]) -> None:
    from zizq.tls import write_pem

    for pair in pairs:
        click.echo(f"{pair.title}:")
        for path, data, private in (
            (pair.cert, pair.pems[0] if pair.pems else None, False),
            (pair.key, pair.pems[1] if pair.pems else None, True),
        ):
            if data is None:
                click.echo(f"  skip: {path} (already exists)")
                continue
            try:
                write_pem(path, data, private=private)
            except OSError as exc:
                raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None
            click.echo(f"  wrote: {path}")


def _existing(cert: Path, key: Path) -> bool | None:
    """True if both exist, False if neither; a lone half is an error (it would mismatch)."""
    there = cert.exists(), key.exists()
    if all(there):
        return True
    if not any(there):
        return False
    present, absent = (cert, key) if there[0] else (key, cert)
    raise click.ClickException(
        f"{present} exists without {absent.name}: remove it or use --overwrite"
    )


def _check_issued_by(ca, cert_path: Path) -> None:
    """An existing certificate kept beside `ca` must have been signed by it."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        cert.verify_directly_issued_by(ca.cert)
    except OSError as exc:
        raise click.ClickException(f"cannot read {cert_path}: {exc.strerror or exc}") from None
    except Exception:  # not PEM, or signed by another key: the same answer either way
        raise click.ClickException(
            f"{cert_path} exists but was not signed by this CA: use --overwrite to replace it"
        ) from None


def _ca_files(out_dir: Path, ca_cert: Path | None, ca_key: Path | None) -> tuple[Path, Path, bool]:
    """The CA to sign with: the given files, else the out-dir's (third: given explicitly)."""
    if (ca_cert is None) != (ca_key is None):
        raise click.UsageError("--ca-cert and --ca-key must be given together")
    if ca_cert is not None and ca_key is not None:
        return ca_cert, ca_key, True
    return out_dir / "ca-cert.pem", out_dir / "ca-key.pem", False


def _load_ca(cert: Path, key: Path, explicit: bool):
    from zizq.tls import TlsError, load_ca

    if not explicit and not (cert.exists() and key.exists()):
        raise click.ClickException(
            f"no CA in {cert.parent} (ca-cert.pem and ca-key.pem): run `zizq tls ca` first, "
            "or give --ca-cert and --ca-key"
        )
    try:
        return load_ca(cert, key)
    except TlsError as exc:
        raise click.ClickException(str(exc)) from None


def _leaf_pair(
    title: str, cert: Path, key: Path, ca, overwrite: bool, make: Callable[[], tuple[bytes, bytes]]
) -> _Pair:
    if not overwrite and _existing(cert, key):
        _check_issued_by(ca, cert)
        return _Pair(title, cert, key)
    return _Pair(title, cert, key, _tls_call(make))


def _tls_call(make: Callable[[], Any]) -> Any:
    """Run a zizq.tls generator; its TlsError (a bad SAN, name or CN) is one Error line."""
    from zizq.tls import TlsError

    try:
        return make()
    except TlsError as exc:
        raise click.ClickException(str(exc)) from None


def _refuse_existing(cert: Path, key: Path, what: str, out_dir: Path, overwrite: bool) -> None:
    if not overwrite and (cert.exists() or key.exists()):
        raise click.ClickException(
            f"{what} already exist in {out_dir}. Use --overwrite to replace them."
        )


def _client_paths(out_dir: Path, name: str) -> tuple[Path, Path]:
    return out_dir / f"client-{name}-cert.pem", out_dir / f"client-{name}-key.pem"


def _check_names(sans: tuple[str, ...], clients: tuple[str, ...]) -> None:
    from zizq.tls import client_name_error, parse_san

    for san in sans:
        _tls_call(lambda san=san: parse_san(san))
    for name in clients:
        error = client_name_error(name)
        if error is not None:
            raise click.ClickException(error)


# -- options -------------------------------------------------------------------------------

_out_dir_option = click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for the files.  [default: <root-dir>/tls]",
)
_overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace existing files instead of keeping them."
)
_ca_options: list[Callable[[F], F]] = [
    click.option(
        "--ca-cert",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="CA certificate (PEM) to sign with.  [default: <out-dir>/ca-cert.pem]",
    ),
    click.option(
        "--ca-key",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Private key of --ca-cert.  [default: <out-dir>/ca-key.pem]",
    ),
]


def _san_option(func: F) -> F:
    return click.option(
        "--san",
        "sans",
        multiple=True,
        default=("localhost",),
        show_default=True,
        help="Name clients reach the server by: a DNS name or an IP address (repeatable).",
    )(func)


def _days_option(default: int, what: str) -> Callable[[F], F]:
    return click.option(
        "--days", type=DAYS, default=default, show_default=True, help=f"Validity of {what}."
    )


# -- commands ------------------------------------------------------------------------------


@click.group("tls", context_settings=CONTEXT_SETTINGS, invoke_without_command=True)
@click.pass_context
def tls(ctx: click.Context) -> None:
    """Generate TLS certificates for `zizq serve` (HTTPS and mutual TLS).

    `zizq tls init` makes a CA, a server certificate and client certificates in one go;
    the other commands make one of each. Private keys are written with mode 0600.
    """
    if ctx.invoked_subcommand is None:
        # Help on stdout and exit 0: click's own "no command" path is an error (exit 2).
        click.echo(ctx.get_help())


@tls.command("init", context_settings=CONTEXT_SETTINGS)
@with_options(
    [
        _san_option,
        _days_option(365, "the server and client certificates, in days"),
        click.option(
            "--ca-days",
            type=DAYS,
            default=3650,
            show_default=True,
            help="Validity of the CA certificate, in days.",
        ),
        click.option("--cn", default="Zizq CA", show_default=True, help="Common name of the CA."),
        *_ca_options,
        click.option(
            "--client",
            "clients",
            multiple=True,
            help="Make a client certificate with this name (repeatable).",
        ),
        _out_dir_option,
        _overwrite_option,
        root_dir_option,
    ]
)
@click.pass_context
def init(
    ctx: click.Context,
    sans: tuple[str, ...],
    days: int,
    ca_days: int,
    cn: str,
    ca_cert: Path | None,
    ca_key: Path | None,
    clients: tuple[str, ...],
    out_dir: Path | None,
    overwrite: bool,
    root_dir: Path,
) -> None:
    """Make a CA, a server certificate and client certificates.

    \b
    An existing CA in the output directory is reused, and existing certificates are
    kept, unless --overwrite is given: run it again with another --client to add one.

    \b
    Examples:
      zizq tls init
      zizq tls init --san localhost --san zizq.internal --client worker
      zizq tls init --ca-cert my-ca.pem --ca-key my-ca-key.pem --client worker
    """
    from zizq.tls import generate_ca, issue_client_cert, issue_server_cert

    directory = _out_dir(ctx, out_dir)
    cert_path, key_path, explicit = _ca_files(directory, ca_cert, ca_key)
    _check_names(sans, clients)
    pairs: list[_Pair] = []
    if explicit:
        ca = _load_ca(cert_path, key_path, True)
        click.echo(f"Using external CA:\n  cert: {cert_path}\n  key:  {key_path}")
    elif not overwrite and _existing(cert_path, key_path):
        ca = _load_ca(cert_path, key_path, False)
        pairs.append(_Pair("CA already exists, reusing", cert_path, key_path))
    else:
        ca = _tls_call(lambda: generate_ca(cn, ca_days))
        pairs.append(_Pair(f"Generating CA ({cn})", cert_path, key_path, (ca.cert_pem, _key(ca))))
    pairs.append(
        _leaf_pair(
            f"Generating server certificate (SANs: {', '.join(sans)})",
            directory / "server-cert.pem",
            directory / "server-key.pem",
            ca,
            overwrite,
            lambda: issue_server_cert(ca, sans, days=days),
        )
    )
    for name in dict.fromkeys(clients):
        pairs.append(
            _leaf_pair(
                f"Generating client certificate ({name})",
                *_client_paths(directory, name),
                ca,
                overwrite,
                lambda name=name: issue_client_cert(ca, name, days),
            )
        )
    _make_dir(directory)
    _write(pairs)


def _key(ca) -> bytes:
    from zizq.tls import key_pem

    return key_pem(ca.key)


@tls.command("ca", context_settings=CONTEXT_SETTINGS)
@with_options(
    [
        _days_option(3650, "the CA certificate, in days"),
        click.option("--cn", default="Zizq CA", show_default=True, help="Common name of the CA."),
        _out_dir_option,
        _overwrite_option,
        root_dir_option,
    ]
)
@click.pass_context
def ca(
    ctx: click.Context, days: int, cn: str, out_dir: Path | None, overwrite: bool, root_dir: Path
) -> None:
    """Make a certificate authority (ca-cert.pem, ca-key.pem).

    \b
    Examples:
      zizq tls ca
      zizq tls ca --cn 'My Org CA' --days 7300
    """
    from zizq.tls import generate_ca

    directory = _out_dir(ctx, out_dir)
    cert, key = directory / "ca-cert.pem", directory / "ca-key.pem"
    _refuse_existing(cert, key, "CA files", directory, overwrite)
    made = _tls_call(lambda: generate_ca(cn, days))
    _make_dir(directory)
    _write([_Pair(f"Generating CA ({cn})", cert, key, (made.cert_pem, _key(made)))])


@tls.command("server-cert", context_settings=CONTEXT_SETTINGS)
@with_options(
    [
        _san_option,
        _days_option(365, "the certificate, in days"),
        click.option(
            "--cn",
            default="Zizq Server",
            show_default=True,
            help="Common name of the server certificate.",
        ),
        *_ca_options,
        _out_dir_option,
        _overwrite_option,
        root_dir_option,
    ]
)
@click.pass_context
def server_cert(
    ctx: click.Context,
    sans: tuple[str, ...],
    days: int,
    cn: str,
    ca_cert: Path | None,
    ca_key: Path | None,
    out_dir: Path | None,
    overwrite: bool,
    root_dir: Path,
) -> None:
    """Make a server certificate signed by a CA (server-cert.pem, server-key.pem).

    \b
    Examples:
      zizq tls server-cert
      zizq tls server-cert --san localhost --san 192.168.1.10
      zizq tls server-cert --ca-cert my-ca.pem --ca-key my-ca-key.pem
    """
    from zizq.tls import issue_server_cert

    directory = _out_dir(ctx, out_dir)
    _check_names(sans, ())
    authority = _load_ca(*_ca_files(directory, ca_cert, ca_key))
    cert, key = directory / "server-cert.pem", directory / "server-key.pem"
    _refuse_existing(cert, key, "Server cert files", directory, overwrite)
    pems = _tls_call(lambda: issue_server_cert(authority, sans, cn, days))
    _make_dir(directory)
    _write([_Pair(f"Generating server certificate (SANs: {', '.join(sans)})", cert, key, pems)])


@tls.command("client-cert", context_settings=CONTEXT_SETTINGS)
@with_options(
    [
        click.option(
            "--name", required=True, help="Client name: the certificate's CN and file prefix."
        ),
        _days_option(365, "the certificate, in days"),
        *_ca_options,
        _out_dir_option,
        _overwrite_option,
        root_dir_option,
    ]
)
@click.pass_context
def client_cert(
    ctx: click.Context,
    name: str,
    days: int,
    ca_cert: Path | None,
    ca_key: Path | None,
    out_dir: Path | None,
    overwrite: bool,
    root_dir: Path,
) -> None:
    """Make a client certificate signed by a CA (client-NAME-cert.pem, client-NAME-key.pem).

    \b
    Examples:
      zizq tls client-cert --name worker1
      zizq tls client-cert --name worker1 --ca-cert my-ca.pem --ca-key my-ca-key.pem
    """
    from zizq.tls import issue_client_cert

    directory = _out_dir(ctx, out_dir)
    _check_names((), (name,))
    authority = _load_ca(*_ca_files(directory, ca_cert, ca_key))
    cert, key = _client_paths(directory, name)
    _refuse_existing(cert, key, f"Client cert files for '{name}'", directory, overwrite)
    pems = _tls_call(lambda: issue_client_cert(authority, name, days))
    _make_dir(directory)
    _write([_Pair(f"Generating client certificate ({name})", cert, key, pems)])
