"""bench/autoscale.py's replica simulation where vLLM's KV cache runs short: it preempts the
newest sequences, every request still finishes with all its tokens, and a limit that keeps the
running sequences within the cache preempts nothing. (The comparison is the bench's to report.)"""

from __future__ import annotations

import dataclasses

import pytest
from bench import autoscale as bench

PROMPT, OUTPUT = 300, 400


def test_a_short_kv_cache_preempts_and_every_request_still_finishes() -> None:
    # Room for about 28 whole sequences (prompt, output and K + 1 lookahead each); their
    # prompts alone fit 60, so vLLM's default schedules more than the cache can grow into.
    srv = dataclasses.replace(bench.server(), kv_tokens=20_000)
    requests = [bench.Request(0.001 * i, PROMPT, OUTPUT, i % 2 == 0) for i in range(120)]
    unlimited = bench.simulate("1024", requests, srv, 1024, None)
    within = bench.simulate("24", requests, srv, 24, None)

    assert unlimited.preemptions > 0
    assert within.preemptions == 0
    for result in (unlimited, within):
        assert sorted(arrival for arrival, _ in result.served) == [r.arrival for r in requests]
        # Every output token counts once, however often its sequence was recomputed.
        makespan = max(arrival + latency for arrival, latency in result.served)
        assert result.throughput * makespan == pytest.approx(len(requests) * OUTPUT)
