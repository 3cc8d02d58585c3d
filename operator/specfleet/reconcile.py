"""Reconciling one InferenceModel: get, plan, execute, update status.

Given the parsed resource and summaries of the children the operator watches, it plans the
GPUs, renders the objects, applies those whose rendered fields the live objects do not
already hold (reading a child only when it changed since it last matched), and computes the
status. It never touches the resource's spec. The deciding
parts (`rollout_conditions`, `current_limit`, `model_status`) are pure; `inference_model`
adds the I/O through a `Writer` (the real one is `specfleet.kube.Kube`), so tests can pass a
recording fake. Called by `handlers`: a handler's first pass (`rollout_only`), then the full pass
from the backlog, and every pass of the resync loop.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from specfleet import autoscale as autoscaler
from specfleet import conditions, diagnose, metrics
from specfleet import plan as planner
from specfleet.api.common import Condition, duration_seconds
from specfleet.api.crdinfo import API_VERSION
from specfleet.api.inferencemodel import (
    DECISION_HISTORY_LIMIT,
    InferenceModel,
    InferenceModelStatus,
    Observation,
    ScheduleDecision,
)
from specfleet.autoscale.speculation import message as schedule_message
from specfleet.autoscale.speculation import retune as retune_schedule
from specfleet.config import Config
from specfleet.kube import Children, Manifest, contains
from specfleet.render import inferencemodel as render

KIND = "InferenceModel"


class Writer(Protocol):
    """What reconciling needs from the API: the subset of `specfleet.kube.Kube` it uses."""

    def get(self, manifest: Mapping[str, Any]) -> Manifest | None: ...

    def apply(self, manifest: Manifest) -> str: ...

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None: ...

    def pods(self, namespace: str, selector: Mapping[str, str]) -> list[Manifest]: ...


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the InferenceModel."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


class RefusedError(Exception):
    """The spec cannot be served as written; the message says what to change."""


@dataclass
class Outcome:
    """What one reconcile did."""

    applied: list[str] = field(default_factory=list)
    """The objects written, as `Kind name`."""
    status_changed: bool = False
    events: list[Event] = field(default_factory=list)


def current_limit(model: InferenceModel) -> int:
    """The batch limit to run with: the last one set, kept within the spec's bounds (they may
    have moved), else the initial one."""
    batching = model.spec.batching
    last = model.status.batch_limit if model.status else None
    if last is None:
        return render.initial_limit(model)
    return min(max(last, batching.min), batching.max)


def deployment_current(
    deployment: Manifest | None, wanted: int, *, just_applied: bool = False
) -> bool:
    """Whether an observed Deployment's status speaks for its current spec with `wanted`
    replicas: the controller has seen its latest generation, and no change made this pass
    (`just_applied`) postdates it."""
    if just_applied or deployment is None:
        return False
    status = deployment.get("status", {})
    return bool(
        status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
        and deployment.get("spec", {}).get("replicas") == wanted
    )


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


def _status_body(status: InferenceModelStatus) -> dict[str, Any]:
    body: dict[str, Any] = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    return body


def _write_status(writer: Writer, model: InferenceModel, status: InferenceModelStatus) -> bool:
    before = _status_body(model.status) if model.status else {}
    after = _status_body(status)
    if before == after:
        return False
    writer.patch_status(
        API_VERSION, KIND, model.metadata.namespace or "", model.metadata.name, after
    )
    return True


def summary(child: Mapping[str, Any]) -> Manifest:
    """What the operator keeps of a watched child between passes: its resourceVersion and,
    for the Deployment, what status is computed from. Small, so a fleet of thousands fits."""
    metadata = child.get("metadata", {})
    kept: Manifest = {
        "metadata": {
            "resourceVersion": metadata.get("resourceVersion"),
            "generation": metadata.get("generation", 0),
        }
    }
    if child.get("kind") == "Deployment":
        kept["spec"] = {"replicas": child.get("spec", {}).get("replicas")}
        kept["status"] = copy.deepcopy(child.get("status", {}))
    return kept


def sync(manifest: Manifest, seen: Manifest | None, writer: Writer, known: Children) -> bool:
    """Applies one child unless it is known or found to hold the rendering; True if written."""
    version = seen["metadata"]["resourceVersion"] if seen else None
    if known.unchanged(manifest, version):
        return False
    live = writer.get(manifest) if seen is not None else None
    if live is not None and contains(live, manifest):
        known.remember(manifest, live["metadata"]["resourceVersion"])
        return False
    known.remember(manifest, writer.apply(manifest))
    return True


Observer = Callable[[InferenceModel], tuple[Observation, str]]
"""Reads one model's metrics: the observation, and why fields are missing (empty if none)."""


def decision_due(model: InferenceModel, now: datetime) -> bool:
    """Whether autoscaling wants a decision: enabled, and an interval since the last one."""
    autoscaling = model.spec.autoscaling
    if not autoscaling.enabled:
        return False
    last = model.status.last_decision if model.status else None
    interval = timedelta(seconds=duration_seconds(autoscaling.interval))
    return last is None or now - last.time >= interval


def _schedule_in_force(model: InferenceModel) -> float | list[float] | None:
    """What the speculation schedule in force was computed for: the per-position acceptance
    when it was measured, else the draft acceptance; None: the planner's prior."""
    status = model.status
    if status is None:
        return None
    return status.schedule_acceptance_by_position or status.schedule_acceptance


def _schedule_decision(
    model: InferenceModel, plan: planner.Plan, observation: Observation, limit: int, now: datetime
) -> ScheduleDecision | None:
    """The speculation schedule change an auto schedule's measured acceptance calls for."""
    spec = model.spec
    status = model.status or InferenceModelStatus()
    if (
        spec.draft is None
        or spec.draft.schedule != "auto"
        or plan.replica is None
        or plan.schedule_acceptance is None
    ):
        return None
    return retune_schedule(
        status.decisions,
        observation,
        plan.replica,
        status.schedule_acceptance_by_position or plan.schedule_acceptance,
        limit=limit,
        max_batch=spec.batching.max,
        replicas=spec.replicas,
        context_tokens=spec.batching.average_tokens,
        now=now,
        apply=spec.autoscaling.mode == "Apply",
    )


def autoscale(
    model: InferenceModel,
    plan: planner.Plan,
    observation: Observation,
    missing: str,
    now: datetime,
) -> tuple[InferenceModel, list[Event]]:
    """One autoscaling decision recorded into the model's status (applied or only
    recommended): the batch limit and, with an auto speculation schedule, a schedule change
    when one pays; with MetricsAvailable and SpeculationHealthy and their Events. Pure."""
    spec = model.spec
    status = model.status or InferenceModelStatus()
    limit = current_limit(model)
    policy = autoscaler.Policy.from_spec(
        spec.autoscaling, spec.batching, limit, now, speculative=spec.draft is not None
    )
    decision = autoscaler.decide(status.decisions, observation, policy)
    schedule = _schedule_decision(model, plan, observation, limit, now)
    if schedule is not None:
        decision = decision.model_copy(update={"schedule": schedule})
    history = [*status.decisions, decision][-DECISION_HISTORY_LIMIT:]
    events: list[Event] = []
    if decision.applied and decision.to_limit != limit:
        limit = decision.to_limit
        events.append(Event("Normal", "BatchLimitChanged", decision.message))
    schedule_acceptance = status.schedule_acceptance
    by_position = status.schedule_acceptance_by_position
    if schedule is not None and schedule.applied:
        schedule_acceptance = schedule.to_acceptance
        by_position = schedule.to_acceptance_by_position
        events.append(Event("Normal", "SpeculationScheduleChanged", schedule_message(schedule)))
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
        healthy = autoscaler.speculation_healthy(history)
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
    updated = status.model_copy(
        update={
            "decisions": history,
            "last_decision": decision,
            "batch_limit": limit,
            "schedule_acceptance": schedule_acceptance,
            "schedule_acceptance_by_position": by_position,
            "acceptance_rate": observation.acceptance_rate,
            "p99_seconds": observation.p99_seconds,
            "conditions": result,
        }
    )
    return model.model_copy(update={"status": updated}), events


def inference_model(
    model: InferenceModel,
    observed: Mapping[str, Manifest],
    writer: Writer,
    config: Config,
    now: datetime,
    known: Children,
    observe: Observer | None = None,
    *,
    rollout_only: bool = False,
    applied_before: Sequence[str] = (),
) -> Outcome:
    """Brings one InferenceModel's children and status in line with its spec, and, when an
    `observe`r is given and a decision is due, its batch limit with its metrics.

    `observed` maps a child's kind to its `summary` (absent when it does not exist); `known`
    says which versions of the children already match. Raises RefusedError, after recording
    why in status, when the spec cannot be served. `rollout_only` does the first part alone:
    what the pods need to start (`render.ROLLOUT_KINDS`), no autoscaling, no status and no
    Events; a full pass must follow, with what that part wrote as `applied_before`."""
    name = model.metadata.name
    in_force = _schedule_in_force(model)
    plan = planner.plan(name, model.spec, in_force)
    outcome = Outcome()
    if not plan.fits:
        message = "; ".join(plan.errors)
        previous = (model.status or InferenceModelStatus()).conditions
        status = (model.status or InferenceModelStatus()).model_copy(
            update={
                "observed_generation": model.metadata.generation,
                "conditions": refused_conditions(model, "Infeasible", message, previous, now),
            }
        )
        _write_status(writer, model, status)
        raise RefusedError(message)

    stored = model
    if observe is not None and not rollout_only and decision_due(model, now):
        model, outcome.events = autoscale(model, plan, *observe(model), now)
        retuned = _schedule_in_force(model)
        if retuned != in_force:
            # vLLM reads its schedule at start: the new arguments roll the Deployment.
            plan = planner.plan(name, model.spec, retuned)
        decision = model.status.last_decision if model.status else None
        if decision is not None:
            applied = str(decision.applied).lower()
            metrics.DECISIONS.labels(decision.rule, applied).inc()
            if decision.to_limit != decision.from_limit:
                namespace = model.metadata.namespace or ""
                metrics.LIMIT_CHANGES.labels(namespace, name, applied).inc()
    limit = current_limit(model)
    owner = render.Owner(name, model.metadata.uid or "")
    for manifest in render.manifests(model, plan, config, limit, owner):
        if rollout_only and manifest["kind"] not in render.ROLLOUT_KINDS:
            continue
        if sync(manifest, observed.get(manifest["kind"]), writer, known):
            outcome.applied.append(f"{manifest['kind']} {manifest['metadata']['name']}")
    if rollout_only:
        return outcome
    rolled = any(a.startswith("Deployment ") for a in (*applied_before, *outcome.applied))
    if rolled:
        replicas = "replica" if model.spec.replicas == 1 else "replicas"
        outcome.events.append(
            Event(
                "Normal",
                "RolloutStarted",
                f"Deployment {name}: {model.spec.replicas} {replicas} of "
                f"{plan.tensor_parallel_size} x {plan.gpu.product}, {plan.quantization} weights",
            )
        )
    reported = model.status.plan.warnings if model.status and model.status.plan else []
    outcome.events += [
        Event("Warning", "PlanWarning", w) for w in plan.warnings if w not in reported
    ]
    deployment = observed.get("Deployment")
    trouble = None
    if not rolled and not _all_ready(model, deployment):
        namespace = model.metadata.namespace or ""
        trouble = diagnose.trouble(writer.pods(namespace, render.selector(name)))
    status = model_status(model, plan, deployment, limit, now, just_applied=rolled, trouble=trouble)
    if trouble is not None and _newly_degraded(model, trouble):
        outcome.events.append(Event("Warning", trouble.reason, trouble.message))
    # Compared with the status as stored: a decision made this pass is a change to write.
    outcome.status_changed = _write_status(writer, stored, status)
    return outcome
