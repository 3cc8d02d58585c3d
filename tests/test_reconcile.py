"""One InferenceModel reconcile against a fake of the API (our `Writer` seam): what is read,
what is written, when nothing is, and what status says."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from specfleet import api, engine, kube, plan, reconcile
from specfleet.api.inferencemodel import InferenceModel, InferenceModelStatus, Observation
from specfleet.api.manifests import Manifest
from specfleet.config import Config
from specfleet.reconcile import apply
from specfleet.reconcile import inferencemodel as model_pass

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CONFIG = Config()


class FakeApi:
    """Holds children like the API server: applies store the object with a default or two
    added and a new resourceVersion; reads and writes are counted."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.applied: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.reads = 0
        self.pod_lists = 0
        self.pods_now: list[dict[str, Any]] = []
        self.pod_selectors: list[dict[str, str]] = []
        self.deleted: list[str] = []
        self.fail: kube.ApiError | None = None
        self.events: list[str] = []
        self.status_versions: list[str | None] = []
        self._version = 0

    def _bump(self, obj: dict[str, Any]) -> str:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)
        return str(self._version)

    def get(self, manifest: Mapping[str, Any]) -> dict[str, Any] | None:
        self.reads += 1
        found = self.objects.get(apply.key_of(manifest))
        return copy.deepcopy(found) if found else None

    def apply(self, manifest: Manifest) -> str:
        if self.fail:
            raise self.fail
        self.applied.append(copy.deepcopy(manifest))
        obj = copy.deepcopy(manifest)
        if obj["kind"] == "Deployment":
            obj["spec"]["progressDeadlineSeconds"] = 600
            previous = self.objects.get(apply.key_of(obj), {})
            obj["metadata"]["generation"] = previous.get("metadata", {}).get("generation", 0) + 1
            obj["status"] = previous.get("status", {})
        self.objects[apply.key_of(obj)] = obj
        return self._bump(obj)

    def patch_status(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> None:
        self.statuses.append(dict(status))
        self.status_versions.append(resource_version)

    def event(self, body: Mapping[str, Any], type: str, reason: str, *_: Any) -> None:
        self.events.append(reason)

    def get_path(self, path: str, *_: Any) -> dict[str, Any] | None:
        return None

    def pods(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        self.pod_lists += 1
        self.pod_selectors.append(dict(selector))
        return copy.deepcopy(self.pods_now)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.deleted.append(f"{kind} {name}")
        self.objects.pop(apply.key(kind, name), None)

    def one(self, kind: str) -> dict[str, Any]:
        """The only object of `kind`."""
        (found,) = [o for o in self.objects.values() if o["kind"] == kind]
        return found

    def kinds(self) -> list[str]:
        return [o["kind"] for o in self.objects.values()]

    def edit(
        self, kind: str, change: Callable[[dict[str, Any]], None], name: str | None = None
    ) -> None:
        """An outside change (someone else, or a controller writing status) to the only
        object of `kind`, or the one named."""
        obj = self.objects[apply.key(kind, name)] if name else self.one(kind)
        change(obj)
        self._bump(obj)

    def roll_out(self, ready: int | None = None) -> None:
        """The Deployment controller's work: every replica updated, `ready` of them ready."""

        def progress(deployment: dict[str, Any]) -> None:
            replicas = deployment["spec"]["replicas"]
            deployment["status"] = {
                "observedGeneration": deployment["metadata"]["generation"],
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas if ready is None else ready,
            }

        self.edit("Deployment", progress)

    def observed(self) -> dict[str, Any]:
        return {key: apply.summary(obj) for key, obj in self.objects.items()}


class Operator:
    """The state the operator keeps between passes over one model, and the fake API."""

    def __init__(self) -> None:
        self.api = FakeApi()
        self.children = kube.Children()
        self.status: dict[str, Any] | None = None

    def run(
        self,
        now: datetime = NOW,
        observe: model_pass.Observer | None = None,
        *,
        rollout_only: bool = False,
        applied_before: tuple[reconcile.Applied, ...] = (),
        **spec: Any,
    ) -> reconcile.Outcome:
        self.api.applied.clear()
        self.api.statuses.clear()
        self.api.reads = 0
        model = _model(status=self.status, **spec)
        try:
            return model_pass.run(
                model,
                self.api.observed(),
                self.api,
                CONFIG,
                now,
                self.children,
                observe,
                rollout_only=rollout_only,
                applied_before=applied_before,
            )
        finally:
            if self.api.statuses:
                self.status = {**(self.status or {}), **self.api.statuses[-1]}

    def condition(self, type: str) -> dict[str, Any]:
        assert self.status is not None
        found: dict[str, Any] = {c["type"]: c for c in self.status["conditions"]}[type]
        return found


def _model(status: dict[str, Any] | None = None, **spec: Any) -> InferenceModel:
    spec.setdefault("model", {"name": "meta-llama/Llama-3.1-8B-Instruct"})
    spec.setdefault("gpu", {"count": 1})
    body: dict[str, Any] = {
        "apiVersion": api.API_VERSION,
        "kind": "InferenceModel",
        "metadata": {"name": "llama", "namespace": "ml", "uid": "u-1", "generation": 1},
        "spec": spec,
    }
    if status is not None:
        body["status"] = status
    model = api.parse(body)
    assert isinstance(model, InferenceModel)
    return model


def _kinds(manifests: list[dict[str, Any]]) -> list[str]:
    return [m["kind"] for m in manifests]


def test_first_pass_creates_every_child_and_reports_the_rollout() -> None:
    operator = Operator()
    outcome = operator.run(batching={"max": 128, "initial": 32})
    assert _kinds(operator.api.applied) == [
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ]
    assert operator.api.reads == 0  # nothing existed: nothing to read
    status = operator.status
    assert status is not None
    assert status["plan"]["tensorParallelSize"] == 1
    assert status["batchLimit"] == 32
    assert status["observedGeneration"] == 1
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions == {
        "Ready": ("False", "ReplicasNotReady"),
        "Progressing": ("True", "RollingOut"),
        "Degraded": ("False", "AsPlanned"),
    }
    assert [e.reason for e in outcome.events] == ["RolloutStarted"]


def test_a_handlers_first_pass_writes_what_pods_need_and_the_full_pass_the_rest() -> None:
    operator = Operator()
    batching = {"max": 128, "initial": 32}
    first = operator.run(rollout_only=True, observe=_never_observed, batching=batching)
    assert _kinds(operator.api.applied) == ["ConfigMap", "Deployment"]
    assert [str(a) for a in first.applied] == ["ConfigMap llama-gate", "Deployment llama"]
    assert operator.status is None and not first.events  # status and Events wait
    full = operator.run(applied_before=tuple(first.applied), batching=batching)
    assert _kinds(operator.api.applied) == ["Service", "PodDisruptionBudget"]
    assert [str(a) for a in full.applied] == ["Service llama", "PodDisruptionBudget llama"]
    # The full pass reports the rollout the first one started.
    assert [e.reason for e in full.events] == ["RolloutStarted"]
    assert operator.condition("Progressing")["reason"] == "RollingOut"
    assert operator.status is not None and operator.status["batchLimit"] == 32


def test_a_first_pass_refuses_an_infeasible_spec_at_once() -> None:
    operator = Operator()
    outcome = operator.run(
        rollout_only=True, model={"name": "meta-llama/Llama-3.1-405B"}, quantization="none"
    )
    assert outcome.refused is not None and "needs" in outcome.refused
    assert operator.api.applied == []
    assert operator.condition("Degraded")["reason"] == "Infeasible"


def _never_observed(model: InferenceModel) -> tuple[Observation, str]:
    raise AssertionError("a first pass must not read metrics")


def test_a_pass_over_an_unchanged_model_reads_and_writes_nothing() -> None:
    operator = Operator()
    operator.run()
    operator.api.roll_out()
    operator.run()  # reads the rolled-out Deployment once; status turns Ready
    outcome = operator.run(NOW + timedelta(hours=1))
    assert operator.api.applied == [] and operator.api.statuses == []
    assert operator.api.reads == 0
    assert outcome.events == []


def test_after_a_restart_each_child_is_read_once_and_nothing_written() -> None:
    operator = Operator()
    operator.run()
    operator.api.roll_out()
    operator.run()
    operator.children = kube.Children()  # a new operator process
    operator.run()
    assert operator.api.reads == 4
    assert operator.api.applied == [] and operator.api.statuses == []


def test_ready_when_every_replica_is_ready_and_updated() -> None:
    operator = Operator()
    operator.run(replicas=2)
    operator.api.roll_out(ready=1)
    operator.run(replicas=2)
    ready = operator.condition("Ready")
    assert (ready["status"], ready["message"]) == (
        "False",
        "1/2 replicas ready, 1 x H100-80GB per replica",
    )
    operator.api.roll_out()
    operator.run(replicas=2)
    assert operator.condition("Ready")["status"] == "True"
    assert operator.status is not None and operator.status["readyReplicas"] == 2


def test_a_transition_time_moves_only_when_the_status_flips() -> None:
    operator = Operator()
    operator.run(replicas=2)
    operator.api.roll_out(ready=1)
    operator.run(NOW + timedelta(minutes=5), replicas=2)
    assert operator.condition("Ready")["lastTransitionTime"] == "2026-11-23T12:00:00Z"


def test_a_drifted_field_the_operator_owns_is_put_back_and_others_are_kept() -> None:
    operator = Operator()
    operator.run()
    operator.api.edit("Deployment", lambda d: d["spec"]["template"]["spec"].update(tolerations=[]))
    operator.api.edit(
        "Service", lambda s: s["metadata"].setdefault("annotations", {}).update(team="search")
    )
    operator.run()
    assert _kinds(operator.api.applied) == ["Deployment"]
    assert operator.api.reads == 2  # only the two children that changed


def test_live_mode_moves_the_limit_through_the_configmap_alone() -> None:
    operator = Operator()
    spec: dict[str, Any] = {"batching": {"max": 256, "initial": 64}}
    operator.run(**spec)
    assert operator.status is not None
    operator.status["batchLimit"] = 128
    operator.run(**spec)
    assert [(m["kind"], m.get("data")) for m in operator.api.applied] == [
        ("ConfigMap", {"limit": "128"})
    ]


def test_restart_mode_moves_the_limit_by_rolling_the_deployment() -> None:
    operator = Operator()
    spec: dict[str, Any] = {"batching": {"max": 256, "initial": 64, "mode": "Restart"}}
    operator.run(**spec)
    assert operator.status is not None
    operator.status["batchLimit"] = 128
    outcome = operator.run(**spec)
    assert _kinds(operator.api.applied) == ["ConfigMap", "Deployment"]
    assert [e.reason for e in outcome.events] == ["RolloutStarted"]


@pytest.mark.parametrize(("last", "expected"), [(None, 64), (8, 16), (100, 100), (999, 256)])
def test_the_limit_stays_within_bounds_that_moved(last: int | None, expected: int) -> None:
    status = None if last is None else {"batchLimit": last}
    model = _model(status=status, batching={"min": 16, "max": 256, "initial": 64})
    assert model_pass.current_limit(model) == expected


def test_an_infeasible_spec_is_refused_with_a_condition_and_no_children() -> None:
    operator = Operator()
    infeasible: dict[str, Any] = {
        "model": {"name": "meta-llama/Llama-3.1-405B"},
        "quantization": "none",
    }
    outcome = operator.run(**infeasible)
    assert outcome.refused is not None and "GiB" in outcome.refused
    assert [e.reason for e in outcome.events] == ["Infeasible"]
    assert operator.api.applied == []
    degraded = operator.condition("Degraded")
    assert degraded["reason"] == "Infeasible" and "needs" in degraded["message"]
    assert operator.condition("Ready")["status"] == "False"
    # The same refusal again (a resync, a restart) is no news: no write, no second Event.
    again = operator.run(**infeasible)
    assert again.refused == outcome.refused and again.events == []
    assert operator.api.statuses == []


def test_a_stalled_rollout_is_degraded() -> None:
    operator = Operator()
    operator.run()
    stalled = {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "llama-1" has timed out progressing.',
    }
    operator.api.edit("Deployment", lambda d: d["status"].update(conditions=[stalled]))
    operator.run()
    degraded = operator.condition("Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "RolloutStuck")
    assert "timed out" in degraded["message"]


def _crash_looping(restarts: int) -> dict[str, Any]:
    return {
        "metadata": {"name": "llama-5c-x1"},
        "status": {
            "containerStatuses": [
                {
                    "name": "vllm",
                    "image": "vllm/vllm-openai:v0.33.0",
                    "restartCount": restarts,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "message": "CUDA error"}},
                }
            ]
        },
    }


def test_pods_that_cannot_run_name_their_cause_in_status_and_one_event() -> None:
    operator = Operator()
    operator.run()
    operator.api.roll_out(ready=0)
    operator.api.pods_now = [_crash_looping(restarts=1)]
    outcome = operator.run()
    for type in ("Ready", "Degraded"):
        condition = operator.condition(type)
        assert condition["reason"] == "CrashLooping", type
        assert "llama-5c-x1, container vllm exited with code 1" in condition["message"]
        assert "CUDA error" in condition["message"]
    assert operator.condition("Ready")["message"].startswith("0/1 replicas ready: ")
    assert [(e.type, e.reason) for e in outcome.events] == [("Warning", "CrashLooping")]
    # Another restart of the same crash updates status, and posts no second Event.
    operator.api.pods_now = [_crash_looping(restarts=2)]
    assert operator.run().events == []
    assert "2 restarts" in operator.condition("Degraded")["message"]
    # Once the pods run, the cause is gone and the pods are no longer listed.
    operator.api.pods_now = []
    operator.api.roll_out()
    operator.run()
    assert operator.condition("Degraded")["reason"] == "AsPlanned"
    assert operator.condition("Ready")["status"] == "True"
    lists = operator.api.pod_lists
    operator.run()
    assert operator.api.pod_lists == lists


def test_pods_are_not_listed_in_the_pass_that_rolls_them() -> None:
    operator = Operator()
    operator.api.pods_now = [_crash_looping(restarts=5)]  # an old pod, about to be replaced
    operator.run()
    assert operator.api.pod_lists == 0
    assert operator.condition("Ready")["reason"] == "ReplicasNotReady"


def test_plan_warnings_become_events_once() -> None:
    spec: dict[str, Any] = {
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
        "draft": {"model": {"name": "meta-llama/Llama-3.2-3B-Instruct"}},
        "batching": {"max": 64},
    }
    operator = Operator()
    first = operator.run(**spec)
    assert [e.reason for e in first.events].count("PlanWarning") == 1
    assert [e.reason for e in operator.run(**spec).events] == []


def test_the_spec_is_never_written() -> None:
    operator = Operator()
    operator.run()
    assert "InferenceModel" not in _kinds(operator.api.applied)
    assert operator.status is not None and "spec" not in operator.status


def test_a_deleted_models_children_are_forgotten() -> None:
    operator = Operator()
    operator.run()
    assert len(operator.children) == 4
    operator.children.forget("ml", "llama")
    assert len(operator.children) == 0


def test_children_are_forgotten_while_other_passes_remember_theirs() -> None:
    # Passes of other models run in other threads: forgetting one must not trip over them.
    known = kube.Children()
    failures: list[BaseException] = []

    def remember() -> None:
        for i in range(20_000):
            known.remember(
                {"kind": "Service", "metadata": {"name": f"m{i}", "namespace": "ml"}}, "1"
            )

    def forget() -> None:
        try:
            for i in range(2_000):
                known.forget("ml", f"m{i}")
        except RuntimeError as exc:  # "dictionary changed size during iteration"
            failures.append(exc)

    writer = threading.Thread(target=remember)
    writer.start()
    forget()
    writer.join()
    assert failures == []


def test_status_is_a_status_model() -> None:
    operator = Operator()
    operator.run()
    InferenceModelStatus.model_validate(operator.status)


def _peer(priority: int, seen: datetime, lifetime: int = 15) -> dict[str, Any]:
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


@pytest.mark.parametrize(
    ("peers", "acts"),
    [
        ({}, True),
        ({"me": _peer(-100, NOW)}, True),
        ({"me": _peer(-100, NOW), "older": _peer(-50, NOW)}, False),
        ({"me": _peer(-100, NOW), "younger": _peer(-200, NOW)}, True),
        # A higher peer whose keep-alive expired is gone: its standby acts.
        ({"me": _peer(-100, NOW), "older": _peer(-50, NOW - timedelta(seconds=30))}, True),
    ],
)
def test_the_resync_loop_acts_only_while_no_live_peer_outranks_it(
    peers: dict[str, Any], acts: bool
) -> None:
    assert engine.acting(peers, -100, NOW) is acts


def _metrics(**fields: Any) -> model_pass.Observer:
    observation = Observation(time=NOW, **fields)
    return lambda model: (observation, "")


DRAFTED: dict[str, Any] = {
    "draft": {"model": {"name": "meta-llama/Llama-3.2-1B-Instruct"}},
    "batching": {"min": 8, "max": 256, "initial": 64},
}


def test_a_decision_is_due_once_an_interval_has_passed() -> None:
    operator = Operator()
    operator.run(observe=_metrics(acceptance_rate=0.7, p99_seconds=1.0, queue_depth=0.0))
    assert operator.status is not None and len(operator.status["decisions"]) == 1
    model = _model(status=operator.status)
    assert not model_pass.decision_due(model, NOW + timedelta(seconds=29))
    assert model_pass.decision_due(model, NOW + timedelta(seconds=30))
    off = _model(status=operator.status, autoscaling={"enabled": False})
    assert not model_pass.decision_due(off, NOW + timedelta(hours=1))


def test_high_acceptance_raises_the_limit_through_the_gate_configmap() -> None:
    operator = Operator()
    outcome = operator.run(
        observe=_metrics(acceptance_rate=0.95, queue_depth=12.0, throughput=900.0), **DRAFTED
    )
    assert operator.status is not None
    decision = operator.status["lastDecision"]
    assert decision["applied"] is True and decision["to"] > decision["from"] == 64
    assert operator.status["batchLimit"] == decision["to"]
    (config_map,) = [m for m in operator.api.applied if m["kind"] == "ConfigMap"]
    assert config_map["data"]["limit"] == str(decision["to"])
    assert "BatchLimitChanged" in [e.reason for e in outcome.events]
    assert operator.condition("MetricsAvailable")["status"] == "True"


def _limit_changes(applied: str) -> float:
    value = REGISTRY.get_sample_value(
        "specfleet_operator_batch_limit_changes_total",
        {"namespace": "ml", "inferencemodel": "llama", "applied": applied},
    )
    return value or 0.0


@pytest.mark.parametrize("mode", ["Apply", "Recommend"])
def test_a_change_is_counted_per_model_applied_or_recommended(mode: str) -> None:
    applied = "true" if mode == "Apply" else "false"
    before, other = _limit_changes(applied), _limit_changes("false" if mode == "Apply" else "true")
    operator = Operator()
    spec = {**DRAFTED, "autoscaling": {"mode": mode}}
    high = _metrics(acceptance_rate=0.95, queue_depth=12.0, throughput=900.0)
    operator.run(observe=high, **spec)
    assert _limit_changes(applied) == before + 1
    # A decision that changes nothing (within the interval: none at all) is not counted.
    operator.run(now=NOW + timedelta(seconds=1), observe=high, **spec)
    assert _limit_changes(applied) == before + 1
    assert _limit_changes("false" if mode == "Apply" else "true") == other


def test_missing_metrics_hold_the_limit_and_say_so() -> None:
    operator = Operator()
    operator.run(observe=lambda model: (Observation(), "Prometheus did not answer"), **DRAFTED)
    assert operator.status is not None
    assert operator.status["lastDecision"]["rule"] == "hold-missing-metrics"
    assert operator.status["batchLimit"] == 64
    metrics = operator.condition("MetricsAvailable")
    assert (metrics["status"], metrics["message"]) == ("False", "Prometheus did not answer")


def test_recommend_mode_records_and_changes_nothing() -> None:
    operator = Operator()
    spec = {**DRAFTED, "autoscaling": {"mode": "Recommend"}}
    operator.run(observe=_metrics(acceptance_rate=0.95, queue_depth=12.0), **spec)
    assert operator.status is not None
    assert operator.status["lastDecision"]["applied"] is False
    assert operator.status["batchLimit"] == 64


def test_sustained_low_acceptance_marks_speculation_unhealthy_once() -> None:
    operator = Operator()
    reasons: list[str] = []
    for step in range(6):
        outcome = operator.run(
            NOW + timedelta(minutes=5 * step),
            _metrics(acceptance_rate=0.3, queue_depth=0.0),
            **DRAFTED,
        )
        reasons += [e.reason for e in outcome.events]
    assert operator.condition("SpeculationHealthy")["status"] == "False"
    assert reasons.count("SpeculationUnhealthy") == 1


def test_a_latency_target_no_batch_limit_meets_is_explained_in_a_condition() -> None:
    operator = Operator()
    observed = _metrics(itl_p99_seconds=0.02, ttft_p99_seconds=0.2, queue_depth=0.0)
    # The 8B on one H100 takes about 5ms a step at batch 1: no limit gives 1ms between tokens.
    operator.run(observe=observed, autoscaling={"itlP99Target": "1ms", "ttftP99Target": "500ms"})
    latency = operator.condition("LatencyTargetsMet")
    assert (latency["status"], latency["reason"]) == ("False", "TargetUnreachable")
    assert latency["message"].startswith("ITL P99 target 1ms is below one decode step")
    within = {"itlP99Target": "50ms", "ttftP99Target": "500ms"}
    operator.run(NOW + timedelta(seconds=30), observed, autoscaling=within)
    latency = operator.condition("LatencyTargetsMet")
    assert (latency["status"], latency["reason"], latency["message"]) == (
        "True",
        "TargetsMet",
        "ITL P99 20ms under the 50ms target; TTFT P99 200ms under the 500ms target",
    )


SCHEDULED: dict[str, Any] = {
    "model": {"name": "meta-llama/Llama-3.1-70B-Instruct"},
    "gpu": {"count": "auto"},
    "draft": {"model": {"name": "meta-llama/Llama-3.2-1B-Instruct"}},
    "batching": {"min": 8, "max": 256, "initial": 64},
}


def _speculative_config(applied: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [m for m in applied if m["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    config: dict[str, Any] = json.loads(args[args.index("--speculative-config") + 1])
    return config


@pytest.mark.parametrize("mode", ["Apply", "Recommend"])
def test_a_measured_draft_acceptance_retunes_the_schedule_by_a_rollout(mode: str) -> None:
    operator = Operator()
    spec = {**SCHEDULED, "autoscaling": {"mode": mode}}
    operator.run(**spec)
    prior = _speculative_config(operator.api.applied)["num_speculative_tokens_per_batch_size"]
    low = _metrics(acceptance_rate=0.2, draft_acceptance=0.3, in_flight=32.0, queue_depth=0.0)
    reasons: list[str] = []
    for step in range(3):
        outcome = operator.run(NOW + timedelta(seconds=30 * step), observe=low, **spec)
        reasons += [e.reason for e in outcome.events]
    assert operator.status is not None
    change = operator.status["lastDecision"]["schedule"]
    assert change["rule"] == "schedule-retune" and change["toAcceptance"] == 0.3
    assert change["applied"] is (mode == "Apply")
    if mode == "Apply":
        assert operator.status["scheduleAcceptance"] == 0.3
        assert reasons.count("SpeculationScheduleChanged") == 1
        # vLLM reads its schedule at start: the new one rolls the Deployment.
        retuned = _speculative_config(operator.api.applied)["num_speculative_tokens_per_batch_size"]
        assert retuned != prior and retuned[-1][2] == 0
        assert operator.status["plan"]["scheduleAcceptance"] == 0.3
    else:
        assert "scheduleAcceptance" not in operator.status
        assert "SpeculationScheduleChanged" not in reasons
        assert not [m for m in operator.api.applied if m["kind"] == "Deployment"]


def test_a_retune_from_per_position_rates_keeps_them_and_plans_with_them() -> None:
    operator = Operator()
    profile = [0.3, 0.1, 0.03, 0.01, 0.003]
    low = _metrics(
        acceptance_rate=0.1,
        draft_acceptance=0.3,
        acceptance_by_position=profile,
        in_flight=32.0,
        queue_depth=0.0,
    )
    for step in range(3):
        operator.run(NOW + timedelta(seconds=30 * step), observe=low, **SCHEDULED)
    assert operator.status is not None
    assert operator.status["scheduleAcceptanceByPosition"] == profile
    model = _model(status=operator.status, **SCHEDULED)
    expected = plan.plan("llama", model.spec, profile)
    rendered = _speculative_config(operator.api.applied)["num_speculative_tokens_per_batch_size"]
    assert rendered == [list(r.as_vllm()) for r in expected.schedule]
