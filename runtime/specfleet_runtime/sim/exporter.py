"""The simulator's /metrics: vLLM's metric families (`specfleet_runtime.sim.vllm_metrics`) in a
prometheus-client registry, fed from the engine's step reports.

Called by the server after every step and on every request it queues. Every child vLLM
creates at start (each `finished_reason`, each draft `position`) is created here at start too,
so a scrape before the first request already shows each family at zero.

Latencies are recorded as the engine reports them: wall seconds between the events the server
passed it, so a Prometheus P99 matches what clients measure (simulated seconds times the time
factor, plus the little the event loop adds).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from specfleet_runtime.sim import vllm_metrics
from specfleet_runtime.sim.engine import Finished, SimulatedEngine, StepReport

_F = vllm_metrics


class Exporter:
    """vLLM's metrics for one served model, in their own registry."""

    def __init__(self, model_name: str, num_speculative_tokens: int) -> None:
        """`num_speculative_tokens` is K, or 0 without speculation (no spec-decode families,
        as in vLLM)."""
        self.registry = CollectorRegistry()
        base = (model_name, vllm_metrics.ENGINE_INDEX)
        self._running = self._gauge(_F.RUNNING).labels(*base)
        self._waiting = self._gauge(_F.WAITING).labels(*base)
        self._kv_cache = self._gauge(_F.KV_CACHE_USAGE).labels(*base)
        self._preemptions = self._counter(_F.NUM_PREEMPTIONS).labels(*base)
        self._prompt_tokens = self._counter(_F.PROMPT_TOKENS).labels(*base)
        self._generation_tokens = self._counter(_F.GENERATION_TOKENS).labels(*base)
        success = self._counter(_F.REQUEST_SUCCESS)
        self._success = {r: success.labels(*base, r) for r in vllm_metrics.FINISHED_REASONS}
        self._ttft = self._histogram(_F.TIME_TO_FIRST_TOKEN).labels(*base)
        self._itl = self._histogram(_F.INTER_TOKEN_LATENCY).labels(*base)
        self._e2e = self._histogram(_F.E2E_REQUEST_LATENCY).labels(*base)
        self._queue = self._histogram(_F.REQUEST_QUEUE_TIME).labels(*base)
        self._spec: tuple[Counter, Counter, Counter, list[Counter]] | None = None
        if num_speculative_tokens:
            per_position = self._counter(_F.SPEC_DECODE_ACCEPTED_PER_POSITION)
            self._spec = (
                self._counter(_F.SPEC_DECODE_DRAFTS).labels(*base),
                self._counter(_F.SPEC_DECODE_DRAFT_TOKENS).labels(*base),
                self._counter(_F.SPEC_DECODE_ACCEPTED_TOKENS).labels(*base),
                [per_position.labels(*base, str(p)) for p in range(num_speculative_tokens)],
            )

    def record_state(self, engine: SimulatedEngine) -> None:
        """The scheduler gauges, from the engine as it is now."""
        self._running.set(engine.num_running)
        self._waiting.set(engine.num_waiting)
        self._kv_cache.set(engine.kv_cache_usage)

    def record_step(self, report: StepReport) -> None:
        """Counters and histograms of one step."""
        self._preemptions.inc(report.preemptions)
        self._prompt_tokens.inc(report.prompt_tokens)
        self._generation_tokens.inc(report.generation_tokens)
        for seconds in report.time_to_first_token:
            self._ttft.observe(seconds)
        for seconds in report.inter_token_latency:
            self._itl.observe(seconds)
        for request in report.finished:
            self.record_finished(request)
        if self._spec is not None:
            drafts, draft_tokens, accepted, per_position = self._spec
            counts = report.spec_decode
            drafts.inc(counts.drafts)
            draft_tokens.inc(counts.draft_tokens)
            accepted.inc(counts.accepted_tokens)
            for counter, value in zip(per_position, counts.accepted_per_position, strict=True):
                counter.inc(value)

    def record_finished(self, request: Finished) -> None:
        """A request that finished, in a step or early (a stop string)."""
        self._success[request.finish_reason].inc()
        self._e2e.observe(request.e2e_seconds)
        self._queue.observe(request.queue_seconds)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)

    def _gauge(self, family: vllm_metrics.Family) -> Gauge:
        return Gauge(family.name, family.documentation, family.labels, registry=self.registry)

    def _counter(self, family: vllm_metrics.Family) -> Counter:
        return Counter(family.name, family.documentation, family.labels, registry=self.registry)

    def _histogram(self, family: vllm_metrics.Family) -> Histogram:
        return Histogram(
            family.name,
            family.documentation,
            family.labels,
            registry=self.registry,
            buckets=family.buckets,
        )
