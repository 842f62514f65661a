"""Changing the budgets one job draws on: /jobs/{id}/budgets[/{key}] (pro, 0.7).

A mixin of the Engine. Only queued jobs (scheduled or ready) may change: an
in-flight job holds tokens against the bindings it was dispatched under, so
moving them would invent a slot on the new budget or strand one on the old
(422). A parked job is looked at afresh against its new bindings at once.

Each change is one synchronous write on the loop (as a patch is), preceded by
the same checks as an enqueue (zizq.queue.budgets.BudgetBook.claim_bindings):
a budget that does not exist needs `create_with`, and a cost must fit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from zizq.queue.budget_policy import MAX_BINDINGS, Binding
from zizq.queue.budgets import BudgetBook
from zizq.queue.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from zizq.queue.ids import plausible_id
from zizq.queue.names import shown_key
from zizq.queue.records import IN_FLIGHT, TERMINAL, is_purged, now_ms, public_view
from zizq.store import Store, WriteBatch, index_key_of

Change = Callable[[list[Binding]], list[Binding]]  # current bindings -> new ones


class JobBudgets:
    # What the Engine provides (declared, not imported: the engine imports this module).
    store: Store
    budgets: BudgetBook
    _writes_open: Callable[[], Awaitable[None]]
    _current: Callable[[str], Awaitable[dict | None]]
    _write_visible: Callable[[WriteBatch], None]
    _patches_landed: Callable[[list[tuple[str, dict]]], None]

    async def bind_job_budget(self, job_id: str, binding: Binding, replace: bool) -> dict:
        """POST (409 if already bound) or PUT (bind, or replace the binding) of one budget."""

        def change(current: list[Binding]) -> list[Binding]:
            kept = [b for b in current if b.key != binding.key]
            if len(kept) != len(current) and not replace:
                raise AlreadyExists(
                    f"job '{job_id}' already draws on budget '{shown_key(binding.key)}'"
                )
            return [*kept, binding]

        return await self._rebind(job_id, change)

    async def set_job_budget_cost(self, job_id: str, key: str, cost: int) -> dict:
        """PATCH: what an existing binding draws (404 if the job does not draw on `key`)."""

        def change(current: list[Binding]) -> list[Binding]:
            _bound(job_id, current, key)
            return [Binding(b.key, cost, None) if b.key == key else b for b in current]

        return await self._rebind(job_id, change)

    async def unbind_job_budget(self, job_id: str, key: str) -> dict:
        """DELETE of one binding (404 if the job does not draw on `key`)."""

        def change(current: list[Binding]) -> list[Binding]:
            _bound(job_id, current, key)
            return [b for b in current if b.key != key]

        return await self._rebind(job_id, change)

    async def set_job_budgets(self, job_id: str, bindings: list[Binding]) -> dict:
        """PUT /jobs/{id}/budgets (the whole set) and DELETE (an empty set)."""
        return await self._rebind(job_id, lambda _: bindings)

    async def _rebind(self, job_id: str, change: Change) -> dict:
        await self._writes_open()
        record = await self._current(job_id) if plausible_id(job_id) else None
        if record is None or is_purged(record, now_ms()):
            raise NotFound("job not found")
        status = record["status"]
        if status == IN_FLIGHT:
            raise Conflict(
                "job is in_flight: it holds tokens under the budgets it was dispatched with; "
                "change its budgets once it is queued again"
            )
        if status in TERMINAL:
            raise Conflict(f"job is {status} and can no longer be changed")
        current = [Binding(b["key"], b["cost"], None) for b in record.get("budgets", ())]
        bindings = change(current)
        if len(bindings) > MAX_BINDINGS:
            raise InvalidInput(f"budgets: a job binds at most {MAX_BINDINGS} budgets")
        claim = self.budgets.claim_bindings(bindings)
        try:
            changed = dict(record)
            if bindings:
                changed["budgets"] = [{"key": b.key, "cost": b.cost} for b in bindings]
            else:
                changed.pop("budgets", None)
            batch = self.store.batch()
            claim.write(batch)
            batch.put_job(job_id, changed, index_key_of(record))
            self._write_visible(batch)  # raises before anything in memory changed
            claim.succeeded()
            self.budgets.unbound([record])
            self.budgets.bound([changed])
            # Back in the ready index (or the scheduler): a parked job is judged afresh.
            self._patches_landed([(job_id, changed)])
        finally:
            claim.done()
        return public_view(job_id, changed)


def _bound(job_id: str, current: list[Binding], key: str) -> None:
    if all(b.key != key for b in current):
        raise NotFound(f"job '{job_id}' does not draw on budget '{shown_key(key)}'")
