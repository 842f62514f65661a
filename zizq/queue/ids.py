"""Job ids: SCRU128 (25 base36 chars, time-ordered), so id order is enqueue order.

An id is 128 bits: a 48-bit millisecond timestamp, a 24-bit `counter_hi`
(random, renewed every second), a 24-bit `counter_lo` (random at each new
millisecond, then incremented) and 32 random bits. We follow the SCRU128
specification's generator here instead of calling the scru128 library per id:
its per-call checks and id objects were a sixth of a bulk enqueue's cost. The
tests check our ids against the library's parser and ordering.

Non-cryptographic randomness is enough: SCRU128 needs unpredictable ids only
against accidental collisions, which its counters already rule out within one
process.
"""

import random

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_TRIPLES = [a + b + c for a in _DIGITS for b in _DIGITS for c in _DIGITS]  # 36**3 strings
_B3 = 36**3
_B6 = 36**6

_MAX_COUNTER = (1 << 24) - 1
_MAX_TIMESTAMP = (1 << 48) - 1
# A clock that steps back by more than this restarts the sequence at the new time
# (the library's DEFAULT_ROLLBACK_ALLOWANCE); a smaller step keeps counting on.
ROLLBACK_ALLOWANCE_MS = 10_000
COUNTER_HI_RENEW_MS = 1_000


class _Generator:
    """SCRU128's monotonic generator. Not thread-safe: only the event-loop thread
    creates ids."""

    __slots__ = ("timestamp", "counter_hi", "counter_lo", "hi_since", "_bits")

    def __init__(self) -> None:
        self.timestamp = 0
        self.counter_hi = 0
        self.counter_lo = 0
        self.hi_since = 0  # when counter_hi was last renewed
        self._bits = random.Random().getrandbits

    def next_value(self, now_ms: int) -> int:
        if not 1 <= now_ms <= _MAX_TIMESTAMP:
            raise ValueError(f"timestamp out of range: {now_ms}")
        bits = self._bits
        if now_ms > self.timestamp or now_ms + ROLLBACK_ALLOWANCE_MS < self.timestamp:
            if now_ms < self.timestamp:
                self.hi_since = 0  # a big clock step back: start over from `now_ms`
            self.timestamp = now_ms
            self.counter_lo = bits(24)
        else:  # the same millisecond, or a small step back: count on
            self.counter_lo += 1
            if self.counter_lo > _MAX_COUNTER:
                self.counter_lo = 0
                self.counter_hi += 1
                if self.counter_hi > _MAX_COUNTER:
                    self.counter_hi = 0
                    self.timestamp += 1  # both counters ran out: borrow the next ms
                    self.counter_lo = bits(24)
        if self.timestamp - self.hi_since >= COUNTER_HI_RENEW_MS or self.hi_since < 1:
            self.hi_since = self.timestamp
            self.counter_hi = bits(24)
        return self.timestamp << 80 | self.counter_hi << 56 | self.counter_lo << 32 | bits(32)


_generator = _Generator()


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
    return format_id(_generator.next_value(now_ms))


def plausible_id(job_id: str) -> bool:
    """Could this be one of our ids? (Anything else cannot name a stored job.)"""
    return len(job_id) == 25 and job_id.isascii() and job_id.isalnum()
