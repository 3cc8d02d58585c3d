"""One RoutingPolicy: its router's children and status, computed, then applied.

Given the parsed policy, what is known of the InferenceModels of its namespace that it names
(`ModelState`s, from the operator's watch of InferenceModels) and summaries of its router's
children, a pass (`run`) renders the router's ConfigMap, Deployment and Service (`desired`),
applies them (`specfleet.reconcile.apply`), and computes from what that changed the status
and Events (`status_after`): each tier's backend and readiness, the router's endpoint, and
Ready, Progressing and Degraded. A model that is missing or not Ready is skipped by the
router (its backend is written as not ready) and named in the conditions; it never stops the
router. Called by `specfleet.engine` on create, update, resume, resync, and when an
InferenceModel a policy names changes readiness.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from specfleet import conditions, diagnose
from specfleet.api.common import Condition
from specfleet.api.inferencemodel import InferenceModel
from specfleet.api.manifests import Manifest
from specfleet.api.routingpolicy import Backend, RoutingPolicy, RoutingPolicyStatus
from specfleet.config import Config
from specfleet.kube import Children
from specfleet.reconcile import (
    Applied,
    Event,
    Outcome,
    apply,
    capture,
    deployment_current,
    learning,
    wrote,
)
from specfleet.render import routingpolicy as render
from specfleet.render.inferencemodel import Owner

KIND = "RoutingPolicy"


def model_state(body: Mapping[str, Any]) -> render.ModelState:
    """What a router needs of an InferenceModel body: Ready or not (and why), and the name
    its backends serve under. Reads the raw body: the operator keeps one per model."""
    status = body.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    served = (body.get("spec") or {}).get("servedModelName")
    return render.ModelState(
        ready=ready is not None and ready.get("status") == "True",
        message=str(ready.get("message", "")) if ready else "no Ready condition yet",
        served_model_name=str(served) if served else None,
    )


def state_of(model: InferenceModel) -> render.ModelState:
    """`model_state` of a parsed InferenceModel."""
    return model_state(model.model_dump(by_alias=True, exclude_none=True, mode="json"))


def names(policy: RoutingPolicy) -> set[str]:
    """The InferenceModels a policy depends on: those its tiers and overrides name, and its
    own name (an InferenceModel of that name would own the same Deployment and Service)."""
    spec = policy.spec
    return {
        policy.metadata.name,
        *(t.model for t in spec.tiers),
        *(o.model for o in spec.overrides),
    }


def _router_state(policy: RoutingPolicy, deployment: Manifest | None, just_applied: bool) -> str:
    """`ready`, `scaled-to-zero`, or how far the router's rollout is."""
    wanted = policy.spec.replicas
    status = (deployment or {}).get("status", {})
    if not deployment_current(deployment, wanted, just_applied=just_applied):
        return "the router Deployment is rolling out"
    if wanted == 0:
        return "scaled-to-zero"
    ready, updated = status.get("readyReplicas", 0), status.get("updatedReplicas", 0)
    if ready >= wanted and updated >= wanted:
        return "ready"
    return f"{ready}/{wanted} router replicas ready, {updated} updated"


def policy_conditions(
    policy: RoutingPolicy,
    backends: list[render.Backend],
    deployment: Manifest | None,
    previous: list[Condition],
    now: datetime,
    *,
    just_applied: bool = False,
    trouble: diagnose.Trouble | None = None,
) -> list[Condition]:
    """Ready: the routers run and every backend is ready. Degraded: some backend is missing or
    not Ready (the router skips it), naming each, or `trouble` keeps the router pods from
    running. Progressing: the routers roll out (and what keeps them from it)."""
    generation = policy.metadata.generation
    router = _router_state(policy, deployment, just_applied)
    if trouble is not None:
        router = f"{router}: {trouble.message}"
    missing = [b for b in backends if not b.ready and b.url is None]
    waiting = [b for b in backends if not b.ready and b.url is not None]
    problems = "; ".join(b.message for b in [*missing, *waiting])
    ready_count = len({b.model for b in backends if b.ready})
    result = list(previous)

    def put(type: str, value: conditions.Status, reason: str, message: str) -> None:
        nonlocal result
        result = conditions.set_condition(
            result, type, value, reason, message, generation=generation, now=now
        )

    serving = router in ("ready", "scaled-to-zero")
    if router == "scaled-to-zero":
        put("Ready", "True", "ScaledToZero", "spec.replicas is 0")
    elif not serving:
        put("Ready", "False", "RouterNotReady", router)
    elif missing:
        put("Ready", "False", "ModelNotFound", problems)
    elif waiting:
        put("Ready", "False", "BackendNotReady", problems)
    else:
        put("Ready", "True", "BackendsReady", f"every backend of {len(backends)} is ready")
    if serving:
        put("Progressing", "False", "RolloutComplete", "the routers run the current spec")
    else:
        put("Progressing", "True", trouble.reason if trouble else "RollingOut", router)
    if trouble is not None:
        put("Degraded", "True", trouble.reason, trouble.message)
    elif ready_count == 0:
        put("Degraded", "True", "NoReadyBackend", f"no backend is ready: {problems}")
    elif missing:
        put("Degraded", "True", "ModelNotFound", f"skipped by the router: {problems}")
    elif waiting:
        put("Degraded", "True", "BackendNotReady", f"skipped by the router: {problems}")
    else:
        put("Degraded", "False", "AsDeclared", "routing as the policy says")
    return result


def policy_status(
    policy: RoutingPolicy,
    backends: list[render.Backend],
    deployment: Manifest | None,
    now: datetime,
    *,
    just_applied: bool = False,
    trouble: diagnose.Trouble | None = None,
) -> RoutingPolicyStatus:
    previous = policy.status.conditions if policy.status else []
    return RoutingPolicyStatus(
        observed_generation=policy.metadata.generation,
        conditions=policy_conditions(
            policy, backends, deployment, previous, now, just_applied=just_applied, trouble=trouble
        ),
        tiers=",".join(t.name for t in policy.spec.tiers),
        backends=[
            Backend(tier=b.tier, model=b.model, service=b.url, ready=b.ready, message=b.message)
            for b in backends
        ],
        ready_backends=sum(b.ready for b in backends),
        endpoint=render.endpoint(policy),
    )


def refused_status(
    policy: RoutingPolicy, reason: str, message: str, now: datetime
) -> RoutingPolicyStatus:
    generation = policy.metadata.generation
    previous = (policy.status or RoutingPolicyStatus()).model_copy()
    result = previous.conditions
    values: tuple[tuple[str, conditions.Status], ...] = (
        ("Ready", "False"),
        ("Progressing", "False"),
        ("Degraded", "True"),
    )
    for type, value in values:
        result = conditions.set_condition(
            result, type, value, reason, message, generation=generation, now=now
        )
    return previous.model_copy(update={"observed_generation": generation, "conditions": result})


def conflict(policy: RoutingPolicy, models: Mapping[str, render.ModelState]) -> str | None:
    """Why the router cannot be made, if an InferenceModel of the policy's name owns the
    Deployment and Service it would need."""
    name = policy.metadata.name
    if name not in models:
        return None
    return (
        f"InferenceModel {name} in namespace {policy.metadata.namespace or ''} already owns "
        f"the Deployment and Service named {name}; rename the RoutingPolicy"
    )


def desired(
    policy: RoutingPolicy, models: Mapping[str, render.ModelState], config: Config
) -> list[Manifest]:
    """The router's children. Pure."""
    owner = Owner(policy.metadata.name, policy.metadata.uid or "", KIND)
    return render.manifests(policy, config, models, owner)


def status_after(
    policy: RoutingPolicy,
    models: Mapping[str, render.ModelState],
    done: list[Applied],
    deployment: Manifest | None,
    now: datetime,
    pods: list[Manifest] | None = None,
) -> tuple[RoutingPolicyStatus, list[Event]]:
    """The status and Events once the children in `done` are applied, and what keeps the router
    pods from running when `needs_pods` asked for `pods`. Pure."""
    events: list[Event] = []
    rolled = wrote("Deployment", done)
    if rolled:
        events.append(
            Event(
                "Normal",
                "RolloutStarted",
                f"Deployment {policy.metadata.name}: {policy.spec.replicas} router replicas",
            )
        )
    backends = render.backends(policy, models)
    if wrote("ConfigMap", done) and not rolled:
        ready = [f"{b.tier}={b.model}" for b in backends if b.ready]
        events.append(
            Event(
                "Normal",
                "BackendsChanged",
                f"router configuration updated; ready: {', '.join(ready) or 'none'}",
            )
        )
    trouble = diagnose.trouble(pods) if pods is not None else None
    if trouble is not None and _newly_degraded(policy, trouble):
        events.append(Event("Warning", trouble.reason, trouble.message))
    status = policy_status(policy, backends, deployment, now, just_applied=rolled, trouble=trouble)
    return status, events


def needs_pods(policy: RoutingPolicy, deployment: Manifest | None, *, rolled: bool) -> bool:
    """Whether status needs the router pods: the Deployment's controller has seen its spec,
    and updated replicas are missing (a pass that just wrote it has pods that say nothing yet)."""
    if rolled or not deployment_current(deployment, policy.spec.replicas):
        return False
    return _router_state(policy, deployment, False) not in ("ready", "scaled-to-zero")


def _newly_degraded(policy: RoutingPolicy, trouble: diagnose.Trouble) -> bool:
    """Whether `trouble` is news: Degraded does not already name its reason."""
    was = conditions.find(policy.status.conditions if policy.status else [], "Degraded")
    return was is None or was.status != "True" or was.reason != trouble.reason


def run(
    policy: RoutingPolicy,
    models: Mapping[str, render.ModelState],
    observed: Mapping[str, Manifest],
    writer: apply.Writer,
    config: Config,
    now: datetime,
    known: Children,
    count: capture.Counter | None = None,
) -> Outcome:
    """One pass: brings a RoutingPolicy's router and status in line with its spec and its
    models (and `status.capture` with what `count` reads, when given; `status.learning` with
    what the learning Jobs reported).

    `models` holds the InferenceModels of the policy's namespace among `names(policy)` that
    exist; `observed` maps a child's `apply.key` to its `apply.summary`. When the router cannot be
    made it says why in status, and in an Event when that is news."""
    problem = conflict(policy, models)
    if problem is not None:
        written = apply.status(writer, policy, refused_status(policy, "NameConflict", problem, now))
        events = [Event("Warning", "Refused", problem)] if written else []
        return Outcome(status_changed=written, events=events, refused=problem)
    done = apply.children(desired(policy, models, config), observed, writer, known)
    deployment = observed.get(apply.key("Deployment", policy.metadata.name))
    pods = None
    if needs_pods(policy, deployment, rolled=wrote("Deployment", done)):
        pods = writer.pods(policy.metadata.namespace or "", render.selector(policy.metadata.name))
    status, events = status_after(policy, models, done, deployment, now, pods)
    before = policy.status.capture if policy.status else None
    status.capture = capture.run(
        policy.spec.capture,
        KIND,
        policy.metadata.namespace or "",
        policy.metadata.name,
        before,
        observed,
        writer,
        count,
    )
    status.conditions = capture.with_condition(
        status.conditions, before, status.capture, generation=policy.metadata.generation, now=now
    )
    status.learning, ended = learning.run(
        policy.spec.learning,
        policy.metadata.namespace or "",
        policy.metadata.name,
        policy.status.learning if policy.status else None,
        observed,
        writer,
    )
    status.conditions = learning.with_condition(
        status.conditions,
        policy.spec.learning,
        ended,
        generation=policy.metadata.generation,
        now=now,
    )
    events += learning.events(ended)
    return Outcome(done, apply.status(writer, policy, status), events)
