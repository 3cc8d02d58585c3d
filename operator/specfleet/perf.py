"""The performance model of one vLLM replica: how long a batched decode step takes, how many
tokens speculation gains per step, and what that means for throughput and latency.

A roofline model: a step costs the larger of its memory traffic over the GPU's memory bandwidth
and its arithmetic over the GPU's tensor throughput (datasheet values from `specfleet.catalog`),
plus a small fixed overhead. It reproduces the known shape of speculative decoding: at small
batches decoding is memory-bound, so verifying K+1 tokens costs about as much as one and
speculation pays; as the batch grows the step becomes compute-bound, the K rejected-or-accepted
verifications cost real FLOPs, and the speedup falls toward (or below) 1.

Called by the planner (expected decode speed, whether speculation pays), by the simulator
(`specfleet_runtime.sim`, which times its steps with it) and by the benchmarks. Pure: no I/O,
no clock. Times are seconds, rates per second.

Deliberate simplifications, each small next to what the model captures:
- attention FLOPs are left out (2 FLOPs per parameter per token only); attention's cost shows up
  on the memory side as KV cache reads;
- the draft runs at the target's tensor-parallel size (specfleet renders
  `draft_tensor_parallel_size` equal to the target's) and, like vLLM serves a separate draft
  model unless told otherwise, with 16-bit weights whatever the target's precision (its
  arithmetic is counted at the target's throughput);
- every sequence of a batch is at the same context length (pass the batch's mean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from specfleet.catalog import GPU, ModelArchitecture

Precision = Literal["bf16", "fp8"]
"""Weight precision: 16-bit, or 8-bit floating point (FP8)."""

WEIGHT_BYTES: dict[Precision, float] = {"bf16": 2.0, "fp8": 1.0}
"""Bytes per parameter at each precision."""

DRAFT_WEIGHT_BYTES = WEIGHT_BYTES["bf16"]
"""A separate draft model's bytes per parameter: vLLM's --quantization applies to the target
only (the planner sizes drafts the same way)."""

STEP_OVERHEAD_SECONDS = 0.001
"""Fixed cost of every engine step (scheduling, sampling, kernel launches), independent of the
batch. A millisecond is typical of vLLM with CUDA graphs."""

TENSOR_PARALLEL_EFFICIENCY = 0.9
"""Fraction of ideal speed kept per doubling of tensor parallelism: splitting a step over GPUs
adds all-reduces after every layer, so 2 GPUs run at 0.9 of twice one GPU's speed, 4 at 0.81."""

MAX_SPECULATIVE_TOKENS = 16
"""The largest K the API allows."""


@dataclass(frozen=True)
class Replica:
    """One vLLM server: what it serves and on which GPUs."""

    target: ModelArchitecture
    """The model that answers."""
    gpu: GPU
    """The GPU product every GPU of the replica is."""
    tensor_parallel_size: int = 1
    """GPUs the target (and the draft) are split over."""
    weights: Precision = "bf16"
    """Weight precision of the target. FP8 halves weight traffic on every GPU; it also
    doubles tensor throughput where FP8 is native (`GPU.fp8_native`), elsewhere vLLM falls back
    to weight-only FP8 and computes at BF16."""
    draft: ModelArchitecture | None = None
    """The speculative draft model; None decodes one token per step."""
    num_speculative_tokens: int = 5
    """K: tokens the draft proposes per step. Ignored without a draft."""
    kv_cache_bytes: float = 2.0
    """Bytes per KV cache element: 2 for vLLM's default (`auto`, 16-bit), 1 for fp8."""

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if (
            self.draft is not None
            and not 1 <= self.num_speculative_tokens <= MAX_SPECULATIVE_TOKENS
        ):
            raise ValueError(
                f"num_speculative_tokens must be 1..{MAX_SPECULATIVE_TOKENS}, "
                f"got {self.num_speculative_tokens}"
            )

    @property
    def speculative_tokens(self) -> int:
        """K when a draft is configured, else 0."""
        return self.num_speculative_tokens if self.draft is not None else 0

    @property
    def tensor_throughput(self) -> float:
        """FLOP/s of one GPU at the precision this replica computes in."""
        if self.weights == "fp8" and self.gpu.fp8_native and self.gpu.fp8_flops is not None:
            return self.gpu.fp8_flops
        return self.gpu.bf16_flops

    @property
    def parallel_efficiency(self) -> float:
        """Fraction of ideal speed kept after splitting over `tensor_parallel_size` GPUs."""
        return float(TENSOR_PARALLEL_EFFICIENCY ** math.log2(self.tensor_parallel_size))

    def without_draft(self) -> Replica:
        """The same replica serving without speculation, to compare against."""
        return Replica(
            self.target,
            self.gpu,
            self.tensor_parallel_size,
            self.weights,
            None,
            self.num_speculative_tokens,
            self.kv_cache_bytes,
        )


@dataclass(frozen=True)
class StepTime:
    """The cost of one batched decode step, each part already divided over the GPUs."""

    memory_seconds: float
    """Weights, draft weights and KV cache read once per GPU, at memory bandwidth."""
    compute_seconds: float
    """Target verification and draft proposals at tensor throughput."""
    overhead_seconds: float
    """The fixed per-step cost."""

    @property
    def seconds(self) -> float:
        """The step's duration: the roofline (the larger of memory and compute) plus overhead."""
        return max(self.memory_seconds, self.compute_seconds) + self.overhead_seconds

    @property
    def compute_bound(self) -> bool:
        """Whether arithmetic, not memory traffic, limits the step."""
        return self.compute_seconds > self.memory_seconds


def step_time(replica: Replica, batch_size: int, context_tokens: float) -> StepTime:
    """One decode step of `batch_size` sequences, each with `context_tokens` in its KV cache.

    Per step the GPUs read the target's weights once, the draft's weights K times (it proposes
    K tokens one after another) and each sequence's KV cache: the target's once, the draft's K
    times. They compute 2 FLOPs per active parameter per token: the target verifies K+1
    tokens per sequence, the draft proposes K.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    k = replica.speculative_tokens
    weight_bytes = WEIGHT_BYTES[replica.weights]
    target, draft = replica.target, replica.draft
    total_bytes = target.parameters * weight_bytes + batch_size * context_tokens * (
        target.kv_bytes_per_token(replica.kv_cache_bytes)
    )
    flops = 2 * target.parameters_per_token * batch_size * (k + 1)
    if draft is not None:
        total_bytes += k * (
            draft.parameters * DRAFT_WEIGHT_BYTES
            + batch_size * context_tokens * draft.kv_bytes_per_token(replica.kv_cache_bytes)
        )
        flops += 2 * draft.parameters_per_token * batch_size * k
    return _split(replica, total_bytes, flops)


def _split(replica: Replica, total_bytes: float, flops: float) -> StepTime:
    """Divide a step's work over the replica's GPUs, at the parallel efficiency."""
    gpus = replica.tensor_parallel_size * replica.parallel_efficiency
    return StepTime(
        memory_seconds=total_bytes / gpus / replica.gpu.bandwidth,
        compute_seconds=flops / gpus / replica.tensor_throughput,
        overhead_seconds=STEP_OVERHEAD_SECONDS,
    )


def expected_tokens_per_step(acceptance: float, k: int) -> float:
    """Tokens a sequence gains per step when each draft token is accepted with probability
    `acceptance` (independently, stopping at the first rejection) out of K drafts: the accepted
    prefix plus the one token the target always contributes, (1 - a^(K+1)) / (1 - a).

    `acceptance` is the per-token probability of the speculative decoding literature, not the
    rate vLLM reports; convert with `reported_acceptance_rate` and `acceptance_from_reported`.
    """
    _check_probability(acceptance)
    # The geometric series itself: exact at a=1 where the closed form divides by zero.
    return math.fsum(acceptance**i for i in range(k + 1))


def reported_acceptance_rate(acceptance: float, k: int) -> float:
    """What vLLM's counters report, accepted / draft tokens, for a per-token acceptance
    probability: the expected accepted prefix over K. Lower than `acceptance`, because a
    rejection also discards the drafts after it."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return (expected_tokens_per_step(acceptance, k) - 1) / k


def acceptance_from_reported(rate: float, k: int) -> float:
    """The per-token acceptance probability behind a rate vLLM reports (the inverse of
    `reported_acceptance_rate`), so a measured rate can feed `expected_tokens_per_step`."""
    _check_probability(rate)
    if rate in (0.0, 1.0):
        return rate
    low, high = 0.0, 1.0
    # The reported rate rises monotonically with the probability; 60 halvings reach float
    # precision.
    for _ in range(60):
        middle = (low + high) / 2
        if reported_acceptance_rate(middle, k) < rate:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def decode_tokens_per_second(
    replica: Replica, batch_size: int, context_tokens: float, acceptance: float
) -> float:
    """One sequence's decoding speed, in tokens per second, in a batch of `batch_size`."""
    tokens = expected_tokens_per_step(acceptance, replica.speculative_tokens)
    return tokens / step_time(replica, batch_size, context_tokens).seconds


def throughput(
    replica: Replica, batch_size: int, context_tokens: float, acceptance: float
) -> float:
    """The replica's generated tokens per second over the whole batch."""
    return batch_size * decode_tokens_per_second(replica, batch_size, context_tokens, acceptance)


def speculative_speedup(
    replica: Replica, batch_size: int, context_tokens: float, acceptance: float
) -> float:
    """Decoding speed with the replica's draft over speed without one, at the same batch:
    above 1 speculation pays."""
    with_draft = decode_tokens_per_second(replica, batch_size, context_tokens, acceptance)
    plain = decode_tokens_per_second(replica.without_draft(), batch_size, context_tokens, 1.0)
    return with_draft / plain


def time_to_first_token(replica: Replica, prompt_tokens: int) -> float:
    """Seconds to prefill a prompt alone and produce the first token. Prefill processes every
    prompt token in one pass, through the target and (to fill its KV cache) the draft, so past
    a few hundred tokens it is compute-bound."""
    weight_bytes = replica.target.parameters * WEIGHT_BYTES[replica.weights]
    active = replica.target.parameters_per_token
    if replica.draft is not None:
        weight_bytes += replica.draft.parameters * DRAFT_WEIGHT_BYTES
        active += replica.draft.parameters_per_token
    return _split(replica, weight_bytes, 2 * active * prompt_tokens).seconds


def request_latency(
    replica: Replica,
    prompt_tokens: int,
    output_tokens: int,
    batch_size: int,
    acceptance: float,
) -> float:
    """Expected seconds from admission to the last token of one request that decodes in a
    steady batch of `batch_size`: its prefill, then the steps its remaining tokens need at
    the expected tokens per step, timed at its mean context length. Queueing not included."""
    if output_tokens < 1:
        raise ValueError(f"output_tokens must be >= 1, got {output_tokens}")
    steps = (output_tokens - 1) / expected_tokens_per_step(acceptance, replica.speculative_tokens)
    mean_context = prompt_tokens + output_tokens / 2
    step = step_time(replica, batch_size, mean_context).seconds
    return time_to_first_token(replica, prompt_tokens) + steps * step


def _check_probability(value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"an acceptance rate is between 0 and 1, got {value}")
