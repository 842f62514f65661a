"""zizq.license: token verification, key parsing, the live state and the file watcher,
and scripts/issue_license.py (minting and issuer key generation)."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
import types
from pathlib import Path

import nacl.signing
import orjson
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.licensing import DEV_PRIVATE_KEY_PATH, dev_signing_key, mint
from zizq.license import (
    DEV_ISSUER_PUBLIC_KEY,
    MAX_TOKEN_BYTES,
    Feature,
    License,
    LicenseError,
    LicenseRequired,
    LicenseState,
    LicenseWatcher,
    Tier,
    issuer_fingerprint,
    key_path,
    load_license,
    private_key_pem,
    public_key_bytes,
    public_key_pem,
    read_key_file,
    sign_license,
    signing_key_from_pem,
    trusted_issuer_key,
    verify_license,
)

ROOT = Path(__file__).resolve().parents[2]
OTHER_KEY = nacl.signing.SigningKey(b"\x07" * 32)  # an issuer this build does not trust


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def signed(header: dict, claims: dict | bytes, key: nacl.signing.SigningKey | None = None) -> str:
    """A token with any header and claims (or raw claims JSON), correctly signed (by the
    dev issuer by default)."""
    head = b64url(orjson.dumps(header))
    body = b64url(claims if isinstance(claims, bytes) else orjson.dumps(claims))
    signature = (key or dev_signing_key()).sign(f"{head}.{body}".encode()).signature
    return f"{head}.{body}.{b64url(signature)}"


def good_claims(**changes) -> dict:
    claims = {"sub": "lic_1", "name": "Test Corp", "tier": "pro", "exp": int(time.time()) + 3600}
    claims.update(changes)
    return {key: value for key, value in claims.items() if value is not ...}


EDDSA = {"alg": "EdDSA", "typ": "JWT"}


# --- good tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize("tier, expected", [("pro", Tier.PRO), ("enterprise", Tier.ENTERPRISE)])
def test_verifies_a_good_token(tier, expected):
    exp = int(time.time()) + 86_400
    found = verify_license(mint(tier=tier, name="Acme Ltd", sub="lic_42", exp=exp))
    assert found == License("lic_42", "Acme Ltd", expected, exp)


def test_extra_claims_and_surrounding_whitespace_are_accepted():
    token = signed(EDDSA, good_claims(iat=1, iss="zizq"))
    assert verify_license(f"  {token}\n").tier is Tier.PRO


def test_the_dev_key_pair_matches_the_public_key_the_source_build_trusts():
    assert bytes(dev_signing_key().verify_key) == public_key_bytes(DEV_ISSUER_PUBLIC_KEY)
    assert trusted_issuer_key() == public_key_bytes(DEV_ISSUER_PUBLIC_KEY)
    assert issuer_fingerprint(trusted_issuer_key()).startswith("development (")
    assert "development" not in issuer_fingerprint(bytes(OTHER_KEY.verify_key))


def test_a_build_issuer_module_replaces_the_development_issuer(monkeypatch):
    """What specs/zizq.spec bakes from ZIZQ_LICENSE_ISSUER_PUBLIC_KEY into a release."""
    baked = types.ModuleType("zizq_build_issuer")
    baked.PUBLIC_KEY = public_key_pem(OTHER_KEY.verify_key).replace("\n", " ")
    monkeypatch.setitem(sys.modules, "zizq_build_issuer", baked)
    assert trusted_issuer_key() == bytes(OTHER_KEY.verify_key)
    assert verify_license(mint(key=OTHER_KEY)).tier is Tier.PRO
    with pytest.raises(LicenseError, match="signature is not valid"):
        verify_license(mint())  # development licenses are worthless in a release


def test_an_explicit_issuer_key_is_used_instead_of_the_build_one():
    token = mint(key=OTHER_KEY)
    assert verify_license(token, issuer_key=bytes(OTHER_KEY.verify_key)).tier is Tier.PRO
    with pytest.raises(LicenseError, match="signature"):
        verify_license(token)


# --- rejected tokens ------------------------------------------------------------------------


def rejects(token: str, match: str) -> None:
    with pytest.raises(LicenseError, match=match):
        verify_license(token)


def test_rejects_a_token_signed_by_another_issuer():
    rejects(mint(key=OTHER_KEY), "signature is not valid")


def test_rejects_tampered_claims():
    head, _body, sig = mint(tier="pro").split(".")
    forged = b64url(orjson.dumps(good_claims(tier="enterprise")))
    rejects(f"{head}.{forged}.{sig}", "signature is not valid")


def test_rejects_a_signature_moved_from_another_token():
    head, body, _sig = mint(name="A").split(".")
    other_sig = mint(name="B").split(".")[2]
    rejects(f"{head}.{body}.{other_sig}", "signature is not valid")


@pytest.mark.parametrize("alg", ["none", "HS256", "RS256", "eddsa", None, 5, ["EdDSA"]])
def test_rejects_other_algorithms(alg):
    header = {"typ": "JWT"} if alg is None else {"alg": alg, "typ": "JWT"}
    rejects(signed(header, good_claims()), "not EdDSA")


def test_rejects_alg_none_with_an_empty_signature():
    head = b64url(orjson.dumps({"alg": "none"}))
    body = b64url(orjson.dumps(good_claims()))
    rejects(f"{head}.{body}.", "not a JWT")


def test_an_unsigned_header_is_not_quoted_at_length():
    with pytest.raises(LicenseError) as caught:
        verify_license(signed({"alg": "x" * 5000}, good_claims()))
    assert len(str(caught.value)) < 100


@pytest.mark.parametrize(
    "token", ["a.b", "a.b.c.d", "abc", "a..c", ".b.c", "a.b.", "....", "a.b.c.d.e"]
)
def test_rejects_wrong_part_counts(token):
    rejects(token, "not a JWT")


def test_rejects_four_parts_of_a_good_token():
    rejects(mint() + ".AAAA", "not a JWT")


@pytest.mark.parametrize("token", ["", "   ", "\n"])
def test_rejects_an_empty_token(token):
    rejects(token, "empty")


def test_rejects_non_base64():
    head, body, sig = mint().split(".")
    rejects(f"{head}.{body}.{sig[:10]}*{sig[11:]}", "signature is not base64url")
    rejects(f"!!!!.{body}.{sig}", "header is not base64url")
    rejects(f"{head[:-1]}.{body}.{sig}", "base64url|JSON")


@pytest.mark.parametrize(
    "spelling",
    [
        lambda sig: sig.replace("-", "+").replace("_", "/") + ("" if "-" in sig else "+"),
        lambda sig: sig + "==",
        lambda sig: sig[:20] + "\n" + sig[20:],
        lambda sig: sig[:20] + "!!!!" + sig[20:],
        lambda sig: sig[:20] + " " + sig[20:],
    ],
    ids=["standard-alphabet", "padding", "newline", "junk", "space"],
)
def test_only_the_canonical_base64url_spelling_verifies(spelling):
    """Python's decoder accepts many spellings of the same bytes; a token must have one."""
    head, body, sig = mint().split(".")
    rejects(f"{head}.{body}.{spelling(sig)}", "not base64url|not a JWT")


def test_rejects_non_canonical_trailing_bits_of_the_signature():
    head, body, sig = mint().split(".")
    # 64 bytes are 86 characters with 4 unused bits in the last one; setting one of them
    # decodes to the same signature, so only a strict decoder tells the two apart.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(sig[-1])
    assert last & 0b1111 == 0
    twin = sig[:-1] + alphabet[last | 0b0001]
    assert base64.urlsafe_b64decode(twin + "==") == base64.urlsafe_b64decode(sig + "==")
    rejects(f"{head}.{body}.{twin}", "not base64url")


def test_rejects_non_json_parts():
    body = b64url(orjson.dumps(good_claims()))
    for bad_header in (b"not json", b"\xff\xfe", b"[1, 2]", b'"EdDSA"', b"null"):
        rejects(f"{b64url(bad_header)}.{body}.AAAA", "header is not")
    head = b64url(orjson.dumps(EDDSA))
    for bad_claims in (b"not json", b"[]", b"42", b"\xff"):
        key = dev_signing_key()
        part = b64url(bad_claims)
        sig = b64url(key.sign(f"{head}.{part}".encode()).signature)
        rejects(f"{head}.{part}.{sig}", "claims is not")


@pytest.mark.parametrize("claim", ["sub", "name", "tier"])
@pytest.mark.parametrize("value", [..., None, 7, ["pro"], {"a": 1}, True, "", "   "])
def test_rejects_missing_or_wrong_typed_string_claims(claim, value):
    rejects(signed(EDDSA, good_claims(**{claim: value})), f"no '{claim}' claim")


@pytest.mark.parametrize("exp", [..., None, "1999999999", 1.9e9, 2_000_000_000.5, True, 0, -5, [1]])
def test_rejects_missing_or_wrong_typed_exp(exp):
    rejects(signed(EDDSA, good_claims(exp=exp)), "no 'exp' claim")


def test_an_exp_beyond_64_bits_is_rejected_and_a_far_one_works():
    far = b'{"sub":"s","name":"n","tier":"pro","exp":100000000000000000000}'
    rejects(signed(EDDSA, far), "no 'exp' claim")
    assert verify_license(signed(EDDSA, good_claims(exp=2**63 - 1))).expires_at == 2**63 - 1


@pytest.mark.parametrize("tier", ["free", "Pro", "PRO", "gold", "pro ", "enterprise2"])
def test_rejects_unknown_tiers(tier):
    rejects(signed(EDDSA, good_claims(tier=tier)), "unknown tier")


def test_rejects_an_expired_token_and_exp_is_exclusive():
    exp = int(time.time()) - 1
    rejects(mint(exp=exp), "expired")
    token = mint(exp=2_000_000_000)
    assert verify_license(token, now_s=1_999_999_999.999).expires_at == 2_000_000_000
    with pytest.raises(LicenseError, match="expired at 2000000000"):
        verify_license(token, now_s=2_000_000_000)


def test_rejects_a_huge_token_before_any_work():
    rejects("a" * (MAX_TOKEN_BYTES + 1), "longer than any license")
    head, body, sig = mint().split(".")
    rejects(f"{head}.{body + 'A' * MAX_TOKEN_BYTES}.{sig}", "longer than any license")


@pytest.mark.parametrize("where", [0, 1, 2])
def test_rejects_non_ascii(where):
    parts = mint().split(".")
    parts[where] = parts[where][:5] + "é" + parts[where][5:]
    rejects(".".join(parts), "non-ASCII|not base64url")


def test_rejects_non_ascii_lookalike_dots():
    rejects(mint().replace(".", "\u2024"), "not a JWT")


# --- random mutations -----------------------------------------------------------------------

TOKEN = mint(exp=4_000_000_000)
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
NOISE = st.sampled_from(list(ALPHABET + "+/=.  \n\t\x00é\u2024") + ["ey", "==", "\r\n"])
# Each a spelling Python's lenient decoder would read as the same bytes.
LOOKALIKES = str.maketrans("-_", "+/")


@st.composite
def mutations(draw) -> str:
    token = TOKEN
    for _ in range(draw(st.integers(1, 4))):
        if not token:
            break
        kind = draw(
            st.sampled_from(["replace", "insert", "delete", "swap", "truncate", "lookalike"])
        )
        at = draw(st.integers(0, len(token) - 1))
        if kind == "replace":
            token = token[:at] + draw(NOISE | st.characters()) + token[at + 1 :]
        elif kind == "insert":
            at = draw(st.integers(0, len(token)))  # the very end too (padding)
            token = token[:at] + draw(NOISE | st.text(max_size=4)) + token[at:]
        elif kind == "delete":
            token = token[:at] + token[at + draw(st.integers(1, 8)) :]
        elif kind == "swap":
            other = draw(st.integers(0, len(token) - 1))
            chars = list(token)
            chars[at], chars[other] = chars[other], chars[at]
            token = "".join(chars)
        elif kind == "lookalike":
            token = token[:at] + token[at:].translate(LOOKALIKES)
        else:
            token = token[:at]
    return token


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_random_mutations_never_verify_and_only_raise_license_error(token):
    if token.strip() == TOKEN:  # whitespace around the token, or a no-op swap
        assert verify_license(token).licensee_id == "lic_test"
        return
    with pytest.raises(LicenseError):
        verify_license(token)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_arbitrary_text_only_raises_license_error(text):
    with pytest.raises(LicenseError):
        verify_license(text)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["sub", "name", "tier", "exp", "x"]),
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**63 - 1)
        | st.floats()
        | st.text(max_size=5),
    )
)
def test_arbitrary_signed_claims_only_raise_license_error_or_verify_as_documented(claims):
    token = signed(EDDSA, claims)
    try:
        found = verify_license(token)
    except LicenseError:
        return
    assert claims["tier"] in ("pro", "enterprise")
    assert type(claims["exp"]) is int and claims["exp"] > time.time()
    assert found.licensee_id == claims["sub"] and found.licensee_name == claims["name"]


# --- keys -----------------------------------------------------------------------------------


def test_pem_round_trip_of_generated_keys():
    key = nacl.signing.SigningKey.generate()
    assert bytes(signing_key_from_pem(private_key_pem(key))) == bytes(key)
    assert public_key_bytes(public_key_pem(key.verify_key)) == bytes(key.verify_key)


def test_public_key_forms():
    raw = public_key_bytes(DEV_ISSUER_PUBLIC_KEY)
    assert len(raw) == 32
    assert public_key_bytes(base64.b64encode(raw).decode()) == raw  # bare base64
    # A CI secret or env var that flattened the PEM onto one line.
    assert public_key_bytes(DEV_ISSUER_PUBLIC_KEY.replace("\n", " ")) == raw
    assert public_key_bytes(DEV_ISSUER_PUBLIC_KEY.replace("\n", "\r\n")) == raw
    assert public_key_bytes("\n\n  " + DEV_ISSUER_PUBLIC_KEY + "\n\n") == raw


@pytest.mark.parametrize(
    "text",
    [
        "",
        "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n",
        "-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----\n",
        base64.b64encode(b"\x00" * 31).decode(),
        # an RSA-looking SubjectPublicKeyInfo prefix with 32 bytes after it
        base64.b64encode(bytes.fromhex("302a300506032b6571032100") + b"\x01" * 32).decode(),
    ],
)
def test_rejects_bad_public_keys(text):
    with pytest.raises(LicenseError):
        public_key_bytes(text)


def test_the_private_key_is_not_a_public_key_and_vice_versa():
    with pytest.raises(LicenseError, match="public key"):
        public_key_bytes(DEV_PRIVATE_KEY_PATH.read_text())
    with pytest.raises(LicenseError, match="private key"):
        signing_key_from_pem(DEV_ISSUER_PUBLIC_KEY)
    with pytest.raises(LicenseError):
        signing_key_from_pem("-----BEGIN PRIVATE KEY-----\n%%%\n-----END PRIVATE KEY-----\n")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_keys_made_by_openssl(tmp_path):
    private = tmp_path / "issuer.pem"
    public = tmp_path / "issuer.pub.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(private)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    subprocess.run(
        ["openssl", "pkey", "-in", str(private), "-pubout", "-out", str(public)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    key = signing_key_from_pem(private.read_text())
    assert public_key_bytes(public.read_text()) == bytes(key.verify_key)
    token = sign_license(key, sub="s", name="n", tier="enterprise", exp=int(time.time()) + 60)
    issuer = public_key_bytes(public.read_text())
    assert verify_license(token, issuer_key=issuer).tier is Tier.ENTERPRISE
    # and openssl reads the keys we write
    ours = tmp_path / "ours.pem"
    ours.write_text(private_key_pem(nacl.signing.SigningKey(b"\x09" * 32)))
    shown = subprocess.run(
        ["openssl", "pkey", "-in", str(ours), "-pubout"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert shown == public_key_pem(nacl.signing.SigningKey(b"\x09" * 32).verify_key)


# --- where a key comes from -----------------------------------------------------------------


def test_key_path():
    assert key_path("eyJ.a.b") is None
    assert key_path("@/etc/zizq/license.jwt") == Path("/etc/zizq/license.jwt")
    assert key_path("@license.jwt") == Path("license.jwt")
    assert key_path("@~/license.jwt") == Path.home() / "license.jwt"


def test_read_key_file(tmp_path):
    token = mint()
    path = tmp_path / "license.jwt"
    path.write_text(f"\n{token}\n\n")
    assert read_key_file(path) == token
    assert load_license(f"@{path}").licensee_name == "Test Corp"
    path.write_bytes(b"\xef\xbb\xbf" + token.encode() + b"\r\n")  # Notepad's BOM and CRLF
    assert load_license(f"@{path}").tier is Tier.PRO
    path.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(LicenseError, match="not text"):
        read_key_file(path)
    path.write_bytes(b"a" * (70 * 1024))
    with pytest.raises(LicenseError, match="too large"):
        read_key_file(path)
    with pytest.raises(LicenseError, match="No such file"):
        read_key_file(tmp_path / "missing")
    with pytest.raises(LicenseError, match="cannot read"):
        read_key_file(tmp_path)
    path.write_text("")
    with pytest.raises(LicenseError, match="empty"):
        load_license(f"@{path}")


def test_load_license_raw_token():
    assert load_license(mint(tier="enterprise")).tier is Tier.ENTERPRISE
    with pytest.raises(LicenseError):
        load_license("garbage")


# --- the live license state -----------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_free_tier_without_a_license():
    state = LicenseState()
    assert state.tier() is Tier.FREE
    assert not state.allows(Feature.UNIQUE_JOBS)
    with pytest.raises(LicenseRequired) as caught:
        state.require(Feature.UNIQUE_JOBS)
    assert str(caught.value) == "unique jobs requires a pro license"
    for feature, label in [
        (Feature.BATCHED_JOBS, "batched jobs"),
        (Feature.CRON_SCHEDULING, "cron scheduling"),
        (Feature.BUDGETS, "budgets"),
        (Feature.MUTUAL_TLS, "mutual TLS"),
    ]:
        with pytest.raises(LicenseRequired, match=f"^{label} requires a pro license$"):
            state.require(feature)


@pytest.mark.parametrize("tier", [Tier.PRO, Tier.ENTERPRISE])
def test_tier_until_the_exp_second_then_free(tier):
    clock = Clock(1_000.0)
    state = LicenseState(License("s", "n", tier, expires_at=2_000), clock=clock)
    for now in (1_000.0, 1_999.0, 1_999.999):
        clock.now = now
        assert state.tier() is tier
        state.require(Feature.UNIQUE_JOBS)  # does not raise
        assert all(state.allows(feature) for feature in Feature)
    for now in (2_000.0, 2_000.001, 5_000.0):
        clock.now = now
        assert state.tier() is Tier.FREE
        with pytest.raises(LicenseRequired) as caught:
            state.require(Feature.UNIQUE_JOBS)
        assert str(caught.value) == "license expired: unique jobs requires a pro license"
    clock.now = 1_500.0  # the wall clock set back: the license is in force again
    assert state.tier() is tier


def run_async(coro):
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_swap_notifies_and_a_failing_listener_does_not_stop_the_others(caplog):
    calls: list[str] = []

    async def scenario() -> None:
        state = LicenseState()
        state.on_change(lambda: 1 / 0)
        state.on_change(lambda: calls.append("changed"))
        state.start()
        state.swap(License("s", "n", Tier.PRO, int(time.time()) + 3600))
        assert state.tier() is Tier.PRO
        state.stop()

    with caplog.at_level(logging.ERROR, logger="zizq.license"):
        run_async(scenario())
    assert calls == ["changed"]
    assert "license change listener failed" in caplog.text


def expiry_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("license expired")]


def test_the_expiry_is_logged_at_exp_and_listeners_hear_of_it(caplog):
    heard: list[float] = []

    async def scenario() -> float:
        exp = int(time.time()) + 1
        state = LicenseState(License("s", "Acme", Tier.PRO, exp))
        state.on_change(lambda: heard.append(time.time()))
        state.start()
        assert state.tier() is Tier.PRO
        await asyncio.sleep(exp - time.time() + 0.3)
        assert state.tier() is Tier.FREE
        state.stop()
        return exp

    with caplog.at_level(logging.INFO, logger="zizq.license"):
        exp = run_async(scenario())
    assert len(expiry_warnings(caplog)) == 1
    assert expiry_warnings(caplog)[0].levelno == logging.WARNING
    assert len(heard) == 1 and exp <= heard[0] < exp + 0.3


def test_a_license_that_expired_before_start_is_still_logged(caplog):
    """It can expire while the store opens (verified before, started after)."""

    async def scenario() -> None:
        clock = Clock(time.time())
        state = LicenseState(License("s", "n", Tier.PRO, int(clock.now) - 1), clock=clock)
        state.start()
        await asyncio.sleep(0.05)
        state.stop()

    with caplog.at_level(logging.INFO, logger="zizq.license"):
        run_async(scenario())
    assert len(expiry_warnings(caplog)) == 1


def test_a_timer_that_fires_early_is_re_armed(caplog):
    """The loop's monotonic clock and the wall clock disagree; only the wall clock counts."""

    async def scenario() -> None:
        clock = Clock(1_000.0)
        state = LicenseState(License("s", "n", Tier.PRO, 1_000_000), clock=clock)
        state.start()
        state._expired_now()  # fired while the wall clock says it is not time yet
        assert not expiry_warnings(caplog)
        assert state._expiry_timer is not None
        clock.now = 1_000_000.0
        state._expired_now()
        assert len(expiry_warnings(caplog)) == 1
        state.stop()

    with caplog.at_level(logging.INFO, logger="zizq.license"):
        run_async(scenario())


def test_swapping_in_a_new_license_cancels_the_old_expiry(caplog):
    async def scenario() -> LicenseState:
        state = LicenseState(License("s", "old", Tier.PRO, int(time.time()) + 1))
        state.start()
        state.swap(License("s", "new", Tier.ENTERPRISE, int(time.time()) + 3600))
        await asyncio.sleep(1.5)
        state.stop()
        return state

    with caplog.at_level(logging.INFO, logger="zizq.license"):
        state = run_async(scenario())
    assert not expiry_warnings(caplog)
    assert state.tier() is Tier.ENTERPRISE


# --- the key file watcher -------------------------------------------------------------------


def messages(caplog) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "zizq.license"]


def test_watcher_swaps_keeps_and_survives(tmp_path, caplog):
    path = tmp_path / "license.jwt"
    first = mint(tier="pro", name="First")
    path.write_text(first)

    async def scenario() -> None:
        state = LicenseState(verify_license(first))
        watcher = LicenseWatcher(state, path, 1000, first)
        await watcher.check()  # unchanged: nothing
        assert messages(caplog) == []

        path.write_text(mint(tier="enterprise", name="Second") + "\n")
        await watcher.check()
        assert state.license.licensee_name == "Second"
        assert state.tier() is Tier.ENTERPRISE
        assert (logging.INFO, "license key file changed, updating license") in messages(caplog)
        caplog.clear()

        path.write_text("not a license")
        await watcher.check()
        await watcher.check()  # logged once, not at every tick
        assert state.license.licensee_name == "Second"
        errors = [m for level, m in messages(caplog) if level == logging.ERROR]
        assert len(errors) == 1 and "not valid, keeping the current license" in errors[0]
        caplog.clear()

        path.write_text(mint(exp=int(time.time()) - 10))  # expired: also kept
        await watcher.check()
        assert state.license.licensee_name == "Second"
        assert [level for level, _ in messages(caplog)] == [logging.ERROR]
        caplog.clear()

        path.unlink()
        await watcher.check()
        await watcher.check()
        assert [level for level, _ in messages(caplog)] == [logging.WARNING]
        assert state.license.licensee_name == "Second"
        caplog.clear()

        path.write_text(mint(name="Third"))
        await watcher.check()
        assert state.license.licensee_name == "Third"
        assert messages(caplog)[0] == (logging.INFO, "license key file readable again")
        state.stop()

    with caplog.at_level(logging.INFO, logger="zizq.license"):
        run_async(scenario())


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_watcher_follows_a_retargeted_symlink(tmp_path, caplog):
    """How Kubernetes rotates a mounted secret: the link moves, no file is rewritten."""
    one, two = tmp_path / "one.jwt", tmp_path / "two.jwt"
    one.write_text(mint(name="One"))
    two.write_text(mint(name="Two"))
    link = tmp_path / "license.jwt"
    link.symlink_to(one)

    async def scenario() -> LicenseState:
        state = LicenseState(load_license(f"@{link}"))
        watcher = LicenseWatcher(state, link, 1000, read_key_file(link))
        tmp = tmp_path / "tmp-link"
        tmp.symlink_to(two)
        tmp.replace(link)  # atomic retarget
        await watcher.check()
        state.stop()
        return state

    with caplog.at_level(logging.INFO, logger="zizq.license"):
        state = run_async(scenario())
    assert state.license.licensee_name == "Two"
    assert (logging.INFO, "license key file changed, updating license") in messages(caplog)


def test_watcher_task_polls_at_its_interval_and_stops(tmp_path):
    path = tmp_path / "license.jwt"
    first = mint(name="First")
    path.write_text(first)

    async def scenario() -> tuple[LicenseState, float]:
        state = LicenseState(verify_license(first))
        watcher = LicenseWatcher(state, path, 50, first)
        watcher.start()
        path.write_text(mint(name="Second"))
        started = time.monotonic()
        while state.license.licensee_name != "Second":
            assert time.monotonic() - started < 5
            await asyncio.sleep(0.01)
        took = time.monotonic() - started
        await watcher.stop()
        path.write_text(mint(name="Third"))
        await asyncio.sleep(0.2)
        state.stop()
        return state, took

    state, took = run_async(scenario())
    assert took < 2
    assert state.license.licensee_name == "Second"  # stopped: Third never read


def test_a_zero_interval_watcher_never_starts(tmp_path):
    async def scenario() -> None:
        watcher = LicenseWatcher(LicenseState(), tmp_path / "x", 0, "t")
        watcher.start()
        assert watcher._task is None
        await watcher.stop()

    run_async(scenario())


# --- scripts/issue_license.py ---------------------------------------------------------------


def load_script():
    spec = importlib.util.spec_from_file_location(
        "issue_license", ROOT / "scripts" / "issue_license.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ISSUE = load_script().main
DEV_KEY = str(DEV_PRIVATE_KEY_PATH)


def issue(*args: str):
    return CliRunner().invoke(ISSUE, list(args))


def test_issue_mints_with_the_dev_key():
    result = issue("--private-key", DEV_KEY, "--sub", "lic_9", "--name", "Test Corp")
    assert result.exit_code == 0, result.output
    found = verify_license(result.stdout.strip())
    assert (found.licensee_id, found.licensee_name, found.tier) == ("lic_9", "Test Corp", Tier.PRO)
    assert abs(found.expires_at - (time.time() + 365 * 86_400)) < 60


def test_issue_tier_days_and_expires_at():
    result = issue(
        "--private-key", DEV_KEY, "--sub", "s", "--name", "n", "--tier", "enterprise", "--days", "2"
    )
    found = verify_license(result.stdout.strip())
    assert found.tier is Tier.ENTERPRISE
    assert abs(found.expires_at - (time.time() + 2 * 86_400)) < 60
    exp = int(time.time()) + 1234
    result = issue("--private-key", DEV_KEY, "--sub", "s", "--name", "n", "--expires-at", str(exp))
    assert verify_license(result.stdout.strip()).expires_at == exp


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sub", "s", "--name", "n"], "--private-key, --sub and --name are required"),
        (["--private-key", DEV_KEY, "--name", "n"], "are required"),
        (["--private-key", DEV_KEY, "--sub", "s", "--name", "n", "--tier", "free"], "free"),
        (["--private-key", DEV_KEY, "--sub", "s", "--name", "n", "--days", "0"], "--days"),
        (["--private-key", DEV_KEY, "--sub", "s", "--name", "n", "--days", "99999999"], "--days"),
        (["--private-key", DEV_KEY, "--sub", "s", "--name", "n", "--expires-at", "5"], "future"),
        (
            ["--private-key", DEV_KEY, "--sub", "s", "--name", "n", "--expires-at", str(10**19)],
            "--expires-at",
        ),
        (
            ["--private-key", DEV_KEY, "--sub", "s", "--name", "n", "--days", "3"]
            + ["--expires-at", str(int(time.time()) + 99)],
            "not both",
        ),
        (["--private-key", DEV_KEY, "--sub", " ", "--name", "n"], "'sub'"),
    ],
)
def test_issue_usage_errors(args, message):
    result = issue(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_issue_bad_key_files_are_usage_errors(tmp_path):
    cases = {
        "missing.pem": None,
        "public.pem": DEV_ISSUER_PUBLIC_KEY.encode(),
        "junk.pem": b"hello",
        "binary.pem": b"\xff\xfe\x00\x01" * 10,
        "rsa.pem": b"-----BEGIN PRIVATE KEY-----\nMIIBVAIBADANBgkqhkiG9w0BAQEFAASC\n"
        b"-----END PRIVATE KEY-----\n",
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        result = issue("--private-key", str(path), "--sub", "s", "--name", "n")
        assert result.exit_code == 2, (name, result.output)
        assert f"--private-key {path}" in result.output, (name, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), name


def test_generate_key_writes_0600_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "issuer.pem"
    result = issue("--generate-key", str(path))
    assert result.exit_code == 0, result.output
    if os.name != "nt":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = signing_key_from_pem(path.read_text())
    assert public_key_bytes(result.stdout) == bytes(key.verify_key)
    assert "ZIZQ_LICENSE_ISSUER_PUBLIC_KEY" in result.stderr
    # the key mints licenses that verify against its printed public key
    minted = issue("--private-key", str(path), "--sub", "s", "--name", "n")
    issuer = public_key_bytes(result.stdout)
    assert verify_license(minted.stdout.strip(), issuer_key=issuer).licensee_id == "s"
    with pytest.raises(LicenseError):  # and not against the build's (development) issuer
        verify_license(minted.stdout.strip())

    before = path.read_bytes()
    again = issue("--generate-key", str(path))
    assert again.exit_code == 2 and "not overwriting" in again.output
    assert path.read_bytes() == before

    nowhere = issue("--generate-key", str(tmp_path / "no" / "such" / "dir" / "k.pem"))
    assert nowhere.exit_code == 2 and "Traceback" not in nowhere.output
    assert "--generate-key" in nowhere.output


def test_issue_script_runs_as_a_program(tmp_path):
    """The real entry point (scripts/issue-license runs this file with the venv's python)."""
    script = str(ROOT / "scripts" / "issue_license.py")
    ok = subprocess.run(
        [sys.executable, script, "--private-key", DEV_KEY, "--sub", "s", "--name", "CLI Corp"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert verify_license(ok.stdout.strip()).licensee_name == "CLI Corp"
    bad = subprocess.run(
        [sys.executable, script, "--private-key", str(tmp_path / "nope.pem"), "--sub", "s"]
        + ["--name", "n"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stdout == "" and "Error:" in bad.stderr and "Traceback" not in bad.stderr
    wrapper = ROOT / "scripts" / "issue-license"
    assert os.access(wrapper, os.X_OK)
    assert "issue_license.py" in wrapper.read_text()
