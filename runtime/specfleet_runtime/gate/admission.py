"""Admission control for the gate: at most ``limit`` requests in flight, the rest wait in order.

Owns the live batch limit, the bounded FIFO queue and the queue deadline. The gate's HTTP handler
(``specfleet_runtime.gate.app``) calls ``Admission.slot()`` around each proxied request, and the
limit-file watcher calls ``Admission.set_limit()``. No HTTP and no clock of its own beyond
asyncio's timeout, so tests drive it directly.

Semantics that the operator's autoscaler relies on:
- Raising the limit admits waiters at once, oldest first.
- Lowering it never interrupts a request: in-flight requests finish, and nobody is admitted until
  fewer than the new limit are in flight.
- A waiter that gives up (its deadline passes, or its client disconnects and the handler is
  cancelled) leaves the queue; if a slot was handed to it at that very moment, the slot is passed
  on, so slots never leak.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator


class AdmissionError(Exception):
    """The request was not admitted; the gate answers it itself."""


class QueueFullError(AdmissionError):
    """The queue already holds ``max_queue`` waiters."""


class QueueTimeoutError(AdmissionError):
    """The request waited ``queue_timeout`` seconds without being admitted."""


class Admission:
    """A FIFO semaphore whose size can change while requests wait."""

    def __init__(self, limit: int, *, max_queue: int, queue_timeout: float) -> None:
        if limit < 1:
            raise ValueError(f"batch limit must be at least 1, got {limit}")
        if max_queue < 0:
            raise ValueError(f"max queue must be 0 or more, got {max_queue}")
        if queue_timeout <= 0:
            raise ValueError(f"queue timeout must be positive, got {queue_timeout}")
        self._limit = limit
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self._in_flight = 0
        # Each waiter is a future resolved when a slot is handed to it (the handing side counts
        # the slot as taken, so a waiter never races a newcomer for it).
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def set_limit(self, limit: int) -> None:
        """Change the limit; waiters are admitted at once if there is now room."""
        if limit < 1:
            raise ValueError(f"batch limit must be at least 1, got {limit}")
        self._limit = limit
        self._admit_waiters()

    async def acquire(self, timeout: float | None = None) -> None:
        """Wait for a slot; raise QueueFullError or QueueTimeoutError rather than wait too long:
        ``queue_timeout``, or ``timeout`` if that is shorter."""
        if not self._waiters and self._in_flight < self._limit:
            self._in_flight += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise QueueFullError(f"{len(self._waiters)} requests already wait for a slot")
        deadline = self.queue_timeout if timeout is None else min(timeout, self.queue_timeout)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(deadline):
                await waiter
        except BaseException as exc:
            granted = waiter.done() and not waiter.cancelled()
            if granted and isinstance(exc, TimeoutError):
                return  # the slot arrived just as the deadline passed: take it
            if granted:
                # Cancelled (the client left) as the slot arrived: pass it on, never leak it.
                self.release()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise QueueTimeoutError(
                    f"no slot within {deadline:g} s (limit {self._limit})"
                ) from None
            raise

    def release(self) -> None:
        """Give a slot back and admit the oldest waiter if the limit allows."""
        if self._in_flight <= 0:
            raise RuntimeError("release() without a matching acquire()")
        self._in_flight -= 1
        self._admit_waiters()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the body of the ``async with``."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    def _admit_waiters(self) -> None:
        while self._waiters and self._in_flight < self._limit:
            waiter = self._waiters.popleft()
            if waiter.done():  # cancelled, its owner is removing itself
                continue
            waiter.set_result(None)
            self._in_flight += 1
