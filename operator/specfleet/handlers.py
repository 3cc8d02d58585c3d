"""The operator's kopf wiring: indexes, handlers and settings, each delegating at once to the
`specfleet.engine.Engine` that `specfleet run` puts in kopf's memo as `engine`. The handlers
only keep what they saw and enqueue: the engine's workers run every pass.

Imported by `specfleet run` (importing registers the handlers with kopf).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from specfleet.api.crdinfo import GROUP, VERSION
from specfleet.api.inferencemodel import InferenceModel
from specfleet.api.labels import INFERENCE_MODEL, MANAGED_BY, MANAGER, ROUTING_POLICY
from specfleet.api.routingpolicy import RoutingPolicy
from specfleet.engine import Engine, Indexes, Key
from specfleet.reconcile import apply
from specfleet.reconcile.routingpolicy import model_state
from specfleet.render.routingpolicy import ModelState

RESOURCE = (GROUP, VERSION, InferenceModel.crd.plural)
POLICIES = (GROUP, VERSION, RoutingPolicy.crd.plural)
PEERING_LIFETIME_SECONDS = 15
"""With `specfleet run --peering`: how long an operator's keep-alive counts. kopf renews it
5-10 s before it lapses, and a waiting replica takes over once the acting one's has lapsed, so
this bounds the takeover after a crash (kopf's default, 60 s, is long for on-call)."""

OWNED: dict[str, Any] = {INFERENCE_MODEL: kopf.PRESENT, MANAGED_BY: MANAGER}
CHILDREN = {
    "ConfigMap": ("", "v1", "configmaps"),
    "Service": ("", "v1", "services"),
    "Deployment": ("apps", "v1", "deployments"),
    "PodDisruptionBudget": ("policy", "v1", "poddisruptionbudgets"),
    "CronJob": ("batch", "v1", "cronjobs"),
}
"""The kinds the operator makes for an InferenceModel; each is watched into an index named
after its plural, which kopf passes to handlers as a keyword."""

ROUTER_OWNED: dict[str, Any] = {ROUTING_POLICY: kopf.PRESENT, MANAGED_BY: MANAGER}
ROUTER_CHILDREN = {
    kind: CHILDREN[kind] for kind in ("ConfigMap", "Service", "Deployment", "CronJob")
}
"""The kinds the operator makes for a RoutingPolicy, indexed as `router_<plural>`."""
MODELS_INDEX = "model_states"
"""The index of every InferenceModel's `ModelState`, which RoutingPolicies resolve from."""


def _index_child(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Key, dict[str, Any]]:
    return {(namespace or "", labels[INFERENCE_MODEL]): apply.summary(body)}


def _index_router_child(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Key, dict[str, Any]]:
    return {(namespace or "", labels[ROUTING_POLICY]): apply.summary(body)}


for _group, _version, _plural in CHILDREN.values():
    kopf.index(_group, _version, _plural, labels=OWNED, id=_plural)(_index_child)
for _group, _version, _plural in ROUTER_CHILDREN.values():
    kopf.index(_group, _version, _plural, labels=ROUTER_OWNED, id=f"router_{_plural}")(
        _index_router_child
    )


@kopf.on.event(*CHILDREN["Deployment"], labels=OWNED)
def model_deployment(namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any) -> None:
    """A model's Deployment changed (its rollout moved, a replica turned ready): the model's
    status follows at once, not at the next resync."""
    memo.engine.child_seen(InferenceModel.crd.kind, namespace or "", labels[INFERENCE_MODEL])


@kopf.on.event(*CHILDREN["Deployment"], labels=ROUTER_OWNED)
def router_deployment(
    namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any
) -> None:
    """A router's Deployment changed: the policy's status follows at once."""
    memo.engine.child_seen(RoutingPolicy.crd.kind, namespace or "", labels[ROUTING_POLICY])


@kopf.index(*RESOURCE, id=MODELS_INDEX)
def _index_model(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[Key, ModelState]:
    """kopf fills its indexes before it runs handlers, so a policy is never resolved against
    a half-listed set of models."""
    return {(namespace or "", name): model_state(body)}


def engine(memo: Any, kwargs: Mapping[str, Any]) -> Engine:
    """The engine in kopf's memo, told where kopf's indexes are."""
    found: Engine = memo.engine
    found.indexes = Indexes(
        {kind: kwargs[plural] for kind, (_, _, plural) in CHILDREN.items()},
        {kind: kwargs[f"router_{plural}"] for kind, (_, _, plural) in ROUTER_CHILDREN.items()},
        kwargs[MODELS_INDEX],
    )
    return found


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # specfleet posts its own Events (refusals, rollouts); kopf turning its log lines into
    # Events too would repeat them.
    settings.posting.enabled = False
    settings.execution.max_workers = 8
    settings.peering.lifetime = PEERING_LIFETIME_SECONDS
    await memo.engine.start()


@kopf.on.cleanup()
async def stop(memo: Any, **_: Any) -> None:
    await memo.engine.stop()


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
def inference_model(body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    engine(memo, kwargs).model_changed(body)


@kopf.on.event(*RESOURCE)
def track(event: Mapping[str, Any], body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    engine(memo, kwargs).model_seen(event.get("type") == "DELETED", body)


@kopf.on.resume(*POLICIES)
@kopf.on.create(*POLICIES)
@kopf.on.update(*POLICIES, field="spec")
def routing_policy(body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    engine(memo, kwargs).policy_changed(body)


@kopf.on.event(*POLICIES)
def track_policy(event: Mapping[str, Any], body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    engine(memo, kwargs).policy_seen(event.get("type") == "DELETED", body)
