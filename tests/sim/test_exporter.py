"""The simulator's /metrics text: vLLM's families with vLLM's types, labels and buckets, and
values that add up to what the engine reported."""

from __future__ import annotations

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from specfleet_runtime.sim import vllm_metrics
from specfleet_runtime.sim.engine import SimulatedEngine
from specfleet_runtime.sim.exporter import Exporter
from tests.sim.test_engine import K, long_prompts, make_engine, submit


def scrape(exporter: Exporter) -> dict[str, Metric]:
    text = exporter.exposition().decode()
    # The text format has no place for a sample's creation time, so prometheus-client (in
    # vLLM as here) writes it as an extra `<name>_created` family; it is not a vLLM metric.
    return {
        family.name: family
        for family in text_string_to_metric_families(text)
        if not family.name.endswith("_created")
    }


def sample_value(family: Metric, suffix: str = "", **labels: str) -> float:
    matches = [
        s.value
        for s in family.samples
        if s.name == family.name + suffix and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matches) == 1, (family.name, suffix, labels, family.samples)
    return matches[0]


def drive(engine: SimulatedEngine, exporter: Exporter) -> None:
    exporter.record_state(engine)
    now = 0.0
    while (duration := engine.start_step(now)) is not None:
        now += duration
        exporter.record_step(engine.finish_step(now))
        exporter.record_state(engine)


def test_every_family_has_vllms_type_labels_and_buckets() -> None:
    families = scrape(Exporter("llama", K))
    expected = vllm_metrics.ENGINE_FAMILIES + vllm_metrics.SPEC_DECODE_FAMILIES
    assert set(families) == {f.name for f in expected}
    for definition in expected:
        family = families[definition.name]
        assert family.type == definition.kind, definition.name
        assert family.documentation == definition.documentation
        for sample in family.samples:
            names = set(sample.labels) - {"le"}
            assert names == set(definition.labels), sample
            assert sample.labels["model_name"] == "llama"
            assert sample.labels["engine"] == "0"
        if definition.kind == "histogram":
            bounds = [float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")]
            assert bounds == [*definition.buckets, float("inf")]


def test_children_vllm_creates_at_start_are_there_before_any_request() -> None:
    families = scrape(Exporter("llama", K))
    reasons = {
        s.labels["finished_reason"]
        for s in families["vllm:request_success"].samples
        if s.name.endswith("_total")
    }
    assert reasons == {"stop", "length", "abort", "error", "repetition"}
    positions = {
        s.labels["position"]
        for s in families["vllm:spec_decode_num_accepted_tokens_per_pos"].samples
        if s.name.endswith("_total")
    }
    assert positions == {str(p) for p in range(K)}


def test_without_speculation_there_are_no_spec_decode_families() -> None:
    families = scrape(Exporter("llama", 0))
    assert set(families) == {f.name for f in vllm_metrics.ENGINE_FAMILIES}


def test_values_add_up_to_what_the_engine_did() -> None:
    engine = make_engine(max_num_seqs=4)
    exporter = Exporter("llama", K)
    submit(engine, 10, max_tokens=20)
    exporter.record_state(engine)
    families = scrape(exporter)
    assert sample_value(families["vllm:num_requests_waiting"]) == 10
    assert sample_value(families["vllm:num_requests_running"]) == 0

    drive(engine, exporter)
    families = scrape(exporter)
    success = families["vllm:request_success"]
    assert sample_value(success, "_total", finished_reason="length") == 10
    assert sample_value(success, "_total", finished_reason="stop") == 0
    assert sample_value(families["vllm:generation_tokens"], "_total") == 200
    assert sample_value(families["vllm:prompt_tokens"], "_total") == 1000
    for name in ("vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds",
                 "vllm:time_to_first_token_seconds"):  # fmt: skip
        assert sample_value(families[name], "_count") == 10
    drafts = sample_value(families["vllm:spec_decode_num_drafts"], "_total")
    draft_tokens = sample_value(families["vllm:spec_decode_num_draft_tokens"], "_total")
    accepted = sample_value(families["vllm:spec_decode_num_accepted_tokens"], "_total")
    per_position = families["vllm:spec_decode_num_accepted_tokens_per_pos"]
    assert drafts > 0 and draft_tokens == K * drafts
    assert sum(sample_value(per_position, "_total", position=str(p)) for p in range(K)) == accepted
    # Every decode step is one inter-token interval per request; a request decodes once per
    # draft.
    assert sample_value(families["vllm:inter_token_latency_seconds"], "_count") == drafts
    assert sample_value(families["vllm:num_requests_waiting"]) == 0
    assert sample_value(families["vllm:kv_cache_usage_perc"]) == 0
    assert sample_value(families["vllm:num_preemptions"], "_total") == 0


def test_preemptions_are_counted_as_the_engine_makes_them() -> None:
    engine = make_engine(max_num_seqs=40)
    exporter = Exporter("llama", K)
    long_prompts(engine, 40)
    exporter.record_state(engine)
    now, preempted, usage_then = 0.0, 0, []
    while (duration := engine.start_step(now)) is not None:
        now += duration
        report = engine.finish_step(now)
        exporter.record_step(report)
        exporter.record_state(engine)
        if report.preemptions:
            preempted += report.preemptions
            usage_then.append(sample_value(scrape(exporter)["vllm:kv_cache_usage_perc"]))
    assert preempted > 0
    assert sample_value(scrape(exporter)["vllm:num_preemptions"], "_total") == preempted
    # Preemption is what a full cache does.
    assert all(0.95 < usage <= 1 for usage in usage_then), usage_then


def test_queue_time_is_zero_for_requests_admitted_at_once() -> None:
    # Slowed down 100 times, a step lasts over a second: the four requests that wait for the
    # first two to finish land above the smallest bucket (0.3 s), the first two in it.
    engine = make_engine(max_num_seqs=2, time_factor=100)
    exporter = Exporter("llama", K)
    submit(engine, 6)
    drive(engine, exporter)
    queue = scrape(exporter)["vllm:request_queue_time_seconds"]
    assert sample_value(queue, "_bucket", le="0.3") == 2
    assert sample_value(queue, "_bucket", le="+Inf") == 6
