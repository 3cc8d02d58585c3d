"""One InferenceModel reconcile against a recording fake of the API writer: what is written,
when nothing is, and what status says."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import pytest

from specfleet import api, handlers, kube, reconcile
from specfleet.api.inferencemodel import InferenceModel, InferenceModelStatus
from specfleet.config import Config

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CONFIG = Config()


class Recorder:
    """Records writes and answers like the API server would (what is applied is stored)."""

    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.fail: kube.ApiError | None = None

    def apply(self, manifest: kube.Manifest) -> None:
        if self.fail:
            raise self.fail
        self.applied.append(copy.deepcopy(manifest))

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        self.statuses.append(dict(status))


def _model(
    status: dict[str, Any] | None = None, generation: int = 1, **spec: Any
) -> InferenceModel:
    spec.setdefault("model", {"name": "meta-llama/Llama-3.1-8B-Instruct"})
    spec.setdefault("gpu", {"count": 1})
    body: dict[str, Any] = {
        "apiVersion": api.API_VERSION,
        "kind": "InferenceModel",
        "metadata": {"name": "llama", "namespace": "ml", "uid": "u-1", "generation": generation},
        "spec": spec,
    }
    if status is not None:
        body["status"] = status
    model = api.parse(body)
    assert isinstance(model, InferenceModel)
    return model


def _live(applied: list[dict[str, Any]], ready: int | None = None) -> dict[str, Any]:
    """The objects as the API server would hold them: with defaults and, for the Deployment,
    a status."""
    live = {}
    for manifest in applied:
        obj = copy.deepcopy(manifest)
        obj["metadata"].update({"resourceVersion": "7", "generation": 1, "uid": "c"})
        if obj["kind"] == "Deployment":
            obj["spec"]["progressDeadlineSeconds"] = 600
            replicas = obj["spec"]["replicas"]
            obj["status"] = {
                "observedGeneration": 1,
                "replicas": replicas,
                "readyReplicas": replicas if ready is None else ready,
                "updatedReplicas": replicas,
            }
        live[obj["kind"]] = obj
    return live


def _run(
    model: InferenceModel, observed: dict[str, Any], writer: Recorder, now: datetime = NOW
) -> reconcile.Outcome:
    return reconcile.inference_model(model, observed, writer, CONFIG, now)


def test_first_pass_creates_every_child_and_reports_the_rollout() -> None:
    writer = Recorder()
    outcome = _run(_model(batching={"max": 128, "initial": 32}), {}, writer)
    assert [m["kind"] for m in writer.applied] == [
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ]
    (status,) = writer.statuses
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


def test_a_pass_over_an_unchanged_model_writes_nothing() -> None:
    first = Recorder()
    _run(_model(), {}, first)
    observed = _live(first.applied)
    settled = Recorder()
    _run(_model(status=first.statuses[0]), observed, settled)  # Ready now: status changes once
    again = Recorder()
    outcome = _run(_model(status=settled.statuses[-1]), observed, again, NOW + timedelta(hours=1))
    assert again.applied == [] and again.statuses == []
    assert outcome.events == []


def test_ready_when_every_replica_is_ready_and_updated() -> None:
    first = Recorder()
    _run(_model(replicas=2), {}, first)
    writer = Recorder()
    _run(_model(status=first.statuses[0], replicas=2), _live(first.applied, ready=1), writer)
    ready = {c["type"]: c for c in writer.statuses[-1]["conditions"]}["Ready"]
    assert (ready["status"], ready["message"]) == (
        "False",
        "1/2 replicas ready, 1 x H100-80GB per replica",
    )
    writer = Recorder()
    _run(_model(status=first.statuses[0], replicas=2), _live(first.applied), writer)
    ready = {c["type"]: c for c in writer.statuses[-1]["conditions"]}["Ready"]
    assert ready["status"] == "True"
    assert writer.statuses[-1]["readyReplicas"] == 2


def test_a_transition_time_moves_only_when_the_status_flips() -> None:
    first = Recorder()
    _run(_model(replicas=2), {}, first)
    later = NOW + timedelta(minutes=5)
    writer = Recorder()
    _run(_model(status=first.statuses[0], replicas=2), _live(first.applied, ready=1), writer, later)
    ready = {c["type"]: c for c in writer.statuses[-1]["conditions"]}["Ready"]
    assert ready["lastTransitionTime"] == NOW.isoformat().replace("+00:00", "Z")


def test_a_drifted_field_the_operator_owns_is_put_back_and_others_are_kept() -> None:
    first = Recorder()
    _run(_model(), {}, first)
    observed = _live(first.applied)
    observed["Deployment"]["spec"]["template"]["spec"]["tolerations"] = []
    observed["Service"]["metadata"].setdefault("annotations", {})["team"] = "search"
    writer = Recorder()
    _run(_model(status=first.statuses[0]), observed, writer)
    assert [m["kind"] for m in writer.applied] == ["Deployment"]


def test_live_mode_moves_the_limit_through_the_configmap_alone() -> None:
    first = Recorder()
    _run(_model(batching={"max": 256, "initial": 64}), {}, first)
    moved = {**first.statuses[0], "batchLimit": 128}
    writer = Recorder()
    _run(_model(status=moved, batching={"max": 256, "initial": 64}), _live(first.applied), writer)
    assert [(m["kind"], m.get("data")) for m in writer.applied] == [("ConfigMap", {"limit": "128"})]


def test_restart_mode_moves_the_limit_by_rolling_the_deployment() -> None:
    spec: dict[str, Any] = {"batching": {"max": 256, "initial": 64, "mode": "Restart"}}
    first = Recorder()
    _run(_model(**spec), {}, first)
    moved = {**first.statuses[0], "batchLimit": 128}
    writer = Recorder()
    outcome = _run(_model(status=moved, **spec), _live(first.applied), writer)
    assert [m["kind"] for m in writer.applied] == ["ConfigMap", "Deployment"]
    assert [e.reason for e in outcome.events] == ["RolloutStarted"]


@pytest.mark.parametrize(("last", "expected"), [(None, 64), (8, 16), (100, 100), (999, 256)])
def test_the_limit_stays_within_bounds_that_moved(last: int | None, expected: int) -> None:
    status = None if last is None else {"batchLimit": last}
    model = _model(status=status, batching={"min": 16, "max": 256, "initial": 64})
    assert reconcile.current_limit(model) == expected


def test_an_infeasible_spec_is_refused_with_a_condition_and_no_children() -> None:
    writer = Recorder()
    with pytest.raises(reconcile.RefusedError, match=r"needs .* GiB"):
        _run(_model(model={"name": "meta-llama/Llama-3.1-405B"}, quantization="none"), {}, writer)
    assert writer.applied == []
    conditions = {c["type"]: c for c in writer.statuses[0]["conditions"]}
    assert conditions["Degraded"]["reason"] == "Infeasible"
    assert "needs" in conditions["Degraded"]["message"]
    assert conditions["Ready"]["status"] == "False"


def test_a_stalled_rollout_is_degraded() -> None:
    first = Recorder()
    _run(_model(), {}, first)
    observed = _live(first.applied, ready=0)
    observed["Deployment"]["status"]["conditions"] = [
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": 'ReplicaSet "llama-1" has timed out progressing.',
        }
    ]
    writer = Recorder()
    _run(_model(status=first.statuses[0]), observed, writer)
    degraded = {c["type"]: c for c in writer.statuses[-1]["conditions"]}["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "RolloutStuck")
    assert "timed out" in degraded["message"]


def test_plan_warnings_become_events_once() -> None:
    spec: dict[str, Any] = {
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
        "draft": {"model": {"name": "meta-llama/Llama-3.2-3B-Instruct"}},
        "batching": {"max": 64},
    }
    first = Recorder()
    outcome = _run(_model(**spec), {}, first)
    assert [e.reason for e in outcome.events].count("PlanWarning") == 1
    again = _run(_model(status=first.statuses[0], **spec), _live(first.applied), Recorder())
    assert [e.reason for e in again.events] == []


def test_the_spec_is_never_written() -> None:
    writer = Recorder()
    _run(_model(), {}, writer)
    assert all(m["kind"] != "InferenceModel" for m in writer.applied)
    assert all("spec" not in status for status in writer.statuses)


class _Memo(dict[str, Any]):
    pass


@pytest.mark.parametrize(
    ("transient", "error"), [(True, kopf.TemporaryError), (False, kopf.PermanentError)]
)
def test_api_failures_are_retried_only_when_they_may_pass(
    transient: bool, error: type[Exception]
) -> None:
    writer = Recorder()
    writer.fail = kube.ApiError("applying ConfigMap ml/llama-gate: 503", transient=transient)
    raw: Any = _model().model_dump(by_alias=True, exclude_none=True, mode="json")
    body = kopf.Body(raw)
    memo = _Memo(kube=writer)
    with pytest.raises(error, match="503"):
        handlers._reconcile(body, memo, {}, quiet=False)


def test_status_is_a_status_model() -> None:
    first = Recorder()
    _run(_model(), {}, first)
    InferenceModelStatus.model_validate(first.statuses[0])
