"""The autoscaling policy as tables: one row per rule, then the properties that matter over
many decisions (no flapping on a noisy steady signal, cooldown, bounds, Recommend mode)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from specfleet.api.common import Duration
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
    in_flight: float | None = None,
    kv: float | None = None,
    preemptions: float | None = None,
    ttft: float | None = None,
    itl: float | None = None,
) -> Observation:
    return Observation(
        time=time,
        acceptance_rate=acceptance,
        p99_seconds=p99,
        ttft_p99_seconds=ttft,
        itl_p99_seconds=itl,
        queue_depth=queue,
        throughput=throughput,
        in_flight=in_flight,
        kv_cache_usage=kv,
        preemptions=preemptions,
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


def after_kv_shrink(minutes_ago: float) -> list[Decision]:
    """Three minutes at 64 while vLLM preempts, the shrink to 44 `minutes_ago`, then a
    decision every 30 seconds at 44 while it still counts preemptions in the window."""
    preempting = obs(preemptions=6.0)
    before = [past(minutes_ago + 0.5 * (6 - i), 64, observation=preempting) for i in range(6)]
    shrink = past(minutes_ago, 64, 44, preempting).model_copy(update={"rule": "kv-preemption"})
    steps = int(minutes_ago / 0.5)
    later = [past(minutes_ago - 0.5 * i, 44, observation=preempting) for i in range(1, steps)]
    return [*before, shrink, *later]


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
        # ... not below what runs, with headroom: 40 in flight keep 50 (40 / 0.8).
        pytest.param(
            POLICY, STEADY, obs(p99=12.0, in_flight=40.0), "p99-breach", 50, id="breach-in-flight"
        ),
        # ... and not at all when what runs needs the limit: 56 in flight want 70.
        pytest.param(
            POLICY, STEADY, obs(p99=12.0, in_flight=56.0), "p99-breach-floor", 64, id="breach-busy"
        ),
        # Breach while the queue grows (5 waiting, up from 3 a decision ago): shrinking would
        # lengthen it; grow carefully.
        pytest.param(
            POLICY,
            sustained(obs(p99=12.0, queue=3)),
            obs(p99=12.0, queue=5),
            "p99-breach-queueing",
            80,
            id="breach-queue",
        ),
        # More waiting than running: grow by maxStep.
        pytest.param(
            POLICY,
            sustained(obs(p99=12.0, queue=90)),
            obs(p99=12.0, queue=100),
            "p99-breach-queueing",
            128,
            id="overload",
        ),
        # Breach while requests wait, but the queue has stopped growing: the batch drains it
        # at this limit, and a larger one would only move the waiting into slower steps.
        pytest.param(
            POLICY,
            sustained(obs(p99=12.0, queue=6)),
            obs(p99=12.0, queue=5),
            "p99-breach-draining",
            64,
            id="breach-queue-draining",
        ),
        # 0.05 more on average, 30s after the last decision, is 0.5 more waiting now than a
        # window ago: less than one request, flat.
        pytest.param(
            POLICY,
            sustained(obs(p99=12.0, queue=5)),
            obs(p99=12.0, queue=5.05),
            "p99-breach-draining",
            64,
            id="breach-queue-flat",
        ),
        # With 30s between decisions, 0.5 more on average is 5 more waiting now than a window
        # ago: growth. With the last decision a whole window back the averages no longer
        # overlap, and 0.5 more is just that: flat.
        pytest.param(
            POLICY,
            sustained(obs(p99=12.0, queue=5)),
            obs(p99=12.0, queue=5.5),
            "p99-breach-queueing",
            80,
            id="breach-queue-grows",
        ),
        pytest.param(
            POLICY,
            [
                *(past(m, 64) for m in (9, 8, 7, 6)),
                past(5, 64, observation=obs(p99=12.0, queue=5)),
            ],
            obs(p99=12.0, queue=5.5),
            "p99-breach-draining",
            64,
            id="breach-queue-flat-over-a-window",
        ),
        # The newest window shows a queue that the average does not yet: no shrink at a
        # limit where requests wait.
        pytest.param(
            POLICY,
            sustained(obs(p99=12.0)),
            obs(p99=12.0, queue=2),
            "p99-breach-floor",
            64,
            id="breach-newest-queue-floor",
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
        # Low band under a P99 target with nothing waiting: the band halves the base.
        pytest.param(POLICY, STEADY, obs(acceptance=0.2), "band-low", 32, id="band-low"),
        # ... but not below what runs, with headroom: 30 in flight keep 38 (30 / 0.8).
        pytest.param(
            POLICY,
            STEADY,
            obs(acceptance=0.2, in_flight=30.0),
            "band-low",
            38,
            id="band-low-in-flight",
        ),
        # ... and not at all when what runs needs the limit it has: 60 in flight want 75.
        pytest.param(
            POLICY, STEADY, obs(acceptance=0.2, in_flight=60.0), "steady", 64, id="band-low-busy"
        ),
        # A few in flight leave the band's value as it is.
        pytest.param(
            POLICY, STEADY, obs(acceptance=0.2, in_flight=8.0), "band-low", 32, id="band-low-idle"
        ),
        # Without a P99 target the low band halves the base.
        pytest.param(
            replace(POLICY, p99_target=None),
            STEADY,
            obs(acceptance=0.2, p99=None, queue=None),
            "band-low",
            32,
            id="bands-only-low",
        ),
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
        # vLLM preempts: room under the target and a queue would grow the limit (80), but a
        # larger batch would only evict more; it shrinks instead.
        pytest.param(
            POLICY,
            STEADY,
            obs(p99=4.0, queue=3, preemptions=12.0),
            "kv-preemption",
            44,
            id="preempting-no-growth",
        ),
        # ... past the floor of what runs (56 in flight would keep 64): what is in flight
        # counts the evicted.
        pytest.param(
            POLICY,
            STEADY,
            obs(p99=12.0, in_flight=56.0, preemptions=12.0),
            "kv-preemption",
            44,
            id="preempting-past-the-running-floor",
        ),
        # ... and at once to what the cache holds when that is less than 0.7 x 64: 40 in
        # flight fill 96% of it, so it holds 33 with headroom (40 x 0.8 / 0.96).
        pytest.param(
            POLICY,
            STEADY,
            obs(in_flight=40.0, kv=0.96, preemptions=5.0),
            "kv-preemption",
            33,
            id="preempting-to-what-the-cache-holds",
        ),
        # A larger shrink from another rule stands (the low band halves the base).
        pytest.param(
            POLICY,
            STEADY,
            obs(acceptance=0.2, preemptions=5.0),
            "band-low",
            32,
            id="preempting-band-low",
        ),
        # Without a P99 target too: the high band would double the base.
        pytest.param(
            replace(POLICY, p99_target=None),
            [past(m, 64, observation=obs(acceptance=0.9)) for m in (3, 2, 1)],
            obs(acceptance=0.9, preemptions=4.0),
            "kv-preemption",
            44,
            id="preempting-bands-only",
        ),
        # Within a window of the shrink to 44 (past the cooldown) the window still counts
        # the preemptions of 64: hold, neither shrink again (30) nor grow (55).
        pytest.param(
            replace(POLICY, limit=44),
            after_kv_shrink(3),
            obs(preemptions=3.0),
            "kv-preemption-settling",
            44,
            id="preempting-settling",
        ),
        pytest.param(
            replace(POLICY, limit=44),
            after_kv_shrink(3),
            obs(p99=4.0, queue=3, preemptions=3.0),
            "kv-preemption-settling",
            44,
            id="preempting-settling-no-growth",
        ),
        # ... while another rule may shrink: the batch itself is too slow.
        pytest.param(
            replace(POLICY, limit=44),
            after_kv_shrink(3),
            obs(p99=12.0, preemptions=3.0),
            "p99-breach",
            30,
            id="preempting-settling-breach",
        ),
        # A window after it, still preempting: 44 is too many as well.
        pytest.param(
            replace(POLICY, limit=44),
            after_kv_shrink(6),
            obs(preemptions=3.0),
            "kv-preemption",
            30,
            id="preempting-after-settling",
        ),
        # No preemptions, but 60 in flight fill 70% of the cache: it holds 68 with headroom
        # (60 x 0.8 / 0.7), so the careful increase (80) stops there ...
        pytest.param(
            POLICY,
            STEADY,
            obs(p99=4.0, queue=3, in_flight=60.0, kv=0.7, preemptions=0.0),
            "kv-full",
            68,
            id="kv-full-caps-growth",
        ),
        # ... and does not happen when 64 already fill 90% (it holds 56).
        pytest.param(
            POLICY,
            STEADY,
            obs(p99=4.0, queue=3, in_flight=64.0, kv=0.9, preemptions=0.0),
            "kv-full",
            64,
            id="kv-full-holds",
        ),
        # A band's jump is capped the same way: 50 in flight at 40% hold 100, not 128.
        pytest.param(
            POLICY,
            STEADY,
            obs(acceptance=0.99, p99=4.0, in_flight=50.0, kv=0.4),
            "kv-full",
            100,
            id="kv-full-caps-a-band",
        ),
        # The cache little used and nothing preempted: the KV cache is not the constraint.
        pytest.param(
            POLICY,
            STEADY,
            obs(p99=4.0, queue=3, in_flight=60.0, kv=0.3, preemptions=0.0),
            "p99-headroom",
            80,
            id="kv-low",
        ),
        # Without vLLM's KV metrics (an older setup) the rules that need them do not fire,
        # and nothing holds for their want.
        pytest.param(
            POLICY,
            STEADY,
            obs(p99=4.0, queue=3, in_flight=60.0),
            "p99-headroom",
            80,
            id="kv-unknown",
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


def test_observations_recorded_without_kv_metrics_replay_to_the_same_decisions() -> None:
    # Status written before vLLM's KV cache usage and preemptions were read has neither key:
    # it parses with both unset, and decides as an observation that never had them.
    recorded = {"acceptanceRate": 0.75, "p99Seconds": 4.0, "queueDepth": 3.0, "inFlight": 60.0}
    old = Observation.model_validate(recorded)
    assert (old.kv_cache_usage, old.preemptions) == (None, None)
    history = sustained(old)
    replayed = decide(history, old, POLICY)
    assert (replayed.rule, replayed.to_limit) == ("p99-headroom", 80)
    assert replayed == decide(
        history, obs(p99=4.0, queue=3.0, throughput=None, in_flight=60.0), POLICY
    )


def test_kv_messages_say_what_the_cache_shows_and_what_was_wanted() -> None:
    held = decide(STEADY, obs(p99=4.0, queue=3, in_flight=64.0, kv=0.9), POLICY)
    assert "KV cache 90% full with 64 in flight: it holds 56 with headroom" in held.message
    assert "(p99-headroom would set 80)" in held.message, held.message
    preempting = decide(STEADY, obs(p99=4.0, queue=3, preemptions=12.0), POLICY)
    assert "12 preemptions in the window, KV cache usage n/a" in preempting.message
    assert "shrinking to 44" in preempting.message, preempting.message
    settling = decide(after_kv_shrink(3), obs(preemptions=3.0), replace(POLICY, limit=44))
    assert "the shrink from 64 to 44 was 180s ago" in settling.message, settling.message


def test_the_message_gives_the_newest_window_and_the_smoothed_value_beside_it() -> None:
    # The window's own values are what `kubectl get im` and the review table show; the rules
    # follow the smoothed ones. The message names both, so neither reads as the other.
    history = sustained(obs(acceptance=0.9, queue=0.0))
    decision = decide(history, obs(acceptance=0.5, p99=6.0, queue=3.0), POLICY)
    high = smoothed([d.observation.acceptance_rate for d in history] + [0.5])
    queue = smoothed([d.observation.queue_depth for d in history] + [3.0])
    assert high is not None and queue is not None and high > 0.5 and queue < 3.0
    assert f"acceptance 0.5 (smoothed {high:.3g}, " in decision.message, decision.message
    assert "P99 6.00s (smoothed " in decision.message, decision.message
    assert f"queue 3.0 (smoothed {queue:.1f})" in decision.message, decision.message


def test_without_a_draft_the_message_has_no_acceptance_to_give() -> None:
    policy = replace(POLICY, speculative=False, p99_target=None)
    decision = decide(STEADY, obs(acceptance=None), policy)
    assert "acceptance n/a" in decision.message, decision.message
    assert "smoothed" not in decision.message, decision.message


def test_cooldown_message_says_what_would_happen() -> None:
    history = sustained(obs(p99=12.0), [*STEADY, past(1.6, 44, 64)])
    decision = decide(history, obs(p99=12.0), POLICY)
    assert "p99-breach would set 44" in decision.message
    assert "24s of cooldown left" in decision.message


def after_shrink(
    p99s: list[float], minutes_ago: float = 6.0, rule: str = "p99-breach-settling"
) -> list[Decision]:
    """Four minutes at 64 with P99 at 12s, the breach shrinking it to 44 `minutes_ago`, then a
    decision every 30 seconds at 44 observing the P99s (the last one is the newest, passed to
    `decide`), with `rule`."""
    before = [past(minutes_ago + 0.5 * (8 - i), 64, observation=obs(p99=12.0)) for i in range(8)]
    shrink = past(minutes_ago, 64, 44, obs(p99=12.0)).model_copy(update={"rule": "p99-breach"})
    later = [
        past(minutes_ago - 0.5 * (i + 1), 44, observation=obs(p99=p99)).model_copy(
            update={"rule": rule}
        )
        for i, p99 in enumerate(p99s[:-1])
    ]
    return [*before, shrink, *later]


SHRUNK = replace(POLICY, limit=44)


@pytest.mark.parametrize(
    ("history", "newest", "rule", "to"),
    [
        # Within the cooldown of the shrink the cooldown holds (the breach would shrink).
        pytest.param(after_shrink([12.0] * 3, 1.5), 12.0, "cooldown", 44, id="cooldown"),
        # Past the cooldown but not a window: the window's tail is still the larger batch's.
        pytest.param(after_shrink([12.0] * 6, 3), 12.0, "p99-breach-settling", 44, id="settling"),
        # A window later, still 12s: the batch is not what makes it slow; hold.
        pytest.param(after_shrink([12.0] * 12), 12.0, "p99-breach-no-gain", 44, id="no-gain"),
        # 11s is under 12s but not by a tenth: no gain either.
        pytest.param(after_shrink([11.0] * 12), 11.0, "p99-breach-no-gain", 44, id="small-gain"),
        # 10s: the shrink paid (12 -> 10) but the target is still missed; shrink again.
        pytest.param(after_shrink([10.0] * 12), 10.0, "p99-breach", 30, id="gain"),
        # The newest window alone shows the gain, the smoothed P99 not yet: no gain.
        pytest.param(
            after_shrink([12.0] * 11 + [10.0]),
            10.0,
            "p99-breach-no-gain",
            44,
            id="gain-newest-only",
        ),
        # A verdict, once given, stands for the breach: a later dip does not undo it.
        pytest.param(
            after_shrink([12.0] * 11 + [9.0] * 4, 8, rule="p99-breach-no-gain"),
            9.0,
            "p99-breach-no-gain",
            44,
            id="verdict-stands",
        ),
        # P99 met the target in between: a new breach, which may shrink again.
        pytest.param(after_shrink([5.0] * 4 + [12.0] * 8), 12.0, "p99-breach", 30, id="new-breach"),
        # The verdict stands once the shrink has left the history (32 decisions at 44, the
        # breach throughout) ...
        pytest.param(
            [
                past(16 - i * 0.5, 44, observation=obs(p99=12.0)).model_copy(
                    update={"rule": "p99-breach-no-gain"}
                )
                for i in range(32)
            ],
            12.0,
            "p99-breach-no-gain",
            44,
            id="verdict-outlives-the-shrink",
        ),
        # ... but a breach with no shrink and no verdict in the history may shrink.
        pytest.param(
            [past(16 - i * 0.5, 44, observation=obs(p99=12.0)) for i in range(32)],
            12.0,
            "p99-breach",
            30,
            id="no-verdict",
        ),
    ],
)
def test_a_shrink_must_lower_p99_before_the_next(
    history: list[Decision], newest: float, rule: str, to: int
) -> None:
    decision = decide(history, obs(p99=newest), SHRUNK)
    assert (decision.rule, decision.to_limit) == (rule, to), decision.message


TOKENS = replace(POLICY, p99_target=None, ttft_target=0.5, itl_target=0.05)
"""Interactive targets: the first token within 500ms, the next ones 50ms apart, at P99."""
MET = obs(p99=None, ttft=0.3, itl=0.03)


def tokens(
    ttft: float = 0.3, itl: float = 0.03, queue: float = 0.0, in_flight: float | None = None
) -> Observation:
    return obs(p99=None, ttft=ttft, itl=itl, queue=queue, in_flight=in_flight)


@pytest.mark.parametrize(
    ("policy", "history", "observation", "rule", "to"),
    [
        pytest.param(TOKENS, STEADY, MET, "steady", 64, id="met"),
        pytest.param(TOKENS, STEADY, obs(p99=None, itl=0.03), "hold-missing-metrics", 64),
        pytest.param(TOKENS, STEADY, obs(p99=None, ttft=0.3), "hold-missing-metrics", 64),
        # Time between tokens over target with nothing queued: every step is slow; shrink.
        pytest.param(TOKENS, STEADY, tokens(itl=0.08), "itl-breach", 44, id="itl"),
        # ... not below what runs: 56 in flight want 70.
        pytest.param(
            TOKENS, STEADY, tokens(itl=0.08, in_flight=56.0), "itl-breach-floor", 64, id="itl-busy"
        ),
        # ... and while requests queue, neither way: more running slows every step, fewer
        # lengthen the queue. The load needs replicas.
        pytest.param(
            TOKENS,
            sustained(tokens(itl=0.08, queue=3)),
            tokens(itl=0.08, queue=5),
            "itl-breach-saturated",
            64,
            id="itl-queue",
        ),
        # First token over target while the queue grows: the limit binds; grow.
        pytest.param(
            TOKENS,
            sustained(tokens(ttft=0.9, queue=3)),
            tokens(ttft=0.9, queue=5),
            "ttft-breach-queueing",
            80,
            id="ttft-queue",
        ),
        pytest.param(
            TOKENS,
            sustained(tokens(ttft=0.9, queue=6)),
            tokens(ttft=0.9, queue=5),
            "ttft-breach-draining",
            64,
            id="ttft-queue-draining",
        ),
        # ... with nothing queued: the prompt waits for a step of the whole batch; shrink.
        pytest.param(TOKENS, STEADY, tokens(ttft=0.9), "ttft-breach", 44, id="ttft"),
        # Both over target: the time between tokens names it, and a queue does not grow the
        # batch it slows.
        pytest.param(
            TOKENS,
            sustained(tokens(ttft=0.9, itl=0.08, queue=3)),
            tokens(ttft=0.9, itl=0.08, queue=5),
            "itl-breach-saturated",
            64,
            id="both-queue",
        ),
        # Room under both and a queue: grow carefully.
        pytest.param(
            TOKENS,
            sustained(tokens(queue=3)),
            tokens(queue=5),
            "p99-headroom",
            80,
            id="headroom",
        ),
        # Room under one but not the other: no growth.
        pytest.param(
            TOKENS,
            sustained(tokens(ttft=0.45, queue=3)),
            tokens(ttft=0.45, queue=5),
            "steady",
            64,
            id="no-headroom",
        ),
        # With the end-to-end target too, each target is judged: its breach alone shrinks.
        pytest.param(
            replace(TOKENS, p99_target=8.0),
            STEADY,
            obs(p99=12.0, ttft=0.3, itl=0.03),
            "p99-breach",
            44,
            id="end-to-end-too",
        ),
    ],
)
def test_token_latency_rules(
    policy: Policy, history: list[Decision], observation: Observation, rule: str, to: int
) -> None:
    decision = decide(history, observation, policy)
    assert (decision.rule, decision.to_limit) == (rule, to), decision.message


def test_a_shrink_that_does_not_lower_the_time_between_tokens_is_not_repeated() -> None:
    slow = tokens(itl=0.08)
    # Three minutes at 64 over target, the shrink to 44 six minutes ago, then a decision every
    # 30 seconds at 44 with the time between tokens where it was.
    before = [past(9 - 0.5 * i, 64, observation=slow) for i in range(6)]
    shrink = past(6, 64, 44, slow).model_copy(update={"rule": "itl-breach"})
    history = [*before, shrink, *(past(6 - 0.5 * i, 44, observation=slow) for i in range(1, 12))]
    decision = decide(history, slow, replace(TOKENS, limit=44))
    assert decision.rule == "itl-breach-no-gain", decision.message
    assert "ITL P99 not under 90% of the 80ms before the shrink from 64 to 44" in decision.message
    # The end-to-end verdict does not stand for the time between tokens, nor the other way.
    p99_verdict = [d.model_copy(update={"rule": "p99-breach-no-gain"}) for d in history]
    assert decide(p99_verdict, slow, replace(TOKENS, limit=44)).rule == "itl-breach-no-gain"


def test_token_latencies_read_in_milliseconds() -> None:
    decision = decide(STEADY, tokens(ttft=0.9, itl=0.0214), TOKENS)
    assert "ITL P99 21ms (smoothed" in decision.message
    assert "vs target 50ms, TTFT P99 900ms (smoothed" in decision.message
    assert "vs target 500ms, queue 0.0" in decision.message


def test_the_verdict_names_the_shrink_and_the_p99_before_it() -> None:
    decision = decide(after_shrink([12.0] * 12), obs(p99=12.0), SHRUNK)
    assert "not under 90% of the 12.00s before the shrink from 64 to 44" in decision.message


def test_a_grow_ends_the_shrink_verdict() -> None:
    # After the shrink to 44 the limit grew back to 64 (say a queue formed): a breach later
    # is judged afresh.
    history = [
        *after_shrink([12.0] * 6),
        past(0.5, 44, 64, obs(p99=12.0)).model_copy(update={"rule": "p99-breach-queueing"}),
    ]
    decision = decide(history, obs(p99=12.0), replace(POLICY, now=NOW + timedelta(minutes=3)))
    assert (decision.rule, decision.to_limit) == ("p99-breach", 44)


def test_recommended_shrinks_are_not_judged() -> None:
    # Recommend mode never shrank the batch, so P99 could not fall: the recommendation to
    # shrink stands (as Apply would have shrunk, and then judged what it saw).
    history = [d.model_copy(update={"applied": False}) for d in after_shrink([12.0] * 6)]
    history = [d.model_copy(update={"from_limit": 64, "to_limit": 64}) for d in history]
    history[len(STEADY)] = history[len(STEADY)].model_copy(update={"to_limit": 44})
    decision = decide(history, obs(p99=12.0), replace(POLICY, mode="Recommend"))
    assert (decision.rule, decision.to_limit, decision.applied) == ("p99-breach", 44, False)


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
    samples: list[Observation] | Callable[[int], Observation],
    count: int = 0,
    interval: timedelta = timedelta(seconds=30),
) -> list[Decision]:
    """Decisions over a sequence of observations, each applied, history bounded like status.
    `samples` is either the observations, or what is observed at a limit (`count` times): a
    closed loop."""
    history: list[Decision] = []
    limit = policy.limit
    for index in range(count if callable(samples) else len(samples)):
        observation = samples(limit) if callable(samples) else samples[index]
        decision = decide(
            history[-32:], observation, replace(policy, limit=limit, now=NOW + index * interval)
        )
        history.append(decision)
        if decision.applied:
            limit = decision.to_limit
    return history


def slow_batch(limit: int) -> Observation:
    """A batch that is itself too slow: nothing waits and P99 scales with the limit, over the
    8s target down to the minimum limit (10s at 8)."""
    return obs(p99=10.0 * limit / 8, queue=0)


def changes(decisions: list[Decision]) -> int:
    return sum(d.to_limit != d.from_limit for d in decisions)


def test_a_breach_the_batch_does_not_cause_shrinks_once() -> None:
    # P99 far over target with nothing waiting, whatever the limit, for an hour: one shrink,
    # then no more (the old policy shrank every cooldown down to batching.min, into a queue).
    decisions = run(POLICY, [obs(p99=30.0) for _ in range(120)])
    assert changes(decisions) == 1
    assert decisions[0].rule == "p99-breach"
    # Held by the verdict long after the shrink has left the 32 decisions of history.
    assert decisions[-1].rule == "p99-breach-no-gain"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_ratchet_on_a_noisy_breach_the_batch_does_not_cause(seed: int) -> None:
    # Five healthy minutes, then P99 wandering around 130% of target (5% noise) whatever the
    # limit, two hours of it: noise must not pass for the gain of a shrink.
    rng = random.Random(seed)
    healthy = [obs(p99=7.0) for _ in range(10)]
    breach = [obs(p99=8.0 * (1.3 + rng.gauss(0, 0.05))) for _ in range(240)]
    decisions = run(POLICY, healthy + breach)
    assert changes(decisions) == 1, [
        (d.rule, d.to_limit) for d in decisions if d.to_limit != d.from_limit
    ]


def test_a_draining_queue_stops_the_growth() -> None:
    # The load needs 100 running: below that the queue grows by a tenth of the shortfall per
    # interval, at or above it the queue drains by 2 per interval; P99 breaches while any
    # request waits. Growth stops at the first limit that drains the queue.
    queue = 0.0

    def observe(limit: int) -> Observation:
        nonlocal queue
        queue = queue + (100 - limit) / 10 if limit < 100 else max(0.0, queue - 2)
        return obs(p99=12.0 if queue >= 1 else 5.0, queue=queue)

    decisions = run(POLICY, observe, 120)
    limits = [d.to_limit for d in decisions]
    first_enough = next(limit for limit in limits if limit >= 100)
    assert max(limits) == first_enough
    assert limits[-1] == first_enough
    assert {d.rule for d in decisions} >= {"p99-breach-queueing", "p99-breach-draining"}


def test_a_replica_its_kv_cache_bounds_settles_under_what_the_cache_holds() -> None:
    # The load wants 100 running, but the KV cache holds 50 of its sequences: past 50 vLLM
    # preempts (two per sequence too many in a window), and the rest waits at the gate, a
    # queue that grows, with P99 over target, for an hour. The P99 rules alone grow out of
    # that queue (to 80, then 100), which only evicts more; with the KV cache's rules the
    # limit comes down under 50 once and stays, however the queue grows.
    queue = 0.0

    def observe(limit: int) -> Observation:
        nonlocal queue
        inside = min(limit, 100)
        queue += (100 - inside) / 10
        return obs(
            p99=12.0,
            queue=queue,
            in_flight=inside,
            kv=min(1.0, inside / 50),
            preemptions=2.0 * max(0, inside - 50),
        )

    decisions = run(POLICY, observe, 120)
    moved = [(d.rule, d.to_limit) for d in decisions if d.to_limit != d.from_limit]
    assert moved == [("kv-preemption", 44)]
    assert {d.rule for d in decisions[1:]} == {"kv-full"}


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
    # P99 far over target with nothing waiting, and falling with the batch, for an hour: the
    # limit shrinks, but never twice within the cooldown.
    decisions = run(POLICY, slow_batch, 120)
    moved = [d.time for d in decisions if d.to_limit != d.from_limit]
    assert len(moved) >= 2
    assert all(b - a >= POLICY.cooldown for a, b in itertools.pairwise(moved))


@pytest.mark.parametrize("pushed", ["down", "up"])
def test_bounds_are_respected_over_a_run(pushed: str) -> None:
    # Pushed down for an hour (a breach that shrinking relieves) or up (room and a long
    # queue): never past min or max, and no step larger than maxStep.
    policy = replace(POLICY, max_step=1.5)
    if pushed == "down":
        decisions = run(policy, slow_batch, 120)
    else:
        decisions = run(policy, [obs(p99=0.5, queue=500) for _ in range(120)])
    for d in decisions:
        assert policy.min_limit <= d.to_limit <= policy.max_limit
        assert d.to_limit <= d.from_limit * 1.5
        assert d.to_limit >= d.from_limit / 1.5
    assert decisions[-1].to_limit in (policy.min_limit, policy.max_limit)


def test_missing_metrics_hold_over_a_run() -> None:
    decisions = run(POLICY, [obs(p99=None) for _ in range(20)])
    assert {d.rule for d in decisions} == {"hold-missing-metrics"}
    assert {d.to_limit for d in decisions} == {64}


def test_from_spec_reads_every_latency_target() -> None:
    autoscaling = AutoscalingSpec(
        p99_target=Duration("8s"),
        ttft_p99_target=Duration("500ms"),
        itl_p99_target=Duration("50ms"),
    )
    policy = Policy.from_spec(autoscaling, BatchingSpec(), 64, NOW)
    assert (policy.p99_target, policy.ttft_target, policy.itl_target) == (8.0, 0.5, 0.05)
    assert [t.kind for t in policy.targets] == ["itl", "ttft", "p99"]


def test_from_spec_defaults() -> None:
    autoscaling = AutoscalingSpec(p99_target=Duration("8s"))
    live = Policy.from_spec(autoscaling, BatchingSpec(min=8, max=256, initial=64), 64, NOW)
    assert (live.cooldown, live.base, live.p99_target) == (timedelta(minutes=2), 64, 8.0)
    restart = Policy.from_spec(autoscaling, BatchingSpec(mode="Restart"), 64, NOW)
    assert (restart.cooldown, restart.base, restart.p99_target) == (
        timedelta(minutes=10),
        256,
        8.0,
    )
    explicit = Policy.from_spec(
        AutoscalingSpec(cooldown=Duration("45s"), window=Duration("2m")), BatchingSpec(), 64, NOW
    )
    assert (explicit.cooldown, explicit.p99_target) == (timedelta(seconds=45), None)
    # The window the queue's growth and a shrink's settling are measured against.
    assert (live.window, explicit.window) == (timedelta(minutes=5), timedelta(minutes=2))


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
