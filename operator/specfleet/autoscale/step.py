"""One autoscaling step: from a model's recent decisions and one window's observation, the
decision, the batch limit and the speculation schedule in force after it, and the history to
keep.

The one place that puts the limit policy (`policy.decide`) and the schedule's retuning rule
(`speculation.retune`) together, so what the operator records is what a replay computes:
`specfleet.reconcile.inferencemodel` records each step in status, `specfleet review --replay`
folds recorded observations through it, and `bench/autoscale.py` runs its controller on it.
Pure: history, observation, spec, limit, schedule and time in; a `Step` out.

The schedule in force is a value (`ScheduleInForce`) that travels from one step to the next:
its K per batch size is computed once, by the planner (`planned_schedule` takes it from the
plan) or by the retune that proposed it, and a pass renders the plan the step leaves it with
(`ScheduleInForce.replan`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from specfleet import perf, schedule
from specfleet import plan as planner
from specfleet.api.inferencemodel import (
    DECISION_HISTORY_LIMIT,
    Decision,
    InferenceModelSpec,
    InferenceModelStatus,
    Observation,
)
from specfleet.autoscale import policy, speculation


def recorded_acceptance(status: InferenceModelStatus | None) -> float | list[float] | None:
    """What status records the speculation schedule in force was computed for: the
    per-position acceptance when it was measured, else the draft acceptance; None: the
    planner's prior (no change applied yet)."""
    if status is None:
        return None
    return status.schedule_acceptance_by_position or status.schedule_acceptance


@dataclass(frozen=True)
class ScheduleInForce:
    """An auto speculation schedule as the replicas run it, and what it was computed for."""

    replica: perf.Replica
    """The replica the schedule is timed on (the plan's)."""
    acceptance: schedule.Acceptance
    """What it was computed for: vLLM's per-position rates when they were measured, else the
    draft acceptance (the planner's prior until one is measured)."""
    schedule: schedule.Schedule
    """K per batch-size range."""

    def replan(self, plan: planner.Plan) -> planner.Plan:
        """`plan` running this schedule: what `planner.plan` computes for this acceptance (only
        the schedule depends on it), without computing the schedule again."""
        first = self.acceptance if isinstance(self.acceptance, float | int) else self.acceptance[0]
        return dataclasses.replace(plan, schedule=self.schedule, schedule_acceptance=float(first))


def planned_schedule(
    spec: InferenceModelSpec, plan: planner.Plan, acceptance: schedule.Acceptance | None
) -> ScheduleInForce | None:
    """The schedule `plan` runs, planned for `acceptance` (None: the planner's prior). None
    when nothing retunes it: the schedule is not auto, or the performance model cannot time the
    replica with its draft."""
    if (
        spec.draft is None
        or spec.draft.schedule != "auto"
        or plan.replica is None
        or plan.schedule_acceptance is None
    ):
        return None
    return ScheduleInForce(
        plan.replica,
        plan.schedule_acceptance if acceptance is None else acceptance,
        plan.schedule,
    )


@dataclass(frozen=True)
class Step:
    """What one autoscaling step decided, and the state the next one starts from."""

    decision: Decision
    """The decision, with the speculation schedule change it proposes, if any, on it."""
    limit: int
    """The batch limit in force after it: the decision's when applied, else the one before."""
    schedule: ScheduleInForce | None
    """The speculation schedule in force after it: the proposed one when a change was
    applied, else the one before."""
    history: list[Decision]
    """The decisions to keep, oldest first: the last `DECISION_HISTORY_LIMIT`, this one last."""


def advance(
    history: Sequence[Decision],
    observation: Observation,
    spec: InferenceModelSpec,
    limit: int,
    in_force: ScheduleInForce | None,
    now: datetime,
) -> Step:
    """One step at `now`. `history` is the decisions kept so far, oldest first; `observation`
    covers the last window; `spec` gives the autoscaling and batching settings, whether there
    is a draft, and the replicas that share the load; `limit` is the batch limit in force;
    `in_force` is the auto speculation schedule in force (None: none to retune)."""
    settings = policy.Policy.from_spec(
        spec.autoscaling, spec.batching, limit, now, speculative=spec.draft is not None
    )
    decision = policy.decide(history, observation, settings)
    after = in_force
    if in_force is not None:
        proposal = speculation.retune(
            history,
            observation,
            in_force.replica,
            in_force.acceptance,
            schedule=in_force.schedule,
            limit=limit,
            max_batch=spec.batching.max,
            replicas=spec.replicas,
            context_tokens=spec.batching.average_tokens,
            now=now,
            apply=spec.autoscaling.mode == "Apply",
        )
        if proposal is not None:
            change, proposed = proposal
            decision = decision.model_copy(update={"schedule": change})
            if change.applied:
                measured = change.to_acceptance_by_position or change.to_acceptance
                after = ScheduleInForce(in_force.replica, measured, proposed)
    return Step(
        decision=decision,
        limit=decision.to_limit if decision.applied else limit,
        schedule=after,
        history=[*history, decision][-DECISION_HISTORY_LIMIT:],
    )
