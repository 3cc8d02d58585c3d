"""The speculation schedule: how many tokens the draft proposes (K) at each batch size.

vLLM's dynamic speculative decoding (`num_speculative_tokens_per_batch_size` in
`--speculative-config`) looks K up by the number of requests it schedules in each step (the
drafts it proposes after a step are verified in the next one). At small
batches a step is dominated by reading the weights, so verifying K+1 tokens costs little more
than one and drafting pays; as the batch grows every verified token costs compute and the
draft's passes add up, so the best K falls, to 0 (no drafting) where speculation no longer pays.

`best` computes the schedule that maximises the replica's `goodput` (accepted tokens per
second) at every batch size from the calibrated performance model and an acceptance rate,
merges equal neighbours into ranges, and never exceeds the spec's `numSpeculativeTokens`.
Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from specfleet import perf

MIN_GAIN = 0.005
"""A K is chosen only where it beats every smaller K by this share of goodput: among the Ks
within it of the best, the smallest wins. The model is not exact, and a K that barely pays on
paper costs draft passes for nothing (and a schedule that flips between Ks on noise). Larger
values keep K too low over wide ranges: 0.02 cost 3% of P99 near capacity in
bench/speculation.py."""

DEFAULT_CONTEXT_TOKENS = 1024
"""The mean context the schedule is computed at when the spec gives no better figure."""


@dataclass(frozen=True)
class Range:
    """K for batch sizes `first` to `last` (inclusive), and the speedup it is expected to
    give there over decoding without a draft (at the range's first and last batch size)."""

    first: int
    last: int
    k: int
    speedup_first: float = 1.0
    speedup_last: float = 1.0

    def as_vllm(self) -> tuple[int, int, int]:
        """The (first, last, K) triple vLLM reads."""
        return (self.first, self.last, self.k)


Schedule = tuple[Range, ...]
"""Ranges from batch size 1 up, in order, each starting after the one before; the last one's K
holds for every larger batch (as vLLM reads it)."""


Acceptance = float | Sequence[float]
"""How a draft's tokens are accepted: the per-token probability, or vLLM's per-position rates
(accepted tokens at draft position i over drafts, i from 0). Over a mix of prompts the rates
are the mean of a^(i+1), not the mean a to the power: easy prompts accept long runs, so a
larger K gains more than the mean acceptance says, and only the per-position rates show it."""


def tokens_per_step(acceptance: Acceptance, k: int) -> float:
    """The tokens a sequence gains per step drafting K: the target's one, plus each position's
    chance to be accepted. Positions past those measured continue the last measured ratio."""
    if isinstance(acceptance, float | int):
        return perf.expected_tokens_per_step(float(acceptance), k)
    rates = list(acceptance)
    if not rates:
        raise ValueError("per-position acceptance needs at least position 0")
    ratio = rates[-1] / rates[-2] if len(rates) > 1 and rates[-2] > 0 else rates[0]
    while len(rates) < k:
        rates.append(rates[-1] * min(ratio, 1.0))
    return 1.0 + math.fsum(rates[:k])


def goodput(
    replica: perf.Replica, batch: int, context_tokens: float, acceptance: Acceptance, k: int
) -> float:
    """The replica's accepted tokens per second, over the whole batch, drafting K at this
    batch size and context: what a schedule maximises, and what a change of schedule is
    weighed by (`specfleet.autoscale.speculation`)."""
    step = perf.step_time(replica, batch, context_tokens, k).seconds
    return batch * tokens_per_step(acceptance, k) / step


def best_k(replica: perf.Replica, batch: int, context_tokens: float, acceptance: Acceptance) -> int:
    """The smallest K (0 to the replica's K) whose goodput at this batch size is within
    `MIN_GAIN` of the best K's."""
    if replica.draft is None:
        return 0
    rates = [
        goodput(replica, batch, context_tokens, acceptance, k)
        for k in range(replica.speculative_tokens + 1)
    ]
    best = max(rates)
    return next(k for k, rate in enumerate(rates) if rate >= best * (1 - MIN_GAIN))


def best(
    replica: perf.Replica,
    acceptance: Acceptance,
    max_batch: int,
    context_tokens: float = DEFAULT_CONTEXT_TOKENS,
) -> Schedule:
    """The goodput-maximising schedule for batch sizes 1 to `max_batch`, for a draft whose
    tokens are accepted as `acceptance` says (a per-token probability: convert a rate vLLM
    reports with `perf.acceptance_from_reported`; or per-position rates). Equal neighbours are
    merged."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    ks = [best_k(replica, b, context_tokens, acceptance) for b in range(1, max_batch + 1)]
    ranges: list[Range] = []
    first = 1
    for batch in range(2, max_batch + 2):
        if batch > max_batch or ks[batch - 1] != ks[first - 1]:
            k = ks[first - 1]
            ranges.append(
                Range(
                    first,
                    batch - 1,
                    k,
                    _speedup(replica, first, context_tokens, acceptance, k),
                    _speedup(replica, batch - 1, context_tokens, acceptance, k),
                )
            )
            first = batch
    return tuple(ranges)


def _speedup(
    replica: perf.Replica, batch: int, context: float, acceptance: Acceptance, k: int
) -> float:
    if k == 0:
        return 1.0
    return round(
        goodput(replica, batch, context, acceptance, k)
        / goodput(replica, batch, context, acceptance, 0),
        3,
    )


def fixed(k: int, max_batch: int) -> Schedule:
    """K at every batch size."""
    return (Range(1, max_batch, k),)


def of_triples(triples: Sequence[tuple[int, int, int]]) -> Schedule:
    """A schedule from (first, last, K) triples, as the spec's ranges give it."""
    return tuple(Range(first, last, k) for first, last, k in triples)


def with_speedups(
    schedule: Schedule, replica: perf.Replica, acceptance: Acceptance, context_tokens: float
) -> Schedule:
    """The same ranges with the speedup the model expects at each one's ends."""
    return tuple(
        Range(
            r.first,
            r.last,
            r.k,
            _speedup(
                replica, r.first, context_tokens, acceptance, min(r.k, replica.speculative_tokens)
            ),
            _speedup(
                replica, r.last, context_tokens, acceptance, min(r.k, replica.speculative_tokens)
            ),
        )
        for r in schedule
    )


def k_at(schedule: Schedule, batch: int) -> int:
    """K at a batch size, as vLLM looks it up (the last range carries on past its end)."""
    for entry in schedule:
        if entry.first <= batch <= entry.last:
            return entry.k
    return schedule[-1].k if schedule else 0


def describe(schedule: Schedule) -> str:
    """`1-24:K5 25-64:K3 65+:K0`, for status columns and the CLI."""
    parts = []
    for index, entry in enumerate(schedule):
        last = "+" if index == len(schedule) - 1 else f"-{entry.last}"
        span = (
            f"{entry.first}{last}" if entry.first != entry.last or last == "+" else str(entry.first)
        )
        parts.append(f"{span}:K{entry.k}")
    return " ".join(parts)


def distance(a: Schedule, b: Schedule, max_batch: int) -> float:
    """The share of batch sizes 1 to `max_batch` where two schedules give a different K."""
    if max_batch < 1:
        return 0.0
    differ = sum(1 for batch in range(1, max_batch + 1) if k_at(a, batch) != k_at(b, batch))
    return differ / max_batch
