"""License keys: verified offline, rotated on a live server, degraded at expiry.

A license is a JWT signed with Ed25519 (`alg: EdDSA`), with the claims `sub`
(licensee id), `name` (licensee name), `tier` (`pro` | `enterprise`) and `exp`
(Unix seconds). It is checked with PyNaCl against the one issuer public key
this build trusts; nothing ever goes over the network.

Which issuer a build trusts is decided when it is built: a source checkout
trusts the development issuer below (its private key lives with the tests,
so anyone can mint development licenses), and `specs/zizq.spec` bakes the
key named by `ZIZQ_LICENSE_ISSUER_PUBLIC_KEY` into a release binary as the
module `zizq_build_issuer`. There is deliberately no run-time override.

Every pro feature asks `LicenseState.require(feature)` at the moment it is
used, so an expired license degrades to the free tier at once, without a
restart and without waiting for a poll.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.signing
import orjson

from zizq.config import format_duration_ms
from zizq.logs import log_event

logger = logging.getLogger("zizq.license")

# The development issuer. Its private key is tests/licensing/dev_issuer_private_key.pem:
# NOT SECRET, for tests and local development only. Release builds trust another key.
DEV_ISSUER_PUBLIC_KEY = """-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAT1SMyOuIimMEivboYhbWg30C0dgO5H0QaFN0nINBaJs=
-----END PUBLIC KEY-----
"""

# DER prefixes of an Ed25519 key in SubjectPublicKeyInfo and PKCS#8 form: both
# are fixed, followed by the 32 raw key bytes (RFC 8410).
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
MAX_TOKEN_BYTES = 16 * 1024  # a license is a few hundred bytes; refuse anything huge
MAX_KEY_FILE_BYTES = 64 * 1024
# A PEM armour line, also when a CI secret has flattened the key onto one line.
_PEM_ARMOUR = re.compile(r"-----(BEGIN|END) [A-Z0-9 ]+-----")
# The base64url alphabet without padding, as JWS (RFC 7515) writes every part.
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class Tier(enum.IntEnum):
    FREE = 0
    PRO = 1
    ENTERPRISE = 2

    def __str__(self) -> str:
        return self.name.lower()


_LICENSED_TIERS = {"pro": Tier.PRO, "enterprise": Tier.ENTERPRISE}


class Feature(enum.Enum):
    """Gated features: (name used in messages, minimum tier)."""

    UNIQUE_JOBS = ("unique jobs", Tier.PRO)
    BATCHED_JOBS = ("batched jobs", Tier.PRO)
    CRON_SCHEDULING = ("cron scheduling", Tier.PRO)
    BUDGETS = ("budgets", Tier.PRO)
    MUTUAL_TLS = ("mutual TLS", Tier.PRO)
    TOP_LIVE_QUEUE = ("live queue detail", Tier.PRO)

    @property
    def label(self) -> str:
        return self.value[0]

    @property
    def min_tier(self) -> Tier:
        return self.value[1]


class LicenseError(Exception):
    """A license key that cannot be used; the message is one line for the user."""


class LicenseRequired(Exception):
    """A pro feature was asked for without a license that allows it (HTTP 403)."""


@dataclass(frozen=True)
class License:
    licensee_id: str
    licensee_name: str
    tier: Tier
    expires_at: int  # Unix seconds

    def expired(self, now_s: float) -> bool:
        return now_s >= self.expires_at


# --- keys and tokens ------------------------------------------------------------------------


def _pem_body(text: str) -> bytes:
    # Armour and whitespace removed wherever they are: a key pasted into an env var or a
    # CI secret often arrives with its newlines turned into spaces.
    body = "".join(_PEM_ARMOUR.sub(" ", text).split())
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise LicenseError("the key is not valid PEM (base64)") from None


def public_key_bytes(text: str) -> bytes:
    """The 32 raw bytes of an Ed25519 public key given as PEM (SPKI) or bare base64."""
    der = _pem_body(text)
    if len(der) == 32:
        return der
    if len(der) == len(_SPKI_PREFIX) + 32 and der.startswith(_SPKI_PREFIX):
        return der[len(_SPKI_PREFIX) :]
    raise LicenseError("the key is not an Ed25519 public key (PEM SubjectPublicKeyInfo)")


def signing_key_from_pem(text: str) -> nacl.signing.SigningKey:
    """An Ed25519 private key in PKCS#8 PEM (as `openssl genpkey -algorithm ed25519` writes)."""
    der = _pem_body(text)
    if len(der) != len(_PKCS8_PREFIX) + 32 or not der.startswith(_PKCS8_PREFIX):
        raise LicenseError("the key is not an Ed25519 private key (PKCS#8 PEM)")
    return nacl.signing.SigningKey(der[len(_PKCS8_PREFIX) :])


def private_key_pem(key: nacl.signing.SigningKey) -> str:
    return _pem("PRIVATE KEY", _PKCS8_PREFIX + bytes(key))


def public_key_pem(key: nacl.signing.VerifyKey) -> str:
    return _pem("PUBLIC KEY", _SPKI_PREFIX + bytes(key))


def _pem(label: str, der: bytes) -> str:
    body = base64.b64encode(der).decode("ascii")
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


def trusted_issuer_key() -> bytes:
    """The issuer public key this build trusts (see the module docstring)."""
    try:
        from zizq_build_issuer import PUBLIC_KEY  # type: ignore[import-not-found]
    except ImportError:
        PUBLIC_KEY = DEV_ISSUER_PUBLIC_KEY
    return public_key_bytes(PUBLIC_KEY)


def issuer_fingerprint(key: bytes) -> str:
    """A short, stable name for an issuer key (shown in the start-up log)."""
    name = hashlib.sha256(key).hexdigest()[:16]
    return f"development ({name})" if key == public_key_bytes(DEV_ISSUER_PUBLIC_KEY) else name


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(part: str, what: str) -> bytes:
    """Decode one JWS part, accepting only its one canonical spelling.

    Python's decoder skips characters outside the alphabet, takes `+` and `/`,
    padding, and any value in the unused low bits of the last character; each of
    those would let a different string pass as the same signed license.
    """
    bad = LicenseError(f"license key is not a JWT: its {what} is not base64url")
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise bad
    try:
        data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise bad from None
    if _b64url(data) != part:
        raise bad
    return data


def sign_license(
    key: nacl.signing.SigningKey, sub: str, name: str, tier: str, exp: int, **extra: object
) -> str:
    """Mint a license token (used by scripts/issue-license and the tests)."""
    header = _b64url(orjson.dumps({"alg": "EdDSA", "typ": "JWT"}))
    claims = {"sub": sub, "name": name, "tier": tier, "exp": exp, **extra}
    body = _b64url(orjson.dumps(claims))
    signing_input = f"{header}.{body}".encode("ascii")
    return f"{header}.{body}.{_b64url(key.sign(signing_input).signature)}"


def verify_license(
    token: str, issuer_key: bytes | None = None, now_s: float | None = None
) -> License:
    """Check a token's shape, signature, claims and expiry; raise LicenseError if unusable."""
    token = token.strip()
    if not token:
        raise LicenseError("license key is empty")
    if len(token) > MAX_TOKEN_BYTES:
        raise LicenseError(f"license key is {len(token)} bytes, longer than any license")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise LicenseError("license key is not a JWT (expected header.claims.signature)")
    try:
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    except UnicodeEncodeError:
        raise LicenseError("license key is not a JWT: it has non-ASCII characters") from None
    header = _json_part(parts[0], "header")
    alg = header.get("alg")
    if alg != "EdDSA":
        # The header is not signed: quote what it says only when it is short and a string.
        shown = repr(alg) if isinstance(alg, str) and len(alg) <= 32 else "another algorithm"
        raise LicenseError(f"license key is signed with {shown}, not EdDSA")
    signature = _unb64url(parts[2], "signature")
    key = trusted_issuer_key() if issuer_key is None else issuer_key
    try:
        nacl.signing.VerifyKey(key).verify(signing_input, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        raise LicenseError("license key signature is not valid for this build's issuer") from None
    claims = _json_part(parts[1], "claims")
    for claim in ("sub", "name", "tier"):
        value = claims.get(claim)
        if not isinstance(value, str) or not value.strip():
            raise LicenseError(f"license key has no {claim!r} claim (a non-empty string)")
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool) or exp <= 0:
        raise LicenseError("license key has no 'exp' claim (Unix seconds)")
    tier = _LICENSED_TIERS.get(claims["tier"])
    if tier is None:
        raise LicenseError(f"license key has an unknown tier {claims['tier']!r}")
    found = License(claims["sub"], claims["name"], tier, exp)
    if found.expired(time.time() if now_s is None else now_s):
        raise LicenseError(f"license key expired at {exp} (Unix seconds)")
    return found


def _json_part(part: str, what: str) -> dict:
    try:
        value = orjson.loads(_unb64url(part, what))
    except orjson.JSONDecodeError:
        raise LicenseError(f"license key is not a JWT: its {what} is not JSON") from None
    if not isinstance(value, dict):
        raise LicenseError(f"license key is not a JWT: its {what} is not an object")
    return value


# --- where a key comes from -----------------------------------------------------------------


def key_path(value: str) -> Path | None:
    """`@path` names a file (re-read for rotation); anything else is the token itself."""
    # `~` after `@` is not expanded by any shell, so it is done here.
    return Path(value[1:]).expanduser() if value.startswith("@") else None


def read_key_file(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise LicenseError(f"cannot read license key file {str(path)!r}: {exc.strerror}") from None
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise LicenseError(f"license key file {str(path)!r} is too large to be a license")
    try:
        # utf-8-sig: editors on Windows may start the file with a byte-order mark.
        return raw.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise LicenseError(f"license key file {str(path)!r} is not text") from None


def load_license(value: str) -> License:
    """The license a `--license-key` value names (token or @path); LicenseError if unusable."""
    path = key_path(value)
    return verify_license(read_key_file(path) if path is not None else value)


# --- the live license ---------------------------------------------------------------------


def _remaining(lic: License, now_s: float) -> str:
    return format_duration_ms(max(0, int((lic.expires_at - now_s) * 1000)) // 1000 * 1000)


def log_license(lic: License | None, level: int = logging.INFO) -> None:
    if lic is None:
        log_event(logger, level, "no license key provided, running in free tier")
        return
    log_event(
        logger,
        level,
        "license validated",
        licensee=lic.licensee_name,
        tier=str(lic.tier),
        expires_at=lic.expires_at,
        remaining=_remaining(lic, time.time()),
    )


class LicenseState:
    """The server's current license: read by every gated request, swapped by the watcher."""

    def __init__(self, current: License | None = None, clock: Callable[[], float] = time.time):
        self._current = current
        self._clock = clock
        self._listeners: list[Callable[[], None]] = []
        self._expiry_timer: asyncio.TimerHandle | None = None

    @property
    def license(self) -> License | None:
        return self._current

    def tier(self) -> Tier:
        """The tier in force right now (free once the license has expired)."""
        current = self._current
        if current is None or current.expired(self._clock()):
            return Tier.FREE
        return current.tier

    def allows(self, feature: Feature) -> bool:
        return self.tier() >= feature.min_tier

    def require(self, feature: Feature) -> None:
        """Raise LicenseRequired unless the license in force allows `feature`."""
        if self.allows(feature):
            return
        tier = feature.min_tier
        current = self._current
        if current is not None and current.tier >= tier:  # it would, but it has expired
            raise LicenseRequired(f"license expired: {feature.label} requires a {tier} license")
        raise LicenseRequired(f"{feature.label} requires a {tier} license")

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` (on the loop) whenever the tier in force may have changed."""
        self._listeners.append(listener)

    def swap(self, new: License) -> None:
        self._current = new
        self._arm_expiry()
        self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # a listener's bug must not stop the rotation
                logger.exception("license change listener failed")

    def start(self) -> None:
        """Log the moment the license expires (features check the clock themselves)."""
        self._arm_expiry()

    def stop(self) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None

    def _arm_expiry(self) -> None:
        self.stop()
        current = self._current
        if current is None:
            return
        # Already past `exp` (it expired while the store was opening, or between two
        # clock reads in _expired_now): the timer still fires, at once, so the expiry
        # is logged and listeners hear of it.
        delay = max(0.0, current.expires_at - self._clock())
        loop = asyncio.get_running_loop()
        # call_later needs a finite delay: a license valid for centuries is re-armed yearly.
        self._expiry_timer = loop.call_later(min(delay, 86_400 * 365), self._expired_now)

    def _expired_now(self) -> None:
        self._expiry_timer = None
        current = self._current
        if current is None:
            return
        if not current.expired(self._clock()):
            self._arm_expiry()  # a long license: re-armed yearly
            return
        log_event(
            logger,
            logging.WARNING,
            "license expired, running in free tier",
            licensee=current.licensee_name,
            expires_at=current.expires_at,
        )
        self._notify()


class LicenseWatcher:
    """Re-reads a `@path` license key file; a changed valid key is swapped in live.

    A change is a different token text: rewriting the file, or retargeting a
    symlink to another file, both count. A changed key that does not verify
    is logged as an error and the current license stays.
    """

    def __init__(self, state: LicenseState, path: Path, interval_ms: int, token: str) -> None:
        self._state = state
        self._path = path
        self._interval_s = interval_ms / 1000
        self._last = token
        self._task: asyncio.Task | None = None
        self._unreadable = False

    def start(self) -> None:
        if self._interval_s <= 0:
            return
        log_event(
            logger,
            logging.INFO,
            "license key file watcher started",
            path=str(self._path),
            interval_ms=int(self._interval_s * 1000),
        )
        self._task = asyncio.get_running_loop().create_task(self._forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check()
            except Exception:  # never let the watcher die: the next tick tries again
                logger.exception("license key file check failed")

    async def check(self) -> None:
        try:
            # A thread: the file may live on a slow or hung network mount.
            token = await asyncio.to_thread(read_key_file, self._path)
        except LicenseError as exc:
            if not self._unreadable:
                self._unreadable = True
                log_event(
                    logger,
                    logging.WARNING,
                    "cannot re-read the license key file, keeping the current license",
                    error=str(exc),
                )
            return
        if self._unreadable:
            self._unreadable = False
            log_event(logger, logging.INFO, "license key file readable again", path=str(self._path))
        if token == self._last:
            return
        self._last = token
        try:
            new = verify_license(token)
        except LicenseError as exc:
            log_event(
                logger,
                logging.ERROR,
                "license key file changed but the new key is not valid, keeping the current "
                "license",
                error=str(exc),
            )
            return
        log_event(logger, logging.INFO, "license key file changed, updating license")
        log_license(new)
        self._state.swap(new)
