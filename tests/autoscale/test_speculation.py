"""The speculation schedule's retuning rule, as a table: each row changes one input from a case
that retunes, and the rule that stops it is the one the row names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from specfleet import catalog, perf, schedule
from specfleet.api.inferencemodel import Decision, Observation, ScheduleDecision
from specfleet.autoscale import speculation

NOW = datetime(2026, 1, 1, tzinfo=UTC)
REPLICA = perf.Replica(
    catalog.model("meta-llama/Llama-3.1-70B-Instruct"),
    catalog.GPUS["H100-80GB"],
    4,
    "fp8",
    catalog.model("meta-llama/Llama-3.2-1B-Instruct"),
    5,
)
PRIOR = 0.8


def _history(
    acceptances: list[float | None], schedule: ScheduleDecision | None = None
) -> list[Decision]:
    decisions = [
        Decision(
            time=NOW - timedelta(seconds=30 * (len(acceptances) - i)),
            from_limit=64,
            to_limit=64,
            rule="steady",
            applied=True,
            observation=Observation(draft_acceptance=a, in_flight=64.0),
        )
        for i, a in enumerate(acceptances)
    ]
    if schedule is not None and decisions:
        decisions[-1] = decisions[-1].model_copy(update={"schedule": schedule})
    return decisions


def _proposal(
    history: list[Decision],
    measured: float | None,
    in_force: float | list[float] = PRIOR,
    *,
    by_position: list[float] | None = None,
    replica: perf.Replica = REPLICA,
    **kwargs: Any,
) -> tuple[ScheduleDecision, schedule.Schedule] | None:
    arguments: dict[str, Any] = {
        "limit": 64,
        "max_batch": 256,
        "replicas": 1,
        "context_tokens": 1024,
        "now": NOW,
        "apply": True,
    } | kwargs
    observation = Observation(
        draft_acceptance=measured,
        acceptance_by_position=by_position,
        in_flight=arguments.pop("in_flight", 64.0),
    )
    # The schedule in force is the one the planner computed for `in_force`.
    running = schedule.best(replica, in_force, arguments["max_batch"], arguments["context_tokens"])
    return speculation.retune(
        history, observation, replica, in_force, schedule=running, **arguments
    )


def _retune(
    history: list[Decision], measured: float | None, *args: Any, **kwargs: Any
) -> ScheduleDecision | None:
    proposal = _proposal(history, measured, *args, **kwargs)
    return None if proposal is None else proposal[0]


def test_a_draft_accepted_far_less_than_assumed_retunes_the_schedule() -> None:
    proposal = _proposal(_history([0.45, 0.45]), 0.45)
    assert proposal is not None
    change, proposed = proposal
    assert (change.rule, change.applied, change.from_acceptance) == ("schedule-retune", True, PRIOR)
    assert change.to_acceptance == pytest.approx(0.45, abs=0.001)
    assert change.gain >= speculation.MIN_GAIN
    assert proposed == schedule.best(REPLICA, 0.45, 256, 1024)
    assert change.ranges == schedule.describe(proposed)
    assert "applied" in speculation.message(change) and "0.80 -> 0.45" in speculation.message(
        change
    )
    # The gain: the proposed schedule's goodput over the running one's at the running batch
    # (64 in flight on one replica), both at the measured acceptance.
    running = schedule.best(REPLICA, PRIOR, 256, 1024)
    before, after = (
        schedule.goodput(REPLICA, 64, 1024, change.to_acceptance, schedule.k_at(ranges, 64))
        for ranges in (running, proposed)
    )
    assert schedule.k_at(running, 64) != schedule.k_at(proposed, 64)
    assert change.gain == round(after / before - 1, 3)


def test_goodput_is_the_batchs_tokens_per_step_over_the_steps_time() -> None:
    step = perf.step_time(REPLICA, 16, 1024, 3).seconds
    three = 1 + 0.8 + 0.64 + 0.512
    assert schedule.goodput(REPLICA, 16, 1024, 0.8, 3) == pytest.approx(16 * three / step)
    # Per-position rates: the target's token plus each position's rate.
    by_position = schedule.goodput(REPLICA, 16, 1024, [0.7, 0.5, 0.3], 3)
    assert by_position == pytest.approx(16 * 2.5 / step)
    plain = perf.step_time(REPLICA.without_draft(), 16, 1024).seconds
    assert schedule.goodput(REPLICA, 16, 1024, 0.8, 0) == pytest.approx(16 / plain)


@pytest.mark.parametrize(
    ("case", "history", "measured", "kwargs"),
    [
        # Too few measurements: one noisy window does not restart a fleet.
        ("few-samples", [None, None], 0.45, {}),
        # Within the hysteresis of the schedule's own acceptance.
        ("hysteresis", [0.77, 0.77], 0.77, {}),
        # At batch 1 both schedules draft the most tokens: nothing to gain by a restart.
        ("no-gain-at-the-running-batch", [0.7, 0.7], 0.7, {"in_flight": 1.0}),
    ],
)
def test_no_change_when_it_would_not_pay(
    case: str, history: list[float | None], measured: float, kwargs: dict[str, Any]
) -> None:
    assert _retune(_history(history), measured, **kwargs) is None, case


def test_the_gain_is_judged_at_the_batch_the_replica_runs() -> None:
    # 0.8 -> 0.6 pays at 8 sequences in flight (K 5 -> 2, +10%) but not at 32 (K 3 -> 2, +4%).
    assert _retune(_history([0.6, 0.6]), 0.6, in_flight=8.0) is not None
    assert _retune(_history([0.6, 0.6]), 0.6, in_flight=32.0) is None
    # In flight is summed over replicas: four replicas at 32 in all run 8 each.
    assert _retune(_history([0.6, 0.6]), 0.6, in_flight=32.0, replicas=4) is not None
    # Past the hysteresis, but the best schedule for 0.7 is no better at 32 than 0.8's.
    assert _retune(_history([0.7, 0.7]), 0.7, in_flight=32.0) is None


def test_recommend_mode_records_the_change_without_applying_it() -> None:
    change = _retune(_history([0.45, 0.45]), 0.45, apply=False)
    assert change is not None and change.rule == "schedule-retune" and not change.applied
    assert "recommended" in speculation.message(change)


def test_a_recent_change_holds_the_next_one_by_the_cooldown() -> None:
    applied = ScheduleDecision(
        rule="schedule-retune", to_acceptance=0.6, ranges="1+:K5", gain=0.1, applied=True
    )
    change = _retune(_history([0.3, 0.3], applied), 0.3, in_force=0.6, in_flight=32.0)
    assert change is not None and change.rule == "schedule-cooldown" and not change.applied
    later = _retune(
        _history([0.3, 0.3], applied),
        0.3,
        in_force=0.6,
        in_flight=32.0,
        now=NOW + speculation.COOLDOWN,
    )
    assert later is not None and later.rule == "schedule-retune" and later.applied


def test_no_draft_no_retune() -> None:
    assert _retune(_history([0.3, 0.3]), 0.3, replica=REPLICA.without_draft()) is None


def test_per_position_rates_of_a_mixed_load_call_for_a_larger_k_than_their_mean() -> None:
    # Half the prompts accept every draft (a = 1), half none (a = 0): each position's rate is
    # 0.5, and the mean acceptance too. One acceptance of 0.5 says drafting barely pays; the
    # rates say every drafted token is accepted half the time whatever its position.
    mixed = [0.5] * 5
    assert schedule.tokens_per_step(mixed, 5) == pytest.approx(3.5)
    assert schedule.tokens_per_step(0.5, 5) == pytest.approx(1.96875)
    by_mean = schedule.k_at(schedule.best(REPLICA, 0.5, 256, 1024), 16)
    by_position = schedule.k_at(schedule.best(REPLICA, mixed, 256, 1024), 16)
    assert by_position > by_mean
    # Positions past those measured continue the last ratio: 0.8, 0.64, then 0.512...
    assert schedule.tokens_per_step([0.8, 0.64], 4) == pytest.approx(
        schedule.tokens_per_step(0.8, 4)
    )


def test_a_retune_computes_the_schedule_from_the_smoothed_per_position_rates() -> None:
    profile = [0.45, 0.3, 0.2, 0.13, 0.09]
    history = [
        Decision(
            time=NOW - timedelta(seconds=30 * (2 - i)),
            from_limit=64,
            to_limit=64,
            rule="steady",
            applied=True,
            observation=Observation(
                draft_acceptance=0.45, acceptance_by_position=profile, in_flight=64.0
            ),
        )
        for i in range(2)
    ]
    proposal = _proposal(history, 0.45, by_position=profile)
    assert proposal is not None
    change, proposed = proposal
    assert change.to_acceptance_by_position == profile and change.to_acceptance == 0.45
    assert proposed == schedule.best(REPLICA, profile, 256, 1024)
    assert change.ranges == schedule.describe(proposed)
    # From the profile in force, the same measurement is within the hysteresis.
    again = _retune(
        [*history, history[-1].model_copy(update={"schedule": change})],
        0.45,
        profile,
        by_position=profile,
    )
    assert again is None
