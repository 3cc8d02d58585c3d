"""The engine between kopf and the passes: what it keeps from watch events, what it queues and
when, one pass per resource at a time, decisions on each model's own clock, what it does with
what a pass reports, and when a peer outranks it."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import pytest

from specfleet import engine, kube
from specfleet.api.inferencemodel import InferenceModel, Observation
from specfleet.config import Config
from specfleet.reconcile import apply
from specfleet.workqueue import Priority, Taken
from tests.test_reconcile import FakeApi, _model

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
MODEL = engine.Ref(engine.MODEL, "ml", "llama")
AUTOSCALED: dict[str, Any] = {
    "draft": {"model": {"name": "meta-llama/Llama-3.2-1B-Instruct"}},
    "batching": {"min": 8, "max": 256, "initial": 64},
    "autoscaling": {"interval": "10s", "window": "1m"},
}


class Time:
    """One fake clock for the engine (wall time) and its queue (monotonic seconds)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def now(self) -> datetime:
        return NOW + timedelta(seconds=self.seconds)

    def monotonic(self) -> float:
        return self.seconds


class PeeringApi(FakeApi):
    """The fake API with a kopf peering object whose peers the test sets."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: dict[str, Any] = {}
        self.paths: list[str] = []

    def get_path(self, path: str, *_: Any) -> dict[str, Any] | None:
        self.paths.append(path)
        return {"status": self.peers}


class Cluster(FakeApi):
    """The fake API holding the InferenceModel itself, as the API server does: a status write
    conditional on an older resourceVersion is refused with a conflict, and every write is
    seen by the engine's watch (`watch`), as kopf would deliver it."""

    def __init__(self, **spec: Any) -> None:
        super().__init__()
        self.body: dict[str, Any] = _model(**spec).model_dump(
            by_alias=True, exclude_none=True, mode="json"
        )
        self.body["metadata"]["resourceVersion"] = "100"
        self.watch: Callable[[kopf.Body], None] = lambda body: None

    def patch_status(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> None:
        stored = self.body["metadata"]["resourceVersion"]
        if resource_version is not None and resource_version != stored:
            raise kube.ApiError(f"updating {name} status: 409 Conflict", transient=True)
        super().patch_status(api_version, kind, namespace, name, status, resource_version)
        self.body["status"] = {**self.body.get("status", {}), **status}
        self.body["metadata"]["resourceVersion"] = str(int(stored) + 1)
        self.watch(self.current())

    def current(self) -> kopf.Body:
        raw: Any = copy.deepcopy(self.body)
        return kopf.Body(raw)

    def decisions(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.body.get("status", {}).get("decisions", [])
        return found


def _body(**spec: Any) -> kopf.Body:
    raw: Any = _model(**spec).model_dump(by_alias=True, exclude_none=True, mode="json")
    return kopf.Body(raw)


def _engine(
    fake: FakeApi,
    peering: engine.Peering | None = None,
    observe: Callable[[InferenceModel], tuple[Observation, str]] | None = None,
    clock: Time | None = None,
) -> engine.Engine:
    clock = clock or Time()
    return engine.Engine(
        Config(),
        fake,
        observe,
        peering=peering,
        clock=clock.now,
        monotonic=clock.monotonic,
    )


def _eventually(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + 30
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_handler_only_queues_and_the_first_pass_is_urgent() -> None:
    fake = FakeApi()
    runs = _engine(fake)
    runs.model_changed(_body())
    assert fake.applied == [] and MODEL in runs.queue
    assert runs.queue.next() == Taken(MODEL, Priority.URGENT)


def test_a_first_pass_writes_what_pods_need_and_queues_the_full_pass() -> None:
    fake = FakeApi()
    runs = _engine(fake)
    runs.model_seen(False, _body(replicas=1))
    runs.model_changed(_body(replicas=1))
    (first,) = [runs.run_one(runs.queue.take() or Taken(MODEL, Priority.URGENT))]
    runs.queue.done(MODEL)
    assert isinstance(first, engine.Done)
    assert [m["kind"] for m in fake.applied] == ["ConfigMap", "Deployment"]
    assert fake.statuses == [] and MODEL in runs.queue
    runs.model_seen(False, _body(replicas=3))  # changed before the full pass ran
    fake.applied.clear()
    runs.run_due()
    (deployment,) = [m for m in fake.applied if m["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 3
    assert len(fake.statuses) == 1
    # The first pass's rollout is reported by the full pass, once.
    assert fake.events.count("RolloutStarted") == 1


def test_every_new_model_starts_its_pods_before_any_gets_its_service() -> None:
    fake = FakeApi()
    runs = _engine(fake)
    for name in ("a", "b", "c"):
        runs.model_changed(_body_named(name))
    runs.run_due()
    kinds = [(m["kind"], m["metadata"]["name"]) for m in fake.applied]
    first_deployments = [kinds.index(("Deployment", name)) for name in ("a", "b", "c")]
    first_service = min(i for i, (kind, _) in enumerate(kinds) if kind == "Service")
    assert max(first_deployments) < first_service
    assert {name for kind, name in kinds if kind == "Service"} == {"a", "b", "c"}


def _body_named(name: str) -> kopf.Body:
    raw: Any = _model().model_dump(by_alias=True, exclude_none=True, mode="json")
    raw["metadata"]["name"] = name
    return kopf.Body(raw)


def test_the_resync_loop_queues_the_models_the_watch_kept() -> None:
    fake = FakeApi()
    runs = _engine(fake)
    runs.model_seen(False, _body())
    runs.resync()
    runs.run_due()
    assert [m["kind"] for m in fake.applied] == [
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ]
    assert len(fake.statuses) == 1
    # A deleted model is neither passed over nor remembered.
    fake.applied.clear()
    runs.model_seen(True, _body())
    runs.resync()
    assert runs.run_due() == [] and fake.applied == [] and len(runs.children) == 0


def test_a_body_that_does_not_parse_is_not_kept() -> None:
    fake = FakeApi()
    runs = _engine(fake)
    runs.model_seen(False, _body())
    raw: Any = {**_body(), "spec": {"model": {"name": ""}}}
    runs.model_seen(False, kopf.Body(raw))
    runs.resync()
    runs.run_due()
    assert fake.applied == [] and fake.events == []


class Counting(engine.Engine):
    """The engine, counting the passes its workers ran."""

    passes = 0

    def run_one(self, taken: Taken[engine.Ref]) -> engine.Result | None:
        try:
            return super().run_one(taken)
        finally:
            self.passes += 1


def test_two_passes_over_one_model_never_run_at_once() -> None:
    """Worker threads, the resync loop and the watch all ask for passes over one model while
    a pass over it waits on Prometheus: the second pass runs after the first, once, and the
    interval gets one decision."""
    cluster = Cluster(**AUTOSCALED)
    entered = threading.Semaphore(0)
    release = threading.Event()
    active = 0
    most = 0
    observed = 0
    guard = threading.Lock()

    def observe(model: InferenceModel) -> tuple[Observation, str]:
        nonlocal active, most, observed
        with guard:
            active += 1
            observed += 1
            most = max(most, active)
        entered.release()
        release.wait(timeout=30)
        with guard:
            active -= 1
        return Observation(time=NOW, acceptance_rate=0.9, p99_seconds=1.0), ""

    runs = Counting(Config(), cluster, observe, clock=lambda: NOW)
    cluster.watch = lambda body: runs.model_seen(False, body)
    runs.model_seen(False, cluster.current())
    workers = [threading.Thread(target=runs.work) for _ in range(2)]
    for worker in workers:
        worker.start()
    runs.resync()
    assert entered.acquire(timeout=30)  # one pass is deciding
    runs.resync()
    runs.model_seen(False, cluster.current())
    # The model waits, dirty, for the pass in flight (or, were passes to overlap, a second
    # one has begun to decide too).
    assert _eventually(lambda: MODEL in runs.queue or observed > 1)
    release.set()
    assert _eventually(lambda: runs.passes >= 2 and not runs.queue.in_flight(MODEL))
    runs.queue.close()
    for worker in workers:
        worker.join(timeout=30)
    assert most == 1
    assert observed == 1 and len(cluster.decisions()) == 1


def test_autoscaling_decides_on_its_own_clock_whatever_the_resync() -> None:
    clock = Time()
    cluster = Cluster(**AUTOSCALED)
    observation = Observation(time=NOW, acceptance_rate=0.9, p99_seconds=1.0)
    runs = _engine(cluster, observe=lambda model: (observation, ""), clock=clock)
    cluster.watch = lambda body: runs.model_seen(False, body)
    runs.model_changed(cluster.current())
    runs.run_due()
    assert len(cluster.decisions()) == 1
    # The next decision is queued for an interval (10 s) later; no resync runs meanwhile
    # (its period is 30 s).
    assert runs.queue.next() == 10.0
    for decisions in (2, 3):
        clock.seconds += 10
        runs.run_due()
        assert len(cluster.decisions()) == decisions
    # Autoscaling off: no clock.
    runs.model_seen(False, _body(autoscaling={"enabled": False}))
    clock.seconds += 10
    runs.run_due()
    assert runs.queue.next() is None


def test_a_conflict_rereads_instead_of_recording_a_second_decision() -> None:
    clock = Time()
    cluster = Cluster(**AUTOSCALED)
    observation = Observation(time=NOW, acceptance_rate=0.9, p99_seconds=1.0)
    runs = _engine(cluster, observe=lambda model: (observation, ""), clock=clock)
    runs.model_seen(False, cluster.current())  # the watch then misses what follows
    stale = cluster.current()
    runs.resync()
    runs.run_due()
    assert len(cluster.decisions()) == 1
    assert cluster.status_versions == ["100"]
    # A pass from the stale read: the interval looks undecided, and its write conflicts.
    runs.model_seen(False, stale)
    runs.queue.add(MODEL)
    (result,) = runs.run_due()
    assert isinstance(result, engine.Retry) and "Conflict" in result.message
    assert len(cluster.decisions()) == 1
    # The watch catches up before the retry: the retry reads the decision and adds none.
    runs.model_seen(False, cluster.current())
    clock.seconds += engine.BACKOFF_SECONDS
    (result,) = runs.run_due()
    assert isinstance(result, engine.Done)
    assert len(cluster.decisions()) == 1


def test_api_failures_are_retried_with_a_backoff_only_when_they_may_pass() -> None:
    clock = Time()
    fake = FakeApi()
    runs = _engine(fake, clock=clock)
    fake.fail = kube.ApiError("applying ConfigMap ml/llama-gate: 503", transient=True)
    runs.model_changed(_body())
    (result,) = runs.run_due()
    assert isinstance(result, engine.Retry) and "503" in result.message
    assert runs.queue.next() == engine.BACKOFF_SECONDS
    clock.seconds += engine.BACKOFF_SECONDS
    runs.run_due()
    assert runs.queue.next() == 2 * engine.BACKOFF_SECONDS  # it doubles
    fake.fail = kube.ApiError("applying ConfigMap ml/llama-gate: 422", transient=False)
    clock.seconds += 2 * engine.BACKOFF_SECONDS
    (result,) = runs.run_due()
    assert isinstance(result, engine.Failed)
    assert runs.queue.next() is None  # left to the next resync


def test_a_model_whose_namespace_is_being_deleted_is_let_go_without_retry_or_event() -> None:
    fake = FakeApi()
    fake.fail = kube.ApiError(
        "applying ConfigMap ml/llama-gate: the API server answered 403: ... is being terminated",
        transient=False,
        namespace_terminating=True,
    )
    runs = _engine(fake)
    runs.model_changed(_body())
    (result,) = runs.run_due()
    assert isinstance(result, engine.Gone)
    assert fake.events == [] and fake.statuses == []
    assert runs.queue.next() is None  # no full pass to follow


def test_a_refused_spec_gets_one_event_and_no_full_pass() -> None:
    fake = FakeApi()
    runs = _engine(fake)
    runs.model_changed(_body(model={"name": "meta-llama/Llama-3.1-405B"}, quantization="none"))
    (result,) = runs.run_due()
    assert isinstance(result, engine.Done) and result.outcome.refused is not None
    assert fake.events == ["Infeasible"] and fake.applied == []
    assert runs.queue.next() is None


def test_a_body_the_api_should_have_refused_fails_its_handler_for_good() -> None:
    fake = FakeApi()
    raw: Any = {**_body(), "spec": {"model": {"name": ""}}}
    try:
        _engine(fake).model_changed(kopf.Body(raw))
    except kopf.PermanentError as exc:
        assert "model" in str(exc)
    else:
        raise AssertionError("an invalid body must fail its handler")
    assert fake.events == ["InvalidSpec"]


def _peer(priority: int, seen: datetime) -> dict[str, Any]:
    return {"priority": priority, "lifetime": 15, "lastseen": seen.isoformat()}


def test_a_standby_neither_resyncs_nor_runs_passes_until_the_one_above_it_lapses() -> None:
    fake = PeeringApi()
    clock = Time()
    runs = _engine(fake, engine.Peering("specfleet", priority=-100, namespace="ml"), clock=clock)
    runs.model_seen(False, _body())
    fake.peers = {"me": _peer(-100, NOW), "older": _peer(-50, NOW)}
    runs.resync()
    assert fake.paths == ["/apis/kopf.dev/v1/namespaces/ml/kopfpeerings/specfleet"]
    assert runs.queue.next() is None
    runs.model_changed(_body())  # a pass that reaches a standby anyway is dropped
    assert runs.run_due() == [None] and fake.applied == []
    fake.peers["older"] = _peer(-50, NOW - timedelta(seconds=30))
    clock.seconds += engine.ACTING_TTL_SECONDS  # the peering object is read again
    runs.resync()
    runs.run_due()
    assert fake.applied != []


def test_a_deployments_event_queues_its_known_owner_for_status() -> None:
    fake = FakeApi()
    runs = _engine(fake)
    runs.child_seen(engine.MODEL, "ml", "llama")  # not (yet) a model the watch kept
    assert MODEL not in runs.queue
    runs.model_seen(False, _body())
    runs.child_seen(engine.MODEL, "ml", "llama")
    assert runs.queue.next() == Taken(MODEL, Priority.NORMAL)


def test_an_earlier_start_outranks_a_later_one_whatever_the_tiebreak() -> None:
    started = 1_796_654_158_010_123_456
    earlier = engine.peering_priority(started, engine.TIEBREAKS - 1)
    later = engine.peering_priority(started + 1_000_000, 0)
    assert earlier > later
    assert engine.peering_priority(started - 1_000_000, 0) > earlier


def test_replicas_that_start_in_the_same_millisecond_get_different_priorities() -> None:
    started = 1_796_654_158_010_000_000
    same_millisecond = {
        engine.peering_priority(started + offset, tiebreak)
        for offset, tiebreak in ((0, 7), (999_999, 8), (500, 123_456))
    }
    assert len(same_millisecond) == 3
    # A priority kopf's peering object keeps is a signed 64-bit integer.
    assert all(-(2**63) <= p < 2**63 for p in same_millisecond)
    with pytest.raises(ValueError, match="tiebreak"):
        engine.peering_priority(started, engine.TIEBREAKS)


def test_two_children_of_one_kind_are_each_found_by_name() -> None:
    # A policy's retention and learning CronJobs: one summary each, neither hiding the other.
    def cron_job(name: str, version: str) -> dict[str, Any]:
        return {"kind": "CronJob", "metadata": {"name": name, "resourceVersion": version}}

    key = ("ml", "assistant")
    summaries = [
        apply.summary(cron_job("assistant-retention", "7")),
        apply.summary(cron_job("assistant-learning", "9")),
    ]
    found = engine._observed(key, {"CronJob": {key: summaries}, "Deployment": {}})
    assert {k: v["metadata"]["resourceVersion"] for k, v in found.items()} == {
        "CronJob/assistant-retention": "7",
        "CronJob/assistant-learning": "9",
    }
