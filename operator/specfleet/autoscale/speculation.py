"""Retuning the speculation schedule from the measured draft acceptance.

An auto schedule (`draft.schedule: auto`) is computed for one draft acceptance: the planner's
prior until a rate is measured. vLLM reads the schedule only at start, so changing it costs a
rolling restart (each replica out for its start-up). `retune` proposes a new schedule only
when that pays, by one stated rule:

1. At least `MIN_SAMPLES` measured draft acceptances (vLLM's accepted tokens at draft position
   0 over its drafts: independent of the K each step drafted), smoothed like the limit
   policy's acceptance (`policy.smoothed`).
2. Hysteresis: the smoothed acceptance differs from the one the schedule in force was computed
   for by at least `HYSTERESIS`, so a rate hovering near it never flips the schedule back and
   forth.
3. Gain: at the batch the replica runs now (the window's sequences in flight per replica,
   within 1..the limit; the limit when unknown), the performance model expects the new
   schedule to deliver at least `MIN_GAIN` more goodput than the one in force, both timed at
   the measured acceptance. Below that, a restart costs more than it returns.
4. Cooldown: no second change within `COOLDOWN` of the last applied one (`schedule-cooldown`
   records that it would have paid).

Applied in Apply mode (the operator re-renders vLLM's arguments and the Deployment rolls);
recorded only in Recommend mode. Pure: history, observation, replica and the schedule in
force in, a `ScheduleDecision` and the schedule it proposes (or None) out. Called by
`specfleet.autoscale.step`, the step the operator, `specfleet review --replay` and the
benchmark share.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import specfleet.schedule
from specfleet import perf
from specfleet.api.inferencemodel import Decision, Observation, ScheduleDecision
from specfleet.autoscale.policy import smoothed

MIN_SAMPLES = 3
"""Measured acceptances needed before the schedule moves."""

HYSTERESIS = 0.05
"""How far the smoothed draft acceptance must move from the schedule's own before a change."""

MIN_GAIN = 0.05
"""The least expected goodput gain, at the running batch, that pays for a rolling restart."""

COOLDOWN = timedelta(minutes=30)
"""The least time between two applied schedule changes."""


def _batch(observation: Observation, limit: int, replicas: int) -> int:
    """The batch one replica runs now: in flight per replica, within 1..limit."""
    if observation.in_flight is None or replicas < 1:
        return limit
    return max(1, min(limit, round(observation.in_flight / replicas)))


def _goodput(
    replica: perf.Replica,
    ranges: specfleet.schedule.Schedule,
    acceptance: specfleet.schedule.Acceptance,
    batch: int,
    context: float,
) -> float:
    """`specfleet.schedule.goodput` at the K the schedule gives this batch."""
    k = specfleet.schedule.k_at(ranges, batch)
    return specfleet.schedule.goodput(replica, batch, context, acceptance, k)


def _first(acceptance: specfleet.schedule.Acceptance) -> float:
    return float(acceptance) if isinstance(acceptance, float | int) else acceptance[0]


def _smoothed_by_position(
    history: Sequence[Decision], observation: Observation
) -> list[float] | None:
    """Each position's rate smoothed over the observations that measured it; None when the
    newest observation measured none."""
    newest = observation.acceptance_by_position
    if not newest:
        return None
    profiles = [d.observation.acceptance_by_position for d in history] + [newest]
    rates = []
    for position in range(len(newest)):
        samples = [p[position] if p and len(p) > position else None for p in profiles]
        rate = smoothed(samples)
        rates.append(round(rate if rate is not None else newest[position], 3))
    return rates


def _last_applied(history: Sequence[Decision]) -> Decision | None:
    return next(
        (d for d in reversed(history) if d.schedule is not None and d.schedule.applied), None
    )


def retune(
    history: Sequence[Decision],
    observation: Observation,
    replica: perf.Replica,
    in_force: specfleet.schedule.Acceptance,
    *,
    schedule: specfleet.schedule.Schedule,
    limit: int,
    max_batch: int,
    replicas: int,
    context_tokens: float,
    now: datetime,
    apply: bool,
) -> tuple[ScheduleDecision, specfleet.schedule.Schedule] | None:
    """The schedule change the rule above proposes now and the schedule it proposes, or None.
    `schedule` is the running schedule and `in_force` the draft acceptance (or the
    per-position rates) it was computed for; `max_batch` is batching.max, the range the
    schedule covers; `apply` is whether autoscaling.mode is Apply. The new schedule is
    computed from the smoothed per-position rates where vLLM reports them (they hold what a
    mix of easy and hard prompts gains from a larger K), else from the smoothed draft
    acceptance."""
    if replica.draft is None:
        return None
    samples = [d.observation.draft_acceptance for d in history] + [observation.draft_acceptance]
    if sum(1 for s in samples if s is not None) < MIN_SAMPLES:
        return None
    smoothed_first = smoothed(samples)
    if smoothed_first is None or abs(smoothed_first - _first(in_force)) < HYSTERESIS:
        return None
    by_position = _smoothed_by_position(history, observation)
    measured: specfleet.schedule.Acceptance = by_position or round(smoothed_first, 3)
    proposed = specfleet.schedule.best(replica, measured, max_batch, context_tokens)
    batch = _batch(observation, limit, replicas)
    before = _goodput(replica, schedule, measured, batch, context_tokens)
    after = _goodput(replica, proposed, measured, batch, context_tokens)
    gain = after / before - 1
    if gain < MIN_GAIN:
        return None
    last = _last_applied(history)
    cooling = last is not None and now - last.time < COOLDOWN
    decision = ScheduleDecision(
        rule="schedule-cooldown" if cooling else "schedule-retune",
        from_acceptance=_first(in_force),
        from_acceptance_by_position=None if isinstance(in_force, float | int) else list(in_force),
        to_acceptance=round(smoothed_first, 3),
        to_acceptance_by_position=by_position,
        ranges=specfleet.schedule.describe(proposed),
        gain=round(gain, 3),
        applied=apply and not cooling,
    )
    return decision, proposed


def message(decision: ScheduleDecision) -> str:
    """The decision in words, for Events and `specfleet review`."""
    verb = {
        "schedule-retune": "applied" if decision.applied else "recommended",
        "schedule-cooldown": "held by the cooldown",
    }.get(decision.rule, decision.rule)
    before = "the prior" if decision.from_acceptance is None else f"{decision.from_acceptance:.2f}"
    return (
        f"speculation schedule {verb}: draft acceptance {before} -> "
        f"{decision.to_acceptance:.2f}, {decision.ranges}, "
        f"{decision.gain:+.0%} goodput expected at the running batch"
    )
