"""License keys for tests, signed by the DEVELOPMENT issuer.

dev_issuer_private_key.pem in this folder is NOT A SECRET: it exists so the
suite can mint licenses. Source builds and CI builds trust its public key
(zizq.license.DEV_ISSUER_PUBLIC_KEY); release builds trust another issuer and
reject every license made here.
"""

from __future__ import annotations

import time
from pathlib import Path

import nacl.signing

from zizq.license import sign_license, signing_key_from_pem

DEV_PRIVATE_KEY_PATH = Path(__file__).with_name("dev_issuer_private_key.pem")


def dev_signing_key() -> nacl.signing.SigningKey:
    return signing_key_from_pem(DEV_PRIVATE_KEY_PATH.read_text())


def mint(
    tier: str = "pro",
    expires_in_s: float = 365 * 86_400,
    name: str = "Test Corp",
    sub: str = "lic_test",
    key: nacl.signing.SigningKey | None = None,
    exp: int | None = None,
) -> str:
    """A license token signed by the development issuer (or `key`)."""
    if exp is None:
        exp = int(time.time() + expires_in_s)
    return sign_license(key or dev_signing_key(), sub=sub, name=name, tier=tier, exp=exp)
