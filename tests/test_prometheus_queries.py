"""The autoscaler's PromQL: one model's series by the labels the chart's PodMonitors set, over
the decision window; P99 from the gate's histogram so queueing counts."""

from __future__ import annotations

from specfleet import prometheus


def test_every_query_selects_one_models_series() -> None:
    for promql in prometheus.queries("ml", "llama-70b", 300).values():
        assert 'namespace="ml",inferencemodel="llama-70b"' in promql


def test_windows_are_whole_seconds_promql_accepts() -> None:
    found = prometheus.queries("ml", "m", 90.0)  # a spec's "1.5m"
    assert "[90s]" in found["acceptance_rate"] and "[90s]" in found["p99_seconds"]


def test_acceptance_is_accepted_over_drafted_and_p99_includes_the_queue() -> None:
    found = prometheus.queries("ml", "m", 300)
    accepted, drafted = found["acceptance_rate"].split(" / ")
    assert "spec_decode_num_accepted_tokens_total" in accepted
    assert "spec_decode_num_draft_tokens_total" in drafted
    assert "specfleet_gate_e2e_request_latency_seconds_bucket" in found["p99_seconds"]
    assert found["p99_seconds"].startswith("histogram_quantile(0.99,")


def test_in_flight_is_the_gates_gauge_averaged_over_the_window() -> None:
    found = prometheus.queries("ml", "m", 300)["in_flight"]
    assert found.startswith("sum(avg_over_time(specfleet_gate_requests_in_flight{")
    assert found.endswith("[300s]))")


def test_kv_cache_usage_is_vllms_gauge_averaged_and_preemptions_its_counters_increase() -> None:
    found = prometheus.queries("ml", "m", 300)
    assert found["kv_cache_usage"].startswith("max(avg_over_time(vllm:kv_cache_usage_perc{")
    assert found["kv_cache_usage"].endswith("[300s]))")
    assert found["preemptions"].startswith("sum(increase(vllm:num_preemptions_total{")
    assert found["preemptions"].endswith("[300s]))")


def test_empty_or_undefined_answers_are_missing_values() -> None:
    assert prometheus._value([]) is None
    assert prometheus._value([{"metric": {}, "value": [0, "NaN"]}]) is None
    assert prometheus._value([{"metric": {}, "value": [0, "0.75"]}]) == 0.75


def test_the_per_position_query_divides_each_position_by_the_drafts() -> None:
    query = prometheus.by_position_query("ml", "llama", 300)
    assert query.startswith("sum by (position) (rate(vllm:spec_decode_num_accepted_tokens_per_pos")
    assert 'inferencemodel="llama"' in query and "[300s]" in query
    assert "/ scalar(sum(rate(vllm:spec_decode_num_drafts_total" in query


def test_per_position_answers_become_a_list_from_position_0() -> None:
    def series(position: str, value: str) -> dict[str, object]:
        return {"metric": {"position": position}, "value": [0, value]}

    parse = prometheus._by_position
    assert parse([series("1", "0.5"), series("0", "0.71234")]) == [0.712, 0.5]
    assert parse([]) is None
    assert parse([series("0", "NaN")]) is None
    # A gap in the positions says the answer is not whole.
    assert parse([series("0", "0.7"), series("2", "0.3")]) is None


def test_ttft_is_the_gates_where_answers_streamed_else_vllms() -> None:
    found = prometheus.queries("ml", "m", 300)["ttft_p99_seconds"]
    gate, vllm = found.split(" or ")
    # No stream in the window makes the gate's quantile NaN, which `>= 0` drops, so `or`
    # answers with vLLM's.
    assert gate.startswith("(histogram_quantile(0.99, sum by (le) (rate(")
    assert "specfleet_gate_time_to_first_token_seconds_bucket{" in gate and gate.endswith(">= 0)")
    assert "vllm:time_to_first_token_seconds_bucket{" in vllm
    assert 'inferencemodel="m"' in vllm and "[300s]" in vllm


def test_itl_is_vllms_inter_token_histogram() -> None:
    found = prometheus.queries("ml", "m", 300)["itl_p99_seconds"]
    assert found.startswith("histogram_quantile(0.99, sum by (le) (rate(")
    assert "vllm:inter_token_latency_seconds_bucket{" in found and "[300s]" in found


def test_every_observation_field_read_has_its_rounding() -> None:
    assert set(prometheus.queries("ml", "m", 300)) == set(prometheus.DIGITS)
