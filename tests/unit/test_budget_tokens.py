"""Budget token state: concurrency slots, the drip, policy changes, all-or-none, wake times."""

from __future__ import annotations

import copy
import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zizq.queue.budget_policy import BudgetRef, Policy
from zizq.queue.budget_tokens import TokenPool

T0 = 1_700_000_000_000
MINUTE = 60_000


def wif(allocation: int) -> Policy:
    return Policy(allocation, "while_in_flight")


def rate(allocation: int, duration_ms: int, burst: int | None = None) -> Policy:
    return Policy(allocation, "time_based", duration_ms, burst)


def refs(*pairs) -> list[BudgetRef]:
    return [BudgetRef(key, cost) for key, cost in pairs]


def pool_with(**policies: Policy) -> TokenPool:
    pool = TokenPool(clock=lambda: T0)
    for key, policy in policies.items():
        pool.set_policy(key, policy, T0)
    return pool


# ---- while_in_flight ----


def test_while_in_flight_holds_until_release():
    pool = pool_with(c=wif(5))
    one = refs(("c", 1))
    assert [pool.try_acquire_all(f"j{i}", one) for i in range(6)] == [True] * 5 + [False]
    assert pool.in_flight("c") == 5 and pool.available("c") == 0
    assert pool.release("j0") == ["c"]
    assert pool.release("j0") == []  # idempotent: an ack racing a disconnect
    assert pool.in_flight("c") == 4
    assert pool.try_acquire_all("j5", one)
    assert not pool.try_acquire_all("j6", one)


def test_costs_mix_within_the_allocation():
    pool = pool_with(c=wif(20))
    assert all(pool.try_acquire_all(f"a{i}", refs(("c", 5))) for i in range(3))
    assert all(pool.try_acquire_all(f"b{i}", refs(("c", 2))) for i in range(2))
    assert pool.available("c") == 1
    assert not pool.try_acquire_all("x", refs(("c", 2)))
    assert pool.try_acquire_all("y", refs(("c", 1)))


def test_a_job_cannot_hold_twice():
    pool = pool_with(c=wif(5))
    assert pool.try_acquire_all("j", refs(("c", 1)))
    assert pool.holds("j")
    with pytest.raises(ValueError):
        pool.try_acquire_all("j", refs(("c", 1)))
    pool.release("j")
    assert not pool.holds("j")
    assert pool.try_acquire_all("j", refs(("c", 1)))


def test_a_cut_below_in_flight_surrenders_returned_tokens():
    # The reference's example: six running, allocation cut to one, settles at one.
    pool = pool_with(c=wif(6))
    for i in range(6):
        assert pool.try_acquire_all(f"j{i}", refs(("c", 1)))
    pool.set_policy("c", wif(1), T0)
    for i in range(5):
        pool.release(f"j{i}")
        assert not pool.try_acquire_all(f"new{i}", refs(("c", 1))), "a slot was handed on"
    assert pool.in_flight("c") == 1
    pool.release("j5")
    assert pool.try_acquire_all("next", refs(("c", 1)))
    assert not pool.try_acquire_all("after", refs(("c", 1)))


def test_widening_hands_the_new_slots_over_at_once():
    pool = pool_with(c=wif(1))
    assert pool.try_acquire_all("a", refs(("c", 1)))
    pool.set_policy("c", wif(3), T0)
    assert pool.try_acquire_all("b", refs(("c", 1)))
    assert pool.try_acquire_all("c", refs(("c", 1)))
    assert not pool.try_acquire_all("d", refs(("c", 1)))


# ---- time_based ----


def test_a_bucket_starts_full_then_drips():
    # 6 per minute: six at once, then one every ten seconds.
    pool = pool_with(r=rate(6, MINUTE))
    one = refs(("r", 1))
    assert all(pool.try_acquire_all(f"j{i}", one, T0) for i in range(6))
    assert not pool.try_acquire_all("x", one, T0)
    assert pool.next_available_at(one, T0) == T0 + 10_000
    assert not pool.try_acquire_all("x", one, T0 + 9_999)
    assert pool.try_acquire_all("x", one, T0 + 10_000)
    assert not pool.holds("x")  # nothing to release for a rate limit
    assert pool.next_available_at(one, T0 + 10_000) == T0 + 20_000


def test_the_drip_is_continuous_and_keeps_fractions():
    pool = pool_with(r=rate(100, 5 * MINUTE))
    assert pool.try_acquire_all("all", refs(("r", 100)), T0)
    assert pool.available("r", T0 + MINUTE) == 20
    assert pool.available("r", T0 + 4 * MINUTE) == 80
    # Many small looks accrue the same as one long one: 1 token per 3000 ms.
    for ms in range(0, 3_000, 7):
        assert pool.available("r", T0 + ms) == 0
        assert not pool.try_acquire_all("x", refs(("r", 1)), T0 + ms)
    assert pool.try_acquire_all("x", refs(("r", 1)), T0 + 3_000)


def test_refill_stops_at_the_burst():
    pool = pool_with(r=rate(10, 1_000, burst=3))
    assert pool.available("r", T0) == 3
    assert pool.try_acquire_all("a", refs(("r", 3)), T0)
    assert pool.available("r", T0 + 10_000_000) == 3
    # Time spent full banks nothing: the next token is a full interval later.
    assert pool.try_acquire_all("b", refs(("r", 3)), T0 + 10_000_000)
    assert pool.next_available_at(refs(("r", 1)), T0 + 10_000_000) == T0 + 10_000_100


def test_burst_one_paces_evenly_and_a_big_burst_banks_idle_periods():
    paced = pool_with(r=rate(10, 1_000, burst=1))
    assert paced.try_acquire_all("a", refs(("r", 1)), T0)
    assert not paced.try_acquire_all("b", refs(("r", 1)), T0 + 99)
    assert paced.try_acquire_all("b", refs(("r", 1)), T0 + 100)
    banked = pool_with(r=rate(10, 1_000, burst=20))
    assert banked.try_acquire_all("a", refs(("r", 20)), T0)
    assert banked.available("r", T0 + 1_000) == 10
    assert banked.available("r", T0 + 2_000) == 20


def test_a_rate_change_keeps_progress_toward_the_next_token():
    # Half a minute waited on one-a-minute still counts at two a second.
    pool = pool_with(r=rate(1, MINUTE))
    assert pool.try_acquire_all("a", refs(("r", 1)), T0)
    pool.set_policy("r", rate(120, MINUTE), T0 + 30_000)
    assert pool.next_available_at(refs(("r", 1)), T0 + 30_000) == T0 + 30_250


def test_a_period_change_discards_progress():
    pool = pool_with(r=rate(2, MINUTE))
    assert pool.try_acquire_all("a", refs(("r", 2)), T0)
    # 15 s at 2/min is half a token; the new period starts from nothing.
    pool.set_policy("r", rate(2, 30_000), T0 + 15_000)
    assert pool.next_available_at(refs(("r", 1)), T0 + 15_000) == T0 + 30_000
    # Whole tokens survive a period change.
    full = pool_with(r=rate(4, MINUTE))
    full.set_policy("r", rate(4, 1_000), T0 + 5)
    assert full.available("r", T0 + 5) == 4


def test_a_burst_cut_clamps_and_a_raise_does_not_invent_tokens():
    pool = pool_with(r=rate(100, MINUTE))
    pool.set_policy("r", rate(100, MINUTE, burst=10), T0)
    assert pool.available("r", T0) == 10
    pool.set_policy("r", rate(100, MINUTE), T0)
    assert pool.available("r", T0) == 10
    assert pool.available("r", T0 + 600) == 11


def test_strategy_changes_start_from_what_was_free():
    pool = pool_with(c=wif(5))
    for i in range(3):
        assert pool.try_acquire_all(f"j{i}", refs(("c", 1)))
    pool.set_policy("c", rate(10, 1_000), T0)
    assert pool.available("c", T0) == 2  # the two free slots
    assert pool.release("j0") == []  # a rate limit gets nothing back
    pool.set_policy("c", wif(1), T0)
    assert pool.in_flight("c") == 0  # rate-limited jobs hold no slot
    pool.release("j1")
    assert pool.in_flight("c") == 0
    assert pool.try_acquire_all("k", refs(("c", 1)))


def test_a_clock_stepping_back_accrues_nothing():
    pool = pool_with(r=rate(1, 1_000))
    assert pool.try_acquire_all("a", refs(("r", 1)), T0 + 5_000)
    assert pool.available("r", T0) == 0
    assert pool.next_available_at(refs(("r", 1)), T0) == T0 + 6_000
    assert not pool.try_acquire_all("b", refs(("r", 1)), T0 + 5_999)
    assert pool.try_acquire_all("b", refs(("r", 1)), T0 + 6_000)


# ---- several budgets ----


def test_all_or_none_across_budgets():
    pool = pool_with(c=wif(2), r=rate(1, MINUTE))
    both = refs(("c", 1), ("r", 1))
    assert pool.try_acquire_all("a", both, T0)
    assert not pool.try_acquire_all("b", both, T0)  # the rate limit is spent
    assert pool.in_flight("c") == 1, "the concurrency slot was kept"
    assert pool.next_available_at(both, T0) == T0 + MINUTE
    assert pool.try_acquire_all("b", both, T0 + MINUTE)
    pool2 = pool_with(c=wif(1), r=rate(5, MINUTE))
    assert pool2.try_acquire_all("a", refs(("c", 1)), T0)
    assert not pool2.try_acquire_all("b", refs(("r", 2), ("c", 1)), T0)
    assert pool2.available("r", T0) == 5, "the rate tokens were given back"
    assert pool2.next_available_at(refs(("r", 2), ("c", 1)), T0) is None  # wait for a release


def test_next_available_at_takes_the_latest_and_knows_never():
    pool = pool_with(a=rate(1, 1_000), b=rate(1, 10_000), c=wif(3))
    assert pool.try_acquire_all("x", refs(("a", 1), ("b", 1)), T0)
    assert pool.next_available_at(refs(("a", 1), ("b", 1), ("c", 3)), T0) == T0 + 10_000
    assert pool.next_available_at(refs(("c", 3)), T0) == T0
    assert pool.next_available_at(refs(("a", 2)), T0) is None  # above the burst: never
    assert pool.next_available_at(refs(("c", 4)), T0) is None


def test_forget_and_clear():
    pool = pool_with(c=wif(1), r=rate(1, 1_000))
    assert pool.try_acquire_all("j", refs(("c", 1)))
    pool.forget("c")
    assert "c" not in pool and len(pool) == 1
    assert pool.release("j") == []  # into nothing
    with pytest.raises(KeyError):
        pool.try_acquire_all("k", refs(("c", 1)))
    pool.set_policy("c", wif(1), T0)
    assert pool.try_acquire_all("k", refs(("c", 1)))  # a new budget starts empty of holders
    pool.clear()
    assert len(pool) == 0 and not pool.holds("k")


def test_the_injected_clock_is_used_when_no_time_is_given():
    now = [T0]
    pool = TokenPool(clock=lambda: now[0])
    pool.set_policy("r", rate(1, 1_000))
    assert pool.try_acquire_all("a", refs(("r", 1)))
    assert not pool.try_acquire_all("b", refs(("r", 1)))
    assert pool.next_available_at(refs(("r", 1))) == T0 + 1_000
    now[0] += 1_000
    assert pool.try_acquire_all("b", refs(("r", 1)))


# ---- properties ----

PROPERTY = settings(max_examples=150, deadline=None, derandomize=True)

wif_ops = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.integers(0, 7), st.integers(1, 4)),
        st.tuples(st.just("release"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("policy"), st.integers(1, 8), st.just(0)),
    ),
    max_size=60,
)


@PROPERTY
@given(start=st.integers(1, 8), ops=wif_ops)
def test_property_while_in_flight_never_exceeds_its_allocation(start, ops):
    pool = pool_with(c=wif(start))
    allocation = start
    holding: dict[str, int] = {}
    for op, arg, cost in ops:
        held_before = sum(holding.values())
        if op == "acquire":
            job = f"j{arg}"
            if job in holding:
                continue
            fits = held_before + cost <= allocation
            assert pool.try_acquire_all(job, refs(("c", cost)), T0) is fits
            if fits:
                holding[job] = cost
        elif op == "release":
            holding.pop(f"j{arg}", None)
            pool.release(f"j{arg}")
        else:
            allocation = arg
            pool.set_policy("c", wif(arg), T0)
        held = sum(holding.values())
        assert pool.in_flight("c") == held
        # Within the allocation, or (over-committed after a cut) never growing.
        assert held <= allocation or held <= held_before


rate_ops = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), st.integers(0, 3_000)),
        st.tuples(st.just("acquire"), st.integers(1, 5)),
        st.tuples(
            st.just("policy"),
            st.tuples(st.integers(1, 9), st.sampled_from([700, 1_000, 2_500]), st.integers(0, 9)),
        ),
    ),
    max_size=60,
)


@PROPERTY
@given(
    first=st.tuples(st.integers(1, 9), st.sampled_from([700, 1_000]), st.integers(0, 9)),
    ops=rate_ops,
)
def test_property_time_based_never_beats_burst_plus_rate(first, ops):
    def policy(spec):
        allocation, duration, burst = spec
        return rate(allocation, duration, burst or None)  # 0: no burst

    current = policy(first)
    pool = pool_with(r=current)
    now = T0
    # A model in fractional tokens (the pool counts integer units): the rules
    # of the module doc, stated once more in another representation.
    tokens = Fraction(current.capacity)
    # Windows start at creation and whenever the bucket is full: each holds the
    # bound (burst at its start plus accrual since) and what was dispatched.
    windows: list[list] = [[Fraction(current.capacity), 0]]
    for op, arg in ops:
        if op == "wait":
            accrual = Fraction(current.allocation * arg, current.duration_ms)
            for window in windows:
                window[0] += accrual
            tokens = min(Fraction(current.capacity), tokens + accrual)
            now += arg
        elif op == "acquire":
            ok = pool.try_acquire_all("j", refs(("r", arg)), now)
            assert ok is (tokens >= arg)
            due = pool.next_available_at(refs(("r", arg)), now)
            if ok:
                tokens -= arg
                for window in windows:
                    window[1] += arg
            elif arg <= current.capacity:
                wait = (arg - tokens) * current.duration_ms / current.allocation
                assert due == now + math.ceil(wait)
            else:
                assert due is None
        else:
            new = policy(arg)
            if new.duration_ms != current.duration_ms:
                tokens = Fraction(math.floor(tokens))
            current = new
            tokens = min(Fraction(current.capacity), tokens)
            pool.set_policy("r", current, now)
        assert pool.available("r", now) == math.floor(tokens)
        for bound, dispatched in windows:
            assert dispatched <= bound
        if tokens == current.capacity:
            windows = windows[-15:] + [[Fraction(current.capacity), 0]]


def _pool_states(draw) -> tuple[TokenPool, int]:
    pool = pool_with(a=rate(3, 1_000), b=rate(5, 7_000, burst=2), c=wif(3), d=wif(6))
    now = T0
    for index in range(draw(st.integers(0, 12))):
        now += draw(st.integers(0, 2_000))
        keys = draw(st.lists(st.sampled_from("abcd"), min_size=1, max_size=4, unique=True))
        bindings = [BudgetRef(k, draw(st.integers(1, 3))) for k in keys]
        pool.try_acquire_all(f"j{index}", bindings, now)
    return pool, now


@PROPERTY
@given(data=st.data())
def test_property_acquire_is_all_or_none(data):
    pool, now = _pool_states(data.draw)
    keys = data.draw(st.lists(st.sampled_from("abcd"), min_size=1, max_size=4, unique=True))
    bindings = [BudgetRef(k, data.draw(st.integers(1, 3))) for k in keys]
    before = {k: pool.available(k, now) for k in "abcd"}
    ok = pool.try_acquire_all("probe", bindings, now)
    after = {k: pool.available(k, now) for k in "abcd"}
    costs = dict(bindings)
    if ok:
        assert all(after[k] == before[k] - costs.get(k, 0) for k in "abcd")
    else:
        assert after == before
        assert not pool.holds("probe")
        assert any(before[k] < cost for k, cost in costs.items())
    assert ok is all(before[k] >= cost for k, cost in costs.items())


@PROPERTY
@given(data=st.data())
def test_property_next_available_at_is_exact(data):
    pool, now = _pool_states(data.draw)
    keys = data.draw(st.lists(st.sampled_from("abcd"), min_size=1, max_size=4, unique=True))
    bindings = [BudgetRef(k, data.draw(st.integers(1, 3))) for k in keys]
    due = pool.next_available_at(bindings, now)
    if due is None:
        late = copy.deepcopy(pool)
        assert not late.try_acquire_all("probe", bindings, now + 10**9)
        return
    assert due >= now
    on_time = copy.deepcopy(pool)
    assert on_time.try_acquire_all("probe", bindings, due)
    if due > now:
        early = copy.deepcopy(pool)
        assert not early.try_acquire_all("probe", bindings, due - 1)
