"""The autoscaler against static batch limits, on the shared performance model, side by side on
one trace.

What is simulated: one replica of Llama 3.1 70B (FP8 weights) with a Llama 3.2 3B draft, K=5
at every batch size (`draft.schedule: fixed`: a schedule that drafts less in large batches is
not simulated), on the 4 x H100-80GB (tensor parallel 4) the planner picks for the README's
example spec (batching min 8, max 256, initial 64; autoscaling interval 30s, window 5m, bands
0.85/0.65, cooldown 2m, maxStep 2), with p99Target 30s instead of its 8s. On this model the
trace's P99 output (about 1290 tokens) takes 9s alone at batch 1 for a hard prompt and 21s in
a batch of 64, so no limit meets 8s once more than a few sequences run, and the P99 rules,
which shrink a batch that misses the target while nothing waits, then only cost: with 8s,
specfleet's P99 on the default trace is 1.17 of the best static limit's (1.01 with 30s).
Five ways of setting the batch limit run on the SAME trace in one run, and a sixth as a
yardstick:

(a) static 1024: vLLM's own `max_num_seqs` default on an H100, what a user gets without
    specfleet (bounded, as in vLLM, by the KV cache: see below);
(b) the best static limit in hindsight: of a sweep of static limits over the same trace and
    (a), the one with the lowest P99;
(c) the three-band rule alone: every interval, the base limit (batching.initial) doubled when
    the window's acceptance is at or above 0.85, kept above 0.65, halved below; no P99, no
    hysteresis, no cooldown;
(d) specfleet: the operator's autoscaling step (`specfleet.autoscale.step.advance`), called
    every interval with the history of its own decisions and an Observation computed from what
    a Prometheus window would show. Nothing in the policy sees the trace;
(d') specfleet without KV metrics: (d) with an Observation that lacks vLLM's KV cache usage
    and preemptions, so the policy's KV rules (`kv-full`, `kv-preemption`) never fire: what
    they change;
(e) the oracle, which knows the trace: for each phase, the limit among (a) and the sweep with
    the lowest P99 over that phase's arrivals, switched at each phase's start. Within capacity
    about the best any adapting policy could do on this trace (about: a request that
    straddles a phase's end runs under two limits); past it no bound, because a phase's limit
    also sets the backlog the next phase inherits.

The trace (`trace()`; printed): phases of `--phase-minutes`, cycled, each a load (its arrival
rate over what the replica serves at the phase's mix, `capacity`), a share of "easy" prompts
(whose drafts are accepted at a reported rate of 0.9, against "hard" ones at 0.5) and median
prompt and output lengths. Arrivals are a Poisson process; prompt and output lengths are
lognormal; every random draw comes from `--seed`, which moves arrivals and lengths but not the
phases. Three cycles:
- `CYCLE` (default): one compressed day of chat: quiet, busy and peak traffic of easy prompts,
  then the mix turns over to hard ones at the peak, quietens, and comes back mixed. The peaks
  run at 0.87 of capacity, the quiet phases at a third to a half: every phase is within what
  the replica serves at a good limit. Acceptance swings between all-easy and all-hard phases
  because a hard prompt gains 3.5 tokens a step against an easy one's 5.5: the same rate needs
  about 1.6 times as many running sequences.
- `SPIKE_CYCLE` (`--spike`): the easy peak becomes a spike past capacity (1.13, as before
  another replica is up), followed by a quiet phase that drains it.
- `DOCUMENT_CYCLE` (`--documents`): from the peak on, document traffic (prompts of median
  2000 tokens, outputs of 1000: retrieval, summaries, reports) at 0.87, then a spike at 1.3,
  then quiet, then chat again. The KV cache holds about 200 such prompts but about 130 such
  sequences at their full length, both under batching.max: vLLM admits a sequence when its
  prompt fits, so a large limit lets in more than the cache can grow into, and it preempts.

What the runs show (seed 1, 120 minutes; every run prints its own ratios under "what this run
shows"). On this model a step costs more with every sequence from the first on (the weights,
then arithmetic and attention per token, the draft's passes), and throughput grows with the
batch until the KV cache bounds it; what a larger limit buys is throughput, what it costs is
slower steps for every running sequence, and, past what the cache holds, preemptions.
- Within capacity (default trace) the limit barely matters above what the peaks keep running:
  from 160 up every static limit, vLLM's default included, ends within 1% of the best static
  P99, because a limit binds only when more would run, which Poisson load within capacity
  seldom asks for. Below it the limit cuts throughput where it is needed and the queue grows
  (static 128: 1.21 of the best static's P99, 96: 2.37). specfleet ends even with all of them:
  1.004 of vLLM's default, 1.013 of the best static, 0.972 of the oracle. Adapting has
  nothing to gain here.
- Past capacity for a while (`--spike`) the limit decides whether the backlog waits at the
  gate in order or runs in vLLM, slowing every step: vLLM's default ends at 1.30 of the best
  static limit (256; 384 ties it). specfleet pays against vLLM's default (0.845) but not
  against the best static limit (1.100): it grows by steps, with a cooldown, once the queue
  shows, so the spike's first minutes run at the quiet phase's smaller limit.
- Past capacity with KV pressure (`--documents`) it pays most. Every static limit from 192 up
  runs the same (the cache, not the limit, bounds what runs) and preempts: vLLM's default
  preempts 406 sequences, recomputes 6.1% of the output and ends at 1.31 of the best static
  P99 (128). specfleet's `kv-full` stops its growth at what the cache holds with headroom
  (133 to 135 sequences), so it never preempts: 0.780 of vLLM's default, 1.025 of the best
  static, 1.003 of the oracle. Without the KV metrics the same policy grows to 219 under the
  queue and preempts 177 times: with them its P99 is 0.886 of that.

specfleet's low band halves the limit when acceptance falls, as its design says, but not
while requests wait and not below what the load keeps running (the window's average in
flight, with headroom): at the hard peak the same rate needs more running sequences, and a
halved limit there would make the queue that a breach then has to grow out of.

The model, step by step (discrete time, one engine step at a time):
- admission: requests wait FIFO at the gate, which lets the limit's worth into vLLM (the
  static limits are vLLM's own max_num_seqs, with the same effect). There, as vLLM's scheduler
  does, a step first makes room in the KV cache for every running sequence's K + 1 new tokens,
  preempting the newest scheduled sequences when it cannot (their cache is freed, and they
  go back to the front of vLLM's queue to recompute their prompt and what they had generated
  when scheduled again); only in a step that preempted nothing does it schedule waiting
  requests, while the limit allows and their prompt fits. The KV cache is
  `perf.kv_cache_tokens` at the planner's memory utilisation.
- a step: every running sequence decodes. Its duration is `perf.step_time` at the running
  count and their mean context, plus what each prompt prefilled in it adds, a preempted
  sequence's recompute included. Chunked prefill rides on the decode step, which reads the
  weights and pays the all-reduces' latency anyway, so a prompt adds
  `perf.added_prefill_seconds` (its arithmetic, attention over itself and activations,
  through target and draft). Each sequence gains `perf.expected_tokens_per_step` at its own
  acceptance (easy or hard, converted from the reported rate with
  `perf.acceptance_from_reported`): expected values, not sampled ones, so a request's decode
  time is its length over its class's speed.
- a request's latency is from arrival to its last token, queueing included (the gate's
  histogram). Throughput is all generated tokens over the time from the first arrival to the
  last completion (every request completes; nothing is rejected).
- what the policy sees every 30s, over the last 5 minutes: acceptance = accepted / drafted
  tokens (the vLLM counters' rate), P99 = `histogram_quantile(0.99, ...)` over the gate's
  buckets (vLLM's e2e buckets) of the requests that finished in the window, queue depth = the
  time-average of the gate's queue, in flight = the time-average of the requests past the
  gate, throughput = generated tokens per second, KV cache usage = the time-average of the
  share of the cache the running sequences fill (vLLM's `kv_cache_usage_perc`; one replica,
  so the fullest), preemptions = how many sequences vLLM preempted in the window
  (`vllm:num_preemptions`' increase). A window with no finished request has no P99, as in
  Prometheus.

Prints the trace summary, a table (with each policy's preemptions and the tokens they made
vLLM prefill again), the limits specfleet set with and without KV metrics and those of the
oracle, the P99 of each phase's arrivals, where the limit pays in this run and where it does
not (`findings`, each claim with its ratio), and the last line
`p99_ratio_vs_static=<r> throughput_ratio_vs_static=<t> p99_ratio_vs_best_static=<s>
p99_ratio_vs_bands=<b> changes=<n> bands_changes=<m>` (ratios are specfleet over the other).

Run: .venv/bin/python bench/autoscale.py [--seed N] [--quick] [--spike | --documents]
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script this file's folder leads sys.path; put the repository root there instead.
sys.path[0] = str(ROOT)

from specfleet import catalog, perf  # noqa: E402
from specfleet import plan as planner  # noqa: E402
from specfleet.api.inferencemodel import (  # noqa: E402
    Decision,
    InferenceModelSpec,
    Observation,
)
from specfleet.autoscale import step  # noqa: E402
from specfleet_runtime.gate.metrics import REQUEST_LATENCY_BUCKETS  # noqa: E402

SPEC = InferenceModelSpec.model_validate(
    {
        "model": {"name": "meta-llama/Llama-3.1-70B-Instruct"},
        "draft": {
            "model": {"name": "meta-llama/Llama-3.2-3B-Instruct"},
            "numSpeculativeTokens": 5,
            "schedule": "fixed",
        },
        "quantization": "fp8",
        "maxModelLen": 8192,
        "gpu": {"product": "H100-80GB", "count": "auto"},
        "batching": {"min": 8, "max": 256, "initial": 64},
        "autoscaling": {
            "mode": "Apply",
            "interval": "30s",
            "window": "5m",
            "p99Target": "30s",
            "acceptanceBands": {"high": 0.85, "low": 0.65},
            "cooldown": "2m",
            "maxStep": 2,
        },
    }
)
"""The README's example InferenceModel, with the 70B target and 3B draft of this benchmark,
K=5 at every batch size, and a P99 target of 30s instead of 8s (the module's docstring says
why)."""

EASY_REPORTED, HARD_REPORTED = 0.9, 0.5
"""Acceptance rates vLLM reports for easy and hard prompts."""

INTERVAL = 30.0
WINDOW = 300.0
BIN = 1.0  # seconds per bin of the counters the windows are read from
START = datetime(2026, 1, 1, tzinfo=UTC)


PROMPT_MEDIAN, PROMPT_SIGMA, PROMPT_MAX = 300, 0.7, 6000
OUTPUT_MEDIAN, OUTPUT_SIGMA, OUTPUT_MAX = 200, 0.8, 2048
DOCUMENT_PROMPT_MEDIAN, DOCUMENT_OUTPUT_MEDIAN = 2000, 1000
"""Median prompt and output of document traffic (retrieval, summaries, reports): long enough
that the KV cache holds fewer such sequences than batching.max."""


@dataclass(frozen=True)
class Phase:
    load: float
    """Arrivals over what the replica serves at the phase's mix (`capacity`)."""
    easy: float
    """Share of easy prompts."""
    prompt_median: int = PROMPT_MEDIAN
    """Median prompt tokens."""
    output_median: int = OUTPUT_MEDIAN
    """Median output tokens."""


CYCLE = (
    Phase(0.31, 1.0),
    Phase(0.63, 1.0),
    Phase(0.87, 1.0),
    Phase(0.87, 0.0),
    Phase(0.49, 0.0),
    Phase(0.71, 0.5),
)
"""One compressed day, cycled (each phase `--phase-minutes`): quiet, busy and peak traffic of
easy prompts (code, extraction), then the mix turns over to hard ones (open chat) at the peak,
quietens, and comes back mixed. Each peak is 0.87 of what the replica serves at its mix, the
quiet phases a third to a half. Why: the module's docstring."""
SPIKE_CYCLE = (
    Phase(0.31, 1.0),
    Phase(0.63, 1.0),
    Phase(1.13, 1.0),
    Phase(0.39, 1.0),
    Phase(0.87, 0.0),
    Phase(0.71, 0.5),
)
"""`CYCLE` with its easy peak a spike at 1.13 of `capacity` and a quiet phase after it."""
DOCUMENT_CYCLE = (
    Phase(0.31, 1.0),
    Phase(0.63, 1.0),
    Phase(0.87, 0.5, DOCUMENT_PROMPT_MEDIAN, DOCUMENT_OUTPUT_MEDIAN),
    Phase(1.3, 0.5, DOCUMENT_PROMPT_MEDIAN, DOCUMENT_OUTPUT_MEDIAN),
    Phase(0.39, 0.5, DOCUMENT_PROMPT_MEDIAN, DOCUMENT_OUTPUT_MEDIAN),
    Phase(0.71, 0.5),
)
"""`CYCLE` with document traffic from its peak on: a peak and a spike of long prompts that fill
the KV cache, a quiet phase of them, then chat again."""


@dataclass(frozen=True)
class Request:
    arrival: float
    prompt: int
    output: int
    easy: bool


@dataclass(frozen=True)
class Server:
    replica: perf.Replica
    kv_tokens: int
    """Tokens vLLM's KV cache holds, target's and draft's together."""
    tokens_per_step: tuple[float, float]
    """(easy, hard)."""

    def prefill_seconds(self, prompt: float) -> float:
        """What a prompt adds to the step it is prefilled in (`perf.added_prefill_seconds`)."""
        return perf.added_prefill_seconds(self.replica, prompt)


def server() -> Server:
    plan = planner.plan("bench", SPEC)
    target = catalog.model(SPEC.model.name)
    assert SPEC.draft is not None and SPEC.draft.model is not None
    draft = catalog.model(SPEC.draft.model.name)
    k = SPEC.draft.num_speculative_tokens
    replica = perf.Replica(
        target, catalog.GPUS[SPEC.gpu.product], plan.tensor_parallel_size, "fp8", draft, k
    )
    return Server(
        replica,
        int(perf.kv_cache_tokens(replica)),
        tuple(  # type: ignore[arg-type]
            perf.expected_tokens_per_step(perf.acceptance_from_reported(r, k), k)
            for r in (EASY_REPORTED, HARD_REPORTED)
        ),
    )


def capacity(srv: Server, phase: Phase) -> float:
    """About how many requests per second the replica serves at the phase's mix, at its best
    batch size (the largest the KV cache holds: on this model throughput grows with the
    batch): every running sequence holds its slot for its output's steps at its class's
    tokens per step, and the admissions of a step add their prefill to it. From the mean
    prompt and output (lognormal means; the caps ignored)."""
    prompt = phase.prompt_median * math.exp(PROMPT_SIGMA**2 / 2)
    output = phase.output_median * math.exp(OUTPUT_SIGMA**2 / 2)
    easy_steps, hard_steps = (output / tokens for tokens in srv.tokens_per_step)
    slot_steps = phase.easy * easy_steps + (1 - phase.easy) * hard_steps
    prefill = srv.prefill_seconds(prompt)
    best = 0.0
    for batch in range(1, int(srv.kv_tokens / (prompt + output)) + 1):
        admitted = batch / slot_steps
        step = perf.step_time(srv.replica, batch, prompt + output / 2).seconds
        best = max(best, admitted / (step + admitted * prefill))
    return best


def _lognormal(rng: random.Random, median: int, sigma: float, most: int) -> int:
    return min(most, max(1, round(rng.lognormvariate(math.log(median), sigma))))


def trace(
    srv: Server, seed: int, minutes: float, phase_minutes: float, cycle: Sequence[Phase] = CYCLE
) -> tuple[list[Phase], list[Request]]:
    """Poisson arrivals at each phase's load of `capacity`, lognormal lengths; `seed` moves
    arrivals and lengths, not the phases."""
    rng = random.Random(seed)
    phases = [cycle[i % len(cycle)] for i in range(math.ceil(minutes / phase_minutes))]
    rates = {phase: phase.load * capacity(srv, phase) for phase in set(phases)}
    requests: list[Request] = []
    length = phase_minutes * 60
    for index, phase in enumerate(phases):
        t = index * length
        end = min((index + 1) * length, minutes * 60)
        while True:
            t += rng.expovariate(rates[phase])
            if t >= end:
                break
            prompt = _lognormal(rng, phase.prompt_median, PROMPT_SIGMA, PROMPT_MAX)
            output = _lognormal(rng, phase.output_median, OUTPUT_SIGMA, OUTPUT_MAX)
            requests.append(Request(t, prompt, output, rng.random() < phase.easy))
    return phases, requests


Controller = Callable[[float, Observation, int], int]
"""Called every interval with the time, the window's observation and the limit; returns the
new limit."""


@dataclass
class Result:
    name: str
    p99: float
    mean: float
    throughput: float
    changes: int
    limits: list[tuple[float, int]] = field(default_factory=list)
    served: list[tuple[float, float]] = field(default_factory=list)
    """(arrival, latency) of every request."""
    preemptions: int = 0
    """Sequences vLLM preempted for want of KV cache (each recomputes what it had)."""
    recomputed: float = 0.0
    """Tokens prefilled again after preemptions: each preempted sequence's whole context."""

    def phase_p99(self, start: float, end: float) -> float:
        """P99 latency of the requests that arrived in [start, end)."""
        return p99([latency for arrival, latency in self.served if start <= arrival < end])


def p99(latencies: Sequence[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def histogram_quantile(q: float, latencies: Sequence[float]) -> float | None:
    """Prometheus' histogram_quantile over the gate's buckets."""
    if not latencies:
        return None
    counts = [0] * (len(REQUEST_LATENCY_BUCKETS) + 1)
    for value in latencies:
        counts[bisect.bisect_left(REQUEST_LATENCY_BUCKETS, value)] += 1
    rank = q * len(latencies)
    cumulative = 0
    for index, count in enumerate(counts):
        if cumulative + count >= rank and count:
            if index == len(REQUEST_LATENCY_BUCKETS):
                return REQUEST_LATENCY_BUCKETS[-1]
            lower = REQUEST_LATENCY_BUCKETS[index - 1] if index else 0.0
            upper = REQUEST_LATENCY_BUCKETS[index]
            return lower + (upper - lower) * (rank - cumulative) / count
        cumulative += count
    return REQUEST_LATENCY_BUCKETS[-1]


@dataclass
class Running:
    """A request inside vLLM: running, or waiting to be scheduled (again)."""

    arrival: float
    prompt: float
    """Tokens to prefill when scheduled: the prompt, and after a preemption what it had
    generated too (vLLM recomputes them)."""
    output: float
    """Tokens still to generate."""
    c: int
    """0 easy, 1 hard."""
    start: float = 0.0
    """The class's progress when it was scheduled."""
    done: float = 0.0
    """The class's progress at which its last token is out."""
    number: int = -1
    """Its scheduling's number while it runs (a preempted one is numbered again)."""


# One loop on purpose: a step's admissions, progress and metrics share its local state.
def simulate(  # noqa: PLR0915
    name: str, requests: list[Request], srv: Server, limit: int, control: Controller | None
) -> Result:
    """Runs the trace through one replica whose limit `control` sets every interval."""
    k = srv.replica.num_speculative_tokens
    queue: deque[Request] = deque()  # at the gate
    waiting: deque[Running] = deque()  # in vLLM, not running
    # Per class (0 easy, 1 hard): virtual progress (tokens every running sequence of the
    # class has gained since the start), running count, sum of (prompt - progress when
    # scheduled), so a class's KV cache is context_base + running * progress; and a heap of
    # (progress at which a sequence is done, its scheduling's number), stale once it was
    # preempted.
    progress = [0.0, 0.0]
    running = [0, 0]
    context_base = [0.0, 0.0]
    done_at: list[list[tuple[float, int]]] = [[], []]
    order: list[Running] = []  # running, oldest scheduled first (finished ones stay, dead)
    numbered: list[Running] = []  # every scheduling, by its number
    inside = 0  # past the gate: waiting in vLLM or running
    preemptions = 0
    recomputed = 0.0
    latencies: list[float] = []
    served: list[tuple[float, float]] = []
    finished: list[tuple[float, float]] = []  # (finish time, latency), in finish order
    bins_drafted: list[float] = []
    bins_accepted: list[float] = []
    bins_tokens: list[float] = []
    bins_queue: list[float] = []  # queue length x seconds
    bins_inside: list[float] = []  # requests past the gate x seconds
    bins_kv: list[float] = []  # share of the KV cache in use x seconds
    bins_preempted: list[float] = []  # preemptions
    limits = [(0.0, limit)]
    changes = 0
    tokens_total = 0.0
    t = 0.0
    next_arrival = 0
    next_decision = INTERVAL

    def add(bins: list[float], when: float, value: float) -> None:
        index = int(when / BIN)
        while len(bins) <= index:
            bins.append(0.0)
        bins[index] += value

    def window_sum(bins: list[float], now: float) -> float:
        end = int(now / BIN)
        return sum(bins[max(0, end - int(WINDOW / BIN)) : end])

    def observe(now: float) -> Observation:
        drafted = window_sum(bins_drafted, now)
        start = bisect.bisect_left(finished, (now - WINDOW, -1.0))
        recent = [latency for _, latency in finished[start:]]
        span = min(WINDOW, now)
        return Observation(
            time=START + timedelta(seconds=now),
            acceptance_rate=window_sum(bins_accepted, now) / drafted if drafted else None,
            p99_seconds=histogram_quantile(0.99, recent),
            queue_depth=window_sum(bins_queue, now) / span,
            throughput=window_sum(bins_tokens, now) / span,
            in_flight=window_sum(bins_inside, now) / span,
            kv_cache_usage=window_sum(bins_kv, now) / span,
            preemptions=window_sum(bins_preempted, now),
        )

    def kv_used() -> float:
        return sum(context_base[c] + running[c] * progress[c] for c in (0, 1))

    def schedule(seq: Running) -> None:
        c = seq.c
        seq.start, seq.done, seq.number = progress[c], progress[c] + seq.output - 1, len(numbered)
        running[c] += 1
        context_base[c] += seq.prompt - progress[c]
        order.append(seq)
        numbered.append(seq)
        # Prefill yields the first token; the rest decode.
        heapq.heappush(done_at[c], (seq.done, seq.number))

    def unschedule(seq: Running) -> None:
        running[seq.c] -= 1
        context_base[seq.c] -= seq.prompt - seq.start
        seq.number = -1

    total = len(requests)
    while len(latencies) < total:
        while next_arrival < total and requests[next_arrival].arrival <= t:
            queue.append(requests[next_arrival])
            next_arrival += 1
        while control is not None and t >= next_decision:
            new = control(next_decision, observe(next_decision), limit)
            if new != limit:
                changes += 1
                limit = new
                limits.append((next_decision, limit))
            next_decision += INTERVAL
        while queue and inside < limit:
            r = queue.popleft()
            waiting.append(Running(r.arrival, r.prompt, r.output, 0 if r.easy else 1))
            inside += 1
        # vLLM's scheduler: every running sequence needs room for its K + 1 tokens of this
        # step; short of it, the newest scheduled is preempted (its blocks freed, back to the
        # front of the waiting queue, to recompute everything it had). Only in a step that
        # preempted nothing are waiting ones scheduled, while their prompt fits.
        preempted = False
        batch, kv = running[0] + running[1], kv_used()
        while batch and kv + batch * (k + 1) > srv.kv_tokens:
            victim = order.pop()
            if victim.number < 0:
                continue
            generated = progress[victim.c] - victim.start + 1
            unschedule(victim)
            batch, kv = batch - 1, kv - victim.prompt - generated + 1
            victim.prompt += generated
            victim.output -= generated
            waiting.appendleft(victim)
            preempted = True
            preemptions += 1
            recomputed += victim.prompt
            add(bins_preempted, t, 1.0)
        prefill = 0.0
        while not preempted and waiting and batch < limit:
            seq = waiting[0]
            if kv + seq.prompt + (batch + 1) * (k + 1) > srv.kv_tokens:
                break
            waiting.popleft()
            prefill += srv.prefill_seconds(seq.prompt)
            schedule(seq)
            batch, kv = batch + 1, kv + seq.prompt
        if batch == 0:
            if next_arrival == total and not queue and not waiting:
                raise RuntimeError(f"{name}: {total - len(latencies)} requests were lost")
            # Idle: jump to the next arrival (or decision).
            upcoming = requests[next_arrival].arrival if next_arrival < total else t
            step_end = max(t, min(upcoming, next_decision if control else upcoming))
            add(bins_queue, t, len(queue) * (step_end - t))
            t = step_end if step_end > t else t + 1e-3
            continue
        context = kv / batch
        # Chunked prefill rides on the decode step: its prompts add their arithmetic to it.
        duration = perf.step_time(srv.replica, batch, max(context, 1.0)).seconds + prefill
        end = t + duration
        add(bins_queue, t, len(queue) * duration)
        add(bins_inside, t, inside * duration)
        add(bins_kv, t, kv / srv.kv_tokens * duration)
        add(bins_drafted, end, k * batch)
        for c in (0, 1):
            gained = srv.tokens_per_step[c]
            progress[c] += gained
            add(bins_accepted, end, running[c] * (gained - 1))
            add(bins_tokens, end, running[c] * gained)
            heap = done_at[c]
            while heap and heap[0][0] <= progress[c]:
                _, number = heapq.heappop(heap)
                found = numbered[number]
                if found.number != number:
                    continue  # preempted since (and maybe scheduled again)
                unschedule(found)
                inside -= 1
                latencies.append(end - found.arrival)
                served.append((found.arrival, end - found.arrival))
                finished.append((end, end - found.arrival))
        # Reset a class's sum when it empties, so float error cannot drift.
        for c in (0, 1):
            if running[c] == 0:
                context_base[c] = 0.0
        if not any(running):
            order.clear()
        t = end
    tokens_total = sum(r.output for r in requests)
    makespan = max(f for f, _ in finished) - requests[0].arrival
    mean = sum(latencies) / len(latencies)
    return Result(
        name,
        p99(latencies),
        mean,
        tokens_total / makespan,
        changes,
        limits,
        served,
        preemptions,
        recomputed,
    )


def bands_controller() -> Controller:
    """(c): the three-band rule alone, from each window's acceptance."""
    batching, bands = SPEC.batching, SPEC.autoscaling.acceptance_bands
    base = batching.initial or batching.max

    def control(now: float, observation: Observation, limit: int) -> int:
        rate = observation.acceptance_rate
        if rate is None:
            return limit
        factor = 2.0 if rate >= bands.high else 1.0 if rate >= bands.low else 0.5
        return min(max(round(base * factor), batching.min), batching.max)

    return control


def specfleet_controller(kv_metrics: bool = True) -> Controller:
    """(d): the operator's autoscaling step (`specfleet.autoscale.step`), with the history of
    its own decisions as status keeps it (the schedule is fixed: nothing to retune). Without
    `kv_metrics` the observation lacks vLLM's KV cache usage and preemptions, as it did before
    the policy read them (its KV rules then never fire)."""
    history: list[Decision] = []

    def control(now: float, observation: Observation, limit: int) -> int:
        nonlocal history
        if not kv_metrics:
            observation = observation.model_copy(
                update={"kv_cache_usage": None, "preemptions": None}
            )
        taken = step.advance(
            history, observation, SPEC, limit, None, START + timedelta(seconds=now)
        )
        history = taken.history
        return taken.limit

    return control


def verdict(ratio: float) -> str:
    """How a P99 ratio (specfleet over another) reads: a difference within 3% is noise."""
    return "better" if ratio < 0.97 else "worse" if ratio > 1.03 else "even"


def findings(
    statics: Sequence[Result], ours: Result, blind: Result, oracle: Result, generated: int
) -> list[str]:
    """Where the limit pays in this run and where it does not, each claim with the numbers
    behind it. `statics` ends with vLLM's default; `blind` is specfleet without KV metrics."""
    default = statics[-1]
    best = min(statics, key=lambda r: r.p99)
    by_limit = sorted(statics, key=lambda r: r.limits[0][1])
    carries = next(r for r in by_limit if r.p99 <= 1.1 * best.p99)
    above = [r.p99 / best.p99 for r in by_limit if r.limits[0][1] >= carries.limits[0][1]]
    worst = max(above)
    how = (
        "the limit barely matters there"
        if worst <= 1.05
        else f"a larger limit is up to {worst - 1:.0%} worse there"
    )
    return [
        "what this run shows (P99 of specfleet over each; within 3% is even):",
        f"  limit: from {carries.limits[0][1]} up a static limit carries the load (P99 within "
        f"10% of the best static's {best.p99:.1f}s); the static limits from there to "
        f"{default.limits[0][1]} end at {min(above):.2f}..{worst:.2f} of it: {how}",
        f"  specfleet: {ours.p99 / default.p99:.3f} of vLLM's default "
        f"({verdict(ours.p99 / default.p99)}), {ours.p99 / best.p99:.3f} of the best static "
        f"({verdict(ours.p99 / best.p99)}), {ours.p99 / oracle.p99:.3f} of the oracle "
        f"({verdict(ours.p99 / oracle.p99)})",
        f"  KV cache: vLLM's default preempted {default.preemptions} sequences "
        f"({default.recomputed / generated:.1%} of the output recomputed), specfleet "
        f"{ours.preemptions}, specfleet without KV metrics {blind.preemptions}; specfleet's P99 "
        f"is {ours.p99 / blind.p99:.3f} of that without them ({verdict(ours.p99 / blind.p99)})",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a shorter trace and sweep")
    parser.add_argument("--minutes", type=float, help="trace length (default 120, quick 48)")
    parser.add_argument("--phase-minutes", type=float, default=8.0)
    parser.add_argument(
        "--spike", action="store_true", help="the trace with a spike past capacity (SPIKE_CYCLE)"
    )
    parser.add_argument(
        "--documents",
        action="store_true",
        help="the trace with long prompts from its peak on, filling the KV cache (DOCUMENT_CYCLE)",
    )
    args = parser.parse_args(argv)
    if args.spike and args.documents:
        parser.error("--spike and --documents are two traces; pick one")
    cycle = SPIKE_CYCLE if args.spike else DOCUMENT_CYCLE if args.documents else CYCLE
    minutes = args.minutes or (48.0 if args.quick else 120.0)
    sweep = (32, 64, 96, 128, 256) if args.quick else (32, 64, 80, 96, 128, 160, 192, 256, 384, 512)
    began = time.monotonic()
    srv = server()
    phases, requests = trace(srv, args.seed, minutes, args.phase_minutes, cycle)
    print(
        f"replica: {srv.replica.target.name} fp8 + "
        f"{srv.replica.draft.name if srv.replica.draft else '-'} draft "
        f"K={srv.replica.num_speculative_tokens} on {srv.replica.tensor_parallel_size} x "
        f"{srv.replica.gpu.product}; KV cache {srv.kv_tokens} tokens; tokens/step easy "
        f"{srv.tokens_per_step[0]:.2f} (reported {EASY_REPORTED}), hard "
        f"{srv.tokens_per_step[1]:.2f} (reported {HARD_REPORTED})"
    )
    print(
        f"trace (seed {args.seed}): {minutes:g} min, {len(requests)} requests, phases of "
        f"{args.phase_minutes:g} min (load over what the replica serves at its mix/easy "
        "share/median prompt/median output): "
        + " ".join(f"{p.load:g}/{p.easy:g}/{p.prompt_median}/{p.output_median}" for p in phases)
    )
    print("  req/s by phase: " + " ".join(f"{p.load * capacity(srv, p):.1f}" for p in phases))
    print(
        f"  prompt tokens lognormal sigma {PROMPT_SIGMA} (max {PROMPT_MAX}), output tokens "
        f"sigma {OUTPUT_SIGMA} (max {OUTPUT_MAX}); P99 target {SPEC.autoscaling.p99_target}"
    )
    vllm = perf.VLLM_MAX_NUM_SEQS
    default = simulate(f"static {vllm} (vLLM default)", requests, srv, vllm, None)
    swept = [simulate(f"static {limit}", requests, srv, limit, None) for limit in sweep]
    statics = [*swept, default]
    best = min(statics, key=lambda r: r.p99)
    best.name += " (best static)"
    initial = SPEC.batching.initial or SPEC.batching.max
    bands = simulate("three-band rule", requests, srv, initial, bands_controller())
    ours = simulate("specfleet decide", requests, srv, initial, specfleet_controller())
    blind = simulate(
        "specfleet without KV metrics",
        requests,
        srv,
        initial,
        specfleet_controller(kv_metrics=False),
    )
    length = args.phase_minutes * 60
    spans = [(i * length, (i + 1) * length) for i in range(len(phases))]
    schedule = [min(statics, key=lambda r: r.phase_p99(*span)).limits[0][1] for span in spans]
    oracle = simulate(
        "oracle (best static per phase)",
        requests,
        srv,
        schedule[0],
        lambda now, _observation, _limit: schedule[min(int(now // length), len(phases) - 1)],
    )
    generated = sum(r.output for r in requests)
    print(
        f"{'policy':34} {'p99 s':>8} {'mean s':>8} {'tok/s':>7} {'changes':>7} "
        f"{'preempted':>9} {'recomputed':>10}"
    )
    for result in [*statics, bands, ours, blind, oracle]:
        print(
            f"{result.name:34} {result.p99:8.2f} {result.mean:8.2f} {result.throughput:7.0f} "
            f"{result.changes:7d} {result.preemptions:9d} {result.recomputed / generated:10.1%}"
        )
    print("(recomputed: tokens prefilled again after preemptions, over all generated tokens)")
    for result in (ours, blind):
        print(
            f"{result.name} limits: "
            + " ".join(f"{t / 60:.1f}m:{limit}" for t, limit in result.limits)
        )
    print("oracle limits by phase: " + " ".join(str(limit) for limit in schedule))
    for result in [default, *([best] if best is not default else []), ours, blind, oracle]:
        print(
            f"P99 by phase, {result.name}: "
            + " ".join(f"{result.phase_p99(*span):.1f}" for span in spans)
        )
    print(f"({time.monotonic() - began:.0f}s)")
    for line in findings(statics, ours, blind, oracle, generated):
        print(line)
    print(
        f"p99_ratio_vs_static={ours.p99 / default.p99:.3f} "
        f"throughput_ratio_vs_static={ours.throughput / default.throughput:.3f} "
        f"p99_ratio_vs_best_static={ours.p99 / best.p99:.3f} "
        f"p99_ratio_vs_bands={ours.p99 / bands.p99:.3f} "
        f"changes={ours.changes} bands_changes={bands.changes}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
