"""The operator's keyed work queue: at most one pass per resource at a time.

The shape of controller-runtime's workqueue. Everything that wants a pass over a resource
(a handler, the resync loop, a model turning Ready, a model's next autoscaling decision
falling due, a pass that must be retried) only `add`s the resource's key; the engine's
workers `take` keys and run their passes, and say `done` after each. A key is queued at most
once: adding a queued key keeps the earlier due time and the more urgent priority. A key in
flight is never handed out again until `done`; adding it meanwhile marks it dirty, and it is
queued again when its pass ends, so a change during a pass is never lost and never overlaps
it. `add(..., after=s)` is a delayed requeue: how something happens in `s` seconds.

Priorities keep what two passes per change buy: a new or changed model's first pass (what its
pods need to start) is `URGENT`; everything else is `NORMAL`. Of the keys due, urgent ones go
first, so when hundreds of models arrive at once every one starts its pods before any gets its
Service. A normal key waits for urgent ones no longer than `patience` past its due time, so a
steady stream of changes cannot hold status back for long. At most `normal_slots` normal passes
run at once, so a resync's round of every resource (or the passes a flood of Deployment events
asks for) never takes the workers from the first passes: the rest stay free for urgent keys.

Thread-safe, no I/O; the clock is injected so tests are exact. Used by `specfleet.engine`.
"""

from __future__ import annotations

import enum
import itertools
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

PATIENCE_SECONDS = 5.0
"""The longest a normal key that is due waits while urgent ones go before it."""
NORMAL_SLOTS = 2
"""The most normal passes in flight at once."""


class Priority(enum.IntEnum):
    """How soon a due key runs: lower first."""

    URGENT = 0
    """A model's first pass after it was created or changed: what its pods need to start."""
    NORMAL = 1
    """Every other pass."""


@dataclass(frozen=True)
class _Entry:
    due: float
    priority: Priority
    order: int

    def merged(self, other: _Entry) -> _Entry:
        """One entry for two requests: the earlier due time, the more urgent priority."""
        return _Entry(min(self.due, other.due), min(self.priority, other.priority), self.order)


@dataclass(frozen=True)
class Taken(Generic[K]):
    """A key handed to a worker, with the priority it was queued at."""

    key: K
    priority: Priority


class WorkQueue(Generic[K]):
    """Keys waiting for a pass (see the module docstring)."""

    def __init__(
        self,
        patience: float = PATIENCE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        normal_slots: int = NORMAL_SLOTS,
    ) -> None:
        self.patience = patience
        self.normal_slots = normal_slots
        self._clock = clock
        self._changed = threading.Condition()
        self._queued: dict[K, _Entry] = {}
        self._dirty: dict[K, _Entry] = {}
        self._in_flight: dict[K, Priority] = {}
        self._order = itertools.count()
        self._closed = False

    def add(self, key: K, priority: Priority = Priority.NORMAL, *, after: float = 0.0) -> None:
        """Asks for a pass over `key` in `after` seconds (now by default)."""
        with self._changed:
            entry = _Entry(self._clock() + max(after, 0.0), priority, next(self._order))
            pending = self._dirty if key in self._in_flight else self._queued
            found = pending.get(key)
            pending[key] = entry if found is None else found.merged(entry)
            self._changed.notify_all()

    def forget(self, key: K) -> None:
        """Drops any pass waiting for `key` (the resource is gone); one in flight ends as it
        will, and is not repeated."""
        with self._changed:
            self._queued.pop(key, None)
            self._dirty.pop(key, None)

    def done(self, key: K) -> None:
        """A worker's pass over `key` ended: a request that came meanwhile is queued now."""
        with self._changed:
            self._in_flight.pop(key, None)
            dirty = self._dirty.pop(key, None)
            if dirty is not None:
                found = self._queued.get(key)
                self._queued[key] = dirty if found is None else found.merged(dirty)
            self._changed.notify_all()

    def __contains__(self, key: object) -> bool:
        """Whether `key` waits for a pass (queued, or dirty while in flight)."""
        with self._changed:
            return key in self._queued or key in self._dirty

    def __len__(self) -> int:
        with self._changed:
            return len(self._queued) + len(self._dirty)

    def in_flight(self, key: K) -> bool:
        with self._changed:
            return key in self._in_flight

    def next(self) -> Taken[K] | float | None:
        """The key to run now, taken (it is in flight until `done`); else how many seconds
        until one is due, or None when nothing waits."""
        with self._changed:
            now = self._clock()
            best: tuple[int, float, int, K] | None = None
            soonest: float | None = None
            normal_free = (
                sum(p == Priority.NORMAL for p in self._in_flight.values()) < self.normal_slots
            )
            for key, entry in self._queued.items():
                if entry.due > now:
                    soonest = entry.due if soonest is None else min(soonest, entry.due)
                    continue
                if entry.priority == Priority.NORMAL and not normal_free:
                    continue  # its turn comes when a normal pass ends (`done` wakes `take`)
                # A normal key past its patience counts as urgent.
                urgent = entry.priority == Priority.URGENT or entry.due + self.patience <= now
                rank = (0 if urgent else 1, entry.due, entry.order, key)
                if best is None or rank[:3] < best[:3]:
                    best = rank
            if best is None:
                return None if soonest is None else soonest - now
            key = best[3]
            entry = self._queued.pop(key)
            self._in_flight[key] = entry.priority
            return Taken(key, entry.priority)

    def take(self) -> Taken[K] | None:
        """Blocks until a key is due and takes it; None once closed."""
        with self._changed:
            while not self._closed:
                found = self.next()
                if isinstance(found, Taken):
                    return found
                self._changed.wait(found)
            return None

    def close(self) -> None:
        """Wakes every `take` for good (the operator is stopping)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
