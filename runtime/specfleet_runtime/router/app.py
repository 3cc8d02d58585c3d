"""The router's HTTP application: the thin shell around the pure routing core.

Routes:
- ``POST /v1/completions``, ``POST /v1/chat/completions``: check the API key (when keys are
  configured), read the body (``proxy.read_body``: decoded, at most ``max_body_bytes``), parse
  it (``specfleet.routing.request``; a body it refuses is a 400 ``invalid_request`` naming the
  parameter), decide (``routing``; routed requests are classified by
  ``specfleet.routing.heuristic``, their tier picked by the learned classifier in force if any,
  and timed), then
  forward it with the shared proxy core (``specfleet_runtime.proxy``), streamed through
  untouched but for ``model``, which the backend gets as its served name. A backend that fails
  before its first byte is retried once on the fallback the route names: no connection, no
  response headers within the policy's ``timeouts.firstByteSeconds``, a 5xx, or busy (429, or
  a gate's 503 ``queue_timeout``). When the fallback fails too, the client gets the first
  backend's own answer if it gave one (a busy gate's status, error and Retry-After), else the
  router's error. Every forwarded response carries ``X-Specfleet-Route`` (tier, override or
  direct), ``X-Specfleet-Tier`` (when a tier served it), ``X-Specfleet-Model`` (the
  InferenceModel), ``X-Specfleet-Classifier`` for routed requests (``heuristic``, or
  ``learned sha256:...``: what was in force to pick the tier) and, after a fallback,
  ``X-Specfleet-Fallback-From``.
- ``GET /v1/models``: the policy's name, ``auto`` and the served models; ``GET
  /v1/models/{id}``: one of them, or an InferenceModel's name (both need a key when keys are on).
- ``GET /health``: 200 with the ready tiers and the classifier in force while the router
  runs. It does not follow the
  backends: with every backend down, clients get a clear 503 from the router rather than no
  router at all.
- ``GET /metrics``: ``specfleet_router_*``.
- Anything else: 404 (405 for a known path), OpenAI-style, as is every answer the router makes
  itself. Client mistakes are 4xx, each logged as one WARNING line; the router's own 5xx are
  only ``no_ready_backend`` (503, Retry-After 5) and a backend failing with no fallback left
  (502; 503 ``upstream_unavailable`` and 504 ``upstream_timeout``, Retry-After 1).

Every request has an ID: the client's ``X-Request-Id``, or one the router makes. It goes to the
backend, comes back on every answer (errors included) and names the request in the log.

With ``capture`` in the configuration, the completions requests its sample rate picks by ID
(``specfleet_runtime.capture``), answered by a backend or refused by the router, are recorded with
the route taken: the handler keeps references as the request passes and hands them to the
capture at the end (``specfleet_runtime.capture.tap``); the capture is rebuilt
when a reloaded configuration changes it, the one replaced writing what it holds on its own
thread (``Router.close`` waits for it too).

The configuration (and the API keys and the learned classifier's artifact it points at) is
reread every ``interval`` without a restart (``specfleet_runtime.router.artifact`` says which
classifier is in force when the artifact cannot be used); a request keeps the table and the
classifier it started with. The app must run with handler
cancellation on, so a client that goes away stops its upstream request. Called by
``specfleet_runtime.router.cli`` and by tests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

import prometheus_client
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict, MultiMapping

from specfleet.api.capture import CaptureConfig
from specfleet.api.routerconfig import InForceClassifier, RouterConfig
from specfleet.routing import heuristic, request
from specfleet_runtime import capture as capturing
from specfleet_runtime import errors as datapath_errors
from specfleet_runtime import proxy, serving
from specfleet_runtime.capture import tap
from specfleet_runtime.capture import writer as capture_writer
from specfleet_runtime.router import artifact, errors, inforce, keys, metrics, routing
from specfleet_runtime.router.config import POLL_INTERVAL, ConfigFile

log = logging.getLogger(__name__)

HEADER_ROUTE = "X-Specfleet-Route"
HEADER_TIER = "X-Specfleet-Tier"
HEADER_MODEL = "X-Specfleet-Model"
HEADER_FALLBACK_FROM = "X-Specfleet-Fallback-From"
HEADER_CLASSIFIER = "X-Specfleet-Classifier"
_OWN_HEADERS = (HEADER_ROUTE, HEADER_TIER, HEADER_MODEL, HEADER_FALLBACK_FROM, HEADER_CLASSIFIER)

DEFAULT_MAX_BODY_BYTES = proxy.DEFAULT_MAX_BODY_BYTES

_KNOWN_PATHS = frozenset(
    {*(e.value for e in request.Endpoint), "/v1/models", "/health", "/metrics"}
)
_REQUEST_ID = web.RequestKey("request_id", str)
"""Where a request's ID is kept on the aiohttp request."""
_MAX_REQUEST_ID = 128
# A refused backend answer (busy, 5xx) is kept to be given to the client if the fallback fails
# too; an answer longer than this is not an error body worth keeping.
_MAX_REFUSED_BODY = 64 * 1024


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
        pod: str | None = None,
        capture_seq: tuple[int, int] = (0, 1),
    ) -> None:
        """``pod`` names this router in captured batches (default ``capture.pod_name()``);
        ``capture_seq`` is the (offset, step) of their numbers, so workers sharing a pod name
        never name two batches alike."""
        self._transport_for = transport_for
        self._transports: dict[str, BackendTransport] = {}
        self.max_body_bytes = max_body_bytes
        self.counts_reloads = counts_reloads
        """Whether configuration reloads and classifier load failures count in the metrics
        (only the first of a router's workers counts them; every worker reads the files)."""
        self.metrics = metrics.RouterMetrics(self._tier_readiness, self._classifier_in_force)
        for reason in artifact.REASONS:
            self.metrics.classifier_load_failures.labels(reason)
        self.started = int(time.time())
        self.keys: keys.KeyRing | None = None
        """The accepted API keys; None when the configuration asks for none."""
        self._keys_source: keys.KeysSource | None = None
        self._pod = pod
        self._capture_seq = capture_seq
        self._capture_metrics: capturing.CaptureMetrics | None = None
        self.capture: capturing.Capture | None = None
        """What captures requests; None when the configuration asks for none."""
        self._retired: list[capturing.Capture] = []
        """Captures a reload replaced whose writers may still be writing what they held."""
        self._artifact: artifact.ArtifactFile | None = None
        self._in_force: inforce.StoreArtifact | None = None
        self.chooser = routing.HEURISTIC
        """What picks routed requests' tiers now (see ``specfleet_runtime.router.artifact``)."""
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
        self._use_capture(config.capture)
        # The table and the classifier change together: a learned classifier fits the tiers of
        # the table it is used with.
        self._use_classifier(config)
        self.table = table
        # Backends that left the configuration keep no idle connections open.
        urls = {backend.url for backend in config.backends.values()}
        for url in [url for url in self._transports if url not in urls]:
            self._transports.pop(url).close()
        log.info(
            "policy %s: tiers %s (ready: %s), %d overrides, fallback %s, API keys %s, "
            "classifier %s",
            config.policy,
            ", ".join(t.name for t in config.tiers),
            ", ".join(table.ready_tiers) or "none",
            len(config.overrides),
            "on" if config.fallback.enabled else "off",
            "required" if self.keys is not None else "not required",
            " ".join(self._classifier_in_force()).strip(),
        )

    def _use_classifier(self, config: RouterConfig) -> None:
        named = config.classifier
        tiers = tuple(t.name for t in config.tiers)
        if isinstance(named, InForceClassifier):
            # Read at the next poll, off the event loop: until then what was in force stays.
            assert config.capture is not None  # the file's rule
            following = self._in_force
            wanted = (config.capture, tiers, named.in_force.poll_seconds)
            if following is None or following.identity() != wanted:
                following = inforce.StoreArtifact(*wanted, failed=self._classifier_failed)
                if self._in_force is None or self._in_force.tiers != tiers:
                    self.chooser = routing.HEURISTIC
                else:  # the same tiers from another store or pace: keep routing meanwhile
                    following.chooser = self.chooser
                self._in_force = following
            self._artifact = None
            return
        self._in_force = None
        if isinstance(named, str):  # the heuristic
            self._artifact, self.chooser = None, routing.HEURISTIC
            return
        path = Path(named.path)
        current = self._artifact
        if current is None or (current.path, current.tiers) != (path, tiers):
            current = artifact.ArtifactFile(path, tiers, self._classifier_failed)
            current.poll()
            self._artifact = current
        self.chooser = current.chooser

    def _classifier_failed(self, reason: str) -> None:
        if self.counts_reloads:
            self.metrics.classifier_load_failures.labels(reason).inc()

    def _classifier_in_force(self) -> tuple[str, str]:
        chooser = self.chooser
        return chooser.kind, chooser.content_hash or ""

    def poll_classifier(self) -> None:
        """Reread the learned classifier's artifact, or the store's pointer to the one in
        force, if the configuration names one. Blocks on the store: run it off the loop."""
        if self._artifact is not None and self._artifact.poll() is not None:
            self.chooser = self._artifact.chooser
        following = self._in_force
        if following is not None and following.poll():
            self.chooser = following.chooser

    def _use_capture(self, config: CaptureConfig | None) -> None:
        current = self.capture
        if (current.config if current is not None else None) == config:
            return
        if current is not None:
            current.stop()  # it writes what waits on its own thread, then ends
            self._retired = [*(c for c in self._retired if c.writing), current]
        if config is None:
            self.capture = None
            log.info("capture off")
            return
        if self._capture_metrics is None:
            self._capture_metrics = capturing.CaptureMetrics(self.metrics.registry)
        pod = self._pod if self._pod is not None else capturing.pod_name()
        self.capture = capturing.Capture(
            config,
            pod=pod,
            metrics=self._capture_metrics,
            seq_offset=self._capture_seq[0],
            seq_step=self._capture_seq[1],
            writer_process=True,
        )
        log.info(
            "capture: %g of requests (%s) to %s as pod %s",
            config.sample_rate,
            config.keep,
            config.store.directory or f"s3://{config.store.s3.bucket if config.store.s3 else ''}",
            pod,
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

    def close(self, timeout: float = capture_writer.CLOSE_TIMEOUT) -> bool:
        """Close every backend's idle connections, and write what the capture holds, and what
        captures a reload replaced still hold, waiting at most ``timeout`` seconds in all;
        whether it was all written in time (if not, closing again waits again)."""
        for transport in self._transports.values():
            transport.close()
        self._transports.clear()
        captures = [*self._retired, *([self.capture] if self.capture is not None else [])]
        deadline = time.monotonic() + timeout
        for capture in captures:
            capture.close(max(deadline - time.monotonic(), 0.0))
        self._retired = [capture for capture in captures if capture.writing]
        self.capture = None
        return not self._retired

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
            return self._refused(http, exc)
        cards = [self._card(name) for name in self.table.model_names]
        return web.json_response({"object": "list", "data": cards})

    async def model(self, http: web.Request) -> web.Response:
        name = http.match_info["model"]
        try:
            self._authenticate(http)
            if not self.table.knows(name):
                raise errors.ModelNotFoundError(
                    f"the model {name[:200]!r} does not exist here; use one of "
                    + ", ".join(repr(known) for known in self.table.model_names),
                    param="model",
                )
        except errors.RouterError as exc:
            return self._refused(http, exc)
        return web.json_response(self._card(name))

    def _card(self, name: str) -> dict[str, object]:
        return {"id": name, "object": "model", "created": self.started, "owned_by": "specfleet"}

    async def health(self, _http: web.Request) -> web.Response:
        table, chooser = self.table, self.chooser
        return web.json_response(
            {
                "status": "ok",
                "policy": table.config.policy,
                "readyTiers": table.ready_tiers,
                "classifier": {"kind": chooser.kind, "contentHash": chooser.content_hash},
            }
        )

    async def serve_metrics(self, _http: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.exposition(),
            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
        )

    async def unknown(self, http: web.Request) -> web.Response:
        if http.path in _KNOWN_PATHS or http.path.startswith("/v1/models/"):
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
        sample = tap.start(self.capture, http[_REQUEST_ID], http)
        if sample is None:
            return await self._answer(http, endpoint, None)
        response = None
        try:
            response = await self._answer(http, endpoint, sample)
            return response
        except asyncio.CancelledError:  # the client went away
            sample.cancelled()
            raise
        finally:
            sample.finish(response, self.capture)

    async def _answer(
        self, http: web.Request, endpoint: request.Endpoint, sample: tap.Tap | None
    ) -> web.StreamResponse:
        table, chooser = self.table, self.chooser
        key = ""
        try:
            key = self._authenticate(http)
            body = await proxy.read_body(http, self.max_body_bytes)
            if sample is not None:
                sample.exchange.body = body
            try:
                parsed = request.parse(endpoint, body)
            except request.MalformedRequestError as exc:
                raise errors.InvalidRequestError.of(exc) from None
            model = parsed.model
            if model is None or table.is_routed(model):
                started = time.perf_counter()
                try:
                    seen = heuristic.read(parsed.text)
                    classification = heuristic.classify(parsed, seen)
                    route = table.routed(parsed, classification, chooser, seen)
                finally:
                    self.metrics.classification.observe(time.perf_counter() - started)
            else:
                route = table.direct(model)
        except datapath_errors.DataPathError as exc:
            self.metrics.answered("", "", "", exc.status, key).inc()
            return self._refused(http, exc)
        try:
            return await self._forward(http, body, parsed, route, table, key, sample)
        except asyncio.CancelledError:
            self.metrics.interrupted.labels("client_disconnected").inc()
            raise

    def _authenticate(self, http: web.Request) -> str:
        """The name of the request's API key, or "" when no key is needed."""
        ring = self.keys
        return "" if ring is None else ring.authenticate(http.headers.get("Authorization"))

    def _refused(self, http: web.Request, exc: datapath_errors.DataPathError) -> web.Response:
        """The router's own answer to a request it does not forward, logged in one line."""
        if exc.status < 500:
            log.warning(
                "request %s: %s %s: %d %s: %s",
                http[_REQUEST_ID],
                http.method,
                http.path[:200],
                exc.status,
                exc.code,
                exc,
            )
        return exc.response()

    async def _forward(
        self,
        http: web.Request,
        body: bytes,
        parsed: request.ParsedRequest,
        route: routing.Route,
        table: routing.Table,
        key: str,
        sample: tap.Tap | None = None,
    ) -> web.StreamResponse:
        target = route.target
        request_id = http[_REQUEST_ID]
        if sample is not None:
            sample.exchange.route = _decision(route, target, None)
        try:
            forwarded = await self._send(http, body, parsed, route, target, None, sample)
        except proxy.ProxyError as exc:
            if route.fallback is None:
                return self._failed(http, exc, route, target, None, key)
            log.warning(
                "request %s: backend %s failed before answering (%s); retrying once on %s",
                request_id,
                target.model,
                exc,
                route.fallback.model,
            )
            self.metrics.fallbacks.labels(target.model, route.fallback.model).inc()
            failed, target = target, route.fallback
            if sample is not None:
                sample.exchange.route = _decision(route, target, failed)
            try:
                forwarded = await self._send(http, body, parsed, route, target, failed, sample)
            except proxy.ProxyError as exc2:
                if isinstance(exc, BackendAnswerError):
                    # What the first backend said (busy: its status, error and Retry-After)
                    # tells the client more than that the fallback failed too.
                    log.warning(
                        "request %s: fallback %s failed too (%s)", request_id, target.model, exc2
                    )
                    if sample is not None:
                        sample.exchange.route = _decision(route, failed, None)
                    return self._failed(http, exc, route, failed, None, key)
                return self._failed(http, exc2, route, target, failed, key)
        status = forwarded.response.status
        self.metrics.answered(route.kind.value, target.tier or "", target.model, status, key).inc()
        if forwarded.outcome is not proxy.Outcome.COMPLETE:
            self.metrics.interrupted.labels(forwarded.outcome.value).inc()
            if sample is not None and forwarded.outcome is proxy.Outcome.CLIENT_DISCONNECTED:
                sample.cancelled()
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
        sample: tap.Tap | None = None,
    ) -> proxy.Forwarded:
        """Forward to ``target``; raises ProxyError if it fails before answering (a 5xx too,
        while a fallback is left). A sampled request's answer is kept as it passes."""
        first_byte, latency = self.metrics.upstream(target.tier or "", target.model)
        request_id = http[_REQUEST_ID]
        backend = _Backend(
            self._transport(target.url),
            _route_headers(route, target, fallback_from, request_id),
            request_id=request_id,
            strip_authorization=self.keys is not None,
            refuse_failures=fallback_from is None and route.fallback is not None,
            first_byte_timeout=self.table.config.timeouts.first_byte_seconds,
            first_byte=first_byte,
            sample=sample,
        )
        if parsed.model != target.served_name:
            body = request.with_model(parsed, target.served_name)
        started = time.perf_counter()
        forwarded = await proxy.forward(http, body, backend)
        latency.observe(time.perf_counter() - started)
        return forwarded

    def _failed(
        self,
        http: web.Request,
        exc: proxy.ProxyError,
        route: routing.Route,
        target: routing.Target,
        fallback_from: routing.Target | None,
        key: str,
    ) -> web.Response:
        request_id = http[_REQUEST_ID]
        log.warning(
            "request %s: backend %s failed before answering: %s", request_id, target.model, exc
        )
        response = exc.response()
        response.headers.update(_route_headers(route, target, fallback_from, request_id))
        self.metrics.answered(
            route.kind.value, target.tier or "", target.model, response.status, key
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


def _decision(
    route: routing.Route, target: routing.Target, fallback_from: routing.Target | None
) -> capturing.RouteDecision:
    """The route as a captured record holds it."""
    classification = route.classification
    chooser = route.chooser
    return capturing.RouteDecision(
        kind=route.kind.value,
        model=target.model,
        tier=target.tier,
        complexity=classification.complexity if classification is not None else None,
        expected_tokens=classification.expected_tokens if classification is not None else None,
        categories=tuple(sorted(classification.categories)) if classification is not None else (),
        fallback_from=fallback_from.model if fallback_from is not None else None,
        classifier=chooser.kind if chooser is not None else None,
        classifier_hash=chooser.content_hash if chooser is not None else None,
    )


def _route_headers(
    route: routing.Route,
    target: routing.Target,
    fallback_from: routing.Target | None,
    request_id: str,
) -> dict[str, str]:
    headers = {
        HEADER_ROUTE: route.kind.value,
        HEADER_MODEL: target.model,
        proxy.HEADER_REQUEST_ID: request_id,
    }
    if target.tier is not None:
        headers[HEADER_TIER] = target.tier
    if fallback_from is not None:
        headers[HEADER_FALLBACK_FROM] = fallback_from.model
    chooser = route.chooser
    if chooser is not None:
        headers[HEADER_CLASSIFIER] = (
            chooser.kind if chooser.learned is None else f"learned {chooser.content_hash}"
        )
    return headers


class BackendAnswerError(proxy.ProxyError):
    """A backend answered busy (429) or with a 5xx while a fallback was left; its answer is
    kept, to be given to the client as it was if the fallback fails too."""

    def __init__(self, status: int, headers: MultiMapping[str], body: bytes | None) -> None:
        super().__init__(f"the backend answered {status}")
        self.status = status
        self._content_type = headers.get("Content-Type")
        self._retry_after = headers.get("Retry-After")
        self._body = body

    def response(self) -> web.Response:
        if self._body is None:  # too long to keep: say what it was
            return super().response()
        response = web.Response(status=self.status, body=self._body)
        if self._content_type is not None:
            response.headers["Content-Type"] = self._content_type
        if self._retry_after is not None:
            response.headers["Retry-After"] = self._retry_after
        return response


class _Backend:
    """The proxy core's transport to one chosen backend, adapted for routing: the client's
    router key is not sent on, the request ID is, the response headers must come within the
    first-byte timeout (and the backend's gate is told to queue it for less), a 5xx or a busy
    429 counts as a failure before the first byte while a fallback is left, the time to the
    response headers is observed, and the response carries the route headers (any the backend
    sent itself are dropped)."""

    def __init__(
        self,
        transport: proxy.Transport,
        headers: dict[str, str],
        *,
        request_id: str,
        strip_authorization: bool,
        refuse_failures: bool,
        first_byte_timeout: float,
        first_byte: prometheus_client.Histogram,
        sample: tap.Tap | None = None,
    ) -> None:
        self._transport = transport
        self._sample = sample
        self._headers = headers
        self._request_id = request_id
        self._strip_authorization = strip_authorization
        self._refuse_failures = refuse_failures
        self._first_byte_timeout = first_byte_timeout
        self._first_byte = first_byte

    async def send(self, upstream: proxy.UpstreamRequest) -> proxy.UpstreamResponse:
        # proxy.forward made these headers for this one send: they are changed in place.
        headers = upstream.headers
        if self._strip_authorization:
            headers.popall("Authorization", None)
        headers[proxy.HEADER_REQUEST_ID] = self._request_id
        headers[proxy.HEADER_QUEUE_TIMEOUT] = f"{queue_timeout(self._first_byte_timeout):g}"
        upstream = proxy.UpstreamRequest(
            upstream.method, upstream.target, headers, upstream.body, self._first_byte_timeout
        )
        started = time.perf_counter()
        # The transport times the wait for the headers (a timer, not a task's timeout: this is
        # every request's path).
        response = await self._transport.send(upstream)
        self._first_byte.observe(time.perf_counter() - started)
        if self._refuse_failures and (response.status >= 500 or response.status == 429):
            # A refusal's body comes with its headers; what is left of the budget bounds it.
            left = self._first_byte_timeout - (time.perf_counter() - started)
            try:
                async with asyncio.timeout(max(left, 0.0)):
                    refusal = await _refusal(response)
            except TimeoutError:
                raise proxy.UpstreamTimeoutError(
                    f"the backend answered {response.status} and sent no body within"
                    f" {self._first_byte_timeout:g} s"
                ) from None
            raise refusal
        return _Labelled(response, self._headers, self._sample)


def queue_timeout(first_byte_timeout: float) -> float:
    """How long a backend's gate may queue a request the router waits ``first_byte_timeout``
    for: a second less (half, for a timeout under two seconds), so the gate's busy answer
    arrives before the router would give up on it."""
    return max(first_byte_timeout - 1.0, first_byte_timeout / 2)


async def _refusal(response: proxy.UpstreamResponse) -> BackendAnswerError:
    """The refused answer, read (if short) and released."""
    pieces: list[bytes] = []
    size = 0
    try:
        async for chunk in response.chunks():
            pieces.append(chunk)
            size += len(chunk)
            if size > _MAX_REFUSED_BODY:
                break
    except proxy.ProxyError:
        size = _MAX_REFUSED_BODY + 1  # broken off: nothing worth passing on
    finally:
        await response.aclose()
    body = b"".join(pieces) if size <= _MAX_REFUSED_BODY else None
    return BackendAnswerError(response.status, response.headers, body)


class _Labelled:
    """An upstream response with the route headers added (and its chunks kept as they pass,
    for a sampled request)."""

    def __init__(
        self,
        response: proxy.UpstreamResponse,
        extra: dict[str, str],
        sample: tap.Tap | None = None,
    ) -> None:
        self._response = response
        self._sample = sample
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
        if self._sample is None:
            return self._response.chunks()
        content_type = self._headers.get("Content-Type", "")
        return self._sample.chunks(self._response.chunks(), self.status, content_type)

    async def aclose(self) -> None:
        await self._response.aclose()


async def watch(router: Router, config_file: ConfigFile, interval: float) -> None:
    """Reread the configuration, the API keys and the learned classifier's artifact every
    ``interval`` seconds, forever."""
    while True:
        config = config_file.poll()
        if config is not None:
            router.apply(config)
            if router.counts_reloads:
                router.metrics.config_reloads.inc()
        router.poll_keys()
        await asyncio.to_thread(router.poll_classifier)
        await asyncio.sleep(interval)


def _request_id(http: web.Request) -> str:
    """The client's request ID if it sent a usable one, else a new one."""
    given = http.headers.get(proxy.HEADER_REQUEST_ID)
    if given and len(given) <= _MAX_REQUEST_ID and given.isascii() and given.isprintable():
        return given
    return proxy.new_request_id()


def _identified(handler: Handler) -> Handler:
    """``handler`` giving every request an ID, and every answer the router makes itself the
    header (a forwarded answer carries it among the route headers). A wrapper rather than an
    aiohttp middleware: with any middleware, aiohttp adds its own to every request's path."""

    async def identified(request: web.Request) -> web.StreamResponse:
        request[_REQUEST_ID] = request_id = _request_id(request)
        response = await handler(request)
        if not response.prepared:
            response.headers[proxy.HEADER_REQUEST_ID] = request_id
        return response

    return identified


def make_app(
    router: Router, config_file: ConfigFile | None = None, interval: float = POLL_INTERVAL
) -> web.Application:
    """The aiohttp application for ``router``, rereading ``config_file`` while it runs."""
    app = web.Application(client_max_size=router.max_body_bytes)
    add = app.router
    add.add_post(request.Endpoint.COMPLETIONS.value, _identified(router.completions))
    add.add_post(request.Endpoint.CHAT.value, _identified(router.chat_completions))
    add.add_get("/v1/models", _identified(router.models))
    add.add_get("/v1/models/{model:.+}", _identified(router.model))
    add.add_get("/health", _identified(router.health))
    add.add_get("/metrics", _identified(router.serve_metrics))
    add.add_route("*", "/{tail:.*}", _identified(router.unknown))
    if config_file is not None:
        source = config_file
        serving.run_alongside(app, lambda: watch(router, source, interval))
    return app
