"""Cron groups and entries (pro): the definitions, their scheduling state, their storage.

Every group lives in memory (loaded at start) and in the store, which is the
durable copy: each change is one write batch, applied in memory only once it
has landed. All changes, and every firing, happen under one asyncio lock, so a
PUT can never be overwritten by a firing that read the entry before it.

Scheduling state (`next_enqueue_at`, `last_enqueue_at`) survives a PUT of an
unchanged entry: "unchanged" means the same expression in the same effective
time zone (the entry's own, else its group's, else the server's). An entry
whose expression or effective zone changes is rescheduled from now.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import tzinfo
from typing import TYPE_CHECKING

from zizq.license import LicenseState
from zizq.logs import log_event
from zizq.queue import cron_expr
from zizq.queue.batching import BatchExpressions
from zizq.queue.budgets import BudgetBook
from zizq.queue.cron_expr import Schedule
from zizq.queue.cron_spec import EntryDef, GroupDef, GroupPatch, leave_alone, parse_template
from zizq.queue.errors import AlreadyExists, InvalidInput, NotFound, Unprocessable
from zizq.queue.records import now_ms
from zizq.queue.spec import JobSpec
from zizq.store import Store, WriteBatch, layout

if TYPE_CHECKING:
    from zizq.queue.cron_scheduler import CronScheduler

logger = logging.getLogger("zizq.cron")

MAX_CRON_ENTRIES = 100_000  # over every group: each is held in memory and timed
MAX_CRON_GROUPS = 10_000


@dataclass(slots=True)
class CronEntry:
    group: str
    name: str
    schedule: Schedule
    timezone: str | None  # the entry's own zone; None inherits the group's
    paused: bool
    paused_at: int | None
    resumed_at: int | None
    template: dict  # the job as stored and shown
    spec: JobSpec | None  # the template parsed once; None if a stored one no longer parses
    next_enqueue_at: int | None
    last_enqueue_at: int | None

    @property
    def key(self) -> bytes:
        return layout.cron_entry_key(self.group, self.name)

    def record(self) -> dict:
        return {
            "expression": self.schedule.text,
            "timezone": self.timezone,
            "paused": self.paused,
            "paused_at": self.paused_at,
            "resumed_at": self.resumed_at,
            "job": self.template,
            "next": self.next_enqueue_at,
            "last": self.last_enqueue_at,
        }

    def view(self) -> dict:
        shown: dict = {"name": self.name, "expression": self.schedule.text}
        if self.timezone is not None:
            shown["timezone"] = self.timezone
        shown["paused"] = self.paused
        for name in ("paused_at", "resumed_at", "next_enqueue_at", "last_enqueue_at"):
            value = getattr(self, name)
            if value is not None:
                shown[name] = value
        shown["job"] = self.template
        return shown


@dataclass(slots=True)
class CronGroup:
    name: str
    paused: bool = False
    paused_at: int | None = None
    resumed_at: int | None = None
    timezone: str | None = None
    entries: dict[str, CronEntry] = field(default_factory=dict)

    @property
    def key(self) -> bytes:
        return layout.cron_group_key(self.name)

    def record(self) -> dict:
        return {
            "paused": self.paused,
            "paused_at": self.paused_at,
            "resumed_at": self.resumed_at,
            "timezone": self.timezone,
        }

    def view(self) -> dict:
        shown: dict = {"name": self.name, "paused": self.paused}
        for name in ("paused_at", "resumed_at", "timezone"):
            value = getattr(self, name)
            if value is not None:
                shown[name] = value
        shown["entries"] = [self.entries[name].view() for name in sorted(self.entries)]
        return shown


def effective_zone_name(entry_zone: str | None, group_zone: str | None) -> str | None:
    """The zone an entry is evaluated in; None is the server's local zone."""
    return entry_zone if entry_zone is not None else group_zone


def zone_for(name: str | None) -> tzinfo:
    return cron_expr.local_zone() if name is None else cron_expr.zone_named(name)


def _pause_times(
    was: bool, now_paused: bool, paused_at: int | None, resumed_at: int | None, now: int
) -> tuple[int | None, int | None]:
    if now_paused and not was:
        return now, resumed_at
    if was and not now_paused:
        return paused_at, now
    return paused_at, resumed_at


def merge_entry(
    old: CronEntry | None,
    old_zone: str | None,
    new: EntryDef,
    group: str,
    group_zone: str | None,
    now: int,
) -> CronEntry:
    """The entry `new` defines, keeping `old`'s schedule state when its timing is unchanged.

    `old_zone` is the zone `old` was evaluated in (its group's may be changing too).
    """
    zone = effective_zone_name(new.timezone, group_zone)
    if old is not None and old.schedule.text == new.schedule.text and old_zone == zone:
        next_at, last_at = old.next_enqueue_at, old.last_enqueue_at
    else:
        next_at = new.schedule.next_after(now, zone_for(zone))
        last_at = None if old is None else old.last_enqueue_at
    was_paused = False if old is None else old.paused
    paused = was_paused if new.paused is None else new.paused
    paused_at, resumed_at = (None, None) if old is None else (old.paused_at, old.resumed_at)
    paused_at, resumed_at = _pause_times(was_paused, paused, paused_at, resumed_at, now)
    return CronEntry(
        group=group,
        name=new.name,
        schedule=new.schedule,
        timezone=new.timezone,
        paused=paused,
        paused_at=paused_at,
        resumed_at=resumed_at,
        template=new.template,
        spec=new.spec,
        next_enqueue_at=next_at,
        last_enqueue_at=last_at,
    )


class Crons:
    """The cron book: every group, its entries, and the lock all changes take."""

    def __init__(
        self,
        store: Store,
        license: LicenseState,
        batches: BatchExpressions,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.store = store
        self.clock = clock  # epoch ms; tests inject their own
        self.license = license
        self._batches = batches
        self.groups: dict[str, CronGroup] = {}
        self.lock = asyncio.Lock()
        self.scheduler: CronScheduler | None = None  # set by the engine
        self.budgets: BudgetBook | None = None  # set by the engine: templates may draw on budgets
        self._entry_count = 0

    # -- start -----------------------------------------------------------------

    def load(self) -> None:
        """Read every group and entry from the store (at start, before the scheduler runs)."""
        groups: dict[str, CronGroup] = {}
        count = 0
        for key, record in self.store.iter_crons():
            if key.startswith(layout.CRON_GROUP):
                name = key[len(layout.CRON_GROUP) :].decode("utf-8")
                # Entry keys sort first ("e" < "g"): the group may exist already.
                group = groups.setdefault(name, CronGroup(name=name))
                group.paused = bool(record.get("paused"))
                group.paused_at = record.get("paused_at")
                group.resumed_at = record.get("resumed_at")
                group.timezone = record.get("timezone")
            elif key.startswith(layout.CRON_ENTRY):
                group_name, entry_name = layout.cron_entry_names(key)
                entry = _entry_from_record(group_name, entry_name, record)
                if entry is None:
                    continue
                group = groups.setdefault(group_name, CronGroup(name=group_name))
                group.entries[entry_name] = entry
                count += 1
        self.groups = groups
        self._entry_count = count
        if groups:
            log_event(logger, logging.INFO, "cron groups loaded", groups=len(groups), entries=count)

    # -- reads -----------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self.groups)

    def group(self, name: str) -> CronGroup:
        group = self.groups.get(name)
        if group is None:
            raise NotFound(f"cron group {name!r} not found")
        return group

    def entry(self, group_name: str, name: str) -> CronEntry:
        group = self.groups.get(group_name)
        entry = None if group is None else group.entries.get(name)
        if entry is None:
            raise NotFound(f"cron entry {name!r} not found in group {group_name!r}")
        return entry

    def lookup(self, group_name: str, name: str) -> CronEntry | None:
        group = self.groups.get(group_name)
        return None if group is None else group.entries.get(name)

    @property
    def entry_count(self) -> int:
        return self._entry_count

    # -- changes -----------------------------------------------------------------

    async def _check_templates(self, entries: list[EntryDef], where: Callable[[int], str]) -> None:
        """Batched templates dry-run their expressions on their own payload (422 otherwise)."""
        batched = [
            (f"{where(i)}job.", e.spec.batch, e.spec.value)
            for i, e in enumerate(entries)
            if e.spec.batch is not None
        ]
        if batched:
            await self._batches.dry_run(batched)
        if self.budgets is not None:
            # Budgets a template draws on are created now, not at its first firing.
            self.budgets.ensure_for_templates(
                [(f"{where(i)}job.", e.spec) for i, e in enumerate(entries)]
            )

    def budget_draws(self, key: str) -> list[int]:
        """The cost each entry's template draws on budget `key` (one per drawing entry)."""
        costs = []
        for group in self.groups.values():
            for entry in group.entries.values():
                spec = entry.spec
                if spec is not None and spec.budgets:
                    costs.extend(b.cost for b in spec.budgets if b.key == key)
        return costs

    def _room_for(self, added_entries: int, added_groups: int) -> None:
        if self._entry_count + added_entries > MAX_CRON_ENTRIES:
            raise Unprocessable(f"entries: at most {MAX_CRON_ENTRIES} cron entries in all")
        if len(self.groups) + added_groups > MAX_CRON_GROUPS:
            raise Unprocessable(f"group: at most {MAX_CRON_GROUPS} cron groups")

    def _write(self, batch: WriteBatch) -> None:
        self.store.write(batch)

    def _installed(self, group: CronGroup, entries: list[CronEntry]) -> None:
        self.groups[group.name] = group
        if self.scheduler is not None:
            for entry in entries:
                self.scheduler.add(entry)

    async def put_group(self, name: str, definition: GroupDef) -> CronGroup:
        """Create or replace a whole group; unchanged entries keep their schedule state."""
        await self._check_templates(definition.entries, lambda i: f"entries[{i}].")
        async with self.lock:
            now = self.clock()
            old = self.groups.get(name)
            old_entries = {} if old is None else old.entries
            old_group_zone = None if old is None else old.timezone
            self._room_for(len(definition.entries) - len(old_entries), 0 if old is not None else 1)
            was_paused = False if old is None else old.paused
            paused = was_paused if definition.paused is None else definition.paused
            paused_at, resumed_at = (None, None) if old is None else (old.paused_at, old.resumed_at)
            paused_at, resumed_at = _pause_times(was_paused, paused, paused_at, resumed_at, now)
            group = CronGroup(
                name=name,
                paused=paused,
                paused_at=paused_at,
                resumed_at=resumed_at,
                timezone=definition.timezone,
            )
            batch = self.store.batch()
            for item in definition.entries:
                previous = old_entries.get(item.name)
                previous_zone = (
                    None
                    if previous is None
                    else effective_zone_name(previous.timezone, old_group_zone)
                )
                entry = merge_entry(previous, previous_zone, item, name, group.timezone, now)
                group.entries[item.name] = entry
                batch.put_cron(entry.key, entry.record())
            for gone in old_entries.keys() - group.entries.keys():
                batch.delete_cron(layout.cron_entry_key(name, gone))
            batch.put_cron(group.key, group.record())
            self._write(batch)
            self._entry_count += len(group.entries) - len(old_entries)
            self._installed(group, list(group.entries.values()))
            return group

    async def patch_group(self, name: str, patch: GroupPatch) -> CronGroup:
        async with self.lock:
            now = self.clock()
            old = self.group(name)
            paused = old.paused if patch.paused is None else patch.paused
            paused_at, resumed_at = _pause_times(
                old.paused, paused, old.paused_at, old.resumed_at, now
            )
            zone = old.timezone if leave_alone(patch.timezone) else patch.timezone
            group = replace(
                old,
                paused=paused,
                paused_at=paused_at,
                resumed_at=resumed_at,
                timezone=zone,
                entries=dict(old.entries),
            )
            batch = self.store.batch()
            rescheduled = []
            if zone != old.timezone:
                # Entries without a zone of their own follow the group's: reschedule them now.
                for entry_name, entry in old.entries.items():
                    if entry.timezone is not None:
                        continue
                    moved = replace(
                        entry, next_enqueue_at=entry.schedule.next_after(now, zone_for(zone))
                    )
                    group.entries[entry_name] = moved
                    batch.put_cron(moved.key, moved.record())
                    rescheduled.append(moved)
            batch.put_cron(group.key, group.record())
            self._write(batch)
            self._installed(group, rescheduled)
            return group

    async def delete_group(self, name: str) -> None:
        async with self.lock:
            group = self.group(name)
            batch = self.store.batch()
            prefix = layout.cron_entry_prefix(name)
            batch.delete_cron_range(prefix, prefix + b"\xff")  # UTF-8 never holds 0xff
            batch.delete_cron(group.key)
            self._write(batch)
            del self.groups[name]
            self._entry_count -= len(group.entries)

    async def delete_all(self) -> int:
        """Every group and entry (DELETE /crons, POST /reset); returns how many groups."""
        async with self.lock:
            count = len(self.groups)
            batch = self.store.batch()
            batch.delete_cron_range(layout.CRON_PREFIX, layout.CRON_END)
            self._write(batch)
            self.groups = {}
            self._entry_count = 0
            return count

    async def add_entry(self, group_name: str, definition: EntryDef) -> CronEntry:
        """POST: a new entry (409 if the name is taken); creates the group if needed."""
        await self._check_templates([definition], lambda _: "")
        async with self.lock:
            group = self.groups.get(group_name)
            if group is not None and definition.name in group.entries:
                raise AlreadyExists(
                    f"cron entry {definition.name!r} already exists in group {group_name!r}"
                )
            return self._put_entry_locked(group_name, group, definition)

    async def put_entry(self, group_name: str, definition: EntryDef) -> CronEntry:
        """PUT: create or replace one entry; the group is created if needed."""
        await self._check_templates([definition], lambda _: "")
        async with self.lock:
            return self._put_entry_locked(group_name, self.groups.get(group_name), definition)

    def _put_entry_locked(
        self, group_name: str, group: CronGroup | None, definition: EntryDef
    ) -> CronEntry:
        now = self.clock()
        previous = None if group is None else group.entries.get(definition.name)
        self._room_for(0 if previous is not None else 1, 0 if group is not None else 1)
        group_zone = None if group is None else group.timezone
        previous_zone = (
            None if previous is None else effective_zone_name(previous.timezone, group_zone)
        )
        entry = merge_entry(previous, previous_zone, definition, group_name, group_zone, now)
        new_group = (
            CronGroup(name=group_name)
            if group is None
            else replace(group, entries=dict(group.entries))
        )
        new_group.entries[entry.name] = entry
        batch = self.store.batch()
        batch.put_cron(entry.key, entry.record())
        if group is None:
            batch.put_cron(new_group.key, new_group.record())
        self._write(batch)
        if previous is None:
            self._entry_count += 1
        self._installed(new_group, [entry])
        return entry

    async def patch_entry(self, group_name: str, name: str, paused: bool | None) -> CronEntry:
        async with self.lock:
            old = self.entry(group_name, name)
            if paused is None or paused == old.paused:
                return old
            now = self.clock()
            paused_at, resumed_at = _pause_times(
                old.paused, paused, old.paused_at, old.resumed_at, now
            )
            entry = replace(old, paused=paused, paused_at=paused_at, resumed_at=resumed_at)
            batch = self.store.batch()
            batch.put_cron(entry.key, entry.record())
            self._write(batch)
            group = self.groups[group_name]
            new_group = replace(group, entries=dict(group.entries))
            new_group.entries[name] = entry
            self._installed(new_group, [entry])
            return entry

    async def delete_entry(self, group_name: str, name: str) -> None:
        async with self.lock:
            entry = self.entry(group_name, name)
            batch = self.store.batch()
            batch.delete_cron(entry.key)
            self._write(batch)
            group = self.groups[group_name]
            new_group = replace(group, entries=dict(group.entries))
            del new_group.entries[name]
            self.groups[group_name] = new_group
            self._entry_count -= 1

    # -- firing (zizq.queue.cron_scheduler) -----------------------------------------

    def advanced(self, entries: list[CronEntry]) -> None:
        """Entries the scheduler has fired (or skipped), as written: take their places."""
        for entry in entries:
            group = self.groups.get(entry.group)
            if group is not None and entry.name in group.entries:
                group.entries[entry.name] = entry


def _entry_from_record(group: str, name: str, record: dict) -> CronEntry | None:
    """An entry as stored; one that no longer validates is kept but never fires (logged)."""
    try:
        schedule = cron_expr.parse_expression(record["expression"])
    except (KeyError, InvalidInput) as exc:  # cron_expr.CronError is an InvalidInput
        logger.error("cron entry %r of group %r is unreadable, skipped: %s", name, group, exc)
        return None
    template = record.get("job") or {}
    spec: JobSpec | None
    try:
        template, spec = parse_template(template, "", False)
    except InvalidInput as exc:
        logger.error("cron entry %r of group %r cannot fire: %s", name, group, exc)
        spec = None
    return CronEntry(
        group=group,
        name=name,
        schedule=schedule,
        timezone=record.get("timezone"),
        paused=bool(record.get("paused")),
        paused_at=record.get("paused_at"),
        resumed_at=record.get("resumed_at"),
        template=template,
        spec=spec,
        next_enqueue_at=record.get("next"),
        last_enqueue_at=record.get("last"),
    )
