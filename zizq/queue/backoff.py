"""Retry delays after a failure."""

import math
import random

from zizq.config import BackoffPolicy
from zizq.queue.records import MAX_TIME_MS


def retry_delay_ms(policy: BackoffPolicy, attempts: int, rng: random.Random = random._inst) -> int:
    """Delay before the next attempt, `attempts` counting the failure just recorded.

    base + attempts^exponent seconds + a jitter that grows with the attempts,
    so that failures clustered in time spread out on retry. The delay
    saturates at the largest storable time instead of overflowing, whatever
    the attempts and exponent.
    """
    jitter = rng.uniform(0, policy.jitter_ms) if policy.jitter_ms > 0 else 0.0
    try:
        growth = float(attempts) ** policy.exponent * 1000
    except OverflowError:  # e.g. 10**400: far beyond any storable time, so "never"
        growth = math.inf
    delay = policy.base_ms + growth + jitter * attempts
    return int(min(delay, MAX_TIME_MS))


def policy_from_record(record: dict, default: BackoffPolicy) -> BackoffPolicy:
    custom = record.get("backoff")
    if custom is None:
        return default
    return BackoffPolicy(custom["base_ms"], float(custom["exponent"]), custom["jitter_ms"])
