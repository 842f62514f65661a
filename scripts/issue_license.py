"""Mint a license key, or generate an issuer key pair (see scripts/issue-license)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click
import nacl.signing
from click.core import ParameterSource

from zizq.license import (
    LicenseError,
    private_key_pem,
    public_key_pem,
    sign_license,
    signing_key_from_pem,
    verify_license,
)

MAX_DAYS = 100 * 366
MAX_EXPIRES_AT = 2**53 - 1  # exact in every JSON reader, JavaScript's too


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--private-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Issuer private key (Ed25519, PKCS#8 PEM), kept outside the repository.",
)
@click.option("--sub", help="Licensee id, e.g. lic_123.")
@click.option("--name", help="Licensee name, e.g. 'Test Corp'.")
@click.option("--tier", type=click.Choice(["pro", "enterprise"]), default="pro", show_default=True)
@click.option(
    "--days",
    # The cap keeps `exp` far inside the 64-bit integers JSON encoders accept.
    type=click.IntRange(min=1, max=MAX_DAYS),
    default=365,
    show_default=True,
    help="Days until the license expires.",
)
@click.option(
    "--expires-at",
    type=click.IntRange(min=1, max=MAX_EXPIRES_AT),
    default=None,
    help="Exact expiry in Unix seconds (instead of --days).",
)
@click.option(
    "--generate-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a new issuer private key here (mode 0600) and print its public key.",
)
@click.pass_context
def main(ctx, private_key, sub, name, tier, days, expires_at, generate_key) -> None:
    """Print a license key (a JWT signed with Ed25519) on stdout."""
    if generate_key is not None:
        _generate(generate_key)
        return
    if private_key is None or not sub or not name:
        raise click.UsageError("--private-key, --sub and --name are required")
    if expires_at is not None and ctx.get_parameter_source("days") is ParameterSource.COMMANDLINE:
        raise click.UsageError("give --days or --expires-at, not both")
    try:
        key = signing_key_from_pem(private_key.read_text())
    except (OSError, UnicodeDecodeError, LicenseError) as exc:
        raise click.UsageError(f"--private-key {private_key}: {_reason(exc)}") from None
    now = int(time.time())
    exp = expires_at if expires_at is not None else now + days * 86_400
    if exp <= now:
        raise click.UsageError(f"--expires-at {exp} is not in the future")
    token = sign_license(key, sub=sub, name=name, tier=tier, exp=exp)
    try:
        verify_license(token, issuer_key=bytes(key.verify_key))  # prove it reads back
    except LicenseError as exc:  # e.g. a --sub or --name of blanks only
        raise click.UsageError(str(exc)) from None
    click.echo(token)


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if isinstance(exc, UnicodeDecodeError):
        return "not a text (PEM) file"
    return str(exc)


def _generate(path: Path) -> None:
    """A new issuer key pair: the private key to `path` (0600), the public key to stdout."""
    key = nacl.signing.SigningKey.generate()
    try:
        # O_EXCL: never overwrite an issuer key, even one created since we looked.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise click.UsageError(f"{path} exists; not overwriting an issuer key") from None
    except OSError as exc:
        raise click.UsageError(f"--generate-key {path}: {_reason(exc)}") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(private_key_pem(key))
    click.echo(f"wrote: {path}", err=True)
    click.echo("Public key (build with ZIZQ_LICENSE_ISSUER_PUBLIC_KEY set to it):", err=True)
    click.echo(public_key_pem(key.verify_key), nl=False)


if __name__ == "__main__":
    sys.exit(main())
