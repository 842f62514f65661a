"""Budgets (pro, 0.7): the book of policies, and what draws on each budget.

A budget is a named token pool that throttles dispatch. This module keeps:
- the policies, durable (`budget:` keys in the store) and in memory;
- how many unfinished jobs (scheduled, ready or in flight) draw on each
  budget and at what costs, so that deleting a budget or shrinking it below a
  committed cost is refused without a scan (409 / 422). Cron templates that
  draw on a budget are counted apart (the engine supplies `cron_draws`),
  because the remedy differs: a job drains by itself, an entry must be edited.
Token state and parking are zizq.queue.budget_gate; this module tells the gate
about every policy change.

Enqueues bind jobs through a `Claim`: validated before anything is written
(unknown budget without `create_with` -> 422, a cost the budget can never pay
-> 422), counted as pending until the write has landed or failed, so a DELETE
racing an enqueue can never leave a job bound to a missing budget. A budget
created by `create_with` is installed at once (a concurrent enqueue sees it)
and written in the same batch as the job; every enqueue that draws on it
before that write lands writes it too, so it is on disk whichever lands first.

Policy changes run on the event loop without an await between the check and
the write, after every write handed to the commit thread has landed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from zizq.license import Feature, LicenseState
from zizq.queue.budget_gate import BudgetGate
from zizq.queue.budget_policy import (
    TIME_BASED,
    WHILE_IN_FLIGHT,
    Binding,
    Policy,
    patch_policy,
)
from zizq.queue.errors import AlreadyExists, NotFound, Unprocessable
from zizq.queue.names import shown_key
from zizq.queue.records import IN_FLIGHT, READY, SCHEDULED, now_ms
from zizq.queue.spec import JobSpec
from zizq.store import Store, WriteBatch

DEFAULT_MAX_BUDGETS = 8192
UNFINISHED = frozenset((SCHEDULED, READY, IN_FLIGHT))


@dataclass(slots=True)
class Budget:
    key: str
    policy: Policy
    created_at: int
    updated_at: int
    durable: bool = True  # False until the enqueue that created it (create_with) has landed

    def view(self) -> dict:
        return {
            "key": self.key,
            **self.policy.to_wire(),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    def record(self) -> dict:
        return {
            **self.policy.to_wire(),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def policy_of(record: dict) -> Policy:
    """A stored policy record back into a Policy (written by Budget.record)."""
    strategy = record["strategy"]
    if strategy["type"] == WHILE_IN_FLIGHT:
        return Policy(record["allocation"], WHILE_IN_FLIGHT)
    return Policy(record["allocation"], TIME_BASED, strategy["duration_ms"], strategy.get("burst"))


def refs_of(record: dict) -> list[tuple[str, int]]:
    return [(b["key"], b["cost"]) for b in record.get("budgets", ())]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


class Claim:
    """The budgets one enqueue (or one change of a job's bindings) draws on, until it lands."""

    __slots__ = ("_book", "draws", "created", "_open")

    def __init__(
        self, book: BudgetBook, draws: list[tuple[str, int]], created: list[Budget]
    ) -> None:
        self._book = book
        self.draws = draws  # (key, cost) of every binding, counted as pending until done
        self.created = created  # budgets not yet on disk this write must carry
        self._open = True

    def write(self, batch: WriteBatch) -> None:
        for budget in self.created:
            batch.put_budget(budget.key, budget.record())

    def succeeded(self) -> None:
        for budget in self.created:
            budget.durable = True

    def done(self) -> None:
        """The write landed or failed (idempotent): the keys are no longer pending."""
        if self._open:
            self._open = False
            self._book._settle(self)


class BudgetBook:
    def __init__(
        self,
        store: Store,
        gate: BudgetGate,
        license: LicenseState,
        max_budgets: int = DEFAULT_MAX_BUDGETS,
    ) -> None:
        self.store = store
        self.gate = gate
        self.license = license
        self.max_budgets = max_budgets
        self.budgets: dict[str, Budget] = {}
        self._costs: dict[str, Counter[int]] = {}  # key -> cost -> unfinished jobs drawing it
        # key -> cost -> bindings of claims not yet settled (enqueues being written)
        self._pending: dict[str, Counter[int]] = {}
        # key -> costs that cron templates draw on it (set by the engine)
        self.cron_draws: Callable[[str], list[int]] = lambda key: []

    # -- start-up ---------------------------------------------------------------

    def load(self) -> None:
        """Policies from the store (jobs are counted by `bound` during recovery)."""
        for key, record in self.store.iter_budgets():
            budget = Budget(key, policy_of(record), record["created_at"], record["updated_at"])
            self.budgets[key] = budget
            self.gate.policy_changed(key, budget.policy)

    # -- what draws on a budget ----------------------------------------------------

    def bound(self, records: Iterable[dict]) -> None:
        """These jobs now exist unfinished with their bindings (landed enqueues, recovery)."""
        for record in records:
            if "budgets" in record:
                _add(self._costs, refs_of(record), 1)

    def unbound(self, records: Iterable[dict]) -> None:
        """These jobs finished or were deleted: they no longer draw on their budgets."""
        for record in records:
            if "budgets" in record:
                _add(self._costs, refs_of(record), -1)

    def cost_rows(self) -> list[tuple[str, int, int]]:
        """(budget, cost, unfinished jobs) of every committed binding: the start-up index's."""
        return [(key, cost, n) for key, table in self._costs.items() for cost, n in table.items()]

    def add_cost_rows(self, rows: Iterable[tuple[str, int, int]]) -> None:
        """Counts saved by cost_rows, at start-up."""
        for key, cost, count in rows:
            _add(self._costs, [(key, cost)], count)

    def draws_over(self, key: str, capacity: int) -> tuple[int, int]:
        """(bindings costing more than `capacity`, the largest cost) among unfinished jobs
        and enqueues being written; capacity -1 counts every binding."""
        count = top = 0
        for table in (self._costs, self._pending):
            for cost, n in table.get(key, {}).items():
                if cost > capacity:
                    count += n
                top = max(top, cost)
        return count, top

    def reset(self, batch: WriteBatch) -> None:
        """POST /reset: every budget goes (the caller writes the batch, then calls cleared)."""
        batch.delete_every_budget()

    def cleared(self) -> None:
        self.budgets.clear()
        self._costs.clear()
        self.gate.clear()

    def jobs_cleared(self) -> None:
        """Every job was deleted (DELETE /jobs without a filter): budgets stay, full."""
        self._costs.clear()
        self.gate.clear()
        for key, budget in self.budgets.items():
            self.gate.policy_changed(key, budget.policy)

    # -- enqueue ------------------------------------------------------------------

    def claim(self, specs: list[JobSpec], bulk: bool = False) -> Claim | None:
        """Validate the bindings of jobs about to be created; None if none has any."""
        if not any(spec.budgets for spec in specs):
            return None
        self.license.require(Feature.BUDGETS)
        return self._claim(
            (f"jobs[{index}]." if bulk else "", spec.budgets or [])
            for index, spec in enumerate(specs)
        )

    def claim_bindings(self, bindings_per_job: list[list[Binding]]) -> Claim:
        """Validate new bindings of existing jobs (/jobs/{id}/budgets, /jobs/budgets)."""
        return self._claim([("", bindings) for bindings in bindings_per_job])

    def _claim(self, groups: Iterable[tuple[str, list[Binding]]]) -> Claim:
        now = now_ms()
        new: dict[str, Budget] = {}
        draws: list[tuple[str, int]] = []
        for where, bindings in groups:
            for index, binding in enumerate(bindings):
                label = f"{where}budgets[{index}]"
                budget = self.budgets.get(binding.key) or new.get(binding.key)
                if budget is None:
                    if binding.create_with is None:
                        raise Unprocessable(
                            f"{label}.key: budget '{shown_key(binding.key)}' does not exist; "
                            "create it first or give create_with"
                        )
                    self._check_room(len(new) + 1, f"{label}.create_with")
                    budget = Budget(binding.key, binding.create_with, now, now, durable=False)
                    new[binding.key] = budget
                if not budget.policy.allows(binding.cost):
                    raise Unprocessable(
                        f"{label}.cost: {binding.cost} is more than budget "
                        f"'{shown_key(binding.key)}' can ever pay "
                        f"({_capacity_words(budget.policy)})"
                    )
                draws.append((binding.key, binding.cost))
        for budget in new.values():
            self.budgets[budget.key] = budget
            self.gate.policy_changed(budget.key, budget.policy)
        _add(self._pending, draws, 1)
        keys = {key for key, _ in draws}
        created = [self.budgets[key] for key in keys if not self.budgets[key].durable]
        return Claim(self, draws, created)

    def _settle(self, claim: Claim) -> None:
        _add(self._pending, claim.draws, -1)
        for budget in claim.created:
            # Its write failed and nothing else drew on it: it never existed.
            if (
                not budget.durable
                and self.budgets.get(budget.key) is budget
                and budget.key not in self._pending
                and budget.key not in self._costs
                and not self.cron_draws(budget.key)
            ):
                del self.budgets[budget.key]
                self.gate.budget_deleted(budget.key)

    def _check_room(self, adding: int, label: str) -> None:
        if len(self.budgets) + adding > self.max_budgets:
            raise Unprocessable(
                f"{label}: the server holds at most {self.max_budgets} budgets "
                "(--max-budgets); delete unused ones or raise the limit"
            )

    # -- cron templates ---------------------------------------------------------------

    def ensure_for_templates(self, specs: list[tuple[str, JobSpec]]) -> None:
        """Budgets cron templates draw on must exist when the entry is saved.

        Missing ones are created from their `create_with` and written at once
        (so an entry can never be accepted and then be unfireable because the
        server reached --max-budgets); a missing one without it, or a cost the
        budget can never pay, is a 422, as on an enqueue.
        """
        groups = [(where, spec.budgets) for where, spec in specs if spec.budgets]
        if not groups:
            return
        self.license.require(Feature.BUDGETS)
        claim = self._claim(groups)
        try:
            if claim.created:
                batch = self.store.batch()
                claim.write(batch)
                self.store.write(batch)
                claim.succeeded()
        finally:
            claim.done()

    # -- the /budgets routes -------------------------------------------------------------

    def list(self) -> list[dict]:
        return [self.budgets[key].view() for key in sorted(self.budgets)]

    def get(self, key: str) -> Budget:
        budget = self.budgets.get(key)
        if budget is None:
            raise NotFound(f"budget '{shown_key(key)}' not found")
        return budget

    def create(self, key: str, policy: Policy) -> Budget:
        """POST: a new budget; 409 if the key is taken."""
        if key in self.budgets:
            raise AlreadyExists(f"budget '{shown_key(key)}' already exists")
        self._check_room(1, "key")
        now = now_ms()
        return self._save(Budget(key, policy, now, now))

    def replace(self, key: str, policy: Policy) -> tuple[Budget, bool]:
        """PUT: create, or replace the policy whole (created_at kept). True if created."""
        current = self.budgets.get(key)
        if current is None:
            self._check_room(1, "key")
            now = now_ms()
            return self._save(Budget(key, policy, now, now)), True
        self._check_fits(key, policy)
        return self._save(Budget(key, policy, current.created_at, now_ms())), False

    def patch(self, key: str, patch: object) -> Budget:
        """PATCH: merge into the stored policy (zizq.queue.budget_policy.patch_policy)."""
        current = self.get(key)
        policy = patch_policy(current.policy, patch)
        self._check_fits(key, policy)
        return self._save(Budget(key, policy, current.created_at, now_ms()))

    def delete(self, key: str) -> None:
        """DELETE: refused (409) while unfinished jobs or cron templates draw on it."""
        self.get(key)
        jobs, _ = self.draws_over(key, -1)
        entries = len(self.cron_draws(key))
        if jobs or entries:
            raise AlreadyExists(_still_drawn(key, jobs, entries))
        batch = self.store.batch()
        batch.delete_budget(key)
        self.store.write(batch)
        del self.budgets[key]
        self.gate.budget_deleted(key)

    def _check_fits(self, key: str, policy: Policy) -> None:
        """A policy may not leave a committed cost unpayable (422, jobs and cron apart)."""
        capacity = policy.capacity
        jobs, top = self.draws_over(key, capacity)
        cron_costs = [cost for cost in self.cron_draws(key) if cost > capacity]
        if not jobs and not cron_costs:
            return
        parts = []
        if jobs:
            parts.append(
                f"{_plural(jobs, 'unfinished job')} draw up to {top} from it "
                "(raise the allocation, delete them, or wait for them to drain)"
            )
        if cron_costs:
            parts.append(
                f"{_plural(len(cron_costs), 'cron entry')} draw up to {max(cron_costs)} from it "
                "(edit their job templates)"
            )
        raise Unprocessable(
            f"budget '{shown_key(key)}' cannot allocate {capacity}: " + "; ".join(parts)
        )

    def _save(self, budget: Budget) -> Budget:
        batch = self.store.batch()
        batch.put_budget(budget.key, budget.record())
        self.store.write(batch)  # raises before anything in memory changed
        self.budgets[budget.key] = budget
        self.gate.policy_changed(budget.key, budget.policy)
        return budget


def _add(table: dict[str, Counter[int]], draws: Iterable[tuple[str, int]], step: int) -> None:
    """Count (key, cost) draws in or out of a table of key -> cost -> count."""
    for key, cost in draws:
        counter = table.get(key)
        if counter is None:
            counter = table[key] = Counter()
        left = counter[cost] + step
        if left > 0:
            counter[cost] = left
        else:
            del counter[cost]
            if not counter:
                del table[key]


def _capacity_words(policy: Policy) -> str:
    if policy.burst is not None:
        return f"its burst is {policy.burst}"
    return f"its allocation is {policy.allocation}"


def _still_drawn(key: str, jobs: int, entries: int) -> str:
    parts = []
    if jobs:
        parts.append(
            f"is referenced by {_plural(jobs, 'unfinished job')}; delete them or wait "
            "for them to finish"
        )
    if entries:
        parts.append(
            f"is referenced by the job template of {_plural(entries, 'cron entry')}; "
            "edit or delete those entries"
        )
    return f"budget '{shown_key(key)}' " + ", and ".join(parts) + " before deleting it"
