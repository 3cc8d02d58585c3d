"""One autoscaling step: the limit and the speculation schedule in force after a decision, and
the history kept. (That the operator records what the step returns, and that a replay gives it
back, is tests/review/test_replay.py's.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from specfleet import plan as planner
from specfleet.api.inferencemodel import (
    DECISION_HISTORY_LIMIT,
    Decision,
    InferenceModelSpec,
    InferenceModelStatus,
    Observation,
)
from specfleet.autoscale import step

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SCHEDULED: dict[str, Any] = {
    "model": {"name": "meta-llama/Llama-3.1-70B-Instruct"},
    "gpu": {"count": "auto"},
    "draft": {"model": {"name": "meta-llama/Llama-3.2-1B-Instruct"}},
    "batching": {"min": 8, "max": 256, "initial": 64},
}
"""A 70B target with an auto schedule for a 1B draft, which the performance model times."""
PROFILE = [0.3, 0.1, 0.03, 0.01, 0.003]


def _spec(**fields: Any) -> InferenceModelSpec:
    return InferenceModelSpec.model_validate({**SCHEDULED, **fields})


def _low(seconds_ago: float, by_position: list[float] | None = None) -> Decision:
    """A steady decision whose window measured a draft acceptance of 0.3."""
    return Decision(
        time=NOW - timedelta(seconds=seconds_ago),
        from_limit=64,
        to_limit=64,
        rule="steady",
        applied=True,
        observation=_observation(by_position, seconds_ago),
    )


def _observation(by_position: list[float] | None = None, seconds_ago: float = 0.0) -> Observation:
    return Observation(
        time=NOW - timedelta(seconds=seconds_ago),
        acceptance_rate=0.2,
        draft_acceptance=0.3,
        acceptance_by_position=by_position,
        in_flight=32.0,
        queue_depth=0.0,
    )


def test_the_history_keeps_the_newest_decisions_with_this_one_last() -> None:
    spec = _spec(draft={"model": {"name": "meta-llama/Llama-3.2-1B-Instruct"}, "schedule": "fixed"})
    history = [_low(30.0 * (DECISION_HISTORY_LIMIT - i)) for i in range(DECISION_HISTORY_LIMIT)]
    taken = step.advance(history, _observation(), spec, 64, None, NOW)
    assert len(taken.history) == DECISION_HISTORY_LIMIT
    assert taken.history[:-1] == history[1:]
    assert taken.history[-1] is taken.decision
    assert taken.decision.time == NOW


@pytest.mark.parametrize(("mode", "applied"), [("Apply", True), ("Recommend", False)])
def test_the_limit_in_force_moves_only_with_an_applied_decision(mode: str, applied: bool) -> None:
    spec = _spec(autoscaling={"mode": mode})
    high = Observation(time=NOW, acceptance_rate=0.95, queue_depth=12.0)
    taken = step.advance([], high, spec, 64, None, NOW)
    assert (taken.decision.rule, taken.decision.to_limit) == ("band-high", 128)
    assert taken.decision.applied is applied
    assert taken.limit == (128 if applied else 64)


def test_a_schedule_is_in_force_only_where_something_retunes_it() -> None:
    spec = _spec()
    plan = planner.plan("llama", spec, None)
    in_force = step.planned_schedule(spec, plan, None)
    assert in_force is not None
    assert (in_force.acceptance, in_force.schedule) == (
        planner.PRIOR_DRAFT_ACCEPTANCE,
        plan.schedule,
    )
    fixed = _spec(
        draft={"model": {"name": "meta-llama/Llama-3.2-1B-Instruct"}, "schedule": "fixed"}
    )
    assert step.planned_schedule(fixed, planner.plan("llama", fixed, None), None) is None
    alone = _spec(draft=None)
    assert step.planned_schedule(alone, planner.plan("llama", alone, None), None) is None


@pytest.mark.parametrize("by_position", [None, PROFILE], ids=["acceptance", "per-position"])
def test_a_retune_leaves_in_force_the_schedule_the_planner_computes_for_it(
    by_position: list[float] | None,
) -> None:
    spec = _spec()
    plan = planner.plan("llama", spec, None)
    before = step.planned_schedule(spec, plan, None)
    history = [_low(60.0, by_position), _low(30.0, by_position)]
    taken = step.advance(history, _observation(by_position), spec, 64, before, NOW)
    change = taken.decision.schedule
    assert change is not None and change.rule == "schedule-retune" and change.applied
    after = taken.schedule
    assert after is not None and after != before
    measured = by_position or 0.3
    assert after.acceptance == measured
    # What the pass renders is what the next pass plans from status, without planning again.
    assert after.replan(plan) == planner.plan("llama", spec, measured)
    # The next step compares against the new schedule: within its hysteresis, nothing moves.
    later = NOW + timedelta(seconds=30)
    again = step.advance(taken.history, _observation(by_position, -30.0), spec, 64, after, later)
    assert again.decision.schedule is None and again.schedule is after


def test_a_recommended_retune_leaves_the_schedule_in_force() -> None:
    spec = _spec(autoscaling={"mode": "Recommend"})
    before = step.planned_schedule(spec, planner.plan("llama", spec, None), None)
    taken = step.advance([_low(60.0), _low(30.0)], _observation(), spec, 64, before, NOW)
    change = taken.decision.schedule
    assert change is not None and change.rule == "schedule-retune" and not change.applied
    assert taken.schedule is before


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, None),
        (InferenceModelStatus(), None),
        (InferenceModelStatus(schedule_acceptance=0.45), 0.45),
        (
            InferenceModelStatus(schedule_acceptance=0.3, schedule_acceptance_by_position=PROFILE),
            PROFILE,
        ),
    ],
)
def test_status_records_what_the_schedule_in_force_was_computed_for(
    status: InferenceModelStatus | None, expected: float | list[float] | None
) -> None:
    assert step.recorded_acceptance(status) == expected
