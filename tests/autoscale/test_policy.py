"""The autoscaling policy as tables: one row per rule, then the properties that matter over
many decisions (no flapping on a noisy steady signal, cooldown, bounds, Recommend mode)."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from specfleet.api.inferencemodel import AutoscalingSpec, BatchingSpec, Decision, Observation
from specfleet.autoscale import Policy, band, decide, smoothed, speculation_healthy

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
POLICY = Policy(limit=64, now=NOW, min_limit=8, max_limit=256, base=64, p99_target=8.0)


def obs(
    acceptance: float | None = 0.75,
    p99: float | None = 7.0,
    queue: float | None = 0.0,
    throughput: float | None = 1000.0,
    time: datetime | None = None,
) -> Observation:
    return Observation(
        time=time,
        acceptance_rate=acceptance,
        p99_seconds=p99,
        queue_depth=queue,
        throughput=throughput,
    )


def past(
    minutes_ago: float, limit: int, to: int | None = None, observation: Observation | None = None
) -> Decision:
    return Decision(
        time=NOW - timedelta(minutes=minutes_ago),
        from_limit=limit,
        to_limit=limit if to is None else to,
        rule="steady",
        applied=True,
        observation=observation or obs(),
    )


STEADY = [past(m, 64) for m in (5, 4.5, 4, 3.5, 3, 2.5)]
"""Five minutes at limit 64, mid band, P99 within target, nothing waiting."""


def sustained(observation: Observation, before: list[Decision] = STEADY) -> list[Decision]:
    """`before`, then the last 90 seconds at limit 64 observing what is observed now: the
    policy smooths, so one window alone moves it only part of the way."""
    return [*before, *(past(m, 64, observation=observation) for m in (1.5, 1, 0.5))]


@pytest.mark.parametrize(
    ("policy", "history", "observation", "rule", "to"),
    [
        pytest.param(POLICY, STEADY, obs(), "steady", 64, id="steady"),
        pytest.param(
            POLICY, STEADY, obs(acceptance=None), "hold-missing-metrics", 64, id="no-acceptance"
        ),
        pytest.param(POLICY, STEADY, obs(p99=None), "hold-missing-metrics", 64, id="no-p99"),
        pytest.param(POLICY, STEADY, obs(queue=None), "hold-missing-metrics", 64, id="no-queue"),
        pytest.param(
            replace(POLICY, p99_target=None),
            STEADY,
            obs(p99=None, queue=None),
            "steady",
            64,
            id="no-target-needs-no-p99",
        ),
        pytest.param(
            replace(POLICY, speculative=False),
            STEADY,
            obs(acceptance=None),
            "steady",
            64,
            id="no-draft-needs-no-acceptance",
        ),
        pytest.param(
            POLICY,
            STEADY,
            obs(time=NOW - timedelta(minutes=5)),
            "hold-stale-metrics",
            64,
            id="stale",
        ),
        pytest.param(
            POLICY, STEADY, obs(time=NOW - timedelta(seconds=30)), "steady", 64, id="fresh"
        ),
        pytest.param(replace(POLICY, enabled=False), STEADY, obs(p99=99), "disabled", 64),
        pytest.param(replace(POLICY, limit=300), STEADY, obs(), "bounds", 256, id="above-max"),
        pytest.param(replace(POLICY, limit=4), STEADY, obs(), "bounds", 8, id="below-min"),
        # Breach with nothing waiting: multiplicative decrease (0.7).
        pytest.param(POLICY, STEADY, obs(p99=12.0), "p99-breach", 44, id="breach"),
        # Breach while requests queue: shrinking would lengthen the queue; grow carefully.
        pytest.param(
            POLICY, STEADY, obs(p99=12.0, queue=5), "p99-breach-queueing", 80, id="breach-queue"
        ),
        # More waiting than running: grow by maxStep.
        pytest.param(
            POLICY, STEADY, obs(p99=12.0, queue=100), "p99-breach-queueing", 128, id="overload"
        ),
        # Breach without a queue, but a queue formed at 64 a minute ago: hold.
        pytest.param(
            POLICY,
            sustained(obs(p99=12.0), [*STEADY, past(2, 64, observation=obs(queue=3))]),
            obs(p99=12.0),
            "p99-breach-floor",
            64,
            id="breach-floor",
        ),
        # Room under the target and a queue: a careful increase (x1.25).
        pytest.param(POLICY, STEADY, obs(p99=4.0, queue=3), "p99-headroom", 80, id="headroom"),
        # Room but no queue: the limit does not bind, nothing to gain.
        pytest.param(POLICY, STEADY, obs(p99=4.0, queue=0), "steady", 64, id="room-no-queue"),
        # A queue but P99 between 80% and 100% of target: careful means no increase.
        pytest.param(POLICY, STEADY, obs(p99=7.5, queue=3), "steady", 64, id="queue-no-room"),
        # Acceptance moves to the high band with room: restart from the band's 2 x base.
        pytest.param(
            POLICY,
            STEADY,
            obs(acceptance=0.99, p99=4.0),
            "band-high",
            128,
            id="band-high",
        ),
        # High band but no room under the P99 target: the band may not raise the limit.
        pytest.param(POLICY, STEADY, obs(acceptance=0.99, p99=7.5), "steady", 64, id="no-room"),
        # Low band: half the base, when nothing queues.
        pytest.param(POLICY, STEADY, obs(acceptance=0.2), "band-low", 32, id="band-low"),
        # Low band while requests wait: a band never lowers the limit under a queue.
        pytest.param(
            POLICY,
            STEADY,
            obs(acceptance=0.2, p99=7.5, queue=100),
            "steady",
            64,
            id="band-low-queue",
        ),
        # Without a P99 target the bands set the limit: above high, double the base.
        pytest.param(
            replace(POLICY, p99_target=None),
            [past(m, 64, observation=obs(acceptance=0.9)) for m in (3, 2, 1)],
            obs(acceptance=0.9),
            "band-high",
            128,
            id="bands-only-high",
        ),
        # A proposal beyond max is cut to max; already at max it holds and says why.
        pytest.param(
            replace(POLICY, limit=256),
            STEADY,
            obs(p99=4.0, queue=3),
            "bounds",
            256,
            id="at-max",
        ),
        # maxStep bounds a band jump: 32 -> 128 wanted, 1.5 x 32 = 48 allowed.
        pytest.param(
            replace(POLICY, limit=32, max_step=1.5),
            [
                *(past(m, 32) for m in (5, 4, 3)),
                *(past(m, 32, observation=obs(acceptance=0.99, p99=2.0)) for m in (2, 1)),
            ],
            obs(acceptance=0.99, p99=2.0),
            "band-high",
            48,
            id="max-step",
        ),
        # A change inside the cooldown is held, and the message names what would have happened.
        pytest.param(
            POLICY,
            sustained(obs(p99=12.0), [*STEADY, past(1.6, 44, 64)]),
            obs(p99=12.0),
            "cooldown",
            64,
            id="cooldown",
        ),
        # The bounds clamp ignores the cooldown: the spec says so.
        pytest.param(
            replace(POLICY, limit=300),
            [*STEADY, past(1.6, 256, 300)],
            obs(),
            "bounds",
            256,
            id="bounds-ignore-cooldown",
        ),
    ],
)
def test_rules(
    policy: Policy, history: list[Decision], observation: Observation, rule: str, to: int
) -> None:
    if history is STEADY:
        history = sustained(observation)
    decision = decide(history, observation, policy)
    assert (decision.rule, decision.to_limit) == (rule, to)
    assert decision.from_limit == policy.limit
    assert decision.time == NOW
    assert decision.observation == observation
    assert decision.applied is policy.enabled
    assert decision.message


def test_cooldown_message_says_what_would_happen() -> None:
    history = sustained(obs(p99=12.0), [*STEADY, past(1.6, 44, 64)])
    decision = decide(history, obs(p99=12.0), POLICY)
    assert "p99-breach would set 44" in decision.message
    assert "24s of cooldown left" in decision.message


def test_change_after_cooldown() -> None:
    history = sustained(
        obs(p99=12.0), [past(m, 64) for m in (5, 4.5, 4, 3.5)] + [past(2.5, 44, 64)]
    )
    decision = decide(history, obs(p99=12.0), POLICY)
    assert (decision.rule, decision.to_limit) == ("p99-breach", 44)


def test_recommend_records_but_does_not_apply() -> None:
    policy = replace(POLICY, mode="Recommend")
    decision = decide(sustained(obs(p99=12.0)), obs(p99=12.0), policy)
    assert (decision.rule, decision.from_limit, decision.to_limit) == ("p99-breach", 64, 44)
    assert decision.applied is False
    assert "recommended only" in decision.message


def test_recommendations_honour_the_cooldown() -> None:
    # Recommend mode never moves the limit, but a recommended change still starts a cooldown,
    # so the recommendations are the ones Apply would make.
    policy = replace(POLICY, mode="Recommend")
    history = sustained(obs(p99=12.0))
    first = decide(history, obs(p99=12.0), policy)
    later = decide(
        [*history, first], obs(p99=12.0), replace(policy, now=NOW + timedelta(seconds=30))
    )
    assert later.rule == "cooldown"


@pytest.mark.parametrize(
    ("rates", "expected"),
    [
        ([0.9], "high"),
        ([0.7], "mid"),
        ([0.5], "low"),
        # Entered at 0.85; 0.83 is inside the margin, so it stays high.
        ([0.86, 0.83, 0.84], "high"),
        ([0.86, 0.81], "high"),
        ([0.86, 0.79], "mid"),
        ([0.6, 0.66, 0.69], "low"),
        ([0.6, 0.71], "mid"),
        ([0.7, 0.84, 0.849], "mid"),
        ([0.9, 0.5], "low"),
    ],
)
def test_band_hysteresis(rates: list[float], expected: str) -> None:
    assert band(rates, 0.85, 0.65) == expected


def test_smoothing_skips_missing_and_weighs_the_newest() -> None:
    assert smoothed([None, None]) is None
    assert smoothed([0.5, None]) == 0.5
    value = smoothed([0.5, 0.5, 0.5, 1.0])
    assert value is not None
    assert 0.6 < value < 0.9


def run(
    policy: Policy,
    samples: list[Observation],
    interval: timedelta = timedelta(seconds=30),
) -> list[Decision]:
    """Decisions over a sequence of observations, each applied, history bounded like status."""
    history: list[Decision] = []
    limit = policy.limit
    for index, observation in enumerate(samples):
        decision = decide(
            history[-32:], observation, replace(policy, limit=limit, now=NOW + index * interval)
        )
        history.append(decision)
        if decision.applied:
            limit = decision.to_limit
    return history


def changes(decisions: list[Decision]) -> int:
    return sum(d.to_limit != d.from_limit for d in decisions)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_flapping_on_a_noisy_steady_signal(seed: int) -> None:
    # Acceptance oscillating around the 0.85 edge and a P99 wandering around 85% of target,
    # two hours of it: after the first decision starts from the band, nothing should move.
    rng = random.Random(seed)
    samples = [
        obs(
            acceptance=0.85 + rng.gauss(0, 0.03),
            p99=8.0 * (0.85 + rng.gauss(0, 0.05)),
            queue=max(0.0, rng.gauss(0.5, 0.5)),
        )
        for _ in range(240)
    ]
    decisions = run(POLICY, samples)
    assert changes(decisions) <= 2, [
        (d.rule, d.to_limit) for d in decisions if d.to_limit != d.from_limit
    ]


def test_the_bands_alone_would_flap_on_the_same_signal() -> None:
    # The same kind of signal under the bands without hysteresis or smoothing changes often:
    # what the test above protects against.
    rng = random.Random(1)
    rates = [0.85 + rng.gauss(0, 0.03) for _ in range(240)]
    raw = ["high" if r >= 0.85 else "mid" for r in rates]
    assert sum(a != b for a, b in itertools.pairwise(raw)) > 50


def test_cooldown_is_respected_over_a_run() -> None:
    # P99 far over target with nothing waiting, every interval for an hour: the limit shrinks,
    # but never twice within the cooldown.
    decisions = run(POLICY, [obs(p99=30.0) for _ in range(120)])
    moved = [d.time for d in decisions if d.to_limit != d.from_limit]
    assert len(moved) >= 2
    assert all(b - a >= POLICY.cooldown for a, b in itertools.pairwise(moved))


@pytest.mark.parametrize("p99", [30.0, 0.5])
def test_bounds_are_respected_over_a_run(p99: float) -> None:
    # Pushed down for an hour (breach) or up (room and a long queue): never past min or max,
    # and no step larger than maxStep.
    policy = replace(POLICY, max_step=1.5)
    decisions = run(policy, [obs(p99=p99, queue=0 if p99 > 8 else 500) for _ in range(120)])
    for d in decisions:
        assert policy.min_limit <= d.to_limit <= policy.max_limit
        assert d.to_limit <= d.from_limit * 1.5
        assert d.to_limit >= d.from_limit / 1.5
    assert decisions[-1].to_limit in (policy.min_limit, policy.max_limit)


def test_missing_metrics_hold_over_a_run() -> None:
    decisions = run(POLICY, [obs(p99=None) for _ in range(20)])
    assert {d.rule for d in decisions} == {"hold-missing-metrics"}
    assert {d.to_limit for d in decisions} == {64}


def test_from_spec_defaults() -> None:
    autoscaling = AutoscalingSpec(p99_target="8s")
    live = Policy.from_spec(autoscaling, BatchingSpec(min=8, max=256, initial=64), 64, NOW)
    assert (live.cooldown, live.base, live.p99_target) == (timedelta(minutes=2), 64, 8.0)
    restart = Policy.from_spec(autoscaling, BatchingSpec(mode="Restart"), 64, NOW)
    assert (restart.cooldown, restart.base, restart.p99_target) == (
        timedelta(minutes=10),
        256,
        8.0,
    )
    explicit = Policy.from_spec(AutoscalingSpec(cooldown="45s"), BatchingSpec(), 64, NOW)
    assert (explicit.cooldown, explicit.p99_target) == (timedelta(seconds=45), None)


def window(rates: list[float | None]) -> list[Decision]:
    return [past(len(rates) - i, 64, observation=obs(acceptance=r)) for i, r in enumerate(rates)]


@pytest.mark.parametrize(
    ("rates", "healthy"),
    [
        ([0.5] * 10, False),
        ([0.5] * 9 + [0.7], True),  # the newest sample recovered
        ([0.7] * 9 + [0.5], True),  # one bad sample is not sustained
        ([0.9] * 20 + [0.5] * 10, False),  # the window is the last ten
        ([0.5, 0.5], True),  # too few to judge
        ([None] * 8 + [0.5, 0.5], True),
        ([0.5, None, 0.5, None, 0.5], False),
    ],
)
def test_speculation_healthy(rates: list[float | None], healthy: bool) -> None:
    assert speculation_healthy(window(rates)) is healthy
