"""bench/autoscale.py's replica simulation: a request alone takes what the performance model
says; where vLLM's KV cache runs short it preempts the newest sequences, every request still
finishes with all its tokens, and a limit that keeps the running sequences within the cache
preempts nothing; the policy sees the cache fill and the preemptions, and with them keeps a
load the cache bounds from preempting. (The comparison itself is the bench's to report.)"""

from __future__ import annotations

import dataclasses

import pytest
from bench import autoscale as bench

from specfleet import perf
from specfleet.api.inferencemodel import Observation

PROMPT, OUTPUT = 300, 400


@pytest.fixture(scope="module")
def srv() -> bench.Server:
    return bench.server()


@pytest.mark.parametrize(("prompt", "output"), [(300, 400), (4000, 2)])
def test_a_request_alone_takes_what_the_performance_model_says(
    srv: bench.Server, prompt: int, output: int
) -> None:
    # Decode-bound (the steps at batch 1) and prefill-bound (one step, a long prompt): the
    # bench times a request's first token inside a decode step, perf apart, so they agree
    # within what that difference is worth.
    result = bench.simulate("1", [bench.Request(0.0, prompt, output, True)], srv, 1, None)
    k = srv.replica.num_speculative_tokens
    acceptance = perf.acceptance_from_reported(bench.EASY_REPORTED, k)
    expected = perf.request_latency(srv.replica, prompt, output, 1, acceptance)

    assert result.served[0][1] == pytest.approx(expected, rel=0.05)


def test_a_short_kv_cache_preempts_and_every_request_still_finishes(srv: bench.Server) -> None:
    # Room for about 28 whole sequences (prompt, output and K + 1 lookahead each); their
    # prompts alone fit 60, so vLLM's default schedules more than the cache can grow into.
    short = dataclasses.replace(srv, kv_tokens=20_000)
    requests = [bench.Request(0.001 * i, PROMPT, OUTPUT, i % 2 == 0) for i in range(120)]
    unlimited = bench.simulate("1024", requests, short, 1024, None)
    within = bench.simulate("24", requests, short, 24, None)

    assert unlimited.preemptions > 0
    assert unlimited.recomputed >= unlimited.preemptions * PROMPT
    assert within.preemptions == 0
    assert within.recomputed == 0
    for result in (unlimited, within):
        assert sorted(arrival for arrival, _ in result.served) == [r.arrival for r in requests]
        # Every output token counts once, however often its sequence was recomputed.
        makespan = max(arrival + latency for arrival, latency in result.served)
        assert result.throughput * makespan == pytest.approx(len(requests) * OUTPUT)


def test_the_policy_sees_the_kv_cache_fill_and_the_preemptions(srv: bench.Server) -> None:
    short = dataclasses.replace(srv, kv_tokens=20_000)
    # A minute of 20 requests a second, more than the short cache lets run: it stays full
    # while the policy decides every 30 seconds.
    requests = [bench.Request(0.05 * i, PROMPT, OUTPUT, i % 2 == 0) for i in range(1200)]
    seen: list[Observation] = []

    def record(now: float, observation: Observation, limit: int) -> int:
        seen.append(observation)
        return limit

    result = bench.simulate("1024", requests, short, 1024, record)

    usage = [o.kv_cache_usage for o in seen]
    preemptions = [o.preemptions for o in seen]
    assert all(u is not None and 0.0 <= u <= 1.0 for u in usage), usage
    assert min(u for u in usage if u is not None) > 0.8
    assert all(p is not None for p in preemptions)
    # The window (5 minutes) spans the whole run: the counts only grow, up to the total.
    counted = [p for p in preemptions if p is not None]
    assert counted == sorted(counted)
    assert 0 < counted[-1] <= result.preemptions


def test_the_kv_rules_keep_a_load_the_cache_bounds_from_preempting(srv: bench.Server) -> None:
    # Document traffic past what the replica serves, on a cache that holds about 40 of its
    # sequences: below the initial limit (64), far below batching.max.
    short = dataclasses.replace(srv, kv_tokens=150_000)
    documents = bench.Phase(1.3, 0.5, bench.DOCUMENT_PROMPT_MEDIAN, bench.DOCUMENT_OUTPUT_MEDIAN)
    _, requests = bench.trace(short, 1, 10.0, 10.0, (documents,))
    initial = bench.SPEC.batching.initial or bench.SPEC.batching.max

    static = bench.simulate("256", requests, short, 256, None)
    ours = bench.simulate("specfleet", requests, short, initial, bench.specfleet_controller())
    blind = bench.simulate(
        "no KV metrics", requests, short, initial, bench.specfleet_controller(kv_metrics=False)
    )

    assert static.preemptions > 100
    assert ours.preemptions * 4 < min(static.preemptions, blind.preemptions)
    assert min(limit for _, limit in ours.limits) < initial
    assert ours.p99 < blind.p99


def test_a_phase_arrives_at_its_load_of_what_the_replica_serves(srv: bench.Server) -> None:
    chat = bench.Phase(0.5, 1.0)
    documents = bench.Phase(0.5, 1.0, bench.DOCUMENT_PROMPT_MEDIAN, bench.DOCUMENT_OUTPUT_MEDIAN)
    assert bench.capacity(srv, documents) < bench.capacity(srv, chat) / 3
    for phase in (chat, documents):
        _, requests = bench.trace(srv, 2, 20.0, 20.0, (phase,))
        expected = phase.load * bench.capacity(srv, phase) * 20 * 60
        # Poisson: within four standard deviations.
        assert abs(len(requests) - expected) < 4 * expected**0.5
        prompts = sorted(r.prompt for r in requests)
        assert prompts[len(prompts) // 2] == pytest.approx(phase.prompt_median, rel=0.15)


def _static(limit: int, p99: float, preemptions: int = 0) -> bench.Result:
    return bench.Result(f"static {limit}", p99, p99 / 4, 1.0, 0, [(0.0, limit)], [], preemptions)


def test_the_findings_read_the_run_they_print() -> None:
    statics = [_static(64, 300.0), _static(128, 100.0), _static(256, 101.0), _static(1024, 102.0)]
    ours, blind, oracle = (
        dataclasses.replace(_static(64, p99), name=name)
        for name, p99 in (("ours", 90.0), ("blind", 91.0), ("oracle", 95.0))
    )

    lines = bench.findings(statics, ours, blind, oracle, 1000)

    assert "from 128 up" in lines[1]
    assert "1.00..1.02" in lines[1]
    assert "barely matters" in lines[1]
    assert "0.882 of vLLM's default (better)" in lines[2]
    assert "0.900 of the best static (better)" in lines[2]
    assert "0.947 of the oracle (better)" in lines[2]
    assert "0.989 of that without them (even)" in lines[3]

    statics[-1] = _static(1024, 140.0, preemptions=50)
    lines = bench.findings(statics, ours, blind, oracle, 1000)
    assert "up to 40% worse" in lines[1]
    assert "preempted 50 sequences" in lines[3]
