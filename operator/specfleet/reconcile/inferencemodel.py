"""One InferenceModel: the children and status its spec calls for, computed, then applied.

A pass (`run`) plans the GPUs, reads the model's metrics when an autoscaling decision is due,
computes without I/O what the children should be (`desired`: the decision recorded, the
objects rendered), applies them (`specfleet.reconcile.apply`), and computes from what that
changed, and from the pods when replicas are missing, the status and Events (`status_after`),
which it writes when they changed. It never touches the resource's spec. Called by
`specfleet.engine`'s workers: a new or changed model's first pass (`rollout_only`: what the
pods need to start, no decision, no status), then its full passes, each of which says when
the next autoscaling decision falls due.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from specfleet import autoscale as autoscaler
from specfleet import conditions, diagnose, metrics
from specfleet import plan as planner
from specfleet.api.common import Condition
from specfleet.api.inferencemodel import (
    InferenceModel,
    InferenceModelStatus,
    Observation,
)
from specfleet.api.manifests import Manifest
from specfleet.autoscale import step, targets
from specfleet.autoscale.speculation import message as schedule_message
from specfleet.config import Config
from specfleet.kube import Children
from specfleet.reconcile import (
    Applied,
    Event,
    Outcome,
    apply,
    capture,
    deployment_current,
    wrote,
)
from specfleet.render import inferencemodel as render

Observer = Callable[[InferenceModel], tuple[Observation, str]]
"""Reads one model's metrics: the observation, and why fields are missing (empty if none)."""


def current_limit(model: InferenceModel) -> int:
    """The batch limit to run with: the last one set, kept within the spec's bounds (they may
    have moved), else the initial one."""
    batching = model.spec.batching
    last = model.status.batch_limit if model.status else None
    if last is None:
        return render.initial_limit(model)
    return min(max(last, batching.min), batching.max)


def rollout_conditions(
    model: InferenceModel,
    plan: planner.Plan,
    deployment: Manifest | None,
    previous: list[Condition],
    now: datetime,
    *,
    just_applied: bool = False,
    trouble: diagnose.Trouble | None = None,
) -> list[Condition]:
    """Ready, Progressing and Degraded from the Deployment's state (`just_applied`: the
    observed Deployment predates a change this pass made, so it says nothing yet) and, while
    replicas are missing, from what keeps their pods from running (`trouble`)."""
    generation = model.metadata.generation
    wanted = model.spec.replicas
    status = (deployment or {}).get("status", {})
    current = deployment_current(deployment, wanted, just_applied=just_applied)
    ready = status.get("readyReplicas", 0) if current else 0
    updated = status.get("updatedReplicas", 0) if current else 0
    stuck = next(
        (
            c
            for c in status.get("conditions", [])
            if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
        ),
        None,
    )
    shape = f"{plan.tensor_parallel_size} x {plan.gpu.product} per replica"
    done = current and ready >= wanted and updated >= wanted
    result = list(previous)

    def put(type: str, value: conditions.Status, reason: str, message: str) -> None:
        nonlocal result
        result = conditions.set_condition(
            result, type, value, reason, message, generation=generation, now=now
        )

    if wanted == 0 and current:
        put("Ready", "True", "ScaledToZero", "spec.replicas is 0")
    elif done:
        put("Ready", "True", "ReplicasReady", f"{ready}/{wanted} replicas ready, {shape}")
    elif trouble is not None:
        put("Ready", "False", trouble.reason, f"{ready}/{wanted} replicas ready: {trouble.message}")
    else:
        put("Ready", "False", "ReplicasNotReady", f"{ready}/{wanted} replicas ready, {shape}")
    if done or (wanted == 0 and current):
        put(
            "Progressing", "False", "RolloutComplete", f"all {wanted} replicas run the current spec"
        )
    else:
        put(
            "Progressing",
            "True",
            "RollingOut",
            f"{updated}/{wanted} replicas updated, {ready} ready",
        )
    if trouble is not None and not done:
        put("Degraded", "True", trouble.reason, trouble.message)
    elif stuck is not None:
        put("Degraded", "True", "RolloutStuck", str(stuck.get("message", "rollout stalled")))
    else:
        put("Degraded", "False", "AsPlanned", "serving as planned")
    return result


def _all_ready(model: InferenceModel, deployment: Manifest | None) -> bool:
    """Whether the observed Deployment has every wanted replica ready (pods need no look)."""
    ready = (deployment or {}).get("status", {}).get("readyReplicas", 0)
    return bool(ready >= model.spec.replicas)


def _newly_degraded(model: InferenceModel, trouble: diagnose.Trouble) -> bool:
    """Whether `trouble` is news: Degraded does not already name its reason (one Event per
    cause, not one per restart of a crash-looping container)."""
    was = conditions.find(model.status.conditions if model.status else [], "Degraded")
    return was is None or was.status != "True" or was.reason != trouble.reason


def refused_conditions(
    model: InferenceModel, reason: str, message: str, previous: list[Condition], now: datetime
) -> list[Condition]:
    generation = model.metadata.generation
    result = conditions.set_condition(
        previous, "Ready", "False", reason, message, generation=generation, now=now
    )
    result = conditions.set_condition(
        result,
        "Progressing",
        "False",
        reason,
        "nothing is rolled out until the spec changes",
        generation=generation,
        now=now,
    )
    return conditions.set_condition(
        result, "Degraded", "True", reason, message, generation=generation, now=now
    )


def model_status(
    model: InferenceModel,
    plan: planner.Plan,
    deployment: Manifest | None,
    limit: int,
    now: datetime,
    *,
    just_applied: bool = False,
    trouble: diagnose.Trouble | None = None,
) -> InferenceModelStatus:
    """The status of a model whose plan fits, from its Deployment (and what keeps its pods
    from running, if anything does)."""
    previous = model.status or InferenceModelStatus()
    live = (deployment or {}).get("status", {})
    name = model.metadata.name
    return previous.model_copy(
        update={
            "observed_generation": model.metadata.generation,
            "plan": plan.status(),
            "replicas": live.get("replicas", 0),
            "ready_replicas": live.get("readyReplicas", 0),
            "selector": ",".join(f"{k}={v}" for k, v in render.selector(name).items()),
            "batch_limit": limit,
            "conditions": rollout_conditions(
                model,
                plan,
                deployment,
                previous.conditions,
                now,
                just_applied=just_applied,
                trouble=trouble,
            ),
        }
    )


def next_decision(model: InferenceModel, now: datetime) -> datetime | None:
    """When a model's next autoscaling decision falls due: an interval after its last one
    (now, when it has none yet); None when autoscaling is off."""
    autoscaling = model.spec.autoscaling
    if not autoscaling.enabled:
        return None
    last = model.status.last_decision if model.status else None
    return now if last is None else max(now, last.time + autoscaling.interval.delta)


def decision_due(model: InferenceModel, now: datetime) -> bool:
    """Whether autoscaling wants a decision: enabled, and an interval since the last one."""
    due = next_decision(model, now)
    return due is not None and due <= now


def _schedule_in_force(model: InferenceModel) -> float | list[float] | None:
    """What the speculation schedule in force was computed for (None: the planner's prior)."""
    return step.recorded_acceptance(model.status)


def autoscale(
    model: InferenceModel,
    plan: planner.Plan,
    observation: Observation,
    missing: str,
    now: datetime,
) -> tuple[InferenceModel, planner.Plan, list[Event]]:
    """One autoscaling step (`autoscale.step`) recorded into the model's status, applied or
    only recommended: the decision, the batch limit and, with an auto speculation schedule,
    a schedule change when one pays; with MetricsAvailable, SpeculationHealthy and their
    Events, and LatencyTargetsMet (`autoscale.targets`). The plan comes back running the
    schedule in force after the step (vLLM reads its schedule at start, so a new one rolls
    the Deployment). Pure."""
    spec = model.spec
    status = model.status or InferenceModelStatus()
    limit = current_limit(model)
    schedule = step.planned_schedule(spec, plan, _schedule_in_force(model))
    taken = step.advance(status.decisions, observation, spec, limit, schedule, now)
    decision = taken.decision
    events: list[Event] = []
    if taken.limit != limit:
        events.append(Event("Normal", "BatchLimitChanged", decision.message))
    schedule_acceptance = status.schedule_acceptance
    by_position = status.schedule_acceptance_by_position
    change = decision.schedule
    if change is not None and change.applied and taken.schedule is not None:
        schedule_acceptance = change.to_acceptance
        by_position = change.to_acceptance_by_position
        plan = taken.schedule.replan(plan)
        events.append(Event("Normal", "SpeculationScheduleChanged", schedule_message(change)))
    generation = model.metadata.generation
    held = decision.rule in ("hold-missing-metrics", "hold-stale-metrics")
    result = conditions.set_condition(
        status.conditions,
        "MetricsAvailable",
        "False" if held else "True",
        "MetricsMissing" if held else "MetricsRead",
        (missing or decision.message) if held else "acceptance and latency read from Prometheus",
        generation=generation,
        now=now,
    )
    if spec.draft is not None:
        healthy = autoscaler.speculation_healthy(taken.history)
        was = conditions.find(status.conditions, "SpeculationHealthy")
        if not healthy and (was is None or was.status == "True"):
            events.append(
                Event(
                    "Warning",
                    "SpeculationUnhealthy",
                    "speculative acceptance has stayed under 60%: the draft costs more than it "
                    "saves; consider another draft model or method, or serving without one",
                )
            )
        result = conditions.set_condition(
            result,
            "SpeculationHealthy",
            "True" if healthy else "False",
            "AcceptancePays" if healthy else "AcceptanceLow",
            f"speculative acceptance {observation.acceptance_rate:.0%}"
            if observation.acceptance_rate is not None
            else "no acceptance rate measured yet",
            generation=generation,
            now=now,
        )
    latency = targets.verdict(spec, plan, observation, decision)
    result = conditions.set_condition(
        result,
        targets.CONDITION,
        latency.status,
        latency.reason,
        latency.message,
        generation=generation,
        now=now,
    )
    updated = status.model_copy(
        update={
            "decisions": taken.history,
            "last_decision": decision,
            "batch_limit": taken.limit,
            "schedule_acceptance": schedule_acceptance,
            "schedule_acceptance_by_position": by_position,
            "acceptance_rate": observation.acceptance_rate,
            "p99_seconds": observation.p99_seconds,
            "conditions": result,
        }
    )
    return model.model_copy(update={"status": updated}), plan, events


def refused_status(model: InferenceModel, message: str, now: datetime) -> InferenceModelStatus:
    """The status of a model whose plan does not fit: refused, saying why."""
    previous = model.status or InferenceModelStatus()
    return previous.model_copy(
        update={
            "observed_generation": model.metadata.generation,
            "conditions": refused_conditions(
                model, "Infeasible", message, previous.conditions, now
            ),
        }
    )


@dataclass(frozen=True)
class Desired:
    """What a pass computes before it writes anything."""

    model: InferenceModel
    """The model with this pass's autoscaling decision, if one was made, in its status."""
    plan: planner.Plan
    limit: int
    children: list[Manifest]
    events: list[Event]
    """The decision's Events."""


def desired(
    model: InferenceModel,
    plan: planner.Plan,
    config: Config,
    now: datetime,
    measured: tuple[Observation, str] | None = None,
    *,
    rollout_only: bool = False,
) -> Desired:
    """The children a model whose `plan` fits should have, after the autoscaling decision its
    `measured` metrics call for (none when None). A decision that retunes the speculation
    schedule renders the plan with the new schedule: vLLM reads its schedule at start, so
    the new arguments roll the Deployment. `rollout_only`: only what the pods need to start
    (`render.ROLLOUT_KINDS`). Pure."""
    events: list[Event] = []
    if measured is not None:
        model, plan, events = autoscale(model, plan, *measured, now)
    limit = current_limit(model)
    owner = render.Owner(model.metadata.name, model.metadata.uid or "")
    children = [
        manifest
        for manifest in render.manifests(model, plan, config, limit, owner)
        if not rollout_only or manifest["kind"] in render.ROLLOUT_KINDS
    ]
    return Desired(model, plan, limit, children, events)


def needs_pods(want: Desired, deployment: Manifest | None, *, rolled: bool) -> bool:
    """Whether status needs the pods: replicas are missing from a Deployment this pass did
    not just change (its pods then say nothing yet)."""
    return not rolled and not _all_ready(want.model, deployment)


def status_after(
    want: Desired,
    deployment: Manifest | None,
    now: datetime,
    *,
    rolled: bool,
    pods: list[Manifest] | None = None,
) -> tuple[InferenceModelStatus, list[Event]]:
    """The status and Events once the children are applied: `rolled` when this pass or its
    first pass wrote the Deployment, `pods` when `needs_pods` asked for them. Pure."""
    model, plan = want.model, want.plan
    events: list[Event] = []
    if rolled:
        replicas = "replica" if model.spec.replicas == 1 else "replicas"
        events.append(
            Event(
                "Normal",
                "RolloutStarted",
                f"Deployment {model.metadata.name}: {model.spec.replicas} {replicas} of "
                f"{plan.tensor_parallel_size} x {plan.gpu.product}, {plan.quantization} weights",
            )
        )
    reported = model.status.plan.warnings if model.status and model.status.plan else []
    events += [Event("Warning", "PlanWarning", w) for w in plan.warnings if w not in reported]
    trouble = diagnose.trouble(pods) if pods is not None else None
    status = model_status(
        model, plan, deployment, want.limit, now, just_applied=rolled, trouble=trouble
    )
    if trouble is not None and _newly_degraded(model, trouble):
        events.append(Event("Warning", trouble.reason, trouble.message))
    return status, events


def _count(model: InferenceModel) -> None:
    """The operator's metrics of the decision a pass made."""
    decision = model.status.last_decision if model.status else None
    if decision is None:
        return
    applied = str(decision.applied).lower()
    metrics.DECISIONS.labels(decision.rule, applied).inc()
    if decision.to_limit != decision.from_limit:
        namespace = model.metadata.namespace or ""
        metrics.LIMIT_CHANGES.labels(namespace, model.metadata.name, applied).inc()


def run(
    model: InferenceModel,
    observed: Mapping[str, Manifest],
    writer: apply.Writer,
    config: Config,
    now: datetime,
    known: Children,
    observe: Observer | None = None,
    *,
    rollout_only: bool = False,
    applied_before: Sequence[Applied] = (),
    count: capture.Counter | None = None,
) -> Outcome:
    """One pass: brings an InferenceModel's children and status in line with its spec and,
    when an `observe`r is given and a decision is due, its batch limit with its metrics.

    `observed` maps a child's `apply.key` to its `apply.summary` (absent when it does not exist);
    `known` says which versions of the children already match. When the spec cannot be
    served it says why in status, and in an Event when that is news (`Outcome.refused`).
    `rollout_only` does the first part alone: what the pods need, no autoscaling, no status
    and no Events; a full pass must follow, with what that part applied as `applied_before`.
    A full pass says when the next autoscaling decision falls due (`Outcome.next_decision`)."""
    plan = planner.plan(model.metadata.name, model.spec, _schedule_in_force(model))
    if not plan.fits:
        message = "; ".join(plan.errors)
        written = apply.status(writer, model, refused_status(model, message, now))
        events = [Event("Warning", "Infeasible", message)] if written else []
        return Outcome(status_changed=written, events=events, refused=message)
    due = observe is not None and not rollout_only and decision_due(model, now)
    measured = observe(model) if observe is not None and due else None
    want = desired(model, plan, config, now, measured, rollout_only=rollout_only)
    outcome = Outcome(apply.children(want.children, observed, writer, known), events=want.events)
    if measured is not None:
        _count(want.model)
    if rollout_only:
        return outcome
    rolled = wrote("Deployment", applied_before, outcome.children)
    deployment = observed.get(apply.key("Deployment", model.metadata.name))
    pods = None
    if needs_pods(want, deployment, rolled=rolled):
        pods = writer.pods(model.metadata.namespace or "", render.selector(model.metadata.name))
    status, events = status_after(want, deployment, now, rolled=rolled, pods=pods)
    before = model.status.capture if model.status else None
    status.capture = capture.run(
        model.spec.capture,
        "InferenceModel",
        model.metadata.namespace or "",
        model.metadata.name,
        before,
        observed,
        writer,
        count,
    )
    status.conditions = capture.with_condition(
        status.conditions, before, status.capture, generation=model.metadata.generation, now=now
    )
    outcome.events = [*want.events, *events]
    # Compared with the status as stored: a decision made this pass is a change to write.
    outcome.status_changed = apply.status(writer, model, status)
    if observe is not None:
        outcome.next_decision = next_decision(want.model, now)
    return outcome
