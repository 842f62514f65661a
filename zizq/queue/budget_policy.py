"""Budget policies and job bindings: validation of client input (pro, 0.7).

A budget is a named token pool that throttles dispatch (the token arithmetic is
zizq.queue.budget_tokens). This module turns request bodies into typed values:

- `parse_policy`: a whole policy, for POST/PUT /budgets/{key} and `create_with`;
- `patch_policy`: a JSON merge patch over a stored policy (PATCH /budgets/{key}):
  an absent field is kept, a value replaces, `null` resets to the default;
- `parse_bindings`: a job's `budgets: [{key, cost?, create_with?}]`.

Every error is an InvalidInput naming the field, with the caller's `where`
prefix (`jobs[3].`), as zizq.queue.spec does. Fields a body does not define are
ignored, at every level, as spec.py ignores them.

Limits (ours, documented in the README):
- budget keys follow the queue-name rules (zizq.queue.spec.check_name):
  1..1024 UTF-8 bytes, none of the reserved characters `, * ? [ ] { } \\`
  (the reference forbids them too: `budgets.key=` filters are comma lists),
  and no leading or trailing whitespace (query strings strip it, so such a
  key could never be filtered on);
- `allocation`, `burst` and `cost`: integers 1..2**31-1 (int32, as documented);
  `duration_ms`: 1..2**63-1 (int64; zero would be an infinite rate);
- a job binds at most MAX_BINDINGS budgets, each key once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from zizq.queue.errors import InvalidInput
from zizq.queue.names import MAX_I32, MAX_I64, check_name, shown_key

WHILE_IN_FLIGHT = "while_in_flight"
TIME_BASED = "time_based"
STRATEGIES = (WHILE_IN_FLIGHT, TIME_BASED)
MAX_ALLOCATION = MAX_I32
MAX_COST = MAX_I32
MAX_DURATION_MS = MAX_I64
DEFAULT_COST = 1
# Sixteen budgets per job is far beyond any real throttle stack (a concurrency
# cap, a rate limit or two), and bounds the work each dispatch attempt does.
MAX_BINDINGS = 16

_TIME_BASED_ONLY = ("duration_ms", "burst")


@dataclass(frozen=True, slots=True)
class Policy:
    """What a budget does. `duration_ms` and `burst` are None for while_in_flight."""

    allocation: int
    strategy: str  # WHILE_IN_FLIGHT or TIME_BASED
    duration_ms: int | None = None
    burst: int | None = None  # time_based only; None: the allocation

    @property
    def capacity(self) -> int:
        """The most tokens the pool ever holds: the largest cost a job bound to it may have."""
        if self.burst is not None:
            return self.burst
        return self.allocation

    def allows(self, cost: int) -> bool:
        """Whether a job costing `cost` could ever dispatch under this policy."""
        return cost <= self.capacity

    def to_wire(self) -> dict:
        """The policy's fields as responses carry them (without key and timestamps)."""
        strategy: dict[str, Any] = {"type": self.strategy}
        if self.duration_ms is not None:
            strategy["duration_ms"] = self.duration_ms
        if self.burst is not None:
            strategy["burst"] = self.burst
        return {"allocation": self.allocation, "strategy": strategy}


class BudgetRef(NamedTuple):
    """A job's stored binding: which budget, and how many tokens dispatch takes from it."""

    key: str
    cost: int


class Binding(NamedTuple):
    """A binding as an enqueue sends it; `create_with` is used once, never stored per job."""

    key: str
    cost: int
    create_with: Policy | None

    @property
    def ref(self) -> BudgetRef:
        return BudgetRef(self.key, self.cost)


def parse_key(value: Any, label: str = "key", where: str = "") -> str:
    """A budget key from a path, a body or a query string."""
    return check_name(value, label, where)


def _int_field(obj: dict, field: str, where: str, high: int) -> int | None:
    value = obj.get(field)
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= high:
        raise InvalidInput(f"{where}{field}: must be an integer between 1 and {high}")
    return value


def _object_label(where: str) -> str:
    return where[:-1] if where else "body"


def parse_policy(obj: Any, where: str = "") -> Policy:
    """A whole policy: POST and PUT bodies, and a binding's `create_with`.

    `where` prefixes every field name (`budgets[0].create_with.`), so it is
    empty or ends with a dot.
    """
    if not isinstance(obj, dict):
        raise InvalidInput(
            f"{_object_label(where)}: must be an object with allocation and strategy"
        )
    allocation = _int_field(obj, "allocation", where, MAX_ALLOCATION)
    if allocation is None:
        raise InvalidInput(f"{where}allocation: is required")
    strategy = obj.get("strategy")
    if strategy is None:
        raise InvalidInput(f"{where}strategy: is required")
    return _strategy(allocation, strategy, f"{where}strategy.")


def _strategy(allocation: int, strategy: Any, inner: str) -> Policy:
    if not isinstance(strategy, dict):
        raise InvalidInput(f"{inner[:-1]}: must be an object with a type")
    kind = strategy.get("type")
    if kind is None:
        raise InvalidInput(f"{inner}type: is required")
    if kind not in STRATEGIES:
        raise InvalidInput(f"{inner}type: must be one of {', '.join(STRATEGIES)}")
    if kind == WHILE_IN_FLIGHT:
        for field in _TIME_BASED_ONLY:
            # null is "absent" here, as everywhere in a body.
            if strategy.get(field) is not None:
                raise InvalidInput(f"{inner}{field}: is not valid for {WHILE_IN_FLIGHT}")
        return Policy(allocation, WHILE_IN_FLIGHT)
    duration_ms = _int_field(strategy, "duration_ms", inner, MAX_DURATION_MS)
    if duration_ms is None:
        raise InvalidInput(f"{inner}duration_ms: is required for {TIME_BASED}")
    burst = _int_field(strategy, "burst", inner, MAX_ALLOCATION)
    return Policy(allocation, TIME_BASED, duration_ms, burst)


def patch_policy(current: Policy, patch: Any) -> Policy:
    """Apply a JSON merge patch (PATCH /budgets/{key}) to a stored policy.

    Absent fields are kept; `null` resets to the default, and only `burst`
    has one (the allocation): a null `allocation`, `strategy`, `strategy.type`
    or time_based `duration_ms` is a 400, since those have no default.

    Changing `strategy.type` starts the strategy's fields afresh: moving to
    while_in_flight drops `duration_ms` and `burst`, and moving to time_based
    needs `duration_ms` in the same patch.
    """
    if not isinstance(patch, dict):
        raise InvalidInput("body: must be an object")
    allocation = current.allocation
    if "allocation" in patch:
        allocation = _int_field(patch, "allocation", "", MAX_ALLOCATION)
        if allocation is None:
            raise InvalidInput("allocation: cannot be null (it has no default)")
    if "strategy" not in patch:
        if current.strategy == TIME_BASED:
            return Policy(allocation, TIME_BASED, current.duration_ms, current.burst)
        return Policy(allocation, WHILE_IN_FLIGHT)
    strategy = patch["strategy"]
    if strategy is None:
        raise InvalidInput("strategy: cannot be null (it has no default)")
    if not isinstance(strategy, dict):
        raise InvalidInput("strategy: must be an object")
    if "type" in strategy and strategy["type"] is None:
        raise InvalidInput("strategy.type: cannot be null (it has no default)")
    kind = strategy.get("type", current.strategy)
    merged: dict[str, Any] = {"type": kind}
    if kind == current.strategy == TIME_BASED:
        merged["duration_ms"] = current.duration_ms
        merged["burst"] = current.burst
    for field in _TIME_BASED_ONLY:
        if field in strategy:
            if strategy[field] is None and field == "duration_ms" and kind == TIME_BASED:
                raise InvalidInput("strategy.duration_ms: cannot be null for time_based")
            merged[field] = strategy[field]
    return _strategy(allocation, merged, "strategy.")


def parse_bindings(value: Any, where: str = "") -> list[Binding]:
    """A job's `budgets` array (None: unbudgeted). `where` names the job, e.g. `jobs[3].`."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInput(f"{where}budgets: must be an array of objects with a key")
    if len(value) > MAX_BINDINGS:
        raise InvalidInput(
            f"{where}budgets: a job binds at most {MAX_BINDINGS} budgets (got {len(value)})"
        )
    bindings: list[Binding] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(value):
        inner = f"{where}budgets[{index}]."
        if not isinstance(item, dict):
            raise InvalidInput(f"{inner[:-1]}: must be an object with a key")
        raw_key = item.get("key")
        if raw_key is None:
            raise InvalidInput(f"{inner}key: is required")
        key = parse_key(raw_key, "key", inner)
        first = seen.get(key)
        if first is not None:
            raise InvalidInput(
                f"{inner}key: '{shown_key(key)}' is already bound by {where}budgets[{first}]"
            )
        seen[key] = index
        cost = _int_field(item, "cost", inner, MAX_COST)
        create_with = item.get("create_with")
        policy = None if create_with is None else parse_policy(create_with, f"{inner}create_with.")
        bindings.append(Binding(key, DEFAULT_COST if cost is None else cost, policy))
    return bindings


def refs_to_wire(refs: list[BudgetRef]) -> list[dict]:
    """A job's bindings as every read of the job shows them."""
    return [{"key": key, "cost": cost} for key, cost in refs]
