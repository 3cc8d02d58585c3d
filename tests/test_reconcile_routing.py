"""One RoutingPolicy reconcile against a fake of the API (our `Writer` seam): what is written as
its models come and go, when nothing is, what status and conditions say; and the handlers'
part, through the engine: a model's readiness re-reconciles exactly the policies that name
it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import pytest
import yaml

from specfleet import api, engine, handlers, kube, reconcile
from specfleet.api import routerconfig as router_config
from specfleet.api.routingpolicy import RoutingPolicy, RoutingPolicyStatus
from specfleet.config import Config
from specfleet.reconcile import routingpolicy as policy_pass
from specfleet.reconcile.capture import Counter
from specfleet.render import routingpolicy as render
from specfleet.render.routingpolicy import ModelState
from tests.corpus import ROOT
from tests.test_reconcile import FakeApi

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CONFIG = Config()
EXAMPLE = ROOT / "examples" / "routing-policy.yaml"
ALL_READY = {
    "llama-3b": ModelState(ready=True),
    "llama-8b": ModelState(ready=True),
    "llama-70b": ModelState(ready=True),
}


def _body(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    (body,) = yaml.safe_load_all(EXAMPLE.read_text())
    body["metadata"].update(namespace="ml", uid="u-7", generation=1)
    body["spec"].update(spec)
    if status is not None:
        body["status"] = status
    return dict(body)


def _policy(status: dict[str, Any] | None = None, **spec: Any) -> RoutingPolicy:
    policy = api.parse(_body(status, **spec))
    assert isinstance(policy, RoutingPolicy)
    return policy


class Operator:
    """The state the operator keeps between passes over one policy, and the fake API."""

    def __init__(self) -> None:
        self.api = FakeApi()
        self.children = kube.Children()
        self.status: dict[str, Any] | None = None

    def run(
        self,
        models: dict[str, ModelState],
        now: datetime = NOW,
        count: Counter | None = None,
        **spec: Any,
    ) -> reconcile.Outcome:
        self.api.applied.clear()
        self.api.statuses.clear()
        self.api.reads = 0
        policy = _policy(self.status, **spec)
        try:
            return policy_pass.run(
                policy, models, self.api.observed(), self.api, CONFIG, now, self.children, count
            )
        finally:
            if self.api.statuses:
                self.status = self.api.statuses[-1]

    def condition(self, type: str) -> tuple[str, str, str]:
        assert self.status is not None
        found = {c["type"]: c for c in self.status["conditions"]}[type]
        return found["status"], found["reason"], found["message"]

    def file(self) -> router_config.RouterConfig:
        return router_config.parse_config(self.api.one("ConfigMap")["data"][render.CONFIG_KEY])


def test_first_pass_makes_the_router_and_reports_every_backend() -> None:
    operator = Operator()
    outcome = operator.run(ALL_READY)
    assert [m["kind"] for m in operator.api.applied] == ["ConfigMap", "Deployment", "Service"]
    assert operator.api.reads == 0
    status = operator.status
    assert status is not None
    assert status["tiers"] == "simple,medium,complex"
    assert status["readyBackends"] == 4
    assert status["endpoint"] == "http://assistant.ml.svc:80"
    assert status["observedGeneration"] == 1
    assert [(b["tier"], b["model"], b["ready"]) for b in status["backends"]] == [
        ("simple", "llama-3b", True),
        ("medium", "llama-8b", True),
        ("complex", "llama-70b", True),
        ("overrides[0]", "llama-8b", True),
    ]
    assert status["backends"][0]["service"] == "http://llama-3b.ml.svc:80"
    # The Deployment was just written: nothing is known of its rollout yet.
    assert operator.condition("Ready")[:2] == ("False", "RouterNotReady")
    assert operator.condition("Progressing")[0] == "True"
    assert [e.reason for e in outcome.events] == ["RolloutStarted"]
    RoutingPolicyStatus.model_validate(status)


def test_a_missing_model_is_named_in_the_conditions_and_skipped_by_the_router() -> None:
    operator = Operator()
    models = {k: v for k, v in ALL_READY.items() if k != "llama-8b"}
    operator.run(models)
    operator.api.roll_out()
    operator.run(models)
    ready = operator.condition("Ready")
    assert ready[:2] == ("False", "ModelNotFound")
    assert "tier medium: InferenceModel llama-8b not found in namespace ml" in ready[2]
    assert operator.condition("Degraded")[:2] == ("True", "ModelNotFound")
    assert operator.status is not None and operator.status["readyBackends"] == 2
    (medium,) = [b for b in operator.status["backends"] if b["tier"] == "medium"]
    assert medium["ready"] is False and "service" not in medium
    assert operator.file().backends["llama-8b"] == router_config.Backend(url=None, ready=False)


def test_ready_once_the_routers_run_and_every_backend_is_ready() -> None:
    operator = Operator()
    operator.run(ALL_READY)
    operator.api.roll_out(ready=1)
    operator.run(ALL_READY)
    assert operator.condition("Ready") == (
        "False",
        "RouterNotReady",
        "1/2 router replicas ready, 2 updated",
    )
    operator.api.roll_out()
    operator.run(ALL_READY)
    assert operator.condition("Ready")[:2] == ("True", "BackendsReady")
    assert operator.condition("Progressing")[:2] == ("False", "RolloutComplete")
    assert operator.condition("Degraded")[:2] == ("False", "AsDeclared")


def test_no_ready_backend_at_all_is_degraded() -> None:
    operator = Operator()
    operator.run({"llama-70b": ModelState(ready=False, message="0/2 replicas ready")})
    degraded = operator.condition("Degraded")
    assert degraded[:2] == ("True", "NoReadyBackend")
    assert "InferenceModel llama-70b is not Ready: 0/2 replicas ready" in degraded[2]


def test_a_pass_with_nothing_changed_reads_and_writes_nothing() -> None:
    operator = Operator()
    operator.run(ALL_READY)
    operator.api.roll_out()
    operator.run(ALL_READY)
    outcome = operator.run(ALL_READY, NOW + timedelta(hours=1))
    assert operator.api.applied == [] and operator.api.statuses == []
    assert operator.api.reads == 0
    assert outcome.events == []


def test_a_model_turning_ready_rewrites_only_the_configmap() -> None:
    operator = Operator()
    waiting = {**ALL_READY, "llama-70b": ModelState(ready=False)}
    operator.run(waiting)
    operator.api.roll_out()
    operator.run(waiting)
    assert operator.file().backends["llama-70b"].ready is False
    outcome = operator.run(ALL_READY)
    assert [m["kind"] for m in operator.api.applied] == ["ConfigMap"]
    assert operator.file().backends["llama-70b"].ready is True
    assert [e.reason for e in outcome.events] == ["BackendsChanged"]
    assert operator.condition("Ready")[:2] == ("True", "BackendsReady")


def test_a_spec_change_rolls_the_routers() -> None:
    operator = Operator()
    operator.run(ALL_READY)
    operator.run(ALL_READY, replicas=3)
    assert [m["kind"] for m in operator.api.applied] == ["Deployment"]
    assert operator.api.one("Deployment")["spec"]["replicas"] == 3


def test_a_drifted_configmap_is_put_back() -> None:
    operator = Operator()
    operator.run(ALL_READY)
    operator.api.edit("ConfigMap", lambda c: c["data"].update({render.CONFIG_KEY: "policy: x"}))
    operator.run(ALL_READY)
    assert [m["kind"] for m in operator.api.applied] == ["ConfigMap"]
    assert operator.file().policy == "assistant"


def test_a_model_of_the_policys_own_name_is_refused_without_writing() -> None:
    operator = Operator()
    outcome = operator.run({**ALL_READY, "assistant": ModelState(ready=True)})
    assert outcome.refused is not None and "rename the RoutingPolicy" in outcome.refused
    assert [e.reason for e in outcome.events] == ["Refused"]
    assert operator.api.applied == []
    assert operator.condition("Degraded")[:2] == ("True", "NameConflict")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, ModelState(ready=False, message="no Ready condition yet")),
        (
            {"status": {"conditions": [{"type": "Ready", "status": "True", "message": "2/2"}]}},
            ModelState(ready=True, message="2/2"),
        ),
        (
            {
                "spec": {"servedModelName": "llama-8b-chat"},
                "status": {"conditions": [{"type": "Ready", "status": "False", "message": "0/1"}]},
            },
            ModelState(ready=False, message="0/1", served_model_name="llama-8b-chat"),
        ),
    ],
)
def test_what_a_router_needs_of_an_inference_model(
    body: dict[str, Any], expected: ModelState
) -> None:
    assert policy_pass.model_state(body) == expected


def test_a_policy_and_a_model_keep_their_children_apart() -> None:
    known = kube.Children()
    model_deployment = {
        "kind": "Deployment",
        "metadata": {
            "name": "x",
            "namespace": "ml",
            "labels": {"specfleet.dev/inferencemodel": "x"},
        },
    }
    router_deployment = {
        "kind": "Deployment",
        "metadata": {"name": "x", "namespace": "ml", "labels": render.object_labels("x")},
    }
    known.remember(model_deployment, "1")
    known.remember(router_deployment, "2")
    assert known.unchanged(model_deployment, "1") and known.unchanged(router_deployment, "2")
    known.forget("ml", "x", owner_kind="RoutingPolicy")
    assert known.unchanged(model_deployment, "1") and not known.unchanged(router_deployment, "2")


# The handlers' part: the index of models, the readiness trigger, the lock.


class _Index(dict[tuple[str, str], list[Any]]):
    """A kopf index as handlers see it: key -> a store of values."""


def _memo(fake: FakeApi, models: dict[str, ModelState]) -> tuple[kopf.Memo, dict[str, Any]]:
    """The operator's memo as `specfleet run` makes it, and the indexes kopf passes handlers."""
    memo = kopf.Memo(engine=engine.Engine(CONFIG, fake))
    index = _Index({("ml", name): [state] for name, state in models.items()})
    kwargs = {
        **{plural: _Index() for _, _, plural in handlers.CHILDREN.values()},
        **{f"router_{plural}": _Index() for _, _, plural in handlers.ROUTER_CHILDREN.values()},
        handlers.MODELS_INDEX: index,
    }
    return memo, kwargs


def _model_body(name: str, ready: bool) -> dict[str, Any]:
    status = "True" if ready else "False"
    return {
        "apiVersion": api.API_VERSION,
        "kind": "InferenceModel",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct"}},
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": status,
                    "reason": "ReplicasReady" if ready else "ReplicasNotReady",
                    "lastTransitionTime": "2026-11-23T12:00:00Z",
                }
            ]
        },
    }


def _deliver(handler: Any, type: str, body: dict[str, Any], memo: Any, kwargs: Any) -> None:
    """A watch event to an on.event handler, as kopf calls it, and the passes it queued."""
    raw: Any = body
    handler(event={"type": type, "object": raw}, body=kopf.Body(raw), memo=memo, **kwargs)
    memo.engine.run_due()


def test_a_models_readiness_reconciles_the_policies_naming_it_once() -> None:
    fake = FakeApi()
    memo, kwargs = _memo(fake, {"llama-3b": ModelState(ready=True)})
    _deliver(handlers.track_policy, "ADDED", _body(), memo, kwargs)
    other = _body()
    other["metadata"]["namespace"] = "elsewhere"
    _deliver(handlers.track_policy, "ADDED", other, memo, kwargs)

    _deliver(handlers.track, "ADDED", _model_body("llama-3b", True), memo, kwargs)
    assert [m["metadata"]["namespace"] for m in fake.applied] == ["ml"] * 3
    assert len(fake.statuses) == 1

    fake.applied.clear()
    fake.statuses.clear()
    # The same readiness again (a status write that changed something else): nothing to do.
    _deliver(handlers.track, "MODIFIED", _model_body("llama-3b", True), memo, kwargs)
    assert fake.applied == [] and fake.statuses == []
    # A model no policy names: nothing either.
    _deliver(handlers.track, "ADDED", _model_body("other", True), memo, kwargs)
    assert fake.applied == [] and fake.statuses == []


def test_a_model_going_away_reconciles_its_policies() -> None:
    fake = FakeApi()
    memo, kwargs = _memo(fake, {"llama-3b": ModelState(ready=True)})
    _deliver(handlers.track_policy, "ADDED", _body(), memo, kwargs)
    _deliver(handlers.track, "ADDED", _model_body("llama-3b", True), memo, kwargs)
    fake.applied.clear()
    kwargs[handlers.MODELS_INDEX].clear()  # kopf drops a deleted model from the index
    _deliver(handlers.track, "DELETED", _model_body("llama-3b", True), memo, kwargs)
    (config_map,) = [m for m in fake.applied if m["kind"] == "ConfigMap"]
    backends = router_config.parse_config(config_map["data"][render.CONFIG_KEY]).backends
    assert backends["llama-3b"].ready is False


def test_router_pods_that_cannot_start_are_named_while_the_old_ones_serve() -> None:
    operator = Operator()
    operator.run(ALL_READY)
    operator.api.roll_out()
    assert operator.run(ALL_READY).events == []
    assert operator.api.pod_lists == 0, "a router that runs needs no pod listed"
    # A new spec whose pods need a Secret that is not there: the old replica keeps serving.
    operator.api.edit(
        "Deployment",
        lambda d: d["status"].update(updatedReplicas=0, readyReplicas=d["spec"]["replicas"]),
    )
    operator.api.pods_now = [
        {
            "metadata": {"name": "assistant-5d8c-x1"},
            "status": {
                "containerStatuses": [
                    {
                        "name": "router",
                        "image": "specfleet/runtime:0.1.0",
                        "ready": False,
                        "restartCount": 0,
                        "state": {
                            "waiting": {
                                "reason": "CreateContainerConfigError",
                                "message": 'secret "traffic-writer" not found',
                            }
                        },
                    }
                ]
            },
        }
    ]
    outcome = operator.run(ALL_READY)
    assert operator.api.pod_selectors[-1] == render.selector("assistant")
    for type in ("Progressing", "Degraded"):
        status, reason, message = operator.condition(type)
        assert (status, reason) == ("True", "ContainerCannotStart"), type
        assert 'secret "traffic-writer" not found' in message
    assert [e.reason for e in outcome.events] == ["ContainerCannotStart"]
    assert operator.run(ALL_READY).events == [], "one Event per cause"
