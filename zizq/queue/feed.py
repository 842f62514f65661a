"""The change feed: how live viewers (the admin `/events` stream) learn that lists changed.

The dispatcher owns one. Engine paths that change a list call `feed.changed()`
(and `feed.finished(...)` for acks and kills) behind an `if feed.active:`
guard, so with no viewer a hook costs one attribute read. A viewer (`Watcher`)
learns only *that* something changed; it recomputes its windows from the
indexes at its own pace (zizq.queue.observe), so a burst of a million
enqueues costs a viewer one refresh, never a backlog.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

FINISHED_CAP = 256  # completed/dead notes a watcher keeps between two of its refreshes


class Watcher:
    """One viewer's view of the feed: a dirty flag, a wake-up and recent finishes."""

    __slots__ = ("dirty", "wake", "finished", "finished_dropped")

    def __init__(self, wake: asyncio.Event) -> None:
        self.dirty = False
        self.wake = wake
        # Bounded: a viewer that refreshes slowly loses the oldest notes, not memory.
        self.finished: deque[tuple[str, str]] = deque(maxlen=FINISHED_CAP)
        self.finished_dropped = 0

    def take_finished(self) -> list[tuple[str, str]]:
        notes = list(self.finished)
        self.finished.clear()
        self.finished_dropped = 0
        return notes


class ChangeFeed:
    """Tells watchers that the lists changed. All calls run on the engine's loop thread."""

    __slots__ = ("active", "version", "_watchers")

    def __init__(self) -> None:
        self.active = False  # the guard hooks read: True while at least one viewer watches
        # Counts reported changes while active (and every new watch, since changes made
        # while no one watched were not counted): a cached view is current while it holds.
        self.version = 0
        self._watchers: list[Watcher] = []

    def watch(self, wake: asyncio.Event) -> Watcher:
        watcher = Watcher(wake)
        self._watchers.append(watcher)
        self.active = True
        self.version += 1
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)
        self.active = bool(self._watchers)

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def changed(self) -> None:
        """Some list changed (which one is not said: a refresh recomputes windows cheaply)."""
        self.version += 1
        for watcher in self._watchers:
            if not watcher.dirty:
                watcher.dirty = True
                watcher.wake.set()

    def finished(self, job_id: str, status: str) -> None:
        """A job left in-flight for good: `completed` or `dead`."""
        self.version += 1
        for watcher in self._watchers:
            notes = watcher.finished
            if len(notes) == FINISHED_CAP:
                watcher.finished_dropped += 1
            notes.append((job_id, status))
            if not watcher.dirty:
                watcher.dirty = True
                watcher.wake.set()
