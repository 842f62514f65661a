"""Sorted snapshots of the job lists, shared by live viewers (zizq.queue.observe).

A window deep in a long list reads one of these instead of sorting the list on
every refresh: `HeapSnapshot` keeps the entries of binary heaps (ready,
scheduled) in order, brought up to date from what changed in the heaps;
`SortedSnapshot` sorts the in-flight table again when it changed or aged.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import time
from collections.abc import Iterable

Entry = tuple  # (sort key..., job_id): the job id is always the last element

DIFF_BLOCK = 4096  # heap slots compared at once (small slices); blocks that differ are searched
SNAPSHOT_EDITS_MAX = 64  # removals/insertions made one by one; more are done in one pass
IN_FLIGHT_MAX_AGE_S = 1.0  # an in-flight snapshot is sorted again at least this often


class HeapSnapshot:
    """The entries of one list's binary heaps in sorted order, kept current by diffs.

    Heaps change in place: a push appends and sifts up, a pop moves the last
    entry to the root and sifts down; entries are tuples that keep their
    identity while they move. Comparing each heap with a copy kept since the
    last update, block by block and by identity (C speed: about 1 ms per 100k
    entries), finds every slot that changed; of the entries in those slots, the
    ones on both sides only moved, and the rest were added or removed. Those
    edits are applied to the sorted list with bisect (a batch of new jobs behind
    all others, the common case, is one `extend`), and to the copies. The
    copies hold the old entries alive, so no id is reused while it is compared.

    A snapshot is reused as is while the feed's version (changes the hooks
    reported) and `stamp` (each heap's identity, length and root) both stay
    the same; the stamp also catches a change no hook reported, since any
    change of a heap's content moves its length or its root (a pop always
    takes the root).
    """

    __slots__ = ("version", "stamp", "heaps", "copies", "entries", "resorts")

    def __init__(self) -> None:
        self.version = -1
        self.stamp: tuple | None = None
        self.heaps: list[list] = []
        self.copies: list[list] = []
        self.entries: list[Entry] = []
        self.resorts = 0  # full sorts done (tests read it)

    def ordered(self, heaps: list[list], version: int) -> list[Entry]:
        stamp = tuple((id(heap), len(heap), id(heap[0]) if heap else 0) for heap in heaps)
        if version == self.version and stamp == self.stamp:
            return self.entries
        if self.stamp is None:
            self._sort(heaps)
            self.copies = [list(heap) for heap in heaps]
        else:
            self._update(heaps)
        self.heaps = list(heaps)
        self.stamp = stamp
        self.version = version
        return self.entries

    def _sort(self, heaps: list[list]) -> None:
        self.entries = sorted(itertools.chain.from_iterable(heaps))
        self.resorts += 1

    def _update(self, heaps: list[list]) -> None:
        """Bring `entries` and the copies up to date with the heaps."""
        old = {id(heap): copy for heap, copy in zip(self.heaps, self.copies, strict=True)}
        copies: list[list] = []
        gone: list[Entry] = []
        came: list[Entry] = []
        for heap in heaps:
            copy = old.pop(id(heap), None)
            if copy is None:  # a new heap (a queue that was empty)
                came.extend(heap)
                copies.append(list(heap))
                continue
            shared = min(len(copy), len(heap))
            for start in range(0, shared, DIFF_BLOCK):
                end = min(start + DIFF_BLOCK, shared)
                before, after = copy[start:end], heap[start:end]
                if before == after:  # list equality compares identities first: fast
                    continue
                for index in itertools.compress(
                    range(start, end), map(operator.is_not, before, after)
                ):
                    gone.append(copy[index])
                    came.append(heap[index])
                    copy[index] = heap[index]
            gone.extend(copy[shared:])
            came.extend(heap[shared:])
            del copy[shared:]
            copy.extend(heap[shared:])
            copies.append(copy)
        for copy in old.values():  # a heap that is gone (its queue emptied)
            gone.extend(copy)
        self.copies = copies
        if not gone and not came:
            return
        # Entries on both sides only moved inside their heap.
        came_ids = set(map(id, came))
        gone_ids = set(map(id, gone))
        removed = [entry for entry in gone if id(entry) not in came_ids]
        added = [entry for entry in came if id(entry) not in gone_ids]
        if len(removed) + len(added) > len(self.entries) // 2 + SNAPSHOT_EDITS_MAX:
            self._sort(heaps)  # most of it changed: a sort is as cheap
        elif not self._edit(sorted(removed), sorted(added)):
            self._sort(heaps)

    def _edit(self, removed: list[Entry], added: list[Entry]) -> bool:
        """Remove and insert (both sorted); False when `entries` disagree (sort again)."""
        entries = self.entries
        if removed:
            found: list[int] = []
            low = 0
            for entry in removed:
                index = bisect.bisect_left(entries, entry, low)
                if index >= len(entries) or entries[index] != entry:
                    return False  # not where it should be: trust a fresh sort instead
                found.append(index)
                low = index + 1
            if len(found) <= SNAPSHOT_EDITS_MAX:
                for index in reversed(found):
                    del entries[index]
            else:
                ends = [*found, len(entries)]
                kept = [entries[: found[0]]]
                kept += [entries[a + 1 : b] for a, b in itertools.pairwise(ends)]
                entries = list(itertools.chain.from_iterable(kept))
        if added:
            if not entries or added[0] >= entries[-1]:
                entries.extend(added)  # the common case: new jobs behind the others
            elif len(added) <= SNAPSHOT_EDITS_MAX:
                for entry in added:
                    bisect.insort(entries, entry)
            else:
                start = bisect.bisect_left(entries, added[0])
                tail = entries[start:]
                tail += added
                tail.sort()  # two sorted runs: a linear merge
                del entries[start:]
                entries += tail
        self.entries = entries
        return True


class SortedSnapshot:
    """A list sorted again when the feed reports a change of the right size, or it ages."""

    __slots__ = ("version", "size", "built", "entries")

    def __init__(self) -> None:
        self.version = -1
        self.size = -1
        self.built = 0.0
        self.entries: list[Entry] = []

    def ordered(self, entries: Iterable[Entry], size: int, version: int) -> list[Entry]:
        now = time.monotonic()
        if (version, size) != (self.version, self.size) or now - self.built > IN_FLIGHT_MAX_AGE_S:
            self.entries = sorted(entries)
            self.version, self.size, self.built = version, size, now
        return self.entries
