"""The full passes that follow a handler's first pass, kept for when handlers are idle.

A handler's pass over a new or changed InferenceModel writes only what its pods need to start
(`reconcile.inferencemodel.run(rollout_only=True)`) and leaves the rest here: the Service, the
PodDisruptionBudget, the status and the Events follow in a full pass on the backlog's own
thread. So when hundreds of models arrive at once, every one gets its Deployment before any
gets its Service: pods take the longest to come up, and the API server is shared. A full pass
waits while a handler runs, but never longer than `patience` after it was added, so a steady
stream of changes cannot hold status back for long. Used by `specfleet.engine`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from specfleet.reconcile import Applied

Key = tuple[str, str]
"""A resource by namespace and name."""

PATIENCE_SECONDS = 5.0
"""The longest a full pass waits for the handlers to be idle."""


class Backlog:
    """Models waiting for their full pass, oldest first, each with the objects its first pass
    wrote (so the full pass reports the rollout it completes). Thread-safe."""

    def __init__(
        self,
        patience: float = PATIENCE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.patience = patience
        self._clock = clock
        self._ready = threading.Condition()
        self._items: dict[Key, tuple[float, tuple[Applied, ...]]] = {}
        self._handling = 0
        self._closed = False

    @contextlib.contextmanager
    def handling(self) -> Iterator[None]:
        """Marks a handler's pass as running: full passes wait for it."""
        with self._ready:
            self._handling += 1
        try:
            yield
        finally:
            with self._ready:
                self._handling -= 1
                self._ready.notify_all()

    def add(self, key: Key, applied: Sequence[Applied]) -> None:
        """Asks for a full pass of `key`; one already waiting keeps its place and adds what
        this first pass wrote."""
        with self._ready:
            since, before = self._items.get(key, (self._clock(), ()))
            self._items[key] = (since, tuple(dict.fromkeys((*before, *applied))))
            self._ready.notify_all()

    def discard(self, key: Key) -> None:
        """Drops `key` (it was deleted, or another pass did its work)."""
        with self._ready:
            self._items.pop(key, None)

    def __contains__(self, key: object) -> bool:
        with self._ready:
            return key in self._items

    def due(self) -> tuple[Key, tuple[Applied, ...]] | float | None:
        """The oldest item, taken, if its full pass may run now; else how many seconds until
        it may (it may sooner when the handlers go idle), or None when nothing waits."""
        with self._ready:
            if not self._items:
                return None
            key, (since, applied) = next(iter(self._items.items()))
            wait = since + self.patience - self._clock()
            if self._handling and wait > 0:
                return wait
            del self._items[key]
            return key, applied

    def take(self) -> tuple[Key, tuple[Applied, ...]] | None:
        """Blocks until an item's full pass may run and takes it; None once closed."""
        with self._ready:
            while not self._closed:
                found = self.due()
                if isinstance(found, tuple):
                    return found
                self._ready.wait(found)
            return None

    def close(self) -> None:
        """Wakes `take` for good (the operator is stopping)."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
