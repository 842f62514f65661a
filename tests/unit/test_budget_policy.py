"""Budget policies and bindings: what a body may say, and the messages when it may not."""

from __future__ import annotations

import pytest

from zizq.queue.budget_policy import (
    DEFAULT_COST,
    MAX_BINDINGS,
    Binding,
    BudgetRef,
    Policy,
    parse_bindings,
    parse_key,
    parse_policy,
    patch_policy,
    refs_to_wire,
)
from zizq.queue.errors import InvalidInput

MAX_I32 = 2**31 - 1
MAX_I64 = 2**63 - 1
WIF = {"allocation": 5, "strategy": {"type": "while_in_flight"}}
HOURLY = {"allocation": 10_000, "strategy": {"type": "time_based", "duration_ms": 3_600_000}}


def rejects(message: str, call, *args) -> None:
    with pytest.raises(InvalidInput) as caught:
        call(*args)
    assert str(caught.value) == message


# ---- whole policies (POST, PUT, create_with) ----


def test_while_in_flight_policy():
    policy = parse_policy(WIF)
    assert policy == Policy(5, "while_in_flight")
    assert policy.capacity == 5
    assert policy.to_wire() == WIF


def test_time_based_policy_with_and_without_burst():
    policy = parse_policy(HOURLY)
    assert policy == Policy(10_000, "time_based", 3_600_000, None)
    assert policy.capacity == 10_000
    assert policy.to_wire() == HOURLY
    burst = {**HOURLY, "strategy": {**HOURLY["strategy"], "burst": 500}}
    policy = parse_policy(burst)
    assert policy.capacity == 500  # a cost must fit the burst, not the allocation
    assert policy.allows(500) and not policy.allows(501)
    assert policy.to_wire() == burst
    above = parse_policy({**HOURLY, "strategy": {**HOURLY["strategy"], "burst": 20_000}})
    assert above.capacity == 20_000 and above.allows(20_000)


def test_bounds_are_inclusive():
    top = {
        "allocation": MAX_I32,
        "strategy": {"type": "time_based", "duration_ms": MAX_I64, "burst": MAX_I32},
    }
    assert parse_policy(top).to_wire() == top
    one = {"allocation": 1, "strategy": {"type": "time_based", "duration_ms": 1, "burst": 1}}
    assert parse_policy(one).to_wire() == one


def test_unknown_fields_and_null_optionals_are_ignored():
    body = {"allocation": 3, "extra": 1, "strategy": {"type": "while_in_flight", "x": [1]}}
    assert parse_policy(body) == Policy(3, "while_in_flight")
    body = {"allocation": 3, "strategy": {"type": "while_in_flight", "duration_ms": None}}
    assert parse_policy(body) == Policy(3, "while_in_flight")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "body: must be an object with allocation and strategy"),
        ({"strategy": {"type": "while_in_flight"}}, "allocation: is required"),
        ({**WIF, "allocation": 0}, f"allocation: must be an integer between 1 and {MAX_I32}"),
        (
            {**WIF, "allocation": MAX_I32 + 1},
            f"allocation: must be an integer between 1 and {MAX_I32}",
        ),
        ({**WIF, "allocation": 2.0}, f"allocation: must be an integer between 1 and {MAX_I32}"),
        ({**WIF, "allocation": True}, f"allocation: must be an integer between 1 and {MAX_I32}"),
        ({**WIF, "allocation": "5"}, f"allocation: must be an integer between 1 and {MAX_I32}"),
        ({"allocation": 5}, "strategy: is required"),
        ({"allocation": 5, "strategy": "time_based"}, "strategy: must be an object with a type"),
        ({"allocation": 5, "strategy": {}}, "strategy.type: is required"),
        (
            {"allocation": 5, "strategy": {"type": "leaky"}},
            "strategy.type: must be one of while_in_flight, time_based",
        ),
        (
            {"allocation": 5, "strategy": {"type": "while_in_flight", "duration_ms": 5}},
            "strategy.duration_ms: is not valid for while_in_flight",
        ),
        (
            {"allocation": 5, "strategy": {"type": "while_in_flight", "burst": 5}},
            "strategy.burst: is not valid for while_in_flight",
        ),
        (
            {"allocation": 5, "strategy": {"type": "time_based"}},
            "strategy.duration_ms: is required for time_based",
        ),
        (
            {"allocation": 5, "strategy": {"type": "time_based", "duration_ms": 0}},
            f"strategy.duration_ms: must be an integer between 1 and {MAX_I64}",
        ),
        (
            {"allocation": 5, "strategy": {"type": "time_based", "duration_ms": 10, "burst": 0}},
            f"strategy.burst: must be an integer between 1 and {MAX_I32}",
        ),
    ],
)
def test_policy_errors_name_the_field(body, message):
    rejects(message, parse_policy, body)


# ---- merge patches ----


def test_patch_keeps_absent_fields_and_replaces_given_ones():
    hourly = parse_policy(HOURLY)
    assert patch_policy(hourly, {}) == hourly
    assert patch_policy(hourly, {"allocation": 7}) == Policy(7, "time_based", 3_600_000)
    # The reference's example: a burst alone, within the strategy object.
    patched = patch_policy(hourly, {"strategy": {"burst": 50_000}})
    assert patched == Policy(10_000, "time_based", 3_600_000, 50_000)
    assert patch_policy(patched, {"strategy": {"duration_ms": 60_000}}) == Policy(
        10_000, "time_based", 60_000, 50_000
    )
    wif = parse_policy(WIF)
    assert patch_policy(wif, {"allocation": 1}) == Policy(1, "while_in_flight")


def test_patch_null_burst_resets_it_to_the_allocation():
    bursty = Policy(100, "time_based", 1000, 5)
    patched = patch_policy(bursty, {"strategy": {"burst": None}})
    assert patched == Policy(100, "time_based", 1000, None)
    assert patched.capacity == 100


def test_patch_changing_the_strategy_starts_its_fields_afresh():
    bursty = Policy(100, "time_based", 1000, 5)
    assert patch_policy(bursty, {"strategy": {"type": "while_in_flight"}}) == Policy(
        100, "while_in_flight"
    )
    wif = parse_policy(WIF)
    to_rate = {"strategy": {"type": "time_based", "duration_ms": 60_000}}
    assert patch_policy(wif, to_rate) == Policy(5, "time_based", 60_000)
    rejects(
        "strategy.duration_ms: is required for time_based",
        patch_policy,
        wif,
        {"strategy": {"type": "time_based"}},
    )


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ([], "body: must be an object"),
        ({"allocation": None}, "allocation: cannot be null (it has no default)"),
        ({"allocation": 0}, f"allocation: must be an integer between 1 and {MAX_I32}"),
        ({"strategy": None}, "strategy: cannot be null (it has no default)"),
        ({"strategy": 3}, "strategy: must be an object"),
        ({"strategy": {"type": None}}, "strategy.type: cannot be null (it has no default)"),
        ({"strategy": {"type": "x"}}, "strategy.type: must be one of while_in_flight, time_based"),
        (
            {"strategy": {"duration_ms": None}},
            "strategy.duration_ms: cannot be null for time_based",
        ),
        (
            {"strategy": {"burst": -1}},
            f"strategy.burst: must be an integer between 1 and {MAX_I32}",
        ),
    ],
)
def test_patch_errors_name_the_field(patch, message):
    rejects(message, patch_policy, Policy(10, "time_based", 1000), patch)


def test_patch_rejects_time_based_fields_on_while_in_flight():
    rejects(
        "strategy.burst: is not valid for while_in_flight",
        patch_policy,
        Policy(10, "while_in_flight"),
        {"strategy": {"burst": 3}},
    )


# ---- keys and bindings ----


def test_keys_follow_the_queue_name_rules():
    assert parse_key("image-service") == "image-service"
    assert parse_key("é" * 512) == "é" * 512  # 1024 bytes
    rejects("key: must be at most 1024 bytes (UTF-8)", parse_key, "é" * 513)
    rejects("key: must not be empty", parse_key, "")
    rejects("key: must be a string", parse_key, 5)
    rejects("key: must not contain the reserved characters * ,", parse_key, "a,b*")
    rejects("key: must not start or end with whitespace", parse_key, " a")


def test_bindings_default_cost_and_create_with():
    bindings = parse_bindings(
        [
            {"key": "image-service"},
            {"key": "notifications", "cost": 5, "create_with": WIF, "other": 1},
        ]
    )
    assert bindings == [
        Binding("image-service", DEFAULT_COST, None),
        Binding("notifications", 5, Policy(5, "while_in_flight")),
    ]
    assert [b.ref for b in bindings] == [
        BudgetRef("image-service", 1),
        BudgetRef("notifications", 5),
    ]
    assert refs_to_wire([b.ref for b in bindings]) == [
        {"key": "image-service", "cost": 1},
        {"key": "notifications", "cost": 5},
    ]
    assert parse_bindings(None) == []
    assert parse_bindings([]) == []
    assert parse_bindings([{"key": "a", "cost": None}]) == [Binding("a", 1, None)]


def test_binding_limits():
    many = [{"key": f"k{i}"} for i in range(MAX_BINDINGS)]
    assert len(parse_bindings(many)) == MAX_BINDINGS
    rejects(
        f"jobs[2].budgets: a job binds at most {MAX_BINDINGS} budgets (got {MAX_BINDINGS + 1})",
        parse_bindings,
        [*many, {"key": "one-more"}],
        "jobs[2].",
    )
    assert parse_bindings([{"key": "a", "cost": MAX_I32}])[0].cost == MAX_I32


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"key": "a"}, "jobs[3].budgets: must be an array of objects with a key"),
        (["a"], "jobs[3].budgets[0]: must be an object with a key"),
        ([{"cost": 2}], "jobs[3].budgets[0].key: is required"),
        (
            [{"key": "a"}, {"key": "a,b"}],
            "jobs[3].budgets[1].key: must not contain the reserved characters ,",
        ),
        (
            [{"key": "a"}, {"key": "a", "cost": 2}],
            "jobs[3].budgets[1].key: 'a' is already bound by jobs[3].budgets[0]",
        ),
        (
            [{"key": "a"}, {"key": "b", "cost": 0}],
            f"jobs[3].budgets[1].cost: must be an integer between 1 and {MAX_I32}",
        ),
        (
            [{"key": "a", "cost": MAX_I32 + 1}],
            f"jobs[3].budgets[0].cost: must be an integer between 1 and {MAX_I32}",
        ),
        (
            [{"key": "a", "cost": 1.5}],
            f"jobs[3].budgets[0].cost: must be an integer between 1 and {MAX_I32}",
        ),
        (
            [{"key": "a", "create_with": 5}],
            "jobs[3].budgets[0].create_with: must be an object with allocation and strategy",
        ),
        (
            [{"key": "a", "create_with": {"strategy": {"type": "while_in_flight"}}}],
            "jobs[3].budgets[0].create_with.allocation: is required",
        ),
        (
            [{"key": "a", "create_with": {"allocation": 1, "strategy": {"type": "time_based"}}}],
            "jobs[3].budgets[0].create_with.strategy.duration_ms: is required for time_based",
        ),
    ],
)
def test_binding_errors_name_the_job_and_the_field(value, message):
    rejects(message, parse_bindings, value, "jobs[3].")


def test_binding_errors_without_a_prefix():
    rejects(
        f"budgets[1].cost: must be an integer between 1 and {MAX_I32}",
        parse_bindings,
        [{"key": "a"}, {"key": "b", "cost": -3}],
    )
