"""What the request path keeps of a sampled request as it passes: the router's and the gate's
side of capture.

``start`` decides from the request ID (nothing is kept for a request that is not sampled) and
takes references to what the handler has anyway: the credential headers now, the body once
read (``Tap.exchange.body``), the route once decided. ``Tap.chunks`` passes the answer's chunks
through, appending each to a list as it goes (no copy, no wait added); ``Tap.finish`` notes how
the answer ended and hands the exchange to the capture. Called by
``specfleet_runtime.router.app`` and ``specfleet_runtime.gate.app``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from aiohttp import web

from specfleet_runtime.capture.record import Exchange
from specfleet_runtime.capture.writer import Capture

CREDENTIAL_HEADERS = ("Authorization", "api-key")
"""Where OpenAI clients (and Azure's) put their key."""


class Tap:
    """One sampled request on its way through."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self._started = time.perf_counter()

    async def chunks(self, source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``source``, each chunk kept as it passes."""
        kept = self.exchange.chunks
        async for chunk in source:
            if not kept:
                self.exchange.first_byte_seconds = time.perf_counter() - self._started
            kept.append(chunk)
            yield chunk

    def finish(self, response: web.StreamResponse | None, capture: Capture | None) -> None:
        """Note how the answer ended (``response``: what the handler returned; None when it
        was cancelled) and offer the exchange to ``capture``, if there still is one."""
        exchange = self.exchange
        exchange.total_seconds = time.perf_counter() - self._started
        if response is not None:
            exchange.status = response.status
            exchange.streamed = response.headers.get("Content-Type", "").startswith(
                "text/event-stream"
            )
            # An answer made here rather than streamed from upstream: its body is all there is.
            if isinstance(response, web.Response) and isinstance(response.body, bytes):
                exchange.chunks = [response.body]
                exchange.first_byte_seconds = exchange.total_seconds
        if capture is not None:
            capture.offer(exchange)


def start(capture: Capture | None, request_id: str, http: web.Request) -> Tap | None:
    """A tap for the request if ``capture`` keeps it, else None."""
    if capture is None or not capture.sampled(request_id):
        return None
    credentials = tuple(
        value for name in CREDENTIAL_HEADERS for value in http.headers.getall(name, ())
    )
    return Tap(
        Exchange(
            request_id=request_id,
            time=time.time(),
            path=http.path,
            body=b"",
            credentials=credentials,
        )
    )
