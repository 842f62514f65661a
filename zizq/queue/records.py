"""The job record: what we store per job besides its payload.

A record is a plain dict whose keys are exactly the fields of the public job
shape (minus `id` and `payload`), holding only the fields that are set, so
turning it into a response is a dict merge and no field is ever `null`.
"""

import time

SCHEDULED = "scheduled"
READY = "ready"
IN_FLIGHT = "in_flight"
COMPLETED = "completed"
DEAD = "dead"

STATUSES = (SCHEDULED, READY, IN_FLIGHT, COMPLETED, DEAD)
TERMINAL = frozenset((COMPLETED, DEAD))

# Times are stored as signed 64-bit integers; anything later means "never".
MAX_TIME_MS = 2**63 - 1

DEFAULT_PRIORITY = 32768
MAX_PRIORITY = 65535


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def is_purged(record: dict, now: int) -> bool:
    """A job past its purge time is invisible even before the reaper removes it."""
    purge_at = record.get("purge_at")
    return purge_at is not None and purge_at <= now


def public_view(job_id: str, record: dict, **extra) -> dict:
    view = {"id": job_id}
    view.update(record)
    view.update(extra)
    return view


# Every enqueue response (single and bulk) carries both flags, as the reference's
# does: `duplicate` (an existing unique job was returned) and `folded` (the payload
# was folded into a pending batch). Both are pro features, so false in the free tier.
ENQUEUE_FLAGS = ("duplicate", "folded")


def enqueue_view(view: dict) -> dict:
    """`view` with both enqueue flags present (False unless already set)."""
    for flag in ENQUEUE_FLAGS:
        view.setdefault(flag, False)
    return view


def is_new_job(view: dict) -> bool:
    """Whether an enqueue created a job (201), rather than returned or folded into one (200)."""
    return not any(view.get(flag) for flag in ENQUEUE_FLAGS)


def later(now: int, delay_ms: float) -> int:
    """now + delay, saturating at the largest storable time (e.g. a retention of 90000000000y)."""
    return int(min(now + delay_ms, MAX_TIME_MS))
