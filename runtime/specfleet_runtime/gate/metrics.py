"""The gate's own Prometheus metrics (``specfleet_gate_*``), served on the gate's ``/metrics``.

vLLM's ``vllm:*`` metrics stay on vLLM's own port; these describe what vLLM cannot see: the
requests waiting in front of it. The autoscaler reads the end-to-end and time-to-first-token
histograms (they include the time spent queued, unlike vLLM's) and the queue depth; an
on-call engineer reads the limit and the rejections. Each gate has its own registry, so tests
can build many gates in one process.

Called by ``specfleet_runtime.gate.app``.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# vLLM's own request-latency buckets (vllm:e2e_request_latency_seconds), so the gate's latency and
# vLLM's compare bucket for bucket.
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
# Most requests wait no time at all; finer buckets below vLLM's 0.3 s show a queue forming.
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, *REQUEST_LATENCY_BUCKETS)
# vLLM's own time-to-first-token buckets (vllm:time_to_first_token_seconds), for the same reason.
TIME_TO_FIRST_TOKEN_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip


class GateMetrics:
    """The metric families, registered in a registry of their own."""

    def __init__(
        self,
        *,
        limit: Callable[[], float],
        in_flight: Callable[[], float],
        queued: Callable[[], float],
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # Read at scrape time from the admission controller, so they can never drift from it.
        Gauge(
            "specfleet_gate_batch_limit",
            "Current limit on concurrent requests passed to vLLM.",
            registry=r,
        ).set_function(limit)
        Gauge(
            "specfleet_gate_requests_in_flight",
            "Requests admitted and not yet finished.",
            registry=r,
        ).set_function(in_flight)
        Gauge(
            "specfleet_gate_requests_queued",
            "Requests waiting for a slot.",
            registry=r,
        ).set_function(queued)
        self.queue_wait = Histogram(
            "specfleet_gate_queue_wait_seconds",
            "Time admitted requests waited in the gate's queue.",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self.e2e_latency = Histogram(
            "specfleet_gate_e2e_request_latency_seconds",
            "Time from arrival at the gate to the last byte of the response, queueing included"
            " (admitted requests only).",
            buckets=REQUEST_LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "specfleet_gate_time_to_first_token_seconds",
            "Time from arrival at the gate to the first chunk of a streamed response (its first"
            " token), queueing included; streamed 200 responses only.",
            buckets=TIME_TO_FIRST_TOKEN_BUCKETS,
            registry=r,
        )
        self.rejections = Counter(
            "specfleet_gate_rejections",
            "Requests the gate answered itself instead of admitting them.",
            ["reason"],
            registry=r,
        )
        self.responses = Counter(
            "specfleet_gate_responses",
            "Responses sent, by HTTP status class (2xx, 4xx, 5xx, ...), the gate's own included.",
            ["status_class"],
            registry=r,
        )
        self.client_disconnects = Counter(
            "specfleet_gate_client_disconnects",
            "Clients that went away before their response ended.",
            ["stage"],
            registry=r,
        )
        self.limit_updates = Counter(
            "specfleet_gate_limit_updates",
            "Times a new limit was read from the limit file.",
            registry=r,
        )
        # Zero-valued series exist from the start, so rate() and alerts work before the first
        # rejection or disconnect. The children are looked up once, not by labels() (a lock and
        # a lookup) on every request.
        self.rejected = {
            reason: self.rejections.labels(reason) for reason in ("queue_full", "queue_timeout")
        }
        self.disconnected_queued = self.client_disconnects.labels("queued")
        self.disconnected_responding = self.client_disconnects.labels("responding")
        self._responses_by_class: dict[int, Counter] = {}

    def count_response(self, status: int) -> None:
        status_class = status // 100
        child = self._responses_by_class.get(status_class)
        if child is None:
            child = self.responses.labels(f"{status_class}xx")
            self._responses_by_class[status_class] = child
        child.inc()
