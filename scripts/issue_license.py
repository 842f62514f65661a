"""Mint a license key, or generate an issuer key pair (see scripts/issue-license)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click
import nacl.signing

from zizq.license import (
    LicenseError,
    private_key_pem,
    public_key_pem,
    sign_license,
    signing_key_from_pem,
    verify_license,
)


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
    type=click.IntRange(min=1),
    default=365,
    show_default=True,
    help="Days until the license expires.",
)
@click.option(
    "--expires-at",
    type=click.IntRange(min=1),
    default=None,
    help="Exact expiry in Unix seconds (instead of --days).",
)
@click.option(
    "--generate-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a new issuer private key here (mode 0600) and print its public key.",
)
def main(private_key, sub, name, tier, days, expires_at, generate_key) -> None:
    """Print a license key (a JWT signed with Ed25519) on stdout."""
    if generate_key is not None:
        if generate_key.exists():
            raise click.UsageError(f"{generate_key} exists; not overwriting an issuer key")
        key = nacl.signing.SigningKey.generate()
        fd = os.open(generate_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(private_key_pem(key))
        click.echo(f"wrote: {generate_key}", err=True)
        click.echo("Public key (build with ZIZQ_LICENSE_ISSUER_PUBLIC_KEY set to it):", err=True)
        click.echo(public_key_pem(key.verify_key), nl=False)
        return
    if private_key is None or not sub or not name:
        raise click.UsageError("--private-key, --sub and --name are required")
    try:
        key = signing_key_from_pem(private_key.read_text())
    except (OSError, LicenseError) as exc:
        raise click.UsageError(f"--private-key {private_key}: {exc}") from None
    exp = expires_at if expires_at is not None else int(time.time()) + days * 86_400
    token = sign_license(key, sub=sub, name=name, tier=tier, exp=exp)
    verify_license(token, issuer_key=bytes(key.verify_key))  # prove it reads back
    click.echo(token)


if __name__ == "__main__":
    sys.exit(main())
