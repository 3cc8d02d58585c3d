"""The simulated vLLM engine (`SimulatedEngine`): a pure state machine of vLLM's continuous
batching with speculative decoding. It admits requests, runs steps and finishes requests; it
never reads a clock or sleeps. The caller (`specfleet_runtime.sim.server`, or a test) passes
the time of every event and waits out each step's duration itself.

One step, as in vLLM's scheduler: first every running sequence needs room in the KV cache
for what the step may add to it (K drafts and one token of the target's); short of it, the
newest running sequence is preempted (its cache freed, back to the front of the waiting queue,
to recompute its prompt and what it had generated when admitted again) until the rest fit.
Only in a step that preempted nothing are waiting requests admitted, first-come first-served,
while fewer than `max_num_seqs` run and their context fits in the free cache. Newly admitted
requests are prefilled and gain a token (their first, or after a preemption their next);
every other running sequence decodes: the draft proposes K tokens, a prefix of them is
accepted (each with the per-token acceptance probability, stopping at the first rejection) and
the target adds one token of its own. The step lasts what `specfleet.perf` says it lasts on the
configured GPUs for the current batch, recomputed prefills included, so concurrency slows every
request the way it does on a real server. The cache holds what `perf.kv_cache_tokens` says the
replica's memory leaves for it (the planner's rule). It is counted in tokens (vLLM allocates
16-token blocks, which moves when it runs short by a block, not whether); the oldest running
sequence is never preempted, so one request alone larger than the cache still finishes (vLLM
refuses such a request when it arrives).

Timestamps are seconds on the caller's clock. The durations returned are wall seconds: the
modelled duration times the time factor and the latency factor, so a caller that sleeps them
and passes the real time back makes every latency the engine reports one a client can measure.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from specfleet import perf

WORDS = (
    "the", "model", "drafts", "tokens", "and", "verifies", "them", "in", "one", "pass",
    "while", "batches", "grow", "memory", "bandwidth", "limits", "each", "step", "of",
    "decoding", "so", "speculation", "pays", "until", "compute", "runs", "out", "a",
    "replica", "serves", "requests", "fast",
)  # fmt: skip
"""The simulator's vocabulary: token id i is the text " " + WORDS[i]."""


def detokenize(token_ids: tuple[int, ...]) -> str:
    """The text of simulated token ids."""
    return "".join(" " + WORDS[token] for token in token_ids)


@dataclass(frozen=True)
class Behaviour:
    """What an operator of the simulator may change while it runs (the admin endpoint)."""

    acceptance_rate: float
    """Accepted over draft tokens, as vLLM reports it and specfleet's autoscaler reads it."""
    latency_factor: float = 1.0
    """Multiplies every step's duration, to push latency past a target on demand."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.acceptance_rate <= 1.0:
            raise ValueError(f"acceptanceRate must be between 0 and 1, got {self.acceptance_rate}")
        if not self.latency_factor > 0:
            raise ValueError(f"latencyFactor must be above 0, got {self.latency_factor}")


@dataclass(frozen=True)
class EngineConfig:
    """What the simulated server runs, fixed at start like vLLM's own configuration."""

    replica: perf.Replica
    """Model, draft, GPUs and precision: the performance model times steps from it."""
    max_num_seqs: int = 256
    """At most this many sequences run in a step; the rest wait."""
    time_factor: float = 1.0
    """Multiplies every modelled duration: 0.01 runs a hundred times faster than the GPU."""
    seed: int = 0
    """Seeds acceptance sampling and every request's output tokens."""
    schedule: tuple[tuple[int, int, int], ...] = ()
    """vLLM's `num_speculative_tokens_per_batch_size`: (first, last, K) batch-size ranges from
    1 up; K is looked up by the number of running sequences at every step, capped at the
    replica's K, and the last range carries on. Empty: the replica's K at every step."""

    def __post_init__(self) -> None:
        if self.schedule and self.schedule[0][0] != 1:
            raise ValueError("the speculation schedule's first range must start at batch size 1")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if not self.time_factor > 0:
            raise ValueError(f"time_factor must be above 0, got {self.time_factor}")


@dataclass(frozen=True)
class Request:
    """One generation request, as the engine sees it."""

    request_id: str
    prompt_tokens: int
    """Prompt length in tokens."""
    max_tokens: int
    """Output length: the request finishes with reason `length` once it has this many."""
    text_seed: str = ""
    """Mixed into the engine's seed to choose the output tokens, so a prompt always gets the
    same text from the same seed, whatever else runs beside it."""


@dataclass(frozen=True)
class Emission:
    """What one request gained in one step."""

    request_id: str
    token_ids: tuple[int, ...]
    finish_reason: str | None
    """`length` on the request's last tokens, else None."""


@dataclass(frozen=True)
class Finished:
    """A request that completed, with the timings vLLM records for it."""

    request_id: str
    finish_reason: str
    e2e_seconds: float
    """Arrival to last token."""
    queue_seconds: float
    """Arrival to admission."""
    prompt_tokens: int
    generation_tokens: int


@dataclass(frozen=True)
class SpecDecodeCounts:
    """Speculative decoding in one step, as vLLM counts it."""

    drafts: int = 0
    """Sequences that decoded with drafts."""
    draft_tokens: int = 0
    """Tokens proposed: K per draft."""
    accepted_tokens: int = 0
    """Draft tokens the target accepted."""
    accepted_per_position: tuple[int, ...] = ()
    """Accepted tokens at each draft position 0..K-1."""


@dataclass(frozen=True)
class StepReport:
    """Everything one step produced: what clients receive and what the metrics record."""

    emissions: tuple[Emission, ...]
    prompt_tokens: int
    """Prompt tokens prefilled."""
    generation_tokens: int
    """Tokens emitted, over all requests."""
    time_to_first_token: tuple[float, ...]
    """One per request that got its first token."""
    inter_token_latency: tuple[float, ...]
    """One per request that decoded: time since its previous tokens (vLLM records one per
    request per step, however many tokens the step gave it)."""
    finished: tuple[Finished, ...]
    spec_decode: SpecDecodeCounts
    preemptions: int
    """Running sequences preempted at the step's start to make room in the KV cache (vLLM
    counts each in `vllm:num_preemptions`)."""


@dataclass
class _Sequence:
    request: Request
    arrival: float
    rng: random.Random
    """Chooses this request's output tokens."""
    admitted: float | None = None
    """When it was first admitted (a preempted request's queue time ends there, as in vLLM)."""
    last_token: float | None = None
    generated: int = 0
    cached: bool = False
    """Whether its context is in the KV cache: False until its prefill, and again after a
    preemption, when the next admission recomputes it."""

    @property
    def context_tokens(self) -> int:
        return self.request.prompt_tokens + self.generated


@dataclass
class _Step:
    prefill: list[_Sequence] = field(default_factory=list)
    decode: list[_Sequence] = field(default_factory=list)
    preemptions: int = 0
    k: int = 0
    """Tokens drafted per decoding sequence in this step."""


class SimulatedEngine:
    """The engine loop of one simulated vLLM server: its scheduler, KV cache and model."""

    def __init__(self, config: EngineConfig, behaviour: Behaviour) -> None:
        """Raises ValueError, with the numbers, when the replica's weights leave no room for a
        KV cache."""
        self.config = config
        self._rng = random.Random(config.seed)
        self._waiting: deque[_Sequence] = deque()
        self._running: dict[str, _Sequence] = {}
        self._step: _Step | None = None
        self._kv_capacity_tokens = int(perf.kv_cache_tokens(config.replica))
        self.behaviour = behaviour

    @property
    def behaviour(self) -> Behaviour:
        return self._behaviour

    @behaviour.setter
    def behaviour(self, behaviour: Behaviour) -> None:
        self._behaviour = behaviour
        k = self.config.replica.speculative_tokens
        self._acceptance = perf.acceptance_from_reported(behaviour.acceptance_rate, k) if k else 0.0

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def kv_cache_tokens(self) -> int:
        """Tokens the KV cache holds, target's and draft's together."""
        return self._kv_capacity_tokens

    @property
    def kv_cache_usage(self) -> float:
        """Share of the KV cache the running sequences fill (vLLM's kv_cache_usage_perc)."""
        used = sum(seq.context_tokens for seq in self._running.values())
        return used / self._kv_capacity_tokens

    def submit(self, request: Request, now: float) -> None:
        """Queue a request; the next step admits it if there is room."""
        if request.request_id in self._running or any(
            seq.request.request_id == request.request_id for seq in self._waiting
        ):
            raise ValueError(f"request {request.request_id} is already in the engine")
        if request.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {request.max_tokens}")
        rng = random.Random(f"{self.config.seed}:{request.text_seed}")
        self._waiting.append(_Sequence(request, now, rng))

    def abort(self, request_id: str) -> None:
        """Drop a request the client gave up on; like vLLM, it records no metrics."""
        self._running.pop(request_id, None)
        self._waiting = deque(s for s in self._waiting if s.request.request_id != request_id)

    def finish_early(self, request_id: str, now: float, reason: str) -> Finished | None:
        """End a request before max_tokens (a stop string, a completed JSON document): unlike
        an abort it counts as finished, with `reason`. None if it is not in the engine or
        was never admitted (then it is dropped like an abort)."""
        seq = self._running.pop(request_id, None)
        if seq is None:
            seq = next((s for s in self._waiting if s.request.request_id == request_id), None)
            self.abort(request_id)
        if seq is None or seq.admitted is None:
            return None
        return Finished(
            request_id=request_id,
            finish_reason=reason,
            e2e_seconds=now - seq.arrival,
            queue_seconds=seq.admitted - seq.arrival,
            prompt_tokens=seq.request.prompt_tokens,
            generation_tokens=seq.generated,
        )

    def start_step(self, now: float) -> float | None:
        """Preempt what the KV cache cannot hold, else admit what fits, and begin a step;
        returns its duration in wall seconds, or None when nothing runs. `finish_step` must
        follow before the next `start_step`."""
        if self._step is not None:
            raise RuntimeError("start_step called twice without finish_step")
        step = _Step()
        capacity = self._kv_capacity_tokens
        # What each sequence may gain in the step: K drafts and the target's own token.
        per_sequence = self.config.replica.speculative_tokens + 1
        needed = sum(seq.context_tokens + per_sequence for seq in self._running.values())
        # Newest first out, each to the front of the queue: the oldest preempted waits first.
        while len(self._running) > 1 and needed > capacity:
            _, seq = self._running.popitem()
            needed -= seq.context_tokens + per_sequence
            seq.cached = False
            self._waiting.appendleft(seq)
            step.preemptions += 1
        while (
            not step.preemptions
            and self._waiting
            and len(self._running) < self.config.max_num_seqs
            and (
                not self._running
                or needed + self._waiting[0].context_tokens + per_sequence <= capacity
            )
        ):
            seq = self._waiting.popleft()
            needed += seq.context_tokens + per_sequence
            if seq.admitted is None:
                seq.admitted = now
            self._running[seq.request.request_id] = seq
        if not self._running:
            return None
        for seq in self._running.values():
            (step.decode if seq.cached else step.prefill).append(seq)
        step.k = self.k_at(len(self._running))
        self._step = step
        replica = self.config.replica
        seconds = 0.0
        # vLLM mixes prefills and decodes in one step: the prompts add their own arithmetic
        # to a decode step that reads the weights anyway. A preempted sequence recomputes its
        # whole context: the work it wastes.
        if step.decode:
            context = sum(seq.context_tokens for seq in step.decode) / len(step.decode)
            seconds += perf.step_time(replica, len(step.decode), context, step.k).seconds
        if step.prefill:
            prompt = sum(seq.context_tokens for seq in step.prefill)
            if step.decode:
                seconds += perf.added_prefill_seconds(replica, prompt)
            else:
                seconds += perf.time_to_first_token(replica, prompt)
        return seconds * self.config.time_factor * self._behaviour.latency_factor

    def finish_step(self, now: float) -> StepReport:
        """End the step begun by `start_step`: hand out tokens and finish requests."""
        step, self._step = self._step, None
        if step is None:
            raise RuntimeError("finish_step called without start_step")
        k = step.k
        per_position = [0] * self.config.replica.speculative_tokens
        emissions: list[Emission] = []
        finished: list[Finished] = []
        ttfts: list[float] = []
        itls: list[float] = []
        prompt_tokens = drafts = accepted_total = 0
        decoding = [(seq, False) for seq in step.prefill] + [(seq, True) for seq in step.decode]
        for seq, decodes in decoding:
            if self._running.get(seq.request.request_id) is not seq:
                continue  # aborted during the step
            gained = 1
            if seq.generated == 0:
                prompt_tokens += seq.request.prompt_tokens
                ttfts.append(now - seq.arrival)
            else:
                # After a preemption too: vLLM times its recomputed token from the last one.
                assert seq.last_token is not None
                itls.append(now - seq.last_token)
                if k and decodes:
                    accepted = self._sample_accepted(k)
                    drafts += 1
                    accepted_total += accepted
                    for position in range(accepted):
                        per_position[position] += 1
                    gained += accepted
            seq.cached = True
            # Drafts past max_tokens are counted (vLLM proposed them) but not emitted.
            gained = min(gained, seq.request.max_tokens - seq.generated)
            seq.generated += gained
            seq.last_token = now
            tokens = tuple(seq.rng.randrange(len(WORDS)) for _ in range(gained))
            done = seq.generated >= seq.request.max_tokens
            emissions.append(Emission(seq.request.request_id, tokens, "length" if done else None))
            if done:
                finished.append(self._finish(seq, now))
        return StepReport(
            emissions=tuple(emissions),
            prompt_tokens=prompt_tokens,
            generation_tokens=sum(len(e.token_ids) for e in emissions),
            time_to_first_token=tuple(ttfts),
            inter_token_latency=tuple(itls),
            finished=tuple(finished),
            spec_decode=SpecDecodeCounts(drafts, drafts * k, accepted_total, tuple(per_position)),
            preemptions=step.preemptions,
        )

    def k_at(self, batch_size: int) -> int:
        """K in a step of `batch_size` running sequences, as vLLM's scheduler looks it up."""
        k = self.config.replica.speculative_tokens
        if not k or not self.config.schedule:
            return k
        chosen = self.config.schedule[-1][2]
        for first, last, tokens in self.config.schedule:
            if first <= batch_size <= last:
                chosen = tokens
                break
            if batch_size < first:
                break
            chosen = tokens  # a gap carries the previous range's K
        return min(k, chosen)

    def _sample_accepted(self, k: int) -> int:
        """The accepted prefix of K drafts: a geometric count truncated at K."""
        accepted = 0
        while accepted < k and self._rng.random() < self._acceptance:
            accepted += 1
        return accepted

    def _finish(self, seq: _Sequence, now: float) -> Finished:
        del self._running[seq.request.request_id]
        assert seq.admitted is not None
        return Finished(
            request_id=seq.request.request_id,
            finish_reason="length",
            e2e_seconds=now - seq.arrival,
            queue_seconds=seq.admitted - seq.arrival,
            prompt_tokens=seq.request.prompt_tokens,
            generation_tokens=seq.generated,
        )
