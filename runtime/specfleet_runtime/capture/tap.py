"""What the request path keeps of a sampled request as it passes: the router's and the gate's
side of capture.

``start`` decides from the request ID (nothing is kept for a request that is not sampled) and
takes references to what the handler has anyway: the credential headers now, the body once
read (``Tap.exchange.body``), the route once decided. ``Tap.chunks`` passes the answer's chunks
through, appending each to a list as it goes (no copy, no wait added), and notes the status the
answer started with; ``Tap.cancelled`` marks a request the client went away from before its
answer's end; ``Tap.finish`` notes how the answer ended and hands the exchange to the capture
in force then (the router's may have been replaced by a reload meanwhile).
A request the client left before any answer started is recorded with status 499
(``CLIENT_CLOSED_REQUEST``, as nginx logs it), one it left mid-answer with the status that
answer started with; both with ``cancelled``. Called by ``specfleet_runtime.router.app`` and
``specfleet_runtime.gate.app``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from aiohttp import web

from specfleet_runtime.capture.metrics import CaptureMetrics
from specfleet_runtime.capture.record import Exchange
from specfleet_runtime.capture.writer import Capture

CREDENTIAL_HEADERS = ("Authorization", "api-key")
"""Where OpenAI clients (and Azure's) put their key."""
CLIENT_CLOSED_REQUEST = 499
"""The status of a request whose client went away before any answer started (nginx's
"client closed request"); no answer with it was sent."""


class Tap:
    """One sampled request on its way through."""

    def __init__(self, metrics: CaptureMetrics, exchange: Exchange) -> None:
        self.exchange = exchange
        self._metrics = metrics
        self._started = time.perf_counter()

    async def chunks(
        self, source: AsyncIterator[bytes], status: int, content_type: str
    ) -> AsyncIterator[bytes]:
        """``source``, the body of an answer whose head (``status``, ``content_type``) was
        sent, each chunk kept as it passes."""
        # Noted now, so that a client leaving mid-answer leaves the status it was sent.
        self.exchange.status = status
        self.exchange.streamed = content_type.startswith("text/event-stream")
        kept = self.exchange.chunks
        async for chunk in source:
            if not kept:
                self.exchange.first_byte_seconds = time.perf_counter() - self._started
            kept.append(chunk)
            yield chunk

    def cancelled(self) -> None:
        """The client went away before the answer's end."""
        self.exchange.cancelled = True

    def finish(self, response: web.StreamResponse | None, capture: Capture | None) -> None:
        """Note how the answer ended (``response``: what the handler returned; None when it
        was cancelled) and offer the exchange to ``capture``; with none left (a reload turned
        capture off meanwhile), the record is dropped and counted (``capture_off``)."""
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
        if exchange.cancelled and not exchange.status:  # no answer had started
            exchange.status = CLIENT_CLOSED_REQUEST
        if capture is not None:
            capture.offer(exchange)
        else:
            self._metrics.dropped_by["capture_off"].inc()


def start(capture: Capture | None, request_id: str, http: web.Request) -> Tap | None:
    """A tap for the request if ``capture`` keeps it, else None."""
    if capture is None or not capture.sampled(request_id):
        return None
    credentials = tuple(
        value for name in CREDENTIAL_HEADERS for value in http.headers.getall(name, ())
    )
    return Tap(
        capture.metrics,
        Exchange(
            request_id=request_id,
            time=time.time(),
            path=http.path,
            body=b"",
            credentials=credentials,
        ),
    )
