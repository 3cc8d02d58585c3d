"""The engine between kopf and the passes: what it keeps from watch events, what the resync
loop and the backlog's thread run from it, and when a peer outranks it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf

from specfleet import engine
from specfleet.config import Config
from tests.test_reconcile import FakeApi, _model

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class PeeringApi(FakeApi):
    """The fake API with a kopf peering object whose peers the test sets."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: dict[str, Any] = {}
        self.paths: list[str] = []

    def get_path(self, path: str, *_: Any) -> dict[str, Any] | None:
        self.paths.append(path)
        return {"status": self.peers}


def _body(**spec: Any) -> kopf.Body:
    raw: Any = _model(**spec).model_dump(by_alias=True, exclude_none=True, mode="json")
    return kopf.Body(raw)


def _engine(fake: FakeApi, peering: engine.Peering | None = None) -> engine.Engine:
    return engine.Engine(Config(), fake, peering=peering, clock=lambda: NOW)


def test_the_resync_loop_passes_over_the_models_the_watch_kept() -> None:
    fake = FakeApi()
    runs = _engine(fake)
    runs.model_seen(False, _body())
    runs.resync()
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
    assert fake.applied == [] and len(runs.children) == 0


def test_a_full_pass_runs_the_latest_spec_the_watch_saw() -> None:
    fake = FakeApi()
    runs = _engine(fake)
    runs.model_seen(False, _body(replicas=1))
    runs.model_changed(_body(replicas=1))
    assert [m["kind"] for m in fake.applied] == ["ConfigMap", "Deployment"]
    assert ("ml", "llama") in runs.backlog and fake.statuses == []
    runs.model_seen(False, _body(replicas=3))  # changed before the full pass ran
    fake.applied.clear()
    finisher = threading.Thread(target=runs.finish_forever)
    finisher.start()
    assert _eventually(lambda: bool(fake.statuses))
    runs.backlog.close()
    finisher.join(timeout=30)
    (deployment,) = [m for m in fake.applied if m["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 3
    # The first pass's rollout is reported by the full pass, once.
    assert fake.events.count("RolloutStarted") == 1


def _eventually(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + 30
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_body_that_does_not_parse_is_not_kept() -> None:
    fake = FakeApi()
    runs = _engine(fake)
    runs.model_seen(False, _body())
    raw: Any = {**_body(), "spec": {"model": {"name": ""}}}
    runs.model_seen(False, kopf.Body(raw))
    runs.resync()
    assert fake.applied == [] and fake.events == []


def _peer(priority: int, seen: datetime) -> dict[str, Any]:
    return {"priority": priority, "lifetime": 15, "lastseen": seen.isoformat()}


def test_a_paused_peer_skips_the_resync_until_the_one_above_it_lapses() -> None:
    fake = PeeringApi()
    runs = _engine(fake, engine.Peering("specfleet", priority=-100, namespace="ml"))
    runs.model_seen(False, _body())
    fake.peers = {"me": _peer(-100, NOW), "older": _peer(-50, NOW)}
    runs.resync()
    assert fake.paths == ["/apis/kopf.dev/v1/namespaces/ml/kopfpeerings/specfleet"]
    assert fake.applied == []
    fake.peers["older"] = _peer(-50, NOW - timedelta(seconds=30))
    runs.resync()
    assert fake.applied != []
