"""The vLLM metric families the simulator exports, as data: names, types, label names and
histogram buckets exactly as vLLM's Prometheus stat logger defines them.

Read from vLLM 0.32.0 (`vllm/v1/metrics/loggers.py`, `vllm/v1/metrics/buckets.py`,
`vllm/v1/spec_decode/metrics.py`), the version the `vllm` extra pins. vLLM labels every family
with `model_name` (the served model name) and `engine` (the engine core's index as a string,
"0" for a server without data parallelism); some add one more label.

Owned here so that the simulator's exporter (`specfleet_runtime.sim.exporter`) and a test that
compares the simulator's /metrics with a real vLLM server's read one list. Counter names are
given without the `_total` suffix, as Prometheus client libraries name the family; the samples
carry `_total`. Pure data, no dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MODEL_NAME_LABEL = "model_name"
ENGINE_LABEL = "engine"
ENGINE_INDEX = "0"
"""The `engine` label's value: vLLM's index of its only engine core."""
BASE_LABELS = (MODEL_NAME_LABEL, ENGINE_LABEL)

FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")
"""Values of `finished_reason` on vllm:request_success; vLLM creates every one at start."""

REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
"""vLLM's buckets for whole-request phases: e2e latency and queue time."""
TIME_TO_FIRST_TOKEN_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
INTER_TOKEN_LATENCY_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip

Kind = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True)
class Family:
    """One metric family as vLLM exposes it."""

    name: str
    """The family name (counters without `_total`)."""
    kind: Kind
    """The Prometheus type."""
    documentation: str
    """The HELP text, as vLLM writes it."""
    labels: tuple[str, ...] = BASE_LABELS
    """Label names, in vLLM's order."""
    buckets: tuple[float, ...] = ()
    """Histogram upper bounds, without +Inf; empty for other kinds."""


RUNNING = Family(
    "vllm:num_requests_running", "gauge", "Number of requests in model execution batches."
)
WAITING = Family(
    "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed."
)
KV_CACHE_USAGE = Family(
    "vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage."
)
NUM_PREEMPTIONS = Family(
    "vllm:num_preemptions", "counter", "Cumulative number of preemption from the engine."
)
"""Running sequences the scheduler evicted for want of KV cache, each counted once per
eviction; every one recomputes its prompt and output so far when it is admitted again."""
PROMPT_TOKENS = Family("vllm:prompt_tokens", "counter", "Number of prefill tokens processed.")
GENERATION_TOKENS = Family(
    "vllm:generation_tokens", "counter", "Number of generation tokens processed."
)
REQUEST_SUCCESS = Family(
    "vllm:request_success",
    "counter",
    "Count of successfully processed requests.",
    (*BASE_LABELS, "finished_reason"),
)
TIME_TO_FIRST_TOKEN = Family(
    "vllm:time_to_first_token_seconds",
    "histogram",
    "Histogram of time to first token in seconds.",
    buckets=TIME_TO_FIRST_TOKEN_BUCKETS,
)
INTER_TOKEN_LATENCY = Family(
    "vllm:inter_token_latency_seconds",
    "histogram",
    "Histogram of inter-token latency in seconds.",
    buckets=INTER_TOKEN_LATENCY_BUCKETS,
)
E2E_REQUEST_LATENCY = Family(
    "vllm:e2e_request_latency_seconds",
    "histogram",
    "Histogram of e2e request latency in seconds.",
    buckets=REQUEST_LATENCY_BUCKETS,
)
REQUEST_QUEUE_TIME = Family(
    "vllm:request_queue_time_seconds",
    "histogram",
    "Histogram of time spent in WAITING phase for request.",
    buckets=REQUEST_LATENCY_BUCKETS,
)
SPEC_DECODE_DRAFTS = Family(
    "vllm:spec_decode_num_drafts", "counter", "Number of spec decoding drafts."
)
SPEC_DECODE_DRAFT_TOKENS = Family(
    "vllm:spec_decode_num_draft_tokens", "counter", "Number of draft tokens."
)
SPEC_DECODE_ACCEPTED_TOKENS = Family(
    "vllm:spec_decode_num_accepted_tokens", "counter", "Number of accepted tokens."
)
SPEC_DECODE_ACCEPTED_PER_POSITION = Family(
    "vllm:spec_decode_num_accepted_tokens_per_pos",
    "counter",
    "Accepted tokens per draft position.",
    (*BASE_LABELS, "position"),
)
"""`position` is the draft position, "0" to str(K - 1)."""

ENGINE_FAMILIES = (
    RUNNING,
    WAITING,
    KV_CACHE_USAGE,
    NUM_PREEMPTIONS,
    PROMPT_TOKENS,
    GENERATION_TOKENS,
    REQUEST_SUCCESS,
    TIME_TO_FIRST_TOKEN,
    INTER_TOKEN_LATENCY,
    E2E_REQUEST_LATENCY,
    REQUEST_QUEUE_TIME,
)
"""Families every vLLM server exports."""

SPEC_DECODE_FAMILIES = (
    SPEC_DECODE_DRAFTS,
    SPEC_DECODE_DRAFT_TOKENS,
    SPEC_DECODE_ACCEPTED_TOKENS,
    SPEC_DECODE_ACCEPTED_PER_POSITION,
)
"""Families vLLM exports only when speculative decoding is configured."""
