"""The autoscaler's observations, read from Prometheus.

Owns the PromQL. Series are selected by the labels the Helm chart's PodMonitors put on every
gate and vLLM series (`namespace`, and `inferencemodel` from the pods' label), so one query
covers every replica of a model. `queries` is pure; `Source` runs them through
prometheus-api-client with a timeout, and a Prometheus that cannot answer gives an empty
Observation and the reason (the autoscaler then holds the limit and says metrics are missing).
Called by the operator's decision loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from specfleet.api.inferencemodel import Observation


@dataclass(frozen=True)
class CaptureCounts:
    """What a resource's capturing pods counted (their counters restart with the pods)."""

    written: int
    dropped: dict[str, int]


CAPTURE_LABELS = {"InferenceModel": "inferencemodel", "RoutingPolicy": "routingpolicy"}
"""The label the chart's PodMonitors give a capturing pod's series, by the resource's kind."""


def capture_queries(kind: str, namespace: str, name: str) -> tuple[str, str]:
    """PromQL for the records a resource's pods wrote, and dropped by reason (capture's
    counters on the router's or the gates' /metrics)."""
    selector = f'{{namespace="{namespace}",{CAPTURE_LABELS[kind]}="{name}"}}'
    return (
        f"sum(specfleet_capture_records_written_total{selector})",
        f"sum by (reason) (specfleet_capture_records_dropped_total{selector})",
    )


def queries(namespace: str, name: str, window_seconds: float) -> dict[str, str]:
    """PromQL for each Observation field, over the last `window_seconds`."""
    selector = f'{{namespace="{namespace}",inferencemodel="{name}"}}'
    window = f"[{max(1, round(window_seconds))}s]"

    def rate(metric: str) -> str:
        return f"sum(rate({metric}{selector}{window}))"

    def p99(histogram: str) -> str:
        return f"histogram_quantile(0.99, sum by (le) (rate({histogram}_bucket{selector}{window})))"

    return {
        "acceptance_rate": f"{rate('vllm:spec_decode_num_accepted_tokens_total')}"
        f" / {rate('vllm:spec_decode_num_draft_tokens_total')}",
        # The gate's histogram: end to end as clients see it, queueing included.
        "p99_seconds": p99("specfleet_gate_e2e_request_latency_seconds"),
        # The gate's, queueing included, where answers streamed (only a stream's first byte is
        # its first token); else vLLM's own. A quantile of no observations is NaN, which no
        # comparison passes, so `>= 0` drops it and `or` falls back.
        "ttft_p99_seconds": f"({p99('specfleet_gate_time_to_first_token_seconds')} >= 0)"
        f" or {p99('vllm:time_to_first_token_seconds')}",
        "itl_p99_seconds": p99("vllm:inter_token_latency_seconds"),
        "queue_depth": f"sum(avg_over_time(specfleet_gate_requests_queued{selector}{window}))",
        "throughput": rate("vllm:generation_tokens_total"),
        "in_flight": f"sum(avg_over_time(specfleet_gate_requests_in_flight{selector}{window}))",
        # The fullest replica's cache: it is the one that preempts first.
        "kv_cache_usage": f"max(avg_over_time(vllm:kv_cache_usage_perc{selector}{window}))",
        "preemptions": f"sum(increase(vllm:num_preemptions_total{selector}{window}))",
        "draft_acceptance": "sum(rate(vllm:spec_decode_num_accepted_tokens_per_pos_total"
        f'{selector[:-1]},position="0"}}{window}))'
        f" / {rate('vllm:spec_decode_num_drafts_total')}",
        "time": f"max(timestamp(specfleet_gate_requests_queued{selector}))",
    }


def by_position_query(namespace: str, name: str, window_seconds: float) -> str:
    """PromQL for the acceptance at every draft position: accepted tokens at each over drafts,
    one series per `position` label."""
    selector = f'{{namespace="{namespace}",inferencemodel="{name}"}}'
    window = f"[{max(1, round(window_seconds))}s]"
    return (
        "sum by (position) (rate(vllm:spec_decode_num_accepted_tokens_per_pos_total"
        f"{selector}{window})) / scalar(sum(rate(vllm:spec_decode_num_drafts_total"
        f"{selector}{window})))"
    )


def _by_position(result: Any) -> list[float] | None:
    """The per-position answer as a list from position 0 up; None when empty, not a number, or
    a position is missing."""
    if not isinstance(result, list) or not result:
        return None
    values: dict[int, float] = {}
    for series in result:
        value = float(series["value"][1])
        if math.isnan(value) or math.isinf(value):
            return None
        values[int(series["metric"]["position"])] = round(value, 3)
    if sorted(values) != list(range(len(values))):
        return None
    return [values[position] for position in range(len(values))]


DIGITS = {
    "acceptance_rate": 3,
    "p99_seconds": 3,
    "ttft_p99_seconds": 3,
    "itl_p99_seconds": 4,
    "queue_depth": 2,
    "throughput": 1,
    "in_flight": 1,
    "kv_cache_usage": 3,
    "preemptions": 1,
    "draft_acceptance": 3,
    "time": 3,
}
"""Decimals kept of each answer: more than the measurement's own precision would only clutter
status, `kubectl get` and `specfleet review`."""


def _value(result: Any) -> float | None:
    """The number in an instant-vector answer; None when empty or not a number (0/0)."""
    if not isinstance(result, list) or len(result) != 1:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) or math.isinf(value) else value


class Source:
    """A Prometheus server the operator reads. No retries: a failed read holds the limit until
    the next decision, and retrying would stall the pass over every other model."""

    def __init__(self, url: str, timeout_seconds: float = 5.0) -> None:
        self.url = url
        self.timeout_seconds = timeout_seconds
        self._client = PrometheusConnect(url, disable_ssl=True, retry=Retry(total=0))

    def capture_counts(self, kind: str, namespace: str, name: str) -> CaptureCounts | None:
        """Records a resource's pods wrote and dropped (by reason), summed over its pods;
        None when Prometheus does not answer or has no series yet."""
        written_query, dropped_query = capture_queries(kind, namespace, name)
        try:
            written = _value(self._client.custom_query(written_query, timeout=self.timeout_seconds))
            dropped = self._client.custom_query(dropped_query, timeout=self.timeout_seconds)
        except Exception:  # the client raises requests' and its own errors alike
            return None
        if written is None:
            return None
        by_reason = {
            str(series["metric"].get("reason", "")): round(float(series["value"][1]))
            for series in dropped
            if not math.isnan(float(series["value"][1]))
        }
        return CaptureCounts(written=round(written), dropped=by_reason)

    def observe(self, namespace: str, name: str, window_seconds: float) -> tuple[Observation, str]:
        """What Prometheus shows of one model; the second item says why fields are missing."""
        client = self._client
        values: dict[str, float | None] = {}
        try:
            for field, promql in queries(namespace, name, window_seconds).items():
                answer = client.custom_query(promql, timeout=self.timeout_seconds)
                value = _value(answer)
                values[field] = None if value is None else round(value, DIGITS[field])
            by_position = _by_position(
                client.custom_query(
                    by_position_query(namespace, name, window_seconds),
                    timeout=self.timeout_seconds,
                )
            )
        except Exception as exc:  # the client raises requests' and its own errors alike
            return Observation(), f"Prometheus at {self.url} did not answer: {exc}"
        scraped = values.pop("time")
        missing = [field for field, value in values.items() if value is None]
        return Observation(
            time=datetime.fromtimestamp(scraped, UTC) if scraped is not None else None,
            acceptance_by_position=by_position,
            **values,
        ), (f"no data for {', '.join(missing)}" if missing else "")
