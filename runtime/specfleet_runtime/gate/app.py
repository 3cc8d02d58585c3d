"""The gate's HTTP application: admission in front of one vLLM server, plus /health and /metrics.

Routes:
- ``GET /metrics``: the gate's own ``specfleet_gate_*`` metrics (vLLM's stay on vLLM's port).
- ``GET /health``: 200 only when the upstream's ``/health`` answers 200, else 503; so the pod's
  readiness follows vLLM's.
- ``POST`` anything: engine work. Admitted through ``Admission`` (429 when the queue is full,
  503 past the queue deadline, both with Retry-After and an OpenAI-style body), then forwarded
  and streamed back untouched by ``specfleet_runtime.proxy``. The gate judges capacity only: a
  malformed JSON body reaches vLLM, which answers it; a body that cannot be read at all (cut
  short, or not in its Content-Encoding) gets a 4xx here, logged as one WARNING line. A request
  that carries ``X-Specfleet-Queue-Timeout`` (the router's) waits at most that long in the queue.
- Any other method and path: forwarded without admission (``GET /v1/models`` and the like
  create no sequence in vLLM, so they never wait behind generations).

With a capture configuration (``--capture-config``), the POST requests its sample rate picks by
their ``X-Request-Id`` (the router's, so the gate keeps what the router keeps) are recorded with
their answers, the gate's own refusals included (``specfleet_runtime.capture``): the handler keeps
references as the request passes and hands them to the capture at the end.

The app must run with handler cancellation on (``AppRunner(app, handler_cancellation=True)``):
that is how a client that disconnects leaves the queue or frees its slot. Called by
``specfleet_runtime.gate.cli`` and by the tests, which pass a fake transport.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import prometheus_client
from aiohttp import web
from multidict import CIMultiDict, MultiMapping

from specfleet.api.capture import CaptureConfig
from specfleet_runtime import capture as capturing
from specfleet_runtime import errors, proxy, serving
from specfleet_runtime.capture import tap
from specfleet_runtime.gate import admission, limit, metrics

log = logging.getLogger(__name__)

# Kubelet's probe gives up sooner by default; this only stops a hung upstream from piling up
# health checks.
HEALTH_TIMEOUT = 5.0


@dataclass(frozen=True)
class LimitSource:
    """Where later limits come from, and how often to look."""

    file: limit.LimitFile
    interval: float = limit.POLL_INTERVAL


class Gate:
    """The gate's state: admission, transport and metrics, and the handlers that use them."""

    def __init__(
        self,
        controller: admission.Admission,
        transport: proxy.Transport,
        *,
        retry_after: int = 1,
        max_body_bytes: int = proxy.DEFAULT_MAX_BODY_BYTES,
        capture: CaptureConfig | None = None,
        pod: str | None = None,
    ) -> None:
        """``capture``: what to capture, if anything, as pod ``pod`` (default
        ``capture.pod_name()``)."""
        self.admission = controller
        self.transport = transport
        self.retry_after = retry_after
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics.GateMetrics(
            limit=lambda: controller.limit,
            in_flight=lambda: controller.in_flight,
            queued=lambda: controller.queued,
        )
        self.capture: capturing.Capture | None = None
        if capture is not None:
            self.capture = capturing.Capture(
                capture,
                pod=pod if pod is not None else capturing.pod_name(),
                metrics=capturing.CaptureMetrics(self.metrics.registry),
                writer_process=True,
            )

    def close(self) -> None:
        """Write what the capture holds and stop it."""
        if self.capture is not None:
            self.capture.close()

    def set_limit(self, new_limit: int) -> None:
        old = self.admission.limit
        self.admission.set_limit(new_limit)
        self.metrics.limit_updates.inc()
        log.info("batch limit %d -> %d", old, new_limit)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        sample = None
        if self.capture is not None and request.method == "POST":
            request_id = request.headers.get(proxy.HEADER_REQUEST_ID) or proxy.new_request_id()
            sample = tap.start(self.capture, request_id, request)
        if sample is None:
            return await self._handle(request, None)
        response = None
        try:
            response = await self._handle(request, sample)
            return response
        except asyncio.CancelledError:  # the client went away
            sample.cancelled()
            raise
        finally:
            sample.finish(response, self.capture)

    async def _handle(self, request: web.Request, sample: tap.Tap | None) -> web.StreamResponse:
        arrived = time.monotonic()
        try:
            body = await proxy.read_body(request, self.max_body_bytes)
        except errors.BodyError as exc:
            log.warning("%s %s%s: %s", request.method, request.path, _id(request), exc)
            self.metrics.count_response(exc.status)
            return _echo_id(request, exc.response())
        if sample is not None:
            sample.exchange.body = body
        if request.method != "POST":
            return await self._forward(request, body)
        queued_at = time.monotonic()
        try:
            await self.admission.acquire(_queue_timeout(request))
        except admission.QueueFullError as exc:
            return self._reject(request, 429, "queue_full", f"server busy: {exc}")
        except admission.QueueTimeoutError as exc:
            return self._reject(request, 503, "queue_timeout", f"server busy: {exc}")
        except asyncio.CancelledError:
            self.metrics.disconnected_queued.inc()
            raise
        self.metrics.queue_wait.observe(time.monotonic() - queued_at)

        def first_chunk(upstream: proxy.UpstreamResponse) -> None:
            # Only a stream's first chunk is its first token; a whole answer's is its last.
            if upstream.status == 200 and upstream.headers.get("Content-Type", "").startswith(
                "text/event-stream"
            ):
                self.metrics.time_to_first_token.observe(time.monotonic() - arrived)

        try:
            return await self._forward(request, body, first_chunk, sample)
        finally:
            self.admission.release()
            self.metrics.e2e_latency.observe(time.monotonic() - arrived)

    async def health(self, _request: web.Request) -> web.Response:
        probe = proxy.UpstreamRequest("GET", "/health", CIMultiDict(), b"")
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                upstream = await self.transport.send(probe)
                await upstream.aclose()
        except proxy.ProxyError as exc:
            return self._unhealthy(str(exc))
        except TimeoutError:
            return self._unhealthy(f"upstream /health did not answer within {HEALTH_TIMEOUT:g} s")
        if upstream.status != 200:
            return self._unhealthy(f"upstream /health answered {upstream.status}")
        return web.Response(status=200)

    async def serve_metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=prometheus_client.generate_latest(self.metrics.registry),
            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
        )

    async def _forward(
        self,
        request: web.Request,
        body: bytes,
        first_chunk: Callable[[proxy.UpstreamResponse], None] | None = None,
        sample: tap.Tap | None = None,
    ) -> web.StreamResponse:
        transport = self.transport if sample is None else _Tapped(self.transport, sample)
        try:
            forwarded = await proxy.forward(request, body, transport, first_chunk)
        except proxy.ProxyError as exc:
            log.warning("%s %s%s: %s", request.method, request.path, _id(request), exc)
            response = exc.response()
            self.metrics.count_response(response.status)
            return _echo_id(request, response)
        except asyncio.CancelledError:
            self.metrics.disconnected_responding.inc()
            raise
        if forwarded.outcome is proxy.Outcome.CLIENT_DISCONNECTED:
            self.metrics.disconnected_responding.inc()
            if sample is not None:
                sample.cancelled()
        else:
            self.metrics.count_response(forwarded.response.status)
        return forwarded.response

    def _reject(self, request: web.Request, status: int, reason: str, message: str) -> web.Response:
        self.metrics.rejected[reason].inc()
        self.metrics.count_response(status)
        return _echo_id(
            request,
            errors.error_response(
                status, message, "server_overloaded", reason, retry_after=self.retry_after
            ),
        )

    def _unhealthy(self, message: str) -> web.Response:
        return errors.error_response(503, message, "upstream_error", "upstream_unhealthy")


class _Tapped:
    """The transport, its answer's chunks kept as they pass (for a sampled request)."""

    def __init__(self, transport: proxy.Transport, sample: tap.Tap) -> None:
        self._transport = transport
        self._sample = sample

    async def send(self, request: proxy.UpstreamRequest) -> proxy.UpstreamResponse:
        return _TappedResponse(await self._transport.send(request), self._sample)


class _TappedResponse:
    def __init__(self, response: proxy.UpstreamResponse, sample: tap.Tap) -> None:
        self._response = response
        self._sample = sample

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> MultiMapping[str]:
        return self._response.headers

    def chunks(self) -> AsyncIterator[bytes]:
        content_type = self._response.headers.get("Content-Type", "")
        return self._sample.chunks(self._response.chunks(), self.status, content_type)

    async def aclose(self) -> None:
        await self._response.aclose()


def _queue_timeout(request: web.Request) -> float | None:
    """The router's bound on this request's queue wait, if it sent a valid one."""
    raw = request.headers.get(proxy.HEADER_QUEUE_TIMEOUT)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        return None
    return seconds if 0 < seconds < float("inf") else None


def _id(request: web.Request) -> str:
    """The request's ID for a log line (" request ID"), when it carries one."""
    request_id = request.headers.get(proxy.HEADER_REQUEST_ID)
    return f" request {request_id[:200]}" if request_id else ""


def _echo_id(request: web.Request, response: web.Response) -> web.Response:
    """The gate's own answer, with the request's ID if it came with one."""
    request_id = request.headers.get(proxy.HEADER_REQUEST_ID)
    if request_id:
        response.headers[proxy.HEADER_REQUEST_ID] = request_id
    return response


def make_app(gate: Gate, limit_source: LimitSource | None = None) -> web.Application:
    """The aiohttp application for ``gate``, polling ``limit_source`` while it runs."""
    app = web.Application(client_max_size=gate.max_body_bytes)
    app.router.add_get("/metrics", gate.serve_metrics)
    app.router.add_get("/health", gate.health)
    app.router.add_route("*", "/{tail:.*}", gate.handle)
    if limit_source is not None:
        source = limit_source
        serving.run_alongside(
            app, lambda: limit.watch(source.file, gate.set_limit, source.interval)
        )
    return app
