"""Job ids: SCRU128 (25 base36 chars, time-ordered), so id order is enqueue order.

The scru128 library generates the 128-bit values; we format them ourselves
because its per-digit base36 loop was the largest single cost of a bulk
enqueue. Non-cryptographic randomness is enough: SCRU128 needs unpredictable
ids only against accidental collisions, which its counters already rule out
within one process.
"""

import random

import scru128

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_TRIPLES = [a + b + c for a in _DIGITS for b in _DIGITS for c in _DIGITS]  # 36**3 strings
_B3 = 36**3
_B6 = 36**6

_generator = scru128.Scru128Generator(rng=random.Random())


def format_id(value: int) -> str:
    """Base36 in 25 lowercase digits, exactly as Scru128Id.__str__ but ~3x faster."""
    value, c1 = divmod(value, _B6)
    value, c2 = divmod(value, _B6)
    value, c3 = divmod(value, _B6)
    top, c4 = divmod(value, _B6)
    t = _TRIPLES
    return (
        _DIGITS[top]
        + t[c4 // _B3] + t[c4 % _B3]
        + t[c3 // _B3] + t[c3 % _B3]
        + t[c2 // _B3] + t[c2 % _B3]
        + t[c1 // _B3] + t[c1 % _B3]
    )  # fmt: skip


def new_id(now_ms: int) -> str:
    """A fresh id for a job created at `now_ms` (the caller's clock reading, so a
    bulk enqueue reads the clock once). Only the event-loop thread creates ids,
    so the generator's lock-free core is safe to use."""
    return format_id(
        int(_generator.generate_or_reset_core(now_ms, scru128.DEFAULT_ROLLBACK_ALLOWANCE))
    )


def plausible_id(job_id: str) -> bool:
    """Could this be one of our ids? (Anything else cannot name a stored job.)"""
    return len(job_id) == 25 and job_id.isascii() and job_id.isalnum()
