"""bench/speculation.py's replica simulation and how it compares schedules: a step's timing and
tokens, the acceptance its counters measure, the schedule specfleet derives from them, and
which rows count towards its ratios. (The comparison itself is the bench's to report.)"""

from __future__ import annotations

import math
import random

import pytest
from bench import speculation as bench

from specfleet import perf, schedule

SEED = 7


@pytest.fixture(scope="module")
def srv() -> bench.Server:
    return bench.server()


def test_quick_run_ends_with_the_five_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--quick"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    fields = dict(item.split("=") for item in lines[-1].split())
    assert list(fields) == [
        "worst_p99_ratio_vs_oracle",
        "worst_p99_ratio_vs_fixed_k",
        "worst_p99_ratio_vs_no_spec",
        "best_p99_ratio_vs_fixed_k",
        "best_p99_ratio_vs_no_spec",
    ]
    values = {key: float(value) for key, value in fields.items()}
    assert all(math.isfinite(value) and value > 0 for value in values.values())
    assert values["best_p99_ratio_vs_fixed_k"] <= values["worst_p99_ratio_vs_fixed_k"]
    assert values["best_p99_ratio_vs_no_spec"] <= values["worst_p99_ratio_vs_no_spec"]
    # One row per quick load level and mix.
    rows = [line for line in lines if line.split("|")[0].rstrip().endswith(("easy", "hard"))]
    assert len(rows) == len(bench.QUICK_LOADS) * len(bench.MIXES)


def test_one_request_takes_its_prefill_then_one_step_per_draft_round(
    srv: bench.Server,
) -> None:
    # Every draft accepted at K=5: the prefill gives the first token, each step 6 more, so 11
    # tokens take the prefill and two steps, timed at the context each step starts from.
    prompt = 100
    request = bench.Request(0.0, prompt, 11, 1.0, 1.0)
    result = bench.simulate("K=5", [request], srv, schedule.fixed(5, srv.max_batch), SEED)
    expected = (
        perf.time_to_first_token(srv.replica, prompt)
        + perf.step_time(srv.replica, 1, prompt + 1, 5).seconds
        + perf.step_time(srv.replica, 1, prompt + 7, 5).seconds
    )
    assert result.p99 == pytest.approx(expected)
    assert (result.drafted, result.accepted) == (10, 10)


def test_a_homogeneous_mix_measures_its_own_rate(srv: bench.Server) -> None:
    # Every request at the same rate: the counters read that rate back, whatever K.
    mix = bench.Mix("steady", 0.6, concentration=1e6)
    reqs = bench.requests(mix, 2.0, 200, SEED)
    for k in (2, 5):
        result = bench.simulate(f"K={k}", reqs, srv, schedule.fixed(k, srv.max_batch), SEED)
        acceptance = perf.acceptance_from_reported(0.6, 5)
        assert result.acceptance_rate == pytest.approx(
            perf.reported_acceptance_rate(acceptance, k), abs=0.015
        )


def test_the_counters_weigh_hard_requests_by_their_longer_decoding(srv: bench.Server) -> None:
    # The scheduler sees accepted over drafted tokens: a hard request drafts for more steps,
    # so the measured rate sits below the mean of the requests' own rates.
    found = bench.measure(srv, bench.MIXES[1], 4.0, 300, SEED)
    assert found.rate < found.requests_mean_rate - 0.005
    assert found.acceptance == pytest.approx(perf.acceptance_from_reported(found.rate, 5))


def test_a_draft_never_accepted_gives_no_speculation(srv: bench.Server) -> None:
    found = bench.measure(srv, bench.Mix("never", 0.0), 2.0, 150, SEED)
    assert found.rate == 0.0
    assert [entry.k for entry in found.plan] == [0]

    plain = srv.without_draft()
    reqs = bench.requests(bench.Mix("never", 0.0), 2.0, 150, SEED)
    no_spec = bench.simulate("K=0", reqs, plain, schedule.fixed(0, plain.max_batch), SEED)
    # The same schedule on the replica without its draft is no speculation, step for step.
    same = bench.simulate("specfleet", reqs, plain, found.plan, SEED)
    assert (same.p99, same.throughput) == (no_spec.p99, no_spec.throughput)
    # With the draft loaded nothing is drafted; only the draft's prefill costs a little.
    ours = bench.simulate("specfleet", reqs, srv, found.plan, SEED)
    assert ours.drafted == 0
    assert no_spec.p99 <= ours.p99 <= 1.05 * no_spec.p99
    assert ours.throughput == pytest.approx(no_spec.throughput, rel=0.01)


def test_a_draft_always_accepted_beats_no_speculation_at_light_load(srv: bench.Server) -> None:
    found = bench.measure(srv, bench.Mix("always", 1.0), 1.0, 100, SEED)
    assert found.rate == 1.0
    assert schedule.k_at(found.plan, 1) == srv.replica.num_speculative_tokens

    plain = srv.without_draft()
    reqs = bench.requests(bench.Mix("always", 1.0), 1.0, 150, SEED)
    no_spec = bench.simulate("K=0", reqs, plain, schedule.fixed(0, plain.max_batch), SEED)
    ours = bench.simulate("specfleet", reqs, srv, found.plan, SEED)
    # Six tokens a step for under twice a plain step's time; both keep up with the load (what
    # is in flight at the ends of 135 arrivals moves the throughput by a percent or two).
    assert ours.p99 < 0.5 * no_spec.p99
    assert ours.throughput == pytest.approx(no_spec.throughput, rel=0.03)


def test_a_requests_misses_are_the_same_whatever_k_drafts_them() -> None:
    # The draft's wrong guesses sit at positions of the text: walked a token at a time, or
    # in steps of up to K=5 accepted tokens + 1, the same stream gives the same misses.
    def stream() -> random.Random:
        return random.Random(f"{SEED}:misses")

    one_by_one = bench.Misses(0.7, stream())
    misses = [position for position in range(1, 2000) if one_by_one.accepted(position, 1) == 0]
    assert len(misses) / 1999 == pytest.approx(0.3, abs=0.03)

    stepping = bench.Misses(0.7, stream())
    position, steps = 1, 0
    while position < 1900:
        next_miss = next(m for m in misses if m >= position)
        accepted = stepping.accepted(position, 5)
        assert accepted == min(5, next_miss - position)
        position += accepted + 1
        steps += 1
    assert steps < 1900 / 2


def test_k_follows_the_running_batch_size(srv: bench.Server) -> None:
    # Drafting only while one sequence runs: requests one at a time draft, a burst of
    # simultaneous ones does not (past its first step, when it runs alone).
    alone = schedule.of_triples([(1, 1, 3), (2, srv.max_batch, 0)])
    apart = [bench.Request(100.0 * i, 50, 20, 0.5, 0.3) for i in range(5)]
    burst = [bench.Request(0.0, 50, 20, 0.5, 0.3) for _ in range(5)]
    assert bench.simulate("apart", apart, srv, alone, SEED).drafted > 0
    assert bench.simulate("burst", burst, srv, alone, SEED).drafted == 0


def _result(throughput: float, p99: float, name: str = "x") -> bench.Result:
    return bench.Result(name, p99, p99 / 2, throughput, 0, 0, 0, [], 0.0, 0.0)


def _row(specfleet: bench.Result, fixed: list[bench.Result]) -> bench.Row:
    return bench.Row("easy", 1.0, 0.5, fixed[0], tuple(fixed), specfleet)


def test_the_oracle_keeps_the_lowest_p99_among_those_that_keep_up() -> None:
    fixed = [
        _result(1000, 9.0, "K=0"),
        _result(1000, 5.0, "K=1"),
        _result(980, 2.0, "K=2"),  # lower P99, but 2% behind: not kept
        _result(995, 4.0, "K=3"),  # within 1%: kept
        _result(1000, 6.0, "K=4"),
        _result(1000, 7.0, "K=5"),
    ]
    assert _row(_result(1000, 4.0), fixed).oracle.name == "K=3"


def test_ratios_count_only_rows_where_specfleet_keeps_up() -> None:
    fixed = [_result(1000, 10.0, f"K={k}") for k in range(6)]
    counted = _row(_result(995, 5.0), fixed)  # within 1%: counts
    behind = _row(_result(980, 1.0), fixed)  # a far lower P99, but 2% less throughput
    values = bench.ratios([counted, behind])
    assert values["worst_p99_ratio_vs_oracle"] == pytest.approx(0.5)
    assert values["best_p99_ratio_vs_fixed_k"] == pytest.approx(0.5)
    assert values["best_p99_ratio_vs_no_spec"] == pytest.approx(0.5)
    assert all(math.isnan(v) for v in bench.ratios([behind]).values())
