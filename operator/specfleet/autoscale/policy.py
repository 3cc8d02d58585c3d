"""The autoscaling policy: from recent decisions and one window's observation, the next batch
limit of one InferenceModel, and the rule that chose it. Whether a latency target is within
the batch limit's reach at all is `specfleet.autoscale.targets`' to say.

Pure and deterministic: no I/O, no clock (`Policy.now` is an input), no randomness, so a
recorded history replays to the same decisions (`specfleet review --replay`) and tests are
tables. Called by `specfleet.autoscale.step`, the one step that the operator takes on every
`autoscaling.interval` and that `specfleet review` and `bench/autoscale.py` take too.

The rules, in the order they are tried (the first that fires names the decision):

1. `disabled`: autoscaling.enabled is false; the limit stays.
2. `hold-missing-metrics`: a needed input is missing (acceptance with a draft; each targeted
   P99 and the queue depth with any latency target). `hold-stale-metrics`: the observation
   is older than two intervals.
3. `bounds`: the limit lies outside batching.min..max (the spec moved); it is clamped now,
   whatever the cooldown, because the spec says so.
4. With latency targets, they bound the limit. Three P99s may be targeted: the inter-token
   latency (`autoscaling.itlP99Target`, vLLM's: one decode step), the time to first token
   (`ttftP99Target`, the gate's, its queue included) and the end-to-end latency
   (`p99Target`, the gate's). Each rule below is named after the target it acts for:
   `itl-`, `ttft-` or `p99-` (end to end); when several are breached, the first of that
   order names it, the one the batch moves most directly. The P99s and the queue depth are
   smoothed like acceptance, and a rule fires only when the smoothed and the newest value
   agree (so neither one noisy window nor the average's lag moves the limit). The physics
   behind them (`specfleet.perf`): a step's fixed part (the weights, the engine) is shared by
   the whole batch and each sequence adds a little, so a larger batch raises throughput and
   slows every step only a little at a time. The time between tokens is a step, so it grows
   with the batch and with nothing else the limit moves. The first token waits for the
   gate's queue, then for a step that prefills its prompt beside the batch's decoding, so it
   grows with the queue and, less, with the batch. The end-to-end latency adds every step
   of the answer, so it grows with the answer's length, which no limit shortens. While
   requests queue, a smaller limit only cuts throughput and lengthens the queue; once none
   queue, a larger limit only moves load into slower steps. The limit should sit just above
   where requests stop queueing.
   - `p99-breach-queueing`, `ttft-breach-queueing`: the end-to-end or time-to-first-token
     P99 over target while requests wait at the gate and the queue grows (more waited over
     the last interval than over one a window earlier): the limit binds, and a smaller batch
     has less throughput and would lengthen the queue (the classic collapse: less
     throughput, a longer queue, another breach, a smaller batch). So the limit grows: by the
     careful step, by maxStep when more wait than run.
   - `p99-breach-draining`, `ttft-breach-draining`: ... but a queue that no longer grows is
     draining at this limit; a larger batch would only move the waiting into slower steps,
     so the limit holds.
   - `itl-breach-saturated`: the inter-token P99 over target while requests wait: a larger
     batch slows every step further and a smaller one only lengthens the queue, so the limit
     holds; the load needs more replicas (`specfleet.autoscale.targets` says so in status).
   - `itl-breach`, `ttft-breach`, `p99-breach`: a P99 over target with nothing waiting: the
     batch itself is slow (every step grows with the batch), so the limit shrinks
     multiplicatively (`DECREASE`) ...
   - `*-breach-floor`: ... but not below a limit at which requests queued within the
     history (or the current one, when either queue value shows waiting), nor below what the
     load keeps running (the window's average in flight over `HEADROOM`): there a smaller
     batch only moves the latency into the queue.
   - `*-breach-settling`: ... and after a shrink in the same breach, not again until a
     window has passed (the cooldown holds before that): until then the P99's tail still
     counts requests the larger batch served.
   - `*-breach-no-gain`: ... then, unless the P99 (smoothed and newest) has fallen under
     `SHRINK_GAIN` of the smoothed P99 at the shrink, not again for the rest of the breach:
     a shrink that did not lower it shows the batch is not what makes it slow (long outputs
     at low acceptance are slow at any batch, a long prompt's prefill at any batch), and
     shrinking on would only end in a queue.
   - `p99-headroom`: every targeted P99 under `HEADROOM` of its target and a queue: a
     careful increase.
5. The acceptance bands (with hysteresis on the smoothed rate): when the band changes (and at
   the first decision), the limit restarts from the band's value (`base` doubled above `high`,
   kept between, halved below `low`), where `base` is batching.initial (else batching.max).
   Without a latency target the band value is the limit (`band-high`, `band-mid`,
   `band-low`). With one a band raises the limit only with headroom under every target, and
   lowers it only while nothing waits at the gate (a smaller batch under a queue only moves
   the latency into the queue) and not below what the load keeps running (the window's
   average in flight, over `HEADROOM`): prompts whose drafts are accepted less need more
   steps, so the same load needs more running sequences, not fewer, and a band that halved
   the limit under a busy replica would make the queue it then has to grow out of.
   `*-breach` lowers the limit when the batch is what is slow.
6. The KV cache bounds what rules 4 and 5 propose, when vLLM's metrics say how full it is
   (without them none of these fires, and nothing holds for their want). The physics: vLLM
   admits a sequence when its prompt fits in the KV cache and grows it a step at a time;
   when the cache cannot hold a step's new tokens it preempts the newest running sequences,
   which free their cache and recompute their whole context (prompt and output so far) when
   admitted again. Past what the cache holds a larger batch runs no more sequences, it only
   evicts more and wastes their prefill; short of it the cache binds nothing.
   - `kv-preemption`: vLLM preempted sequences in the window: the limit does not grow, and
     shrinks by `DECREASE`, at once to what the cache holds (below) when that is less, past
     the floors of rule 4: what is in flight then counts sequences vLLM has evicted, and
     what waits at the gate instead costs no throughput the cache could have given.
   - `kv-preemption-settling`: ... but after a shrink, not again until a window has passed
     (the window's preemptions still count the larger limit's); until then the limit holds.
   - `kv-full`: no preemptions, but the proposal is more than the cache holds: growth stops
     there. The cache holds the window's in-flight sequences over the share of it they fill,
     times `HEADROOM` (usage grows with the sequences at their contexts, and the window's
     average hides the peaks at which vLLM preempts). With the cache little used that is far
     above any proposal: the KV cache is not the constraint.
7. `steady`: nothing to change.

Every change is then bounded by `maxStep` (the largest factor one decision may move by) and by
min/max, and held (`cooldown`) when the last change is more recent than the cooldown. In
Recommend mode the decision is the same but `applied` is False.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from specfleet.api.common import Duration
from specfleet.api.inferencemodel import (
    AutoscalingSpec,
    BatchingSpec,
    Decision,
    Observation,
)

Band = Literal["high", "mid", "low"]

HYSTERESIS = 0.05
"""How far past a band edge the smoothed acceptance must go back before it leaves the band it
entered: a rate hovering around 0.85 stays in one band."""

SMOOTHING = 0.4
"""Weight of the newest acceptance sample in the exponentially weighted moving average. vLLM's
acceptance counters over a short window are noisy (few drafts at low load)."""

SMOOTHING_SAMPLES = 8
"""Observations of the history the moving average looks at (older ones weigh under 2%)."""

HEADROOM = 0.8
"""P99 under this fraction of its target counts as room to grow; as many sequences as fill
this fraction of the KV cache are what it holds with room to spare."""

MIN_QUEUE = 1.0
"""Average requests waiting at the gate that count as a queue."""

DECREASE = 0.7
"""Multiplicative decrease on a P99 breach (maxStep may allow less change, never more)."""

SHRINK_GAIN = 0.9
"""A shrink has paid when P99 falls under this fraction of what it was when it was made; until
then a breach shrinks no further. A 30% smaller batch makes every step of a compute-bound batch
about that much faster; when P99 moves by less than a tenth, the batch was not the cause (and
window noise alone moves it by a few percent)."""

INCREASE = 1.25
"""The careful increase: a quarter more, at least one sequence."""

STALE_INTERVALS = 2.0
"""An observation older than this many intervals is stale."""

LIVE_COOLDOWN = timedelta(minutes=2)
RESTART_COOLDOWN = timedelta(minutes=10)
"""Cooldowns when autoscaling.cooldown is unset: a Restart-mode change rolls the Deployment."""

SUSTAINED_SAMPLES = 10
"""Decisions `speculation_healthy` looks back over (five minutes at the default interval)."""

MIN_SUSTAINED = 3
"""Fewer known acceptance rates than this say nothing about speculation's health."""

BAND_FACTOR: dict[Band, float] = {"high": 2.0, "mid": 1.0, "low": 0.5}
"""The three-band rule: the base limit doubled, kept or halved."""


@dataclass(frozen=True)
class Policy:
    """Everything a decision depends on besides the history and the observation: the spec's
    autoscaling and batching settings, the current limit and the time."""

    limit: int
    """The limit in force now (`reconcile.current_limit`)."""
    now: datetime
    """The decision's time."""
    min_limit: int = 1
    max_limit: int = 256
    base: int = 256
    """The limit the bands double or halve: batching.initial, else batching.max."""
    high: float = 0.85
    low: float = 0.65
    p99_target: float | None = None
    """The end-to-end P99 target, seconds; None: none."""
    ttft_target: float | None = None
    """The time-to-first-token P99 target, seconds; None: none."""
    itl_target: float | None = None
    """The inter-token latency P99 target, seconds; None: none. Without any of the three
    targets acceptance alone drives the limit."""
    cooldown: timedelta = LIVE_COOLDOWN
    max_step: float = 2.0
    interval: timedelta = timedelta(seconds=30)
    window: timedelta = timedelta(minutes=5)
    """What each observation averages over (autoscaling.window)."""
    mode: Literal["Apply", "Recommend"] = "Apply"
    enabled: bool = True
    speculative: bool = True
    """Whether the model has a draft (without one there is no acceptance rate to read)."""

    @classmethod
    def from_spec(
        cls,
        autoscaling: AutoscalingSpec,
        batching: BatchingSpec,
        limit: int,
        now: datetime,
        *,
        speculative: bool = True,
    ) -> Policy:
        """The policy an InferenceModel's spec describes."""
        if autoscaling.cooldown is not None:
            cooldown = autoscaling.cooldown.delta
        else:
            cooldown = RESTART_COOLDOWN if batching.mode == "Restart" else LIVE_COOLDOWN

        def seconds(target: Duration | None) -> float | None:
            return target.seconds if target is not None else None

        return cls(
            limit=limit,
            now=now,
            min_limit=batching.min,
            max_limit=batching.max,
            base=batching.initial or batching.max,
            high=autoscaling.acceptance_bands.high,
            low=autoscaling.acceptance_bands.low,
            p99_target=seconds(autoscaling.p99_target),
            ttft_target=seconds(autoscaling.ttft_p99_target),
            itl_target=seconds(autoscaling.itl_p99_target),
            cooldown=cooldown,
            max_step=autoscaling.max_step,
            interval=autoscaling.interval.delta,
            window=autoscaling.window.delta,
            mode=autoscaling.mode,
            enabled=autoscaling.enabled,
            speculative=speculative,
        )

    def clamp(self, limit: float) -> int:
        return int(min(max(round(limit), self.min_limit), self.max_limit))

    @property
    def targets(self) -> list[Target]:
        """The latency targets set, in the order a breach is named by: the one the batch
        moves most directly first."""
        given: tuple[tuple[TargetKind, float | None], ...] = (
            ("itl", self.itl_target),
            ("ttft", self.ttft_target),
            ("p99", self.p99_target),
        )
        return [Target(kind, seconds) for kind, seconds in given if seconds is not None]


def latency_targets(autoscaling: AutoscalingSpec) -> list[Target]:
    """The latency targets a spec sets, in `Policy.targets`' order."""
    given: tuple[tuple[TargetKind, Duration | None], ...] = (
        ("itl", autoscaling.itl_p99_target),
        ("ttft", autoscaling.ttft_p99_target),
        ("p99", autoscaling.p99_target),
    )
    return [Target(kind, target.seconds) for kind, target in given if target is not None]


TargetKind = Literal["itl", "ttft", "p99"]


@dataclass(frozen=True)
class Target:
    """One latency target: which P99 and its seconds. `kind` prefixes the rules it fires."""

    kind: TargetKind
    seconds: float

    @property
    def label(self) -> str:
        return LABELS[self.kind]

    def value(self, observation: Observation) -> float | None:
        """The observation's P99 this target bounds."""
        return observed(observation, self.kind)

    def fmt(self, seconds: float) -> str:
        """Seconds as a person reads this target's scale: 4.90s end to end, 720ms, 21ms."""
        if self.kind == "p99" or seconds >= 1:
            return f"{seconds:.2f}s"
        return f"{seconds * 1000:.0f}ms"


LABELS: dict[TargetKind, str] = {"itl": "ITL P99", "ttft": "TTFT P99", "p99": "P99"}
"""How messages name each P99: inter-token latency, time to first token, end to end."""


def observed(observation: Observation, kind: TargetKind) -> float | None:
    """The observation's P99 of one kind."""
    if kind == "itl":
        return observation.itl_p99_seconds
    if kind == "ttft":
        return observation.ttft_p99_seconds
    return observation.p99_seconds


def smoothed(samples: Sequence[float | None]) -> float | None:
    """The exponentially weighted moving average of the samples, oldest first; missing ones
    are skipped. None when every sample is missing."""
    average: float | None = None
    for sample in samples[-SMOOTHING_SAMPLES - 1 :]:
        if sample is None:
            continue
        average = sample if average is None else SMOOTHING * sample + (1 - SMOOTHING) * average
    return average


def _raw_band(rate: float, high: float, low: float) -> Band:
    if rate >= high:
        return "high"
    return "mid" if rate >= low else "low"


def band(rates: Sequence[float], high: float, low: float) -> Band:
    """The band a sequence of (smoothed) acceptance rates ends in, with hysteresis: a band is
    entered at its edge and left only `HYSTERESIS` beyond it."""
    current: Band | None = None
    for rate in rates:
        raw = _raw_band(rate, high, low)
        if current is None or raw == current:
            current = raw
        elif current == "high":
            current = _raw_band(rate, high, low) if rate < high - HYSTERESIS else "high"
        elif current == "low":
            current = _raw_band(rate, high, low) if rate >= low + HYSTERESIS else "low"
        # From mid, moving into either band needs no margin: its edges are the bands' own.
        else:
            current = raw
    return current or "mid"


def _acceptance_series(history: Sequence[Decision], observation: Observation) -> list[float | None]:
    """The smoothed acceptance after each decision of the history and after the current
    observation (None until a rate is known)."""
    samples = [d.observation.acceptance_rate for d in history] + [observation.acceptance_rate]
    return [smoothed(samples[:end]) for end in range(1, len(samples) + 1)]


def _known(series: Sequence[float | None]) -> list[float]:
    return [value for value in series if value is not None]


def _last_change(history: Sequence[Decision]) -> Decision | None:
    """The newest decision that moved the limit, applied or only recommended: Recommend mode
    honours the cooldown too, so its recommendations are what Apply would have done."""
    return next((d for d in reversed(history) if d.to_limit != d.from_limit), None)


def _grow(policy: Policy, limit: int, factor: float = INCREASE) -> int:
    return max(limit + 1, math.ceil(limit * min(factor, policy.max_step)))


def _queue_floor(history: Sequence[Decision]) -> int:
    """The largest limit of the history at which requests queued: shrinking below it trades
    service time for waiting (0 when nothing queued)."""
    return max(
        (
            d.from_limit
            for d in history
            if d.observation.queue_depth is not None and d.observation.queue_depth >= MIN_QUEUE
        ),
        default=0,
    )


def _running_floor(observation: Observation) -> int:
    """The smallest limit that carries what the load keeps running, with headroom (0 when
    unknown): below it requests would queue."""
    running = observation.in_flight
    return 0 if running is None else math.ceil(running / HEADROOM)


def _shrink(policy: Policy, limit: int) -> int:
    return min(limit - 1, math.floor(limit * max(DECREASE, 1 / policy.max_step)))


def _bounded_step(policy: Policy, limit: int, proposal: int) -> int:
    """The proposal within maxStep of the current limit and within min..max."""
    highest = math.floor(limit * policy.max_step)
    lowest = math.ceil(limit / policy.max_step)
    return policy.clamp(min(max(proposal, lowest), highest))


def _decision(
    policy: Policy, to: int, rule: str, observation: Observation, message: str
) -> Decision:
    applied = policy.mode == "Apply" and policy.enabled
    if policy.mode == "Recommend" and to != policy.limit:
        message += " (recommended only: autoscaling.mode is Recommend)"
    return Decision(
        time=policy.now,
        from_limit=policy.limit,
        to_limit=to,
        rule=rule,
        applied=applied,
        observation=observation,
        message=message,
    )


def _missing(policy: Policy, observation: Observation) -> list[str]:
    needed: list[str] = []
    if policy.speculative and observation.acceptance_rate is None:
        needed.append("acceptance rate")
    targets = policy.targets
    needed.extend(
        f"{target.label} latency" for target in targets if target.value(observation) is None
    )
    if targets and observation.queue_depth is None:
        needed.append("queue depth")
    return needed


def _fmt(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.3g}{unit}"


def decide(history: Sequence[Decision], observation: Observation, policy: Policy) -> Decision:
    """The next decision for one model. `history` is its recent decisions, oldest first (the
    status' `decisions`); `observation` covers the last window."""
    limit = policy.limit
    hold = policy.clamp(limit)
    if not policy.enabled:
        return _decision(policy, limit, "disabled", observation, "autoscaling is disabled")
    missing = _missing(policy, observation)
    if missing:
        return _decision(
            policy,
            hold,
            "hold-missing-metrics",
            observation,
            f"holding {hold}: no {', '.join(missing)} in the window",
        )
    if observation.time is not None:
        age = policy.now - observation.time
        if age > policy.interval * STALE_INTERVALS:
            return _decision(
                policy,
                hold,
                "hold-stale-metrics",
                observation,
                f"holding {hold}: the newest metrics are {age.total_seconds():.0f}s old",
            )
    if hold != limit:
        return _decision(
            policy,
            hold,
            "bounds",
            observation,
            f"limit {limit} is outside batching.min..max "
            f"({policy.min_limit}..{policy.max_limit}); clamped to {hold}",
        )

    proposal, rule, why = _kv_bound(
        history, observation, policy, *_propose(history, observation, policy)
    )
    to = _bounded_step(policy, limit, proposal)
    if to == limit:
        if proposal != limit:
            rule = "bounds"
            why += f"; already at the bound ({policy.min_limit}..{policy.max_limit})"
        return _decision(policy, limit, rule, observation, why)
    last = _last_change(history)
    if last is not None and policy.now - last.time < policy.cooldown:
        wait = policy.cooldown - (policy.now - last.time)
        return _decision(
            policy,
            limit,
            "cooldown",
            observation,
            f"{rule} would set {to}, but the last change was "
            f"{(policy.now - last.time).total_seconds():.0f}s ago; "
            f"{wait.total_seconds():.0f}s of cooldown left",
        )
    return _decision(policy, to, rule, observation, why)


def _propose(
    history: Sequence[Decision], observation: Observation, policy: Policy
) -> tuple[int, str, str]:
    """The limit the rules want before step, bounds and cooldown, the rule and why."""
    limit = policy.limit
    series = _acceptance_series(history, observation) if policy.speculative else []
    acceptance = series[-1] if series else None
    now_band = band(_known(series), policy.high, policy.low) if policy.speculative else "mid"
    # The band the limit was last set under: at the last change, else the oldest decision
    # kept (None without history: the first decision starts from the band).
    changed = [i for i, d in enumerate(history) if d.to_limit != d.from_limit]
    then = _known(series[: (changed[-1] if changed else 0) + 1]) if history else []
    before_band = band(then, policy.high, policy.low) if then else None
    band_value = policy.clamp(policy.base * BAND_FACTOR[now_band])
    # Newest, then smoothed, as P99 and queue below: the window's own value is what `kubectl
    # get im` and the review table show; the band follows the smoothed one.
    accepted = (
        f"acceptance {_fmt(observation.acceptance_rate)} (smoothed {_fmt(acceptance)}, "
        f"{now_band} band)"
        if acceptance is not None
        else f"acceptance n/a ({now_band} band)"
    )

    targets = policy.targets
    if not targets:
        if band_value == limit:
            return limit, "steady", f"{accepted}: limit {limit} is the band's"
        return band_value, f"band-{now_band}", f"{accepted}: the band sets {band_value}"

    # Smoothed like acceptance, so one noisy window neither shrinks nor grows the limit, and
    # a rule acts only when the smoothed and the newest value agree, so the average's lag
    # never acts on a past that the newest window no longer shows. _missing has made sure
    # the newest values are there.
    newest_queue = observation.queue_depth or 0.0
    queue = smoothed([d.observation.queue_depth for d in history] + [newest_queue]) or 0.0
    levels = {target: _levels(history, observation, target) for target in targets}
    latency = ", ".join(
        f"{target.label} {target.fmt(newest)} (smoothed {target.fmt(level)}) vs target "
        f"{target.fmt(target.seconds)}"
        for target, (level, newest) in levels.items()
    )
    latency += f", queue {newest_queue:.1f} (smoothed {queue:.1f})"
    breached = [t for t, (level, newest) in levels.items() if min(level, newest) > t.seconds]
    if breached:
        lead = breached[0]
        if min(queue, newest_queue) >= MIN_QUEUE:
            if lead.kind == "itl":
                return (
                    limit,
                    "itl-breach-saturated",
                    f"{latency}: requests wait at the gate, so fewer running would only "
                    "lengthen the queue, and more would slow every step further; the load "
                    "needs more replicas than this limit can serve at that inter-token latency",
                )
            return _breach_with_queue(history, policy, lead, newest_queue, queue, latency)
        waiting = max(queue, newest_queue) >= MIN_QUEUE
        return _breach_without_queue(
            history, policy, lead, *levels[lead], waiting, latency, observation
        )
    room = all(max(levels[t]) <= t.seconds * HEADROOM for t in targets)
    if room and min(queue, newest_queue) >= MIN_QUEUE:
        return (
            _grow(policy, limit),
            "p99-headroom",
            f"{latency}: room under every target and requests waiting; growing carefully",
        )
    # The first decision starts from the band too: nothing has set the limit yet.
    if now_band != before_band and band_value != limit:
        raise_ok = band_value < limit or room
        # Like a breach, a band never shrinks a batch that requests wait for.
        lower_ok = band_value > limit or max(queue, newest_queue) < MIN_QUEUE
        floor, running = "", _running_floor(observation)
        if band_value < limit and running > band_value:
            band_value = running
            lower_ok = lower_ok and band_value < limit
            floor = f" (not below {observation.in_flight:.3g} in flight, with headroom)"
        if raise_ok and lower_ok:
            return (
                band_value,
                f"band-{now_band}",
                f"{accepted}, was {before_band or 'unknown'}: restarting from the band's "
                f"{band_value}{floor}; {latency}",
            )
    return limit, "steady", f"{accepted}; {latency}: nothing to change"


def _levels(
    history: Sequence[Decision], observation: Observation, target: Target
) -> tuple[float, float]:
    """The smoothed and the newest value of one target's P99 (0 where unknown)."""
    newest = target.value(observation) or 0.0
    level = smoothed([target.value(d.observation) for d in history] + [newest]) or 0.0
    return level, newest


def _breach_with_queue(
    history: Sequence[Decision],
    policy: Policy,
    target: Target,
    newest_queue: float,
    queue: float,
    latency: str,
) -> tuple[int, str, str]:
    """End-to-end or time-to-first-token P99 over target while requests wait: the limit
    binds, so it grows while the queue grows (by maxStep when more wait than run). A queue
    that no longer grows is draining at this limit: a larger batch would only move the
    waiting into slower steps, so it holds."""
    limit = policy.limit
    if not _queue_grows(history, policy, newest_queue):
        return (
            limit,
            f"{target.kind}-breach-draining",
            f"{latency}: requests wait, but the queue has stopped growing; "
            "the batch drains it at this limit",
        )
    overloaded = min(queue, newest_queue) >= limit
    return (
        _grow(policy, limit, policy.max_step if overloaded else INCREASE),
        f"{target.kind}-breach-queueing",
        f"{latency}: requests wait at the gate and the queue grows, so the latency is partly "
        "queueing; a larger batch drains it (a smaller one would lengthen it)",
    )


def _queue_grows(history: Sequence[Decision], policy: Policy, newest_queue: float) -> bool:
    """Whether the queue grows: whether more requests waited since the last decision than over
    as long a time one window before, by at least `MIN_QUEUE`. The window's average moves by
    that difference times the time between the decisions over the window. Unknown (no earlier
    queue depth) counts as growing."""
    previous = history[-1].observation.queue_depth if history else None
    if previous is None:
        return True
    elapsed = min(max(policy.now - history[-1].time, policy.interval), policy.window)
    return (newest_queue - previous) * (policy.window / elapsed) >= MIN_QUEUE


def _unpaid_shrink(
    history: Sequence[Decision], policy: Policy, target: Target, p99: float, newest_p99: float
) -> tuple[str, str] | None:
    """The rule and why, when a breach without a queue must not shrink again; None when it may.

    After a shrink in the same breach (the smoothed P99 over target at every decision since):
    within the cooldown, None (the cooldown holds anyway); then `p99-breach-settling` until a
    window has passed, because until then the window's tail still holds requests the larger
    batch served; then one verdict: the shrink paid when P99 (smoothed and newest) is under
    `SHRINK_GAIN` of the smoothed P99 at the shrink (None: shrink again), else
    `p99-breach-no-gain`, which stands for the rest of the breach, also once the shrink has
    left the history. `target` is the P99 whose breach it is; its rules carry its kind."""
    samples = [target.value(d.observation) for d in history]
    no_gain = f"{target.kind}-breach-no-gain"
    for index in range(len(history) - 1, -1, -1):
        decision, level = history[index], smoothed(samples[: index + 1])
        if level is None or level <= target.seconds:
            return None
        if decision.rule == no_gain:
            return (
                no_gain,
                "an earlier shrink in this breach did not lower it: the batch is not what "
                "makes it slow",
            )
        if not decision.applied or decision.to_limit == decision.from_limit:
            continue
        if decision.to_limit > decision.from_limit:
            return None
        age = policy.now - decision.time
        if age < policy.cooldown:
            return None
        shrink = f"the shrink from {decision.from_limit} to {decision.to_limit}"
        if age < policy.window:
            return (
                f"{target.kind}-breach-settling",
                f"{shrink} was {age.total_seconds():.0f}s ago; until a window has passed, "
                f"{target.label} still counts requests the larger batch served",
            )
        if max(p99, newest_p99) < level * SHRINK_GAIN:
            return None
        return (
            no_gain,
            f"{target.label} not under {SHRINK_GAIN:.0%} of the {target.fmt(level)} before "
            f"{shrink}: the batch is "
            "not what makes it slow, and shrinking on would only end in a queue",
        )
    return None


def _breach_without_queue(
    history: Sequence[Decision],
    policy: Policy,
    target: Target,
    p99: float,
    newest_p99: float,
    waiting: bool,
    latency: str,
    observation: Observation,
) -> tuple[int, str, str]:
    """`target`'s P99 over target and no queue that both the smoothed and the newest depth
    show: the batch itself is slow (every step grows with the batch), so it shrinks
    multiplicatively, but not below a limit at which requests queued (the current one, when
    either depth shows a queue) or below what the load keeps running (in flight, with
    headroom), and not again before the last shrink has lowered that P99."""
    limit = policy.limit
    unpaid = _unpaid_shrink(history, policy, target, p99, newest_p99)
    if unpaid is not None:
        rule, why = unpaid
        return limit, rule, f"{latency}: over target, but {why}"
    queued = max(_queue_floor(history), limit if waiting else 0)
    floor = max(queued, _running_floor(observation))
    shrunk = max(_shrink(policy, limit), floor)
    if shrunk >= limit:
        why = (
            f"requests queued at limit {queued} recently"
            if queued >= floor
            else f"{observation.in_flight:.3g} in flight need {floor} with headroom"
        )
        return (
            limit,
            f"{target.kind}-breach-floor",
            f"{latency}: over target, but {why}; a smaller batch would only move the latency "
            "into the queue",
        )
    return (
        shrunk,
        f"{target.kind}-breach",
        f"{latency}: nothing waits, the batch itself is too slow; shrinking it",
    )


def _kv_room(observation: Observation) -> int | None:
    """The sequences the KV cache holds with headroom at the window's contexts: those in
    flight over the share of the cache they fill, times `HEADROOM`. None when either is
    unknown or nothing was in use."""
    running, usage = observation.in_flight, observation.kv_cache_usage
    if running is None or usage is None or running <= 0 or usage <= 0:
        return None
    return math.floor(running * HEADROOM / usage)


def _kv_bound(
    history: Sequence[Decision],
    observation: Observation,
    policy: Policy,
    proposal: int,
    rule: str,
    why: str,
) -> tuple[int, str, str]:
    """The proposal within what the KV cache holds: no growth and a shrink while vLLM
    preempts (none again within a window of the last shrink), and no growth past what it
    holds with headroom. Unchanged where vLLM's KV metrics are missing."""
    limit = policy.limit
    room = _kv_room(observation)
    wanted = f" ({rule} would set {proposal})" if proposal != limit else ""
    used = observation.kv_cache_usage
    usage = f"KV cache {used:.0%} full" if used is not None else "KV cache usage n/a"
    if observation.preemptions is not None and observation.preemptions > 0:
        evicting = (
            f"{observation.preemptions:.3g} preemptions in the window, {usage}: the KV cache, "
            "not the limit, bounds what runs, and a larger batch only evicts more sequences "
            f"to recompute{wanted}"
        )
        last = _last_change(history)
        if last is not None and last.to_limit < last.from_limit:
            age = policy.now - last.time
            if age < policy.window:
                if proposal < limit:
                    return proposal, rule, why
                return (
                    limit,
                    "kv-preemption-settling",
                    f"{evicting}; but the shrink from {last.from_limit} to {last.to_limit} "
                    f"was {age.total_seconds():.0f}s ago, and until a window has passed its "
                    "preemptions still count the larger limit's",
                )
        bound = _shrink(policy, limit) if room is None else min(_shrink(policy, limit), room)
        if proposal <= bound:
            return proposal, rule, why
        holds = f" (it holds {room} with headroom)" if room is not None else ""
        return bound, "kv-preemption", f"{evicting}; shrinking to {bound}{holds}"
    if room is not None and proposal > max(limit, room):
        to = max(limit, room)
        return (
            to,
            "kv-full",
            f"{usage} with {_fmt(observation.in_flight)} in flight: it holds {room} with "
            f"headroom, and vLLM would preempt past that{wanted}; "
            + (f"growing only to {to}" if to > limit else "the limit holds"),
        )
    return proposal, rule, why


def speculation_healthy(
    history: Sequence[Decision], threshold: float = 0.6, samples: int = SUSTAINED_SAMPLES
) -> bool:
    """Whether speculation pays: False only when every acceptance rate of the last `samples`
    decisions (the window) is under `threshold`, and there are at least `MIN_SUSTAINED` of
    them, so one bad sample never flips it. Missing rates are skipped."""
    known = [
        d.observation.acceptance_rate
        for d in history[-samples:]
        if d.observation.acceptance_rate is not None
    ]
    if len(known) < MIN_SUSTAINED:
        return True
    return not all(rate < threshold for rate in known)
