"""The router's HTTP application: the thin shell around the pure routing core.

Routes:
- ``POST /v1/completions``, ``POST /v1/chat/completions``: check the API key (when keys are
  configured), read the body (at most ``max_body_bytes``), parse it (``request``), decide
  (``routing``; routed requests are classified and timed), then forward it with the shared
  proxy core (``specfleet_runtime.proxy``), streamed through untouched but for ``model``, which
  a routed request's backend gets as its served name. A backend that fails before its first
  byte, by connection or with a 5xx, is retried once on the fallback the route names. Every
  forwarded response carries ``X-Specfleet-Route`` (tier, override or direct),
  ``X-Specfleet-Tier`` (when a tier served it), ``X-Specfleet-Model`` (the InferenceModel) and,
  after a fallback, ``X-Specfleet-Fallback-From``.
- ``GET /v1/models``: the policy's name and the served models (needs a key when keys are on).
- ``GET /health``: 200 with the ready tiers while the router runs. It does not follow the
  backends: with every backend down, clients get a clear 503 from the router rather than no
  router at all.
- ``GET /metrics``: ``specfleet_router_*``.
- Anything else: 404 (405 for a known path), OpenAI-style, as is every answer the router makes
  itself. Client mistakes are 4xx; the router's own 5xx are only ``no_ready_backend`` (503) and
  a backend failing with no fallback left (502/503 from the proxy core).

The configuration (and the API keys it points at) is reread every ``interval`` without a
restart; a request keeps the table it started with. The app must run with handler
cancellation on, so a client that goes away stops its upstream request. Called by
``specfleet_runtime.router.cli`` and by tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

import prometheus_client
from aiohttp import web
from multidict import CIMultiDict, MultiMapping

from specfleet.api.routerconfig import RouterConfig
from specfleet_runtime import proxy, serving
from specfleet_runtime.router import classifier, errors, keys, metrics, request, routing
from specfleet_runtime.router.config import POLL_INTERVAL, ConfigFile

log = logging.getLogger(__name__)

HEADER_ROUTE = "X-Specfleet-Route"
HEADER_TIER = "X-Specfleet-Tier"
HEADER_MODEL = "X-Specfleet-Model"
HEADER_FALLBACK_FROM = "X-Specfleet-Fallback-From"
_OWN_HEADERS = (HEADER_ROUTE, HEADER_TIER, HEADER_MODEL, HEADER_FALLBACK_FROM)

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
"""Room for a long-context prompt or a few images as base64; beyond it, 413."""

_KNOWN_PATHS = frozenset(
    {*(e.value for e in request.Endpoint), "/v1/models", "/health", "/metrics"}
)


class BackendTransport(proxy.Transport, Protocol):
    """A transport to one backend URL that can let go of its idle connections."""

    def close(self) -> None: ...


class Router:
    """The router's state (routing table, keys, transports, metrics) and its handlers."""

    def __init__(
        self,
        config: RouterConfig,
        transport_for: Callable[[str], BackendTransport],
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        counts_reloads: bool = True,
    ) -> None:
        self._transport_for = transport_for
        self._transports: dict[str, BackendTransport] = {}
        self.max_body_bytes = max_body_bytes
        self.counts_reloads = counts_reloads
        """Whether reloads count in the metrics (only one of a router's workers counts)."""
        self.metrics = metrics.RouterMetrics(self._tier_readiness)
        self.started = int(time.time())
        self.keys: keys.KeyRing | None = None
        """The accepted API keys; None when the configuration asks for none."""
        self._keys_source: keys.KeysSource | None = None
        self.table: routing.Table
        """The current routing table; ``apply`` replaces it."""
        self.apply(config)

    # -------------------------------------------------------------------------------------
    # Configuration.

    def apply(self, config: RouterConfig) -> None:
        """Route new requests with ``config`` (requests under way keep their table)."""
        table = routing.Table(config)
        for problem in table.problems:
            log.warning("config: %s", problem)
        self._use_keys(config.api_keys_file)
        self.table = table
        # Backends that left the configuration keep no idle connections open.
        urls = {backend.url for backend in config.backends.values()}
        for url in [url for url in self._transports if url not in urls]:
            self._transports.pop(url).close()
        log.info(
            "policy %s: tiers %s (ready: %s), %d overrides, fallback %s, API keys %s",
            config.policy,
            ", ".join(t.name for t in config.tiers),
            ", ".join(table.ready_tiers) or "none",
            len(config.overrides),
            "on" if config.fallback.enabled else "off",
            "required" if self.keys is not None else "not required",
        )

    def _tier_readiness(self) -> list[tuple[str, str, bool]]:
        table = self.table
        ready = set(table.ready_tiers)
        return [(tier.name, tier.model, tier.name in ready) for tier in table.config.tiers]

    def _use_keys(self, path: str | None) -> None:
        if path is None:
            self._keys_source, self.keys = None, None
            return
        if self._keys_source is not None and self._keys_source.path == Path(path):
            return
        self._keys_source = keys.KeysSource(Path(path))
        # Until the keys can be read, nobody is let in.
        self.keys = self._keys_source.poll() or keys.KeyRing()

    def close(self) -> None:
        """Close every backend's idle connections."""
        for transport in self._transports.values():
            transport.close()
        self._transports.clear()

    def poll_keys(self) -> None:
        if self._keys_source is not None and (ring := self._keys_source.poll()) is not None:
            self.keys = ring

    # -------------------------------------------------------------------------------------
    # Handlers.

    async def completions(self, http: web.Request) -> web.StreamResponse:
        return await self._serve(http, request.Endpoint.COMPLETIONS)

    async def chat_completions(self, http: web.Request) -> web.StreamResponse:
        return await self._serve(http, request.Endpoint.CHAT)

    async def models(self, http: web.Request) -> web.Response:
        try:
            self._authenticate(http)
        except errors.RouterError as exc:
            return exc.response()
        cards = [
            {"id": name, "object": "model", "created": self.started, "owned_by": "specfleet"}
            for name in self.table.model_names
        ]
        return web.json_response({"object": "list", "data": cards})

    async def health(self, _http: web.Request) -> web.Response:
        table = self.table
        return web.json_response(
            {"status": "ok", "policy": table.config.policy, "readyTiers": table.ready_tiers}
        )

    async def serve_metrics(self, _http: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.exposition(),
            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
        )

    async def unknown(self, http: web.Request) -> web.Response:
        if http.path in _KNOWN_PATHS:
            error: errors.RouterError = errors.MethodNotAllowedError(
                f"{http.method} is not allowed on {http.path}"
            )
        else:
            error = errors.PathNotFoundError(
                f"no such endpoint: {http.path[:200]}; the router serves /v1/completions, "
                "/v1/chat/completions and /v1/models"
            )
        return error.response()

    # -------------------------------------------------------------------------------------
    # The request path.

    async def _serve(self, http: web.Request, endpoint: request.Endpoint) -> web.StreamResponse:
        table = self.table
        key = ""
        try:
            key = self._authenticate(http)
            body = await self._read_body(http)
            parsed = request.parse(endpoint, body)
            model = parsed.model
            if model is None or table.is_routed(model):
                started = time.perf_counter()
                classification = classifier.classify(parsed)
                self.metrics.classification.observe(time.perf_counter() - started)
                route = table.routed(parsed, classification)
            else:
                route = table.direct(model)
        except errors.RouterError as exc:
            self.metrics.requests.labels("", "", "", str(exc.status), key).inc()
            return exc.response()
        try:
            return await self._forward(http, body, parsed, route, table, key)
        except asyncio.CancelledError:
            self.metrics.interrupted.labels("client_disconnected").inc()
            raise

    def _authenticate(self, http: web.Request) -> str:
        """The name of the request's API key, or "" when no key is needed."""
        ring = self.keys
        return "" if ring is None else ring.authenticate(http.headers.get("Authorization"))

    async def _read_body(self, http: web.Request) -> bytes:
        too_large = errors.BodyTooLargeError(
            f"the request body is larger than the router's limit of {self.max_body_bytes} bytes"
        )
        if http.content_length is not None and http.content_length > self.max_body_bytes:
            raise too_large
        try:
            return await http.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None

    async def _forward(
        self,
        http: web.Request,
        body: bytes,
        parsed: request.ParsedRequest,
        route: routing.Route,
        table: routing.Table,
        key: str,
    ) -> web.StreamResponse:
        target = route.target
        try:
            forwarded = await self._send(http, body, parsed, route, target, None)
        except proxy.ProxyError as exc:
            if route.fallback is None:
                return self._failed(exc, route, target, None, key)
            log.warning(
                "backend %s failed before answering (%s); retrying once on %s",
                target.model,
                exc,
                route.fallback.model,
            )
            self.metrics.fallbacks.labels(target.model, route.fallback.model).inc()
            failed, target = target, route.fallback
            try:
                forwarded = await self._send(http, body, parsed, route, target, failed)
            except proxy.ProxyError as exc2:
                return self._failed(exc2, route, target, failed, key)
        status = forwarded.response.status
        self.metrics.requests.labels(
            route.kind.value, target.tier or "", target.model, str(status), key
        ).inc()
        if forwarded.outcome is not proxy.Outcome.COMPLETE:
            self.metrics.interrupted.labels(forwarded.outcome.value).inc()
        elif status < 400 and table.baseline_cost is not None:
            served = target.cost if target.cost is not None else table.baseline_cost
            self.metrics.cost_served.labels(key).inc(served)
            self.metrics.cost_baseline.labels(key).inc(table.baseline_cost)
        return forwarded.response

    async def _send(
        self,
        http: web.Request,
        body: bytes,
        parsed: request.ParsedRequest,
        route: routing.Route,
        target: routing.Target,
        fallback_from: routing.Target | None,
    ) -> proxy.Forwarded:
        """Forward to ``target``; raises ProxyError if it fails before answering (a 5xx too,
        while a fallback is left)."""
        backend = _Backend(
            self._transport(target.url),
            _route_headers(route, target, fallback_from),
            strip_authorization=self.keys is not None,
            refuse_5xx=fallback_from is None and route.fallback is not None,
            first_byte=self.metrics.upstream_first_byte.labels(target.tier or "", target.model),
        )
        if route.kind is not routing.RouteKind.DIRECT:
            body = request.with_model(parsed, target.served_name)
        started = time.perf_counter()
        forwarded = await proxy.forward(http, body, backend)
        self.metrics.upstream_latency.labels(target.tier or "", target.model).observe(
            time.perf_counter() - started
        )
        return forwarded

    def _failed(
        self,
        exc: proxy.ProxyError,
        route: routing.Route,
        target: routing.Target,
        fallback_from: routing.Target | None,
        key: str,
    ) -> web.Response:
        log.warning("backend %s failed before answering: %s", target.model, exc)
        response = exc.response()
        response.headers.update(_route_headers(route, target, fallback_from))
        self.metrics.requests.labels(
            route.kind.value, target.tier or "", target.model, str(response.status), key
        ).inc()
        return response

    def _transport(self, url: str) -> proxy.Transport:
        transport = self._transports.get(url)
        if transport is None:
            try:
                transport = self._transport_for(url)
            except ValueError as exc:
                raise proxy.UpstreamUnavailableError(f"backend URL {url!r}: {exc}") from None
            self._transports[url] = transport
        return transport


def _route_headers(
    route: routing.Route, target: routing.Target, fallback_from: routing.Target | None
) -> dict[str, str]:
    headers = {HEADER_ROUTE: route.kind.value, HEADER_MODEL: target.model}
    if target.tier is not None:
        headers[HEADER_TIER] = target.tier
    if fallback_from is not None:
        headers[HEADER_FALLBACK_FROM] = fallback_from.model
    return headers


class _Backend:
    """The proxy core's transport to one chosen backend, adapted for routing: the client's
    router key is not sent on, a 5xx counts as a failure before the first byte while a
    fallback is left, the time to the response headers is observed, and the response carries
    the route headers (any the backend sent itself are dropped)."""

    def __init__(
        self,
        transport: proxy.Transport,
        headers: dict[str, str],
        *,
        strip_authorization: bool,
        refuse_5xx: bool,
        first_byte: prometheus_client.Histogram,
    ) -> None:
        self._transport = transport
        self._headers = headers
        self._strip_authorization = strip_authorization
        self._refuse_5xx = refuse_5xx
        self._first_byte = first_byte

    async def send(self, upstream: proxy.UpstreamRequest) -> proxy.UpstreamResponse:
        if self._strip_authorization and "Authorization" in upstream.headers:
            headers = upstream.headers.copy()
            del headers["Authorization"]
            upstream = dataclasses.replace(upstream, headers=headers)
        started = time.perf_counter()
        response = await self._transport.send(upstream)
        self._first_byte.observe(time.perf_counter() - started)
        if self._refuse_5xx and response.status >= 500:
            await response.aclose()
            raise proxy.UpstreamFailedError(f"the backend answered {response.status}")
        return _Labelled(response, self._headers)


class _Labelled:
    """An upstream response with the route headers added."""

    def __init__(self, response: proxy.UpstreamResponse, extra: dict[str, str]) -> None:
        self._response = response
        headers = CIMultiDict(response.headers)
        for name in _OWN_HEADERS:
            headers.popall(name, None)
        headers.update(extra)
        self._headers = headers

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> MultiMapping[str]:
        return self._headers

    def chunks(self) -> AsyncIterator[bytes]:
        return self._response.chunks()

    async def aclose(self) -> None:
        await self._response.aclose()


async def watch(router: Router, config_file: ConfigFile, interval: float) -> None:
    """Reread the configuration and the API keys every ``interval`` seconds, forever."""
    while True:
        config = config_file.poll()
        if config is not None:
            router.apply(config)
            if router.counts_reloads:
                router.metrics.config_reloads.inc()
        router.poll_keys()
        await asyncio.sleep(interval)


def make_app(
    router: Router, config_file: ConfigFile | None = None, interval: float = POLL_INTERVAL
) -> web.Application:
    """The aiohttp application for ``router``, rereading ``config_file`` while it runs."""
    app = web.Application(client_max_size=router.max_body_bytes)
    app.router.add_post(request.Endpoint.COMPLETIONS.value, router.completions)
    app.router.add_post(request.Endpoint.CHAT.value, router.chat_completions)
    app.router.add_get("/v1/models", router.models)
    app.router.add_get("/health", router.health)
    app.router.add_get("/metrics", router.serve_metrics)
    app.router.add_route("*", "/{tail:.*}", router.unknown)
    if config_file is not None:
        source = config_file
        serving.run_alongside(app, lambda: watch(router, source, interval))
    return app
