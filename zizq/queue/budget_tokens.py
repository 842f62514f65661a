"""Token state of budgets, in memory (pro, 0.7).

Policies are durable; tokens are not: a restart refills every bucket, as the
reference documents. Time is always a parameter (epoch ms ints) or read from
the injected clock, so tests drive it without sleeping.

while_in_flight: a budget counts the tokens held by jobs in flight. A job may
acquire when `held + cost <= allocation`; its tokens come back on `release`.
Cutting the allocation below what is held leaves the budget over-committed:
returned tokens only lower `held` and nobody acquires until `held + cost` fits
again, so a cut from six to one while six run settles at one. Raising it hands
the new slots over at once.

time_based: a continuous drip of `allocation` tokens per `duration_ms`, computed
lazily from elapsed time, capped at the burst (default: the allocation). The
level is an exact integer in *units*: one token is `duration_ms` units and each
millisecond adds `allocation` units, so the drip has no rounding at all and no
float drift can let more through than `burst + rate x elapsed`. A new bucket
starts full. On a policy change the elapsed time is settled under the old
policy first, then:
- a rate change (allocation) keeps the level, fractional progress included;
- a period change (duration_ms) keeps whole tokens and drops the fraction
  (it was measured against the old period);
- the level is clamped to the new burst (a cut bites at once).

A strategy change starts the new strategy from what was free: to time_based,
the free slots (capped at the burst, no fraction); to while_in_flight, nothing
held (jobs dispatched under the rate limit never took a slot).

Holdings are recorded per job id, so `release` is idempotent: an ack racing a
disconnect cannot return tokens twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from zizq.queue.budget_policy import WHILE_IN_FLIGHT, Policy
from zizq.queue.records import now_ms

Refs = Sequence[tuple[str, int]]  # (key, cost) pairs, e.g. budget_policy.BudgetRef


class _Slots:
    """A while_in_flight budget: tokens held by jobs in flight."""

    __slots__ = ("allocation", "held")

    def __init__(self, allocation: int, held: int = 0) -> None:
        self.allocation = allocation
        self.held = held

    def free(self, now: int) -> int:
        return max(0, self.allocation - self.held)


class _Drip:
    """A time_based budget. `level` is in units: a token is `period` units."""

    __slots__ = ("rate", "period", "cap", "level", "last")

    def __init__(self, policy: Policy, now: int, tokens: int | None = None) -> None:
        self.rate = policy.allocation  # units per ms
        self.period = _period(policy)
        self.cap = policy.capacity * self.period
        self.level = self.cap if tokens is None else min(tokens * self.period, self.cap)
        self.last = now

    def level_at(self, now: int) -> int:
        """The level at `now`, without settling it (probing the future must not credit it)."""
        level = self.level
        elapsed = now - self.last
        # A clock that steps back accrues nothing rather than draining.
        if elapsed <= 0 or level >= self.cap:
            return level
        level += elapsed * self.rate
        return level if level < self.cap else self.cap

    def settle(self, now: int) -> None:
        self.level = self.level_at(now)
        if now > self.last:
            self.last = now

    def free(self, now: int) -> int:
        return self.level_at(now) // self.period

    def due_at(self, cost: int, now: int) -> int | None:
        """The earliest ms at which `cost` fits with no other activity; None if never."""
        need = cost * self.period
        if need > self.cap:
            return None
        level = self.level_at(now)
        if level >= need:
            return now
        # Accrual runs from `last` when the clock stepped back behind it.
        base = now if now > self.last else self.last
        return base + -((level - need) // self.rate)  # ceiling division


_Bucket = _Slots | _Drip


class TokenPool:
    """Token state for every budget, keyed by budget key.

    Not thread-safe: the engine calls it from the event loop only, so a
    check followed by a debit is atomic.
    """

    __slots__ = ("_buckets", "_held", "_clock")

    def __init__(self, clock: Callable[[], int] = now_ms) -> None:
        self._buckets: dict[str, _Bucket] = {}
        # job id -> the while_in_flight buckets it holds tokens in, with the cost.
        # Bucket objects rather than keys: a bucket replaced by a strategy
        # change (or a delete and re-create) must not get old tokens back.
        self._held: dict[str, list[tuple[str, _Slots, int]]] = {}
        self._clock = clock

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def __len__(self) -> int:
        return len(self._buckets)

    def set_policy(self, key: str, policy: Policy, now: int | None = None) -> None:
        """Create a budget's pool (full), or apply a changed policy to it at once."""
        if now is None:
            now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = _new_bucket(policy, now)
        elif policy.strategy == WHILE_IN_FLIGHT:
            if isinstance(bucket, _Slots):
                bucket.allocation = policy.allocation
            else:
                self._buckets[key] = _Slots(policy.allocation)
        elif isinstance(bucket, _Slots):
            self._buckets[key] = _Drip(policy, now, tokens=bucket.free(now))
        else:
            _adopt(bucket, policy, now)

    def forget(self, key: str) -> None:
        """Drop a deleted budget's state (a job still holding its tokens releases into nothing)."""
        self._buckets.pop(key, None)

    def clear(self) -> None:
        """Forget every budget and holding (POST /reset)."""
        self._buckets.clear()
        self._held.clear()

    def try_acquire_all(self, job_id: str, refs: Refs, now: int | None = None) -> bool:
        """Debit every binding's cost, or none of them; True if the job may dispatch.

        Raises KeyError for a key with no policy (the engine keeps every
        bound budget alive), ValueError if the job already holds tokens
        (it must be released when it leaves in flight).
        """
        if now is None:
            now = self._clock()
        if job_id in self._held:
            raise ValueError(f"job {job_id} already holds budget tokens")
        buckets = self._buckets
        if len(refs) == 1:  # the usual case, without the undo log
            key, cost = refs[0]
            bucket = buckets[key]
            if type(bucket) is _Slots:
                if bucket.held + cost > bucket.allocation:
                    return False
                bucket.held += cost
                self._held[job_id] = [(key, bucket, cost)]
                return True
            level = bucket.level_at(now)
            need = cost * bucket.period
            if level < need:
                return False
            bucket.level = level - need
            if now > bucket.last:
                bucket.last = now
            return True
        # Debit in turn and undo on the first shortfall. Sequential debits stay
        # right even if a key were listed twice.
        undo: list[tuple[_Bucket, int, int]] = []
        holds: list[tuple[str, _Slots, int]] = []
        for key, cost in refs:
            bucket = buckets[key]
            if type(bucket) is _Slots:
                if bucket.held + cost > bucket.allocation:
                    break
                bucket.held += cost
                holds.append((key, bucket, cost))
                undo.append((bucket, cost, 0))
                continue
            level = bucket.level_at(now)
            need = cost * bucket.period
            if level < need:
                break
            undo.append((bucket, bucket.level, bucket.last))
            bucket.level = level - need
            if now > bucket.last:
                bucket.last = now
        else:
            if holds:
                self._held[job_id] = holds
            return True
        for bucket, first, second in reversed(undo):
            if type(bucket) is _Slots:
                bucket.held -= first
            else:
                bucket.level, bucket.last = first, second
        return False

    def release(self, job_id: str) -> list[str]:
        """Return a job's while_in_flight tokens (ack, failure, delete, disconnect).

        Idempotent. Returns the keys that got tokens back, so the dispatcher
        can retry jobs parked on them; a key may still be over-committed.
        """
        holds = self._held.pop(job_id, None)
        if holds is None:
            return []
        buckets = self._buckets
        freed = []
        for key, bucket, cost in holds:
            bucket.held -= cost
            if buckets.get(key) is bucket:
                freed.append(key)
        return freed

    def next_available_at(self, refs: Refs, now: int | None = None) -> int | None:
        """The earliest ms at which all of `refs` could be acquired, with no other activity.

        `now` if they can be now. None if a while_in_flight binding lacks
        tokens (only a release can help: wait for it, not for a time) or a
        cost exceeds what a bucket can ever hold. Exact: acquiring fails at
        one millisecond before the answer and succeeds at it.
        """
        if now is None:
            now = self._clock()
        latest = now
        for key, cost in _merged(refs):
            bucket = self._buckets[key]
            if type(bucket) is _Slots:
                if bucket.held + cost > bucket.allocation:
                    return None
                continue
            due = bucket.due_at(cost, now)
            if due is None:
                return None
            if due > latest:
                latest = due
        return latest

    def available(self, key: str, now: int | None = None) -> int:
        """Whole tokens free in a budget now (for reads and tests)."""
        return self._buckets[key].free(self._clock() if now is None else now)

    def in_flight(self, key: str) -> int:
        """Tokens held by in-flight jobs in a while_in_flight budget (0 for time_based)."""
        bucket = self._buckets[key]
        return bucket.held if type(bucket) is _Slots else 0

    def holds(self, job_id: str) -> bool:
        """Whether a job holds while_in_flight tokens."""
        return job_id in self._held


def _new_bucket(policy: Policy, now: int) -> _Bucket:
    if policy.strategy == WHILE_IN_FLIGHT:
        return _Slots(policy.allocation)
    return _Drip(policy, now)


def _period(policy: Policy) -> int:
    if policy.duration_ms is None:
        raise ValueError("a time_based policy needs duration_ms")
    return policy.duration_ms


def _adopt(bucket: _Drip, policy: Policy, now: int) -> None:
    """Apply a time_based policy to a time_based bucket (rules in the module doc)."""
    bucket.settle(now)  # the time so far accrued under the old policy
    period = _period(policy)
    level = bucket.level
    if period != bucket.period:
        level = (level // bucket.period) * period
        bucket.period = period
    bucket.rate = policy.allocation
    bucket.cap = policy.capacity * period
    bucket.level = min(level, bucket.cap)


def _merged(refs: Refs) -> Iterable[tuple[str, int]]:
    """Costs summed per key: a key listed twice needs both costs at once."""
    if len(refs) <= 1:
        return refs
    costs: dict[str, int] = {}
    for key, cost in refs:
        costs[key] = costs.get(key, 0) + cost
    return costs.items()
