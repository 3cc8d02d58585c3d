"""Speculation schedules side by side on the calibrated performance model: no speculation,
the classic fixed K=5, the best fixed K in hindsight, and specfleet's schedule.

What is simulated: one replica of the 70B example (`examples/llama-70b-speculative.yaml`:
Llama 3.1 70B, FP8 weights, a Llama 3.2 3B draft with `numSpeculativeTokens` 5, on the
H100-80GB tensor-parallel size the planner picks, batch limit `batching.max`). The classic
configuration of a 70B target with that 3B draft at K=5 is the same replica at a fixed K=5.
Four ways of choosing K run on the SAME requests at every load level and prompt mix:

- no speculation: K=0 everywhere, on the replica served without its draft (vLLM without a
  speculative config: no draft prefill, the draft's memory goes to the KV cache). A fixed
  K=0 with the draft loaded costs the same steps and more prefill, so it is never better;
- fixed K=5 at every batch size (the classic configuration);
- the oracle: every fixed K from 0 to 5 is run, and of those whose throughput is within 1% of
  the best of them it keeps the one with the lowest P99: the best fixed K in hindsight, per
  load level and mix;
- specfleet: `schedule.best` from the per-position acceptance a warm-up run measures (below), looked
  up per step by the running batch size with `schedule.k_at`, as vLLM's
  `num_speculative_tokens_per_batch_size` does.

The requests: Poisson arrivals; prompt and output lengths lognormal (medians 300 and 200
tokens, as in bench/autoscale.py); every random draw comes from `--seed`. The two mixes
differ in how well the draft guesses: every request draws its own reported acceptance rate
(accepted over drafted tokens, as vLLM reports it at K=5) from a Beta distribution with mean
0.8 (easy: code, extraction) or 0.45 (hard: open chat), and its draft tokens are accepted with
the per-token probability behind that rate (`perf.acceptance_from_reported`), each position
independently, up to the first rejection. Which tokens the draft gets wrong is a property of
the text, not of K: under greedy decoding every schedule generates the same output, and the
draft's guess at an output position, given the target's tokens before it, is right or wrong
whatever K proposed it. So each request draws once the positions where the draft misses
(`Misses`), and a step drafting K from position g accepts the tokens up to the next miss, at
most K. The same requests (lengths, rates, misses) run at every load level and under every
configuration; only the arrival times scale with the load, so differences between columns
come from the schedules, not from different luck. (With a fresh draw at every step, two
schedules' P99s differed by a percent on luck alone.) Between seeds the ratios still move: a
P99 is the 30th slowest of 3000 requests.

What the scheduler knows: only what vLLM's counters give, summed over every step, not each
request's own rate: accepted tokens at each draft position over drafts
(`vllm:spec_decode_num_accepted_tokens_per_pos`, as the operator reads it), and the mean
context of a running sequence (the KV cache's tokens over the running sequences, as
`vllm:kv_cache_usage_perc` gives it). The warm-up runs the mix at half of its capacity at the
spec's K=5 (what a replica runs before any schedule exists), on requests of another seed;
`schedule.best` gets the per-position rates and that context. Over a mix the rates fall slower
than any one acceptance would say (easy requests accept long runs), which a larger K gains
from: computed from the mean acceptance alone, the schedule drafted too little (1.6% of P99
behind K=5 near capacity).
The counters weigh each request by its steps, and a hard request takes more of them, so the
measured rate sits below the mean of the requests' rates (both are printed).

The model, one engine step at a time:
- admission: requests wait FIFO; at the start of a step those that arrived are admitted while
  fewer than `batching.max` sequences run and the KV cache (`perf.kv_cache_tokens`) holds
  every admitted sequence's whole prompt and output (reserved up front, so nothing is ever
  preempted; the example's cache, about 520k tokens with the draft's, holds 256 sequences
  of about 2000 tokens, three times the mean request, so it seldom binds);
- a step: K = `schedule.k_at(schedule, b)` for the b running sequences; its duration is
  `perf.step_time(replica, b, mean context, K)` plus the prefill of the prompts admitted in it
  (chunked prefill rides on the decode step). A prefill's cost is
  `perf.added_prefill_seconds`: the step already reads the weights and pays the all-reduce
  latencies, so only a prompt's arithmetic, attention and activations add. A step with
  nothing to decode costs `perf.time_to_first_token` of its first prompt instead;
- each admitted prompt yields its first token at the end of its prefill step and decodes from
  the next; each decoding sequence gains its accepted prefix + 1 tokens, the prefix running
  up to its next miss, at most K;
- a request's latency is from its arrival to its last token, queueing included; its P99 is
  the nearest-rank 99th percentile over every request. Throughput is the output tokens
  generated from the arrival of the first tenth's last request to the last arrival, per
  second: by then the replica has filled up, and a configuration that keeps up generates what
  arrives (what is in flight at either end is alike in expectation), while one that cannot
  shows its capacity, lower. (Tokens over the time to the last completion would instead
  charge each configuration its last request's latency: about 5% between fixed Ks that all
  keep up.)

Load levels are fractions of the best configuration's capacity for the mix (`capacity`: the
requests per second it serves at `batching.max` sequences, decode and prefill, from the mix's
requests), from light up to 0.95.

Output: the replica; for each mix its measured acceptance, specfleet's schedule, the best
capacity, and how close the schedule comes on the model itself to the goodput of the best K
at each batch size (the worst batch size's share: below 1 where the schedule keeps a smaller
K, as `schedule.MIN_GAIN` asks, though a larger one pays); then one row per load level and
mix: the load (requests per second and over the best capacity), and for no speculation,
fixed K=5, the oracle (its K) and specfleet, the throughput (output tokens/s) and P99
latency (seconds); then the P99 of every fixed K. The last line is
`worst_p99_ratio_vs_oracle=<w> worst_p99_ratio_vs_fixed_k=<f> worst_p99_ratio_vs_no_spec=<n>
best_p99_ratio_vs_fixed_k=<b> best_p99_ratio_vs_no_spec=<c>`: specfleet's P99 over the
other's, the largest (worst_) or smallest (best_) over load levels and mixes, counted only
where specfleet's throughput is equal or better within 1% (at least 0.99 times the other's);
below 1 specfleet's P99 is lower. All of it is measured side by side in one run.

Run: .venv/bin/python bench/speculation.py [--seed N] [--quick] [--requests N]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from specfleet import catalog, perf, schedule
from specfleet import plan as planner
from specfleet.api.inferencemodel import InferenceModelSpec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "llama-70b-speculative.yaml"
"""The InferenceModel whose replica is simulated."""

CLASSIC_K = 5
"""The classic configuration's K at every batch size."""

PROMPT_MEDIAN, PROMPT_SIGMA, PROMPT_MAX = 300, 0.7, 6000
OUTPUT_MEDIAN, OUTPUT_SIGMA, OUTPUT_MAX = 200, 0.8, 2048

THROUGHPUT_TOLERANCE = 0.99
"""Throughput at least this share of another's counts as equal or better."""

WARMUP_LOAD = 0.5
"""The warm-up's load, as a share of the mix's best capacity."""

LOADS = (0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.95)
QUICK_LOADS = (0.1, 0.6, 0.95)
REQUESTS, QUICK_REQUESTS = 3000, 500
WARMUP_REQUESTS, QUICK_WARMUP_REQUESTS = 1000, 300


@dataclass(frozen=True)
class Mix:
    """A prompt mix: every request's reported acceptance rate drawn from a Beta distribution
    with this mean and concentration (0 and 1 are exact: every request at that rate)."""

    name: str
    reported: float
    """The mean of the requests' reported rates (accepted over drafted tokens at K=5)."""
    concentration: float = 20.0
    """Beta's alpha + beta: 20 gives a standard deviation of about 0.09 at 0.8, 0.11 at 0.45."""

    def draw(self, rng: random.Random) -> float:
        if self.reported in (0.0, 1.0):
            return self.reported
        alpha = self.reported * self.concentration
        return rng.betavariate(alpha, self.concentration - alpha)


MIXES = (Mix("easy", 0.8), Mix("hard", 0.45))


@dataclass(frozen=True)
class Request:
    arrival: float
    prompt: int
    output: int
    acceptance: float
    """Per-token probability that the draft's next token is accepted."""
    reported: float
    """The rate vLLM would report for this request alone at K=5."""


@dataclass(frozen=True)
class Server:
    """A replica as served: its performance model, batch limit and KV cache."""

    replica: perf.Replica
    max_batch: int
    kv_tokens: int
    idle_step_seconds: float
    """A step with no sequence to decode: the engine's costs and a pass over the model's
    weights (`perf.time_to_first_token` of an empty prompt); prompts add to it."""

    def without_draft(self) -> Server:
        plain = self.replica.without_draft()
        return Server(
            plain,
            self.max_batch,
            int(perf.kv_cache_tokens(plain)),
            perf.time_to_first_token(plain, 0),
        )

    def prefill_seconds(self, prompt: int) -> float:
        """What a prompt's prefill adds to a step that already reads the weights."""
        return perf.added_prefill_seconds(self.replica, prompt)


def load_spec(path: Path = EXAMPLE) -> InferenceModelSpec:
    document = yaml.safe_load(path.read_text())
    return InferenceModelSpec.model_validate(document["spec"])


def server(spec: InferenceModelSpec | None = None) -> Server:
    """The replica of `spec` (default: the 70B example) with its draft, as the planner sizes
    it."""
    spec = spec or load_spec()
    if spec.draft is None or spec.draft.model is None:
        raise ValueError("the spec has no draft model")
    plan = planner.plan("bench", spec)
    if not plan.fits:
        raise ValueError("; ".join(plan.errors))
    replica = perf.Replica(
        catalog.model(spec.model.name),
        catalog.GPUS[spec.gpu.product],
        plan.tensor_parallel_size,
        "fp8" if plan.quantization.startswith("fp8") else "bf16",
        catalog.model(spec.draft.model.name),
        spec.draft.num_speculative_tokens,
    )
    return Server(
        replica,
        spec.batching.max,
        int(perf.kv_cache_tokens(replica)),
        perf.time_to_first_token(replica, 0),
    )


def _lognormal(rng: random.Random, median: int, sigma: float, most: int) -> int:
    return min(most, max(1, round(rng.lognormvariate(math.log(median), sigma))))


def requests(mix: Mix, rate: float, count: int, seed: int) -> list[Request]:
    """`count` requests of `mix` arriving as a Poisson process at `rate` per second. Their
    lengths and rates come from one stream and the gaps between arrivals from another, so the
    same seed gives the same requests at every rate, only closer together."""
    shape = random.Random(f"{seed}:{mix.name}:requests")
    gaps = random.Random(f"{seed}:{mix.name}:arrivals")
    k = CLASSIC_K
    out: list[Request] = []
    t = 0.0
    for _ in range(count):
        t += gaps.expovariate(1.0) / rate
        prompt = _lognormal(shape, PROMPT_MEDIAN, PROMPT_SIGMA, PROMPT_MAX)
        output = _lognormal(shape, OUTPUT_MEDIAN, OUTPUT_SIGMA, OUTPUT_MAX)
        reported = mix.draw(shape)
        out.append(Request(t, prompt, output, perf.acceptance_from_reported(reported, k), reported))
    return out


@dataclass
class Result:
    name: str
    p99: float
    mean: float
    throughput: float
    """Output tokens per second, between the arrivals of the first tenth's last request and
    of the last request."""
    drafted: int
    accepted: int
    drafts: int
    """Sequence steps that drafted."""
    accepted_per_position: list[int]
    """Accepted tokens at each draft position, as vLLM's per-position counter counts them."""
    mean_context: float
    """Tokens in the KV cache per running sequence, averaged over busy time."""
    mean_batch: float
    """Running sequences, averaged over busy time."""
    latencies: list[float] = field(default_factory=list, repr=False)

    @property
    def acceptance_rate(self) -> float:
        """Accepted over drafted tokens, as vLLM's counters report it (0 without drafts)."""
        return self.accepted / self.drafted if self.drafted else 0.0


class Misses:
    """Where the draft's guesses for one request's output are wrong: each output position from 1
    (position 0 is the prefill's token) is a miss with probability 1 - `acceptance`,
    independently, drawn in order from the request's own stream as far as decoding reaches."""

    def __init__(self, acceptance: float, stream: random.Random) -> None:
        # 1 / ln(a) turns a uniform draw u into a run of hits floor(ln(u) / ln(a)), whose
        # chance to reach j is a^j; a = 0 hits nothing; a = 1 is kept just below 1.
        self._scale = 1.0 / math.log(min(acceptance, 1.0 - 1e-12)) if acceptance > 0 else 0.0
        self._stream = stream
        self._next = 0
        self._draw(1)

    def _draw(self, position: int) -> None:
        self._next = position + int(math.log(1.0 - self._stream.random()) * self._scale)

    def accepted(self, position: int, k: int) -> int:
        """Draft tokens accepted by a step that drafts `k` for output positions from
        `position` on: those up to the first miss, at most `k`."""
        while self._next < position:
            self._draw(self._next + 1)
        return min(k, self._next - position)


def p99(latencies: Sequence[float]) -> float:
    """The nearest-rank 99th percentile."""
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def simulate(  # noqa: PLR0915  (one engine step, in order, reads best in one loop)
    name: str, reqs: Sequence[Request], srv: Server, plan: schedule.Schedule, seed: int
) -> Result:
    """Serve `reqs` on `srv`, K per step from `plan` by the running batch size. Every request
    draws its misses from its own stream (from `seed` and its position), so the same request
    meets the same text under every schedule."""
    replica = srv.replica
    if replica.draft is None and any(entry.k for entry in plan):
        raise ValueError(f"{name}: a schedule with K > 0 needs a replica with a draft")
    total = len(reqs)
    misses = [
        Misses(r.acceptance, random.Random(f"{seed}:{index}")) for index, r in enumerate(reqs)
    ]
    prefill = [srv.prefill_seconds(r.prompt) for r in reqs]
    per_sequence = replica.engine.sequence_overhead_seconds
    queue: deque[int] = deque()
    running: list[int] = []
    generated = [0] * total
    latencies = [0.0] * total
    done = 0
    next_arrival = 0
    reserved = 0  # KV cache tokens reserved by running sequences
    context = 0  # tokens in the KV cache of the running sequences
    drafted = accepted = drafts = 0
    per_position = [0] * replica.speculative_tokens
    busy = batch_time = context_time = 0.0
    t = reqs[0].arrival if reqs else 0.0
    # Throughput is counted between the arrivals of the first tenth's last request and of the
    # last request: the system has filled up by then, and what is in flight at either end is
    # alike in expectation whenever the configuration keeps up. (Requests that all arrive at
    # once have no such span: then every token counts, up to the last completion.)
    window_start, window_end = reqs[total // 10].arrival, reqs[-1].arrival
    if window_end <= window_start:
        window_start, window_end = -math.inf, math.inf
    in_window = 0
    last = t
    while done < total:
        while next_arrival < total and reqs[next_arrival].arrival <= t:
            queue.append(next_arrival)
            next_arrival += 1
        if not running and not queue:
            t = reqs[next_arrival].arrival
            continue
        admitted: list[int] = []
        while queue and len(running) + len(admitted) < srv.max_batch:
            r = reqs[queue[0]]
            if reserved + r.prompt + r.output > srv.kv_tokens and (running or admitted):
                break
            admitted.append(queue.popleft())
            reserved += r.prompt + r.output
        b = len(running)
        k = schedule.k_at(plan, b) if b else 0
        if b:
            duration = perf.step_time(replica, b, context / b, k).seconds
        else:
            duration = srv.idle_step_seconds - per_sequence
        duration += sum(prefill[i] + per_sequence for i in admitted)
        end = t + duration
        counting = window_start < end <= window_end
        busy += duration
        batch_time += b * duration
        context_time += context * duration
        finished = False
        for i in running:
            gained = 1
            if k:
                prefix = misses[i].accepted(generated[i], k)
                accepted += prefix
                gained += prefix
                drafts += 1
                for position in range(prefix):
                    per_position[position] += 1
            drafted += k
            if counting:
                in_window += min(gained, reqs[i].output - generated[i])
            generated[i] += gained
            context += gained
            if generated[i] >= reqs[i].output:
                finished = True
        for i in admitted:
            in_window += counting
            generated[i] = 1
            context += reqs[i].prompt + 1
            running.append(i)
            if reqs[i].output <= 1:
                finished = True
        if finished:
            still: list[int] = []
            for i in running:
                r = reqs[i]
                if generated[i] >= r.output:
                    latencies[i] = end - r.arrival
                    context -= r.prompt + generated[i]
                    reserved -= r.prompt + r.output
                    done += 1
                    last = end
                else:
                    still.append(i)
            running = still
        t = end
    return Result(
        name,
        p99(latencies),
        sum(latencies) / total,
        in_window / (min(window_end, last) - max(window_start, reqs[0].arrival)),
        drafted,
        accepted,
        drafts,
        per_position,
        context_time / batch_time if batch_time else 0.0,
        batch_time / busy if busy else 0.0,
        latencies,
    )


def mean_steps(srv: Server, reqs: Sequence[Request], k: int) -> float:
    """Steps a request of `reqs` holds a slot for at K, on average: its prefill step, then
    its other tokens at its expected tokens per step."""
    return sum(
        1 + (r.output - 1) / perf.expected_tokens_per_step(r.acceptance, k) for r in reqs
    ) / len(reqs)


def capacity(srv: Server, reqs: Sequence[Request], plan: schedule.Schedule) -> float:
    """Requests per second the replica serves with `batching.max` sequences running, at the
    schedule's K there: each step decodes the batch at the requests' mean context (weighted
    by the steps they run) and prefills the requests that replace those finishing."""
    k = schedule.k_at(plan, srv.max_batch)
    batch = srv.max_batch
    steps = mean_steps(srv, reqs, k)
    weights = [1 + (r.output - 1) / perf.expected_tokens_per_step(r.acceptance, k) for r in reqs]
    context = sum(w * (r.prompt + r.output / 2) for w, r in zip(weights, reqs, strict=True))
    context /= sum(weights)
    prefill = sum(srv.prefill_seconds(r.prompt) for r in reqs) / len(reqs)
    step = perf.step_time(srv.replica, batch, context, k).seconds
    admitted = batch / steps
    return admitted / (step + admitted * (prefill + srv.replica.engine.sequence_overhead_seconds))


@dataclass(frozen=True)
class Measured:
    """What the warm-up's counters show for a mix, and specfleet's schedule from it."""

    rate: float
    """Accepted over drafted tokens over the warm-up."""
    acceptance: float
    """The per-token acceptance behind `rate` at K=5."""
    context: float
    """Tokens in the KV cache per running sequence."""
    requests_mean_rate: float
    """The mean of the warm-up requests' own rates (which the scheduler does not see)."""
    plan: schedule.Schedule


def measure(srv: Server, mix: Mix, rate: float, count: int, seed: int) -> Measured:
    """Run `count` requests of `mix` at `rate` per second at the spec's K and read the
    counters; specfleet's schedule is `schedule.best` at what they show."""
    k = srv.replica.num_speculative_tokens
    warm = requests(mix, rate, count, seed)
    result = simulate("warm-up", warm, srv, schedule.fixed(k, srv.max_batch), seed)
    acceptance = perf.acceptance_from_reported(result.acceptance_rate, k)
    # What vLLM's per-position counter shows: each position's accepted tokens over drafts.
    by_position = [count / result.drafts for count in result.accepted_per_position]
    plan = schedule.best(srv.replica, by_position, srv.max_batch, result.mean_context)
    return Measured(
        result.acceptance_rate,
        acceptance,
        result.mean_context,
        sum(r.reported for r in warm) / len(warm),
        plan,
    )


def goodput_shortfall(
    srv: Server, found: Measured, plan: schedule.Schedule | None = None
) -> tuple[float, int]:
    """On the model, at the measured acceptance and context: the smallest share, over batch
    sizes 1 to `batching.max`, of the best K's goodput that the schedule's K gets, and the
    batch size where it is smallest."""
    plan = found.plan if plan is None else plan
    replica = srv.replica
    worst, where = 1.0, 1
    for batch in range(1, srv.max_batch + 1):
        rates = [
            schedule.goodput(replica, batch, found.context, found.acceptance, k)
            for k in range(replica.num_speculative_tokens + 1)
        ]
        share = rates[schedule.k_at(plan, batch)] / max(rates)
        if share < worst:
            worst, where = share, batch
    return worst, where


@dataclass(frozen=True)
class Row:
    """One load level of one mix: every configuration's result."""

    mix: str
    rate: float
    """Requests per second."""
    load: float
    """`rate` over the mix's best capacity."""
    no_spec: Result
    fixed: tuple[Result, ...]
    """Fixed K = 0 (no speculation) to the spec's K, in order."""
    specfleet: Result

    @property
    def classic(self) -> Result:
        return self.fixed[min(CLASSIC_K, len(self.fixed) - 1)]

    @property
    def oracle(self) -> Result:
        """Of the fixed Ks within 1% of their best throughput, the lowest P99."""
        most = max(r.throughput for r in self.fixed)
        keeping = [r for r in self.fixed if r.throughput >= THROUGHPUT_TOLERANCE * most]
        return min(keeping, key=lambda r: r.p99)


def compare(
    srv: Server,
    plain: Server,
    mix: Mix,
    plan: schedule.Schedule,
    rate: float,
    load: float,
    count: int,
    seed: int,
) -> Row:
    """Every configuration on the same `count` requests of `mix` at `rate` per second."""
    reqs = requests(mix, rate, count, seed)
    fixed = [simulate("K=0", reqs, plain, schedule.fixed(0, plain.max_batch), seed)]
    for k in range(1, srv.replica.num_speculative_tokens + 1):
        fixed.append(simulate(f"K={k}", reqs, srv, schedule.fixed(k, srv.max_batch), seed))
    ours = simulate("specfleet", reqs, srv, plan, seed)
    return Row(mix.name, rate, load, fixed[0], tuple(fixed), ours)


def ratios(rows: Sequence[Row]) -> dict[str, float]:
    """specfleet's P99 over each other configuration's, worst and best over the rows where
    specfleet's throughput is equal or better within 1%. NaN where no row counts."""

    def over(other: Result, row: Row) -> float | None:
        if row.specfleet.throughput < THROUGHPUT_TOLERANCE * other.throughput:
            return None
        return row.specfleet.p99 / other.p99

    def pick(values: Sequence[float | None], best: bool) -> float:
        counted = [v for v in values if v is not None]
        if not counted:
            return math.nan
        return min(counted) if best else max(counted)

    vs_oracle = [over(row.oracle, row) for row in rows]
    vs_fixed = [over(row.classic, row) for row in rows]
    vs_plain = [over(row.no_spec, row) for row in rows]
    return {
        "worst_p99_ratio_vs_oracle": pick(vs_oracle, best=False),
        "worst_p99_ratio_vs_fixed_k": pick(vs_fixed, best=False),
        "worst_p99_ratio_vs_no_spec": pick(vs_plain, best=False),
        "best_p99_ratio_vs_fixed_k": pick(vs_fixed, best=True),
        "best_p99_ratio_vs_no_spec": pick(vs_plain, best=True),
    }


def run(
    srv: Server,
    mixes: Sequence[Mix],
    loads: Sequence[float],
    count: int,
    warmup: int,
    seed: int,
) -> tuple[dict[str, Measured], dict[str, float], list[Row]]:
    """The whole comparison: per mix, the warm-up, the best capacity, then every load level.
    Returns the measurements, capacities (requests/s) and rows."""
    plain = srv.without_draft()
    measured: dict[str, Measured] = {}
    capacities: dict[str, float] = {}
    rows: list[Row] = []
    for mix in mixes:
        sample = requests(mix, 1.0, count, seed)
        plans = [schedule.fixed(k, srv.max_batch) for k in range(1, CLASSIC_K + 1)]
        spare = capacity(plain, sample, schedule.fixed(0, srv.max_batch))
        guess = max(spare, *(capacity(srv, sample, p) for p in plans))
        found = measure(srv, mix, WARMUP_LOAD * guess, warmup, seed + 1)
        best = max(guess, capacity(srv, sample, found.plan))
        measured[mix.name], capacities[mix.name] = found, best
        for load in loads:
            rows.append(compare(srv, plain, mix, found.plan, load * best, load, count, seed))
    return measured, capacities, rows


def last_line(values: dict[str, float]) -> str:
    return " ".join(f"{key}={value:.3f}" for key, value in values.items())


def table(rows: Sequence[Row]) -> list[str]:
    head = (
        f"{'load':>11} {'mix':5} | {'no spec':>13} | {'fixed K=5':>13} | "
        f"{'oracle':>17} | {'specfleet':>13} | P99 s by fixed K 0..5"
    )
    units = (
        f"{'req/s (cap)':>11} {'':5} | {'tok/s':>6} {'p99 s':>6} | {'tok/s':>6} {'p99 s':>6} | "
        f"{'K':>3} {'tok/s':>6} {'p99 s':>6} | {'tok/s':>6} {'p99 s':>6} |"
    )
    lines = [head, units]
    for row in rows:
        oracle = row.oracle
        cells = [
            f"{row.rate:5.2f} ({row.load:.2f})".rjust(11) + f" {row.mix:5}",
            f"{row.no_spec.throughput:6.0f} {row.no_spec.p99:6.2f}",
            f"{row.classic.throughput:6.0f} {row.classic.p99:6.2f}",
            f"{oracle.name[2:]:>3} {oracle.throughput:6.0f} {oracle.p99:6.2f}",
            f"{row.specfleet.throughput:6.0f} {row.specfleet.p99:6.2f}",
            " ".join(f"{r.p99:.2f}" for r in row.fixed),
        ]
        lines.append(" | ".join(cells))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="fewer load levels and requests")
    parser.add_argument("--requests", type=int, help="requests per load level and mix")
    args = parser.parse_args(argv)
    count = args.requests or (QUICK_REQUESTS if args.quick else REQUESTS)
    warmup = QUICK_WARMUP_REQUESTS if args.quick else WARMUP_REQUESTS
    loads = QUICK_LOADS if args.quick else LOADS
    srv = server()
    replica = srv.replica
    print(
        f"replica: {replica.target.name} {replica.weights} + "
        f"{replica.draft.name if replica.draft else '-'} draft, K up to "
        f"{replica.num_speculative_tokens}, on {replica.tensor_parallel_size} x "
        f"{replica.gpu.product}; batch limit {srv.max_batch}; KV cache {srv.kv_tokens} tokens "
        f"({srv.without_draft().kv_tokens} without the draft)"
    )
    print(
        f"requests: {count} per load level and mix (seed {args.seed}); prompt lognormal median "
        f"{PROMPT_MEDIAN} sigma {PROMPT_SIGMA}, output median {OUTPUT_MEDIAN} sigma "
        f"{OUTPUT_SIGMA}; warm-up {warmup} requests at {WARMUP_LOAD:g} of capacity, K=5"
    )
    measured, capacities, rows = run(srv, MIXES, loads, count, warmup, args.seed)
    for mix in MIXES:
        found = measured[mix.name]
        share, batch = goodput_shortfall(srv, found)
        print(
            f"{mix.name}: requests' mean reported rate {found.requests_mean_rate:.3f}, "
            f"measured {found.rate:.3f} (per-token {found.acceptance:.3f}), context "
            f"{found.context:.0f} tokens; best capacity {capacities[mix.name]:.2f} req/s\n"
            f"  specfleet schedule {schedule.describe(found.plan)}; on the model it gets "
            f"{share:.3f} of the best K's goodput at worst (batch {batch}; MIN_GAIN "
            f"{schedule.MIN_GAIN:g})"
        )
    for line in table(rows):
        print(line)
    print(last_line(ratios(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
