"""Changing the budgets jobs draw on (pro, 0.7): one job (/jobs/{id}/budgets[/{key}])
or every job a filter matches (/jobs/budgets[/{key}]?<filters>).

A mixin of the Engine. Only queued jobs (scheduled or ready) may change: an
in-flight job holds tokens against the bindings it was dispatched under, so
moving them would invent a slot on the new budget or strand one on the old
(422 for one job; listed as `blocked` by a filtered change, to be retried).
A parked job is looked at afresh against its new bindings at once. A
filtered change skips finished jobs and jobs it would not change, and writes
a slice of matches at a time (each slice atomic), as PATCH /jobs does.

Each change is one synchronous write on the loop (as a patch is), preceded by
the same checks as an enqueue (zizq.queue.budgets.BudgetBook.claim_bindings):
a budget that does not exist needs `create_with`, and a cost must fit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from zizq.queue.budget_policy import MAX_BINDINGS, Binding
from zizq.queue.budgets import BudgetBook
from zizq.queue.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from zizq.queue.ids import plausible_id
from zizq.queue.names import shown_key
from zizq.queue.query import JobFilter
from zizq.queue.records import IN_FLIGHT, TERMINAL, is_purged, now_ms, public_view
from zizq.store import Store, WriteBatch, index_key_of

Change = Callable[[list[Binding]], list[Binding]]  # current bindings -> new ones
# The same for a filtered change: None leaves the job as it is (nothing to change).
BulkChange = Callable[[list[Binding]], list[Binding] | None]


class JobBudgets:
    # What the Engine provides (declared, not imported: the engine imports this module).
    store: Store
    budgets: BudgetBook
    _writes_open: Callable[[], Awaitable[None]]
    _current: Callable[[str], Awaitable[dict | None]]
    _write_visible: Callable[[WriteBatch], None]
    _patches_landed: Callable[[list[tuple[str, dict]]], None]
    _matching_slices: Callable[[JobFilter], AsyncIterator[list[tuple[str, dict]]]]
    maintenance: object | None

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
        ((_, changed),) = self._write_bindings([(job_id, record, bindings)])
        return public_view(job_id, changed)

    # -- every job a filter matches ---------------------------------------------------

    async def bind_jobs_budget(self, job_filter: JobFilter, binding: Binding, replace: bool):
        """POST (jobs already bound are skipped) or PUT (bind, or replace the binding)."""
        self._check_binding(binding)

        def change(current: list[Binding]) -> list[Binding] | None:
            kept = [b for b in current if b.key != binding.key]
            if len(kept) != len(current) and (
                not replace or any(b.key == binding.key and b.cost == binding.cost for b in current)
            ):
                return None  # bound already (POST), or bound at this cost already (PUT)
            return [*kept, binding]

        return await self._rebind_matching(job_filter, change)

    async def set_jobs_budget_cost(self, job_filter: JobFilter, key: str, cost: int):
        """PATCH: the cost of an existing binding; jobs not drawing on `key` are skipped."""

        def change(current: list[Binding]) -> list[Binding] | None:
            if all(b.key != key or b.cost == cost for b in current):
                return None
            return [Binding(b.key, cost, None) if b.key == key else b for b in current]

        self._check_binding(Binding(key, cost, None), must_exist=False)
        return await self._rebind_matching(job_filter, change)

    async def unbind_jobs_budget(self, job_filter: JobFilter, key: str):
        """DELETE of one binding; jobs not drawing on `key` are skipped."""

        def change(current: list[Binding]) -> list[Binding] | None:
            kept = [b for b in current if b.key != key]
            return None if len(kept) == len(current) else kept

        return await self._rebind_matching(job_filter, change)

    async def clear_jobs_budgets(self, job_filter: JobFilter):
        """DELETE /jobs/budgets: every binding; jobs without any are skipped."""
        return await self._rebind_matching(job_filter, lambda current: [] if current else None)

    def _check_binding(self, binding: Binding, must_exist: bool = True) -> None:
        """422 before anything is written for a binding no job could take (a budget that
        does not exist and no create_with, a cost it can never pay)."""
        if not must_exist and binding.key not in self.budgets.budgets:
            return  # a PATCH of a cost on a budget nobody has: nothing will match
        self.budgets.claim_bindings([[binding]]).done()

    async def _rebind_matching(self, job_filter: JobFilter, change: BulkChange) -> dict:
        changed_total = 0
        blocked: list[str] = []
        async for found in self._matching_slices(job_filter):
            updates: list[tuple[str, dict, list[Binding]]] = []
            for job_id, record in found:
                status = record["status"]
                if status in TERMINAL:
                    continue  # finished jobs draw on nothing any more
                current = [Binding(b["key"], b["cost"], None) for b in record.get("budgets", ())]
                bindings = change(current)
                if bindings is None:
                    continue
                if status == IN_FLIGHT:
                    blocked.append(job_id)
                    continue
                if len(bindings) > MAX_BINDINGS:
                    raise InvalidInput(
                        f"job '{job_id}' would bind more than {MAX_BINDINGS} budgets"
                    )
                updates.append((job_id, record, bindings))
            if updates:
                self._write_bindings(updates)
                changed_total += len(updates)
        if changed_total and self.maintenance is not None:
            self.maintenance.note_patched(changed_total)  # type: ignore[attr-defined]
        return {"changed": changed_total, "blocked": blocked}

    def _write_bindings(
        self, updates: list[tuple[str, dict, list[Binding]]]
    ) -> list[tuple[str, dict]]:
        """One atomic write of new bindings for queued jobs (one, or a slice of matches),
        checked as an enqueue's are; returns the new records. No await inside: the jobs
        are changed from the state they were checked against."""
        claim = self.budgets.claim_bindings([bindings for _, _, bindings in updates])
        try:
            batch = self.store.batch()
            claim.write(batch)
            landed = []
            for job_id, record, bindings in updates:
                changed = dict(record)
                if bindings:
                    changed["budgets"] = [{"key": b.key, "cost": b.cost} for b in bindings]
                else:
                    changed.pop("budgets", None)
                batch.put_job(job_id, changed, index_key_of(record))
                landed.append((job_id, changed))
            self._write_visible(batch)  # raises before anything in memory changed
            claim.succeeded()
            self.budgets.unbound([record for _, record, _ in updates])
            self.budgets.bound([changed for _, changed in landed])
            # Back in the ready index (or the scheduler): a parked job is judged afresh.
            self._patches_landed(landed)
        finally:
            claim.done()
        return landed


def _bound(job_id: str, current: list[Binding], key: str) -> None:
    if all(b.key != key for b in current):
        raise NotFound(f"job '{job_id}' does not draw on budget '{shown_key(key)}'")
