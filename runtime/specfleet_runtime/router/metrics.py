"""The router's Prometheus metrics (``specfleet_router_*``), served on its ``/metrics``.

What an on-call engineer and a capacity planner read: where requests went and how they ended
(by route kind, tier, model, HTTP status and API key name), how long classifying and the
backends took, how often the fallback saved a request, the estimated cost of what was served
next to what the last (largest) tier alone would have cost, which classifier picks the tiers
(``specfleet_router_classifier_info``: kind and content hash) and how often a learned one could
not be loaded.

Labels hold only names from the configuration (tiers, InferenceModels, API key names) and
status codes, never what a client sent (an unknown model name would grow the series without
bound) and never a key's value. Each router has its own registry, so tests can build several in
one process. A router of several worker processes (``--workers``) answers a scrape with every
worker's counts added up (prometheus_client's multiprocess mode, on when
``PROMETHEUS_MULTIPROC_DIR`` is set), and tier readiness, which is the configuration's rather
than a count, from the current routing table of the worker the scrape reached (so is the
classifier in force). Every worker rereads the configuration and the classifier's artifact
itself, but only the first (``--worker-index 0``) counts configuration reloads and classifier
load failures: the workers read the same files, so a problem they all meet counts once, not
once per worker; one that only another worker met in passing (an artifact rewritten in place
and read half-written, taken whole at its next read) is in that worker's log, not in the count.
Called by ``specfleet_runtime.router.app``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from specfleet_runtime.workers import MULTIPROCESS_ENV

TierReadiness = Callable[[], Iterable[tuple[str, str, bool]]]
"""(tier, InferenceModel, ready) for every tier of the current configuration."""
InForce = Callable[[], tuple[str, str]]
"""(kind, content hash or "") of the classifier that picks tiers now."""

# The classifier runs in microseconds; the top buckets would show a regression.
CLASSIFICATION_BUCKETS = tuple(us / 1e6 for us in (5, 10, 25, 50, 100, 250, 500, 1000, 5000))
# From a fixed-answer backend (milliseconds) to long generations (minutes).
UPSTREAM_BUCKETS = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    *(10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)


class RouterMetrics:
    """The metric families, registered in a registry of their own."""

    def __init__(self, tiers: TierReadiness, classifier: InForce | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "specfleet_router_requests",
            "Requests answered, by route (tier, override, direct; empty when refused before "
            "routing), tier, InferenceModel, HTTP status and API key name.",
            ["route", "tier", "model", "status", "key"],
            registry=r,
        )
        self.classification = Histogram(
            "specfleet_router_classification_seconds",
            "Time spent classifying a routed request and choosing its route: the heuristic, "
            "the overrides, and the learned classifier when one is in force.",
            buckets=CLASSIFICATION_BUCKETS,
            registry=r,
        )
        self.upstream_first_byte = Histogram(
            "specfleet_router_upstream_first_byte_seconds",
            "Time from sending a request to a backend to its response headers.",
            ["tier", "model"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "specfleet_router_upstream_latency_seconds",
            "Time from sending a request to a backend to the end of its response.",
            ["tier", "model"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "specfleet_router_fallbacks",
            "Requests retried on the next tier up after their backend failed before the first "
            "byte.",
            ["from_model", "to_model"],
            registry=r,
        )
        self.cost_served = Counter(
            "specfleet_router_cost_served",
            "Estimated cost of the successful requests, in the tiers' relative cost units.",
            ["key"],
            registry=r,
        )
        self.cost_baseline = Counter(
            "specfleet_router_cost_baseline",
            "What the same requests would have cost on the last (largest) tier alone.",
            ["key"],
            registry=r,
        )
        self.interrupted = Counter(
            "specfleet_router_interrupted_responses",
            "Responses that did not end cleanly, by why.",
            ["reason"],
            registry=r,
        )
        self.config_reloads = Counter(
            "specfleet_router_config_reloads",
            "Configurations read from the config file, after the first (counted once however "
            "many workers read it).",
            registry=r,
        )
        self.classifier_load_failures = Counter(
            "specfleet_router_classifier_load_failures",
            "Learned classifiers not taken from the configured artifact, once per distinct "
            "problem: unreadable (the file cannot be read), invalid (not a whole artifact of "
            "this version), tiers (trained for other tiers). Counted as the first of the "
            "router's workers met them (each worker reads the artifact itself).",
            ["reason"],
            registry=r,
        )
        for reason in ("client_disconnected", "upstream_broke"):
            self.interrupted.labels(reason)
        own: list[Collector] = [_TierReady(tiers)]
        if classifier is not None:
            own.append(_ClassifierInForce(classifier))
        for collector in own:
            r.register(collector)
        self._answered: dict[tuple[str, str, str, int, str], Counter] = {}
        self._upstream: dict[tuple[str, str], tuple[Histogram, Histogram]] = {}
        self._scraped = r
        if MULTIPROCESS_ENV in os.environ:
            self._scraped = CollectorRegistry()
            MultiProcessCollector(self._scraped)  # type: ignore[no-untyped-call]
            for collector in own:
                self._scraped.register(collector)

    def answered(self, route: str, tier: str, model: str, status: int, key: str) -> Counter:
        """``specfleet_router_requests``' series for these labels. The series of the request
        path are looked up in a dict of their own: ``labels`` checks and locks on every call,
        which adds up on every request. Their labels are names from the configuration and
        status codes, so the dicts stay as small as the series."""
        labels = (route, tier, model, status, key)
        child = self._answered.get(labels)
        if child is None:
            child = self._answered[labels] = self.requests.labels(
                route, tier, model, str(status), key
            )
        return child

    def upstream(self, tier: str, model: str) -> tuple[Histogram, Histogram]:
        """The first-byte and latency series of a backend (see ``answered``)."""
        pair = self._upstream.get((tier, model))
        if pair is None:
            pair = self._upstream[(tier, model)] = (
                self.upstream_first_byte.labels(tier, model),
                self.upstream_latency.labels(tier, model),
            )
        return pair

    def exposition(self) -> bytes:
        """The text a scrape of ``/metrics`` gets."""
        return generate_latest(self._scraped)


class _TierReady(Collector):
    """``specfleet_router_tier_ready``, read from the routing table at each scrape."""

    def __init__(self, tiers: TierReadiness) -> None:
        self._tiers = tiers

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "specfleet_router_tier_ready",
            "1 if the tier has a ready backend in the current configuration, else 0.",
            labels=["tier", "model"],
        )
        for tier, model, ready in self._tiers():
            family.add_metric([tier, model], 1.0 if ready else 0.0)
        yield family


class _ClassifierInForce(Collector):
    """``specfleet_router_classifier_info``, read from the router at each scrape."""

    def __init__(self, classifier: InForce) -> None:
        self._classifier = classifier

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "specfleet_router_classifier_info",
            "1 for the classifier that picks routed requests' tiers: kind heuristic (no "
            "content_hash), or learned with its artifact's content hash.",
            labels=["kind", "content_hash"],
        )
        kind, content_hash = self._classifier()
        family.add_metric([kind, content_hash], 1.0)
        yield family
