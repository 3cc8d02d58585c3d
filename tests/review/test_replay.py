"""`specfleet review --replay` gives back every decision the operator recorded, field for field.

The operator's pass (`reconcile.inferencemodel.desired`, then `status_after`, with the status
stored as the API server stores it) runs over generated observation sequences: the acceptance
bands, P99 breaches with and without a queue, Recommend mode, KV cache preemption, speculation
schedule retunes (and one held by their cooldown), metrics missing and stale, and the shape of
the e2e loop's history (seconds apart, longer than status keeps). Every decision the passes
made, replayed under the model's own policy, comes back equal."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from specfleet import api, cli, review
from specfleet import plan as planner
from specfleet.api.inferencemodel import (
    DECISION_HISTORY_LIMIT,
    Decision,
    InferenceModel,
    InferenceModelStatus,
    Observation,
)
from specfleet.autoscale import step
from specfleet.config import Config
from specfleet.reconcile import inferencemodel as model_pass

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SMALL = {
    "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
    "gpu": {"count": 1},
    "draft": {"model": {"name": "meta-llama/Llama-3.2-1B-Instruct"}, "schedule": "fixed"},
    "batching": {"min": 8, "max": 256, "initial": 64},
}
SCHEDULED = {
    "model": {"name": "meta-llama/Llama-3.1-70B-Instruct"},
    "gpu": {"count": "auto"},
    "draft": {"model": {"name": "meta-llama/Llama-3.2-1B-Instruct"}},
    "batching": {"min": 8, "max": 256, "initial": 64},
}
E2E = {
    **SMALL,
    "batching": {"min": 2, "max": 64, "initial": 16},
    "autoscaling": {"interval": "3s", "window": "15s", "cooldown": "3s", "p99Target": "5s"},
}
"""e2e/test_autoscale.py's models: decisions every 3 s over a 15 s window."""

Window = tuple[Observation, str]
"""What the pass's observer returns: the observation, and why fields are missing."""


@dataclass(frozen=True)
class Scenario:
    spec: dict[str, Any]
    windows: Callable[[random.Random, Iterator[datetime]], list[Window]]
    rules: frozenset[str]
    """Rules (of the limit and of the schedule) the sequence must make fire, so the replay
    is checked where they decide."""
    long: bool = False
    """Whether it makes more decisions than status keeps."""


def _model(spec: dict[str, Any]) -> InferenceModel:
    body = {
        "apiVersion": api.API_VERSION,
        "kind": "InferenceModel",
        "metadata": {"name": "llama", "namespace": "ml", "uid": "u-1", "generation": 1},
        "spec": spec,
    }
    model = api.parse(body)
    assert isinstance(model, InferenceModel)
    return model


def _operate(model: InferenceModel, windows: list[Window]) -> tuple[list[Decision], InferenceModel]:
    """One pass per window, each when its decision falls due: every decision made, and the
    model with the status the last pass wrote."""
    interval = model.spec.autoscaling.interval.delta
    made: list[Decision] = []
    for index, window in enumerate(windows):
        now = NOW + index * interval
        assert model_pass.decision_due(model, now)
        # As a pass plans: for what status says the schedule in force was computed for.
        plan = planner.plan("llama", model.spec, step.recorded_acceptance(model.status))
        want = model_pass.desired(model, plan, Config(), now, window)
        status, _ = model_pass.status_after(want, None, now, rolled=False)
        # Stored as the API server stores it, and read back by the next pass.
        stored = status.model_dump(by_alias=True, exclude_none=True, mode="json")
        model = model.model_copy(update={"status": InferenceModelStatus.model_validate(stored)})
        assert model.status is not None and model.status.last_decision is not None
        made.append(model.status.last_decision)
        # The plan rendered is the one the next pass computes: the schedule travelled intact.
        assert want.plan == planner.plan("llama", model.spec, step.recorded_acceptance(status))
    return made, model


def _noisy(rng: random.Random, value: float, spread: float) -> float:
    return round(value + rng.uniform(-spread, spread), 3)


def _window(now: datetime, **fields: Any) -> Window:
    return Observation(time=now, throughput=900.0, **fields), ""


def _bands(
    rng: random.Random,
    times: Iterator[datetime],
    phases: tuple[tuple[float, int], ...] = ((0.95, 8), (0.75, 8), (0.45, 12), (0.9, 6)),
) -> list[Window]:
    """Acceptance high, mid, low and high again, with a P99 well within any target."""
    return [
        _window(
            next(times),
            acceptance_rate=_noisy(rng, rate, 0.03),
            p99_seconds=_noisy(rng, 3.0, 0.3),
            queue_depth=0.0,
            in_flight=40.0,
        )
        for rate, count in phases
        for _ in range(count)
    ]


def _latency(
    rng: random.Random,
    times: Iterator[datetime],
    phases: tuple[tuple[float, float, float, int], ...] = (
        (5.0, 0.0, 0.0, 4),
        (12.0, 0.0, 0.0, 14),
        (12.0, 4.0, 3.0, 6),
        (4.0, 2.0, 0.0, 6),
    ),
) -> list[Window]:
    """P99 within target, over it with nothing waiting, over it with a growing queue, then
    room under it with a queue; acceptance mid-band."""
    windows = []
    for p99, queue, growth, count in phases:
        for i in range(count):
            windows.append(
                _window(
                    next(times),
                    acceptance_rate=_noisy(rng, 0.75, 0.02),
                    p99_seconds=_noisy(rng, p99, 0.5),
                    queue_depth=queue + growth * i,
                    in_flight=_noisy(rng, 20.0, 2.0),
                )
            )
    return windows


def _recommended(rng: random.Random, times: Iterator[datetime]) -> list[Window]:
    """High, then low acceptance, then a P99 breach with nothing waiting."""
    bands = _bands(rng, times, ((0.95, 6), (0.45, 8)))
    return bands + _latency(rng, times, ((12.0, 0.0, 0.0, 14),))


def _kv(rng: random.Random, times: Iterator[datetime]) -> list[Window]:
    """A queue with room under the target while the KV cache fills, then preempts, then
    drains."""
    phases = [(0.6, 0.0, 6), (0.97, 8.0, 10), (0.5, 0.0, 8)]
    return [
        _window(
            next(times),
            acceptance_rate=_noisy(rng, 0.75, 0.02),
            p99_seconds=_noisy(rng, 10.0, 1.0),
            queue_depth=_noisy(rng, 6.0, 1.0),
            in_flight=_noisy(rng, 60.0, 3.0),
            kv_cache_usage=_noisy(rng, usage, 0.02),
            preemptions=preempted,
        )
        for usage, preempted, count in phases
        for _ in range(count)
    ]


def _retunes(rng: random.Random, times: Iterator[datetime]) -> list[Window]:
    """The draft accepted far less than the prior, per position; then more again, at once
    (held by the schedule's cooldown) and for good (retuned after it)."""
    low = [0.3, 0.1, 0.03, 0.01, 0.003]
    high = [0.6, 0.36, 0.22, 0.13, 0.08]
    phases = [(0.3, None, 6), (0.3, low, 6), (0.6, high, 66)]
    return [
        _window(
            next(times),
            acceptance_rate=_noisy(rng, first / 2, 0.02),
            draft_acceptance=_noisy(rng, first, 0.01),
            acceptance_by_position=profile,
            in_flight=_noisy(rng, 8.0, 1.0),
            queue_depth=0.0,
        )
        for first, profile, count in phases
        for _ in range(count)
    ]


def _e2e(rng: random.Random, times: Iterator[datetime]) -> list[Window]:
    """As e2e/test_autoscale.py's loop sees it: high acceptance, then low, then Prometheus
    gone, then back with a stale sample first, then every step 40 times slower."""
    windows: list[Window] = []

    def serve(rate: float, p99: float, count: int) -> None:
        for _ in range(count):
            windows.append(
                _window(
                    next(times),
                    acceptance_rate=_noisy(rng, rate, 0.02),
                    p99_seconds=_noisy(rng, p99, 0.3),
                    queue_depth=0.0,
                    in_flight=4.0,
                )
            )

    serve(0.9, 1.5, 12)
    serve(0.5, 1.5, 12)
    for _ in range(6):
        next(times)
        windows.append((Observation(), "Prometheus at http://prometheus:9090 did not answer"))
    stale = next(times) - timedelta(seconds=30)
    windows.append(_window(stale, acceptance_rate=0.5, p99_seconds=1.5, queue_depth=0.0))
    serve(0.5, 1.5, 6)
    serve(0.75, 20.0, 12)
    return windows


SCENARIOS = {
    "bands": Scenario(
        SMALL, _bands, frozenset({"band-high", "band-mid", "band-low", "steady"}), long=True
    ),
    "p99": Scenario(
        {**SMALL, "autoscaling": {"p99Target": "8s"}},
        _latency,
        frozenset({"p99-breach", "p99-breach-queueing", "p99-headroom", "cooldown"}),
    ),
    "recommend": Scenario(
        {**SMALL, "autoscaling": {"mode": "Recommend", "p99Target": "8s"}},
        _recommended,
        frozenset({"band-high", "band-low", "p99-breach"}),
    ),
    "kv": Scenario(
        {**SMALL, "autoscaling": {"p99Target": "30s"}},
        _kv,
        frozenset({"p99-headroom", "kv-full", "kv-preemption"}),
    ),
    "retune": Scenario(
        SCHEDULED,
        _retunes,
        frozenset({"schedule-retune", "schedule-cooldown", "steady"}),
        long=True,
    ),
    "e2e": Scenario(
        E2E,
        _e2e,
        frozenset(
            {"band-high", "band-low", "hold-missing-metrics", "hold-stale-metrics", "p99-breach"}
        ),
        long=True,
    ),
}


def _times(model: InferenceModel) -> Iterator[datetime]:
    interval = model.spec.autoscaling.interval.delta
    return (NOW + i * interval for i in range(10_000))


def _record(name: str) -> tuple[list[Decision], InferenceModel]:
    scenario = SCENARIOS[name]
    model = _model(scenario.spec)
    windows = scenario.windows(random.Random(name), _times(model))
    return _operate(model, windows)


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_replay_gives_back_every_decision_the_operator_recorded(name: str) -> None:
    made, model = _record(name)
    rules = {d.rule for d in made} | {d.schedule.rule for d in made if d.schedule is not None}
    assert SCENARIOS[name].rules <= rules, sorted(rules)
    assert (len(made) > DECISION_HISTORY_LIMIT) is SCENARIOS[name].long

    assert review.replay(made, model) == made
    # Status keeps the newest decisions: those of a short history are all of them.
    assert model.status is not None
    assert model.status.decisions == made[-DECISION_HISTORY_LIMIT:]


def test_recommended_decisions_replay_from_status_alone() -> None:
    # Recommend mode: the limit recorded in status never moved, the decisions' did.
    made, model = _record("recommend")
    assert len(made) <= DECISION_HISTORY_LIMIT
    assert model.status is not None and model.status.batch_limit == 64
    assert any(d.to_limit != d.from_limit for d in made)
    assert review.replay(review.decisions(model), model) == made


def test_the_cli_replays_a_saved_model_under_its_own_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made, model = _record("p99")
    assert len(made) <= DECISION_HISTORY_LIMIT
    saved = tmp_path / "llama.yaml"
    saved.write_text(
        yaml.safe_dump(model.model_dump(by_alias=True, exclude_none=True, mode="json"))
    )
    assert cli.main(["review", "--from-file", str(saved), "--replay", str(saved)]) == 0
    assert capsys.readouterr().out.strip() == (
        f"the replayed policy decides as recorded at all {len(made)} decisions"
    )
