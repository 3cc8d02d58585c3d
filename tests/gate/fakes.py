"""A fake upstream behind the proxy's transport seam, and small async test helpers.

``FakeTransport`` records every request and hands each one a ``ScriptedResponse`` that the test
drives chunk by chunk, so tests decide exactly when the upstream answers, with no sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from multidict import CIMultiDict, MultiMapping

from specfleet_runtime import proxy

T = TypeVar("T")

DEADLINE = 5.0  # seconds; a safety net so a broken gate fails a test instead of hanging it


class ScriptedResponse:
    """An upstream response whose chunks the test pushes one at a time."""

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._status = status
        self._headers: CIMultiDict[str] = CIMultiDict(headers or {})
        self._queue: asyncio.Queue[bytes | proxy.ProxyError | None] = asyncio.Queue()
        self.closed = asyncio.Event()

    @property
    def status(self) -> int:
        return self._status

    @property
    def headers(self) -> MultiMapping[str]:
        return self._headers

    def push(self, chunk: bytes) -> None:
        self._queue.put_nowait(chunk)

    def finish(self) -> None:
        self._queue.put_nowait(None)

    def fail(self, error: proxy.ProxyError) -> None:
        self._queue.put_nowait(error)

    async def chunks(self) -> AsyncIterator[bytes]:
        while (item := await self._queue.get()) is not None:
            if isinstance(item, proxy.ProxyError):
                raise item
            yield item

    async def aclose(self) -> None:
        self.closed.set()


def echo(request: proxy.UpstreamRequest) -> ScriptedResponse:
    """Answer at once with the request body, prefixed."""
    response = ScriptedResponse(200, {"Content-Type": "application/json"})
    response.push(b"echo:" + request.body)
    response.finish()
    return response


def hold(_request: proxy.UpstreamRequest) -> ScriptedResponse:
    """Start an event stream and send nothing until the test pushes."""
    return ScriptedResponse(200, {"Content-Type": "text/event-stream", "X-Upstream": "fake"})


class FakeTransport:
    """A proxy.Transport whose upstream is ``respond``; ``/health`` answers ``health_status``."""

    def __init__(
        self,
        respond: Callable[[proxy.UpstreamRequest], ScriptedResponse] = echo,
        *,
        health_status: int = 200,
        error: proxy.ProxyError | None = None,
    ) -> None:
        self.respond = respond
        self.health_status = health_status
        self.error = error
        self.requests: list[proxy.UpstreamRequest] = []
        self.responses: list[ScriptedResponse] = []

    async def send(self, request: proxy.UpstreamRequest) -> proxy.UpstreamResponse:
        if self.error is not None:
            raise self.error
        if request.target == "/health":
            health = ScriptedResponse(self.health_status)
            health.finish()
            return health
        self.requests.append(request)
        response = self.respond(request)
        self.responses.append(response)
        return response


async def until(predicate: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    """Wait until ``predicate()`` holds, polling the event loop; fail after ``deadline``."""
    try:
        async with asyncio.timeout(deadline):
            while not predicate():
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"still waiting after {deadline} s for {what}") from None


async def within_deadline(awaitable: Awaitable[T], what: str) -> T:
    """``await awaitable``, failing the test if it takes longer than the safety deadline."""
    try:
        async with asyncio.timeout(DEADLINE):
            return await awaitable
    except TimeoutError:
        raise AssertionError(f"still waiting after {DEADLINE} s for {what}") from None
