"""The simulator's engine without sockets or clocks: admission under max_num_seqs, prefill then
speculative decode steps, acceptance sampling, timings from the times passed in, determinism."""

from __future__ import annotations

import itertools

import pytest

from specfleet import catalog, perf
from specfleet_runtime.sim.engine import (
    Behaviour,
    EngineConfig,
    Request,
    SimulatedEngine,
    StepReport,
)

LLAMA_70B = catalog.model("meta-llama/Llama-3.1-70B-Instruct")
LLAMA_3B = catalog.model("meta-llama/Llama-3.2-3B-Instruct")
H100 = catalog.GPUS["H100-80GB"]
K = 5


def make_engine(
    *,
    max_num_seqs: int = 8,
    acceptance: float = 0.7,
    draft: bool = True,
    seed: int = 0,
    time_factor: float = 1.0,
) -> SimulatedEngine:
    replica = perf.Replica(LLAMA_70B, H100, 2, "fp8", LLAMA_3B if draft else None, K)
    config = EngineConfig(replica, max_num_seqs, time_factor, seed)
    return SimulatedEngine(config, Behaviour(acceptance))


def submit(
    engine: SimulatedEngine, count: int, *, max_tokens: int = 16, now: float = 0.0
) -> list[str]:
    ids = [f"r{i}" for i in range(count)]
    for request_id in ids:
        engine.submit(Request(request_id, 100, max_tokens, request_id), now)
    return ids


def run(engine: SimulatedEngine, now: float = 0.0, max_steps: int = 100_000) -> list[StepReport]:
    """Step until idle, advancing a fake clock by each step's duration."""
    reports: list[StepReport] = []
    for _ in range(max_steps):
        duration = engine.start_step(now)
        if duration is None:
            return reports
        now += duration
        reports.append(engine.finish_step(now))
    raise AssertionError("the engine did not become idle")


def tokens_by_request(reports: list[StepReport]) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    for report in reports:
        for emission in report.emissions:
            tokens.setdefault(emission.request_id, []).extend(emission.token_ids)
    return tokens


def test_at_most_max_num_seqs_run_and_the_rest_wait() -> None:
    engine = make_engine(max_num_seqs=4)
    submit(engine, 10)
    assert (engine.num_running, engine.num_waiting) == (0, 10)
    now, peak, finished = 0.0, 0, 0
    while (duration := engine.start_step(now)) is not None:
        peak = max(peak, engine.num_running)
        assert engine.num_running + engine.num_waiting == 10 - finished
        now += duration
        finished += len(engine.finish_step(now).finished)
    assert peak == 4
    assert finished == 10
    assert (engine.num_running, engine.num_waiting) == (0, 0)


def test_the_first_step_admits_up_to_the_limit() -> None:
    engine = make_engine(max_num_seqs=3)
    submit(engine, 5)
    engine.start_step(0.0)
    assert (engine.num_running, engine.num_waiting) == (3, 2)


def test_admission_is_first_come_first_served() -> None:
    engine = make_engine(max_num_seqs=2)
    ids = submit(engine, 6)
    finished = [f for report in run(engine) for f in report.finished]
    queue_seconds = {f.request_id: f.queue_seconds for f in finished}
    waits = [queue_seconds[request_id] for request_id in ids]
    assert waits == sorted(waits)
    assert waits[0] == waits[1] == 0.0
    assert waits[-1] > 0


def test_every_request_gets_max_tokens_then_finishes_with_length() -> None:
    engine = make_engine()
    ids = submit(engine, 5, max_tokens=23)
    reports = run(engine)
    assert {k: len(v) for k, v in tokens_by_request(reports).items()} == dict.fromkeys(ids, 23)
    endings = [e for r in reports for e in r.emissions if e.finish_reason is not None]
    assert sorted(e.request_id for e in endings) == ids
    assert {e.finish_reason for e in endings} == {"length"}
    assert sum(r.generation_tokens for r in reports) == 5 * 23
    assert sum(r.prompt_tokens for r in reports) == 5 * 100
    assert sorted(f.request_id for r in reports for f in r.finished) == ids


def test_a_request_is_prefilled_first_then_decodes_with_drafts() -> None:
    engine = make_engine()
    submit(engine, 1)
    engine.start_step(0.0)
    prefill = engine.finish_step(1.0)
    assert prefill.prompt_tokens == 100
    assert [len(e.token_ids) for e in prefill.emissions] == [1]
    assert prefill.spec_decode.drafts == 0
    assert len(prefill.time_to_first_token) == 1
    assert prefill.inter_token_latency == ()
    engine.start_step(1.0)
    decode = engine.finish_step(2.0)
    assert decode.prompt_tokens == 0
    assert (decode.spec_decode.drafts, decode.spec_decode.draft_tokens) == (1, K)
    accepted = decode.spec_decode.accepted_tokens
    assert [len(e.token_ids) for e in decode.emissions] == [accepted + 1]
    assert decode.inter_token_latency == (1.0,)


def test_timings_are_measured_between_the_times_passed_in() -> None:
    engine = make_engine(max_num_seqs=1)
    engine.submit(Request("first", 10, 1), now=0.0)
    engine.submit(Request("second", 10, 2), now=0.5)
    engine.start_step(1.0)
    first = engine.finish_step(2.0)
    assert first.time_to_first_token == (2.0,)
    (done,) = first.finished
    assert (done.request_id, done.queue_seconds, done.e2e_seconds) == ("first", 1.0, 2.0)
    engine.start_step(3.0)  # admits "second", which waited from 0.5 to 3.0
    assert engine.finish_step(4.0).time_to_first_token == (3.5,)
    engine.start_step(4.0)
    (second,) = engine.finish_step(6.0).finished
    assert (second.queue_seconds, second.e2e_seconds) == (2.5, 5.5)


def test_the_counters_report_the_configured_acceptance_rate() -> None:
    engine = make_engine(acceptance=0.6, max_num_seqs=64)
    submit(engine, 64, max_tokens=400)
    counts = [r.spec_decode for r in run(engine)]
    drafts = sum(c.drafts for c in counts)
    draft_tokens = sum(c.draft_tokens for c in counts)
    accepted = sum(c.accepted_tokens for c in counts)
    per_position = [sum(c.accepted_per_position[p] for c in counts) for p in range(K)]
    assert drafts > 5000
    assert draft_tokens == K * drafts
    assert accepted / draft_tokens == pytest.approx(0.6, abs=0.01)
    assert sum(per_position) == accepted
    # A draft is accepted only when every earlier one was: each position is accepted less
    # often than the one before, by the same per-token probability.
    ratios = [later / earlier for earlier, later in itertools.pairwise(per_position)]
    assert all(later < earlier for earlier, later in itertools.pairwise(per_position))
    assert max(ratios) - min(ratios) < 0.03
    assert per_position[0] / drafts == pytest.approx(ratios[0], abs=0.03)


def test_full_acceptance_gains_k_plus_one_tokens_a_step_and_none_gains_one() -> None:
    for rate, tokens_per_step in ((1.0, K + 1), (0.0, 1)):
        engine = make_engine(acceptance=rate)
        submit(engine, 1, max_tokens=1 + 10 * tokens_per_step)
        decode_steps = run(engine)[1:]
        assert len(decode_steps) == 10
        assert all(r.generation_tokens == tokens_per_step for r in decode_steps)
        assert all(r.spec_decode.accepted_tokens == tokens_per_step - 1 for r in decode_steps)


def test_drafts_past_max_tokens_are_counted_but_not_emitted() -> None:
    engine = make_engine(acceptance=1.0)
    submit(engine, 1, max_tokens=3)
    _prefill, decode = run(engine)
    assert decode.generation_tokens == 2
    assert decode.spec_decode.accepted_tokens == K


def test_acceptance_changes_at_run_time() -> None:
    engine = make_engine(acceptance=0.0)
    submit(engine, 4, max_tokens=1000)
    for now in range(20):
        engine.start_step(float(now))
        assert engine.finish_step(now + 0.5).spec_decode.accepted_tokens == 0
    engine.behaviour = Behaviour(acceptance_rate=1.0)
    engine.start_step(30.0)
    counts = engine.finish_step(31.0).spec_decode
    assert counts.accepted_tokens == counts.draft_tokens == 4 * K


def test_without_a_draft_every_step_gains_one_token_and_counts_no_drafts() -> None:
    engine = make_engine(draft=False)
    submit(engine, 3, max_tokens=9)
    reports = run(engine)
    assert len(reports) == 9
    assert all(r.spec_decode.drafts == 0 for r in reports)
    assert all(r.spec_decode.accepted_per_position == () for r in reports)


def test_the_same_seed_gives_the_same_run_and_another_seed_another() -> None:
    def outcome(seed: int) -> tuple[dict[str, list[int]], list[int]]:
        engine = make_engine(seed=seed)
        submit(engine, 6, max_tokens=40)
        reports = run(engine)
        return tokens_by_request(reports), [r.spec_decode.accepted_tokens for r in reports]

    assert outcome(7) == outcome(7)
    assert outcome(7) != outcome(8)


def test_a_prompt_gets_the_same_text_whatever_runs_beside_it() -> None:
    alone = make_engine()
    alone.submit(Request("a", 100, 30, "same prompt"), 0.0)
    crowded = make_engine()
    submit(crowded, 5, max_tokens=50)
    crowded.submit(Request("a", 100, 30, "same prompt"), 0.0)
    assert tokens_by_request(run(alone))["a"] == tokens_by_request(run(crowded))["a"]


def _decode_step_duration(engine: SimulatedEngine, sequences: int) -> float:
    submit(engine, sequences, max_tokens=100)
    engine.start_step(0.0)
    engine.finish_step(1.0)
    duration = engine.start_step(1.0)
    assert duration is not None
    return duration


def test_more_sequences_make_every_step_longer() -> None:
    durations = [_decode_step_duration(make_engine(max_num_seqs=256), n) for n in (1, 16, 256)]
    assert durations[0] < durations[1] < durations[2]


def test_the_time_and_latency_factors_scale_durations() -> None:
    plain = _decode_step_duration(make_engine(), 4)
    fast = _decode_step_duration(make_engine(time_factor=0.01), 4)
    assert fast == pytest.approx(plain * 0.01)
    slow_engine = make_engine()
    slow_engine.behaviour = Behaviour(acceptance_rate=0.7, latency_factor=3.0)
    assert _decode_step_duration(slow_engine, 4) == pytest.approx(plain * 3)


def test_an_aborted_request_leaves_without_finishing() -> None:
    engine = make_engine(max_num_seqs=2)
    submit(engine, 4, max_tokens=5)
    engine.start_step(0.0)
    engine.abort("r0")  # running, mid-step
    engine.abort("r3")  # waiting
    assert (engine.num_running, engine.num_waiting) == (1, 1)
    reports = [engine.finish_step(1.0), *run(engine, 1.0)]
    assert "r0" not in tokens_by_request(reports)
    assert sorted(f.request_id for r in reports for f in r.finished) == ["r1", "r2"]


def test_kv_cache_usage_follows_the_running_contexts() -> None:
    engine = make_engine()
    assert engine.kv_cache_usage == 0.0
    submit(engine, 2, max_tokens=50)
    engine.start_step(0.0)
    engine.finish_step(1.0)
    after_prefill = engine.kv_cache_usage
    engine.start_step(1.0)
    engine.finish_step(2.0)
    assert 0 < after_prefill < engine.kv_cache_usage < 1
    run(engine, 2.0)
    assert engine.kv_cache_usage == 0.0


def long_prompts(
    engine: SimulatedEngine, count: int, *, prompt: int = 4000, max_tokens: int = 1000
) -> None:
    """`count` requests whose prompts and outputs together outgrow the 2 x H100 cache (about
    172,000 tokens) once forty of them run."""
    for i in range(count):
        engine.submit(Request(f"r{i}", prompt, max_tokens, f"r{i}"), 0.0)


def test_admission_stops_where_the_prompts_no_longer_fit_in_the_kv_cache() -> None:
    engine = make_engine(max_num_seqs=256)
    long_prompts(engine, 60)
    engine.start_step(0.0)
    # Each needs its prompt and room for the step's K + 1 tokens.
    fits = engine.kv_cache_tokens // (4000 + K + 1)
    assert 40 < fits < 60
    assert (engine.num_running, engine.num_waiting) == (fits, 60 - fits)
    assert engine.kv_cache_usage <= 1


def test_a_full_kv_cache_preempts_the_newest_which_recomputes_all_it_had() -> None:
    engine = make_engine(max_num_seqs=40)
    long_prompts(engine, 40)  # all forty admitted at once, r0 first
    now, durations, reports = 0.0, [], []
    while (duration := engine.start_step(now)) is not None:
        assert engine.kv_cache_usage <= 1
        now += duration
        durations.append(duration)
        reports.append(engine.finish_step(now))
    preempting = [i for i, r in enumerate(reports) if r.preemptions]
    assert preempting
    first = preempting[0]
    # The newest admitted went first, back to the queue, while the others decode on.
    emitted = {e.request_id for e in reports[first].emissions}
    assert "r39" not in emitted and "r0" in emitted
    back = next(
        i
        for i, r in enumerate(reports[first + 1 :], first + 1)
        if any(e.request_id == "r39" for e in r.emissions)
    )
    # Admitted again, it prefills everything it had: one token, no prompt tokens counted, and
    # a step several times longer than the decode step that preempted it.
    (again,) = [e for e in reports[back].emissions if e.request_id == "r39"]
    assert len(again.token_ids) == 1
    assert reports[back].prompt_tokens == 0
    assert durations[back] > 3 * durations[first]
    # Every request still gets all its tokens; first tokens and prompts count once each, and
    # the queue time is the first admission's.
    assert {k: len(v) for k, v in tokens_by_request(reports).items()} == {
        f"r{i}": 1000 for i in range(40)
    }
    assert sum(r.prompt_tokens for r in reports) == 40 * 4000
    assert sum(len(r.time_to_first_token) for r in reports) == 40
    assert {f.queue_seconds for r in reports for f in r.finished} == {0.0}


def test_the_same_requests_within_the_kv_cache_preempt_nothing() -> None:
    # Thirty at a time hold at most 30 x 5000 tokens, under the cache's 172,000.
    engine = make_engine(max_num_seqs=30)
    long_prompts(engine, 40)
    reports = run(engine)
    assert sum(r.preemptions for r in reports) == 0
    assert sum(r.generation_tokens for r in reports) == 40 * 1000


def test_the_kv_cache_is_what_the_performance_models_memory_rule_leaves() -> None:
    # The planner's rule, not one of the simulator's own: 2 x H100 at 0.92, less 70.55 GB of
    # FP8 weights, the 16-bit 3B draft and 2 GiB per GPU, over both models' KV per token.
    engine = make_engine()
    assert engine.kv_cache_tokens == int(perf.kv_cache_tokens(engine.config.replica))
    free = 0.92 * 81559 * 2**20 * 2 - 70.55e9 - 3.213e9 * 2 - 2 * 2 * 2**30
    per_token = 2 * 80 * 8 * 128 * 2 + 2 * 28 * 8 * 128 * 2
    assert engine.kv_cache_tokens == int(free / per_token)


def test_weights_that_do_not_fit_are_refused_with_the_numbers() -> None:
    replica = perf.Replica(LLAMA_70B, H100, 1, "bf16")
    with pytest.raises(ValueError, match=r"Llama 3.1 70B needs 131 GiB .* 1 x H100-80GB give 73"):
        SimulatedEngine(EngineConfig(replica), Behaviour(0.7))


@pytest.mark.parametrize(
    ("rate", "factor", "message"),
    [(1.1, 1.0, "acceptanceRate"), (-0.1, 1.0, "acceptanceRate"), (0.5, 0.0, "latencyFactor")],
)
def test_behaviour_out_of_range_is_refused(rate: float, factor: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Behaviour(rate, factor)


def test_steps_must_alternate() -> None:
    engine = make_engine()
    with pytest.raises(RuntimeError):
        engine.finish_step(0.0)
    submit(engine, 1)
    engine.start_step(0.0)
    with pytest.raises(RuntimeError):
        engine.start_step(0.0)
