"""The model of one vLLM replica: how its GPU memory divides (weights, reserve, KV cache), how
long a batched decode step takes, how many tokens speculation gains per step, and what that
means for throughput and latency. The planner, the speculation schedule, the simulator and the
benchmarks all count memory and time with it, and state no rule of their own.

Memory is counted as vLLM spends it (`Memory`): vLLM's share of each GPU's memory
(`GPU_MEMORY_UTILIZATION`), less the target's weights at their precision, the draft's at its
own (16-bit: `DRAFT_WEIGHT_BYTES`), and a reserve per GPU for activations, CUDA graphs and
communication buffers; what is left holds the KV cache of target and draft.

An additive model, calibrated against published measurements (`calibration/` beside the
design, checked by `bench/perf_fidelity.py` and tests/test_perf_fidelity.py). One forward pass
of a model over `n` tokens costs the sum, not the maximum, of:
- its weights read once, at a derated memory bandwidth;
- 2 FLOPs per active parameter per token, at a derated tensor throughput that loses more per
  doubling of tensor parallelism (narrower matrices, less overlap);
- attention: the KV cache of every sequence read once, plus 4 FLOPs per cached token per
  layer and attention dimension for each new token;
- with tensor parallelism, two all-reduces per layer: a fixed latency each plus the
  activations over NVLink.
A decode step adds the engine's own cost (a fixed part, and a part per running sequence for
scheduling, sampling and output handling). With speculation the target verifies K+1 tokens of
every sequence in one pass, and the draft runs K passes one after another, each one a forward
pass of its own plus a fixed cost (launches, sampling and bookkeeping of a separate model).

The sum is what the measurements show: a step grows smoothly with the batch from the first
sequences on (no flat region and cliff), so the speculative speedup falls smoothly with the
batch, and at small batches drafting costs far more than its bytes.

Where each constant comes from is written beside it. They are fitted for vLLM on the H100 and
used for every GPU through its datasheet numbers (`specfleet.catalog`): the efficiencies of
other GPUs are assumed, not measured. What the model gets wrong, known from the calibration:
- The 70B points of the speculative decoding benchmark disagree with each other: its draft
  shares (20.6% of a step at one sequence, 6.7% at 64) and its speedup at 64 sequences (77% of
  the one at batch 1) hold together only if a plain step of 64 sequences costs 2.4 times one
  of a single sequence (speedup ratio x share at 1 / share at 64 = 0.773 x 0.206 / 0.067), or
  if drafting gets cheaper as the batch grows. Neither is physical: its own 8B fit gives 1.4
  times. The fit sits between them, about 20% off each, and the single-GPU 8B steps come out
  about 23% slow, the price of one set of constants for one and four GPUs.
- A mixed step (vLLM prefills new prompts in the step that decodes the others) is the decode
  step plus what the prompts add (`added_prefill_seconds`); chunking is not modelled.
- Every sequence of a batch is at the same context length (pass the batch's mean).

Called by the planner (GPU sizing, expected decode speed, the speculation schedule), by the
simulator (`specfleet_runtime.sim`, which sizes its KV cache and times its steps with it) and
by the benchmarks. Pure: no I/O, no clock. Times are seconds, rates per second, memory bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from specfleet.catalog import GIB, GPU, ModelArchitecture

Precision = Literal["bf16", "fp8"]
"""Weight precision: 16-bit, or 8-bit floating point (FP8)."""

WEIGHT_BYTES: dict[Precision, float] = {"bf16": 2.0, "fp8": 1.0}
"""Bytes per parameter at each precision."""

SERVED_WEIGHT_BYTES: dict[str, float] = {
    "none": WEIGHT_BYTES["bf16"],
    "fp8": WEIGHT_BYTES["fp8"],
    "modelopt": 1.0,
    "compressed-tensors": 1.0,
    # 4-bit weights with group scales, embeddings and output layer left at 16 bits.
    "awq": 0.6,
    "gptq": 0.6,
}
"""The target's bytes per parameter for each quantization a spec may serve."""

DRAFT_WEIGHT_BYTES = WEIGHT_BYTES["bf16"]
"""A separate draft model's bytes per parameter: 16 bits, whatever the target's precision.
In vLLM's `draft_model` method, `--quantization` does not reach the draft: the draft's
`ModelConfig` is built with the speculative config's own `quantization` (None unless given:
"we assume the model weights are not quantized") and the target's 16-bit dtype, and the
draft's `VllmConfig` recomputes `quant_config` from it (`create_vllm_config_for_draft_model`
sets `quant_config=None`; the first V1 draft proposer kept the target's, which this replaced).
Read from vLLM's source, `vllm/config/speculative.py` and `vllm/v1/spec_decode/draft_model.py`.
Only `mtp` (the target's own layers) takes the target's quantization, and it has no separate
draft to size. The draft's KV cache does follow the target's --kv-cache-dtype (the
speculative config's `kv_cache_dtype` inherits it)."""

GPU_MEMORY_UTILIZATION = 0.92
"""The share of each GPU's memory vLLM may use for weights, reserve and KV cache together:
vLLM's default --gpu-memory-utilization (0.92 in the releases specfleet renders for), which
specfleet also renders explicitly. The published measurements ran with their own release's
default (0.9 in vLLM 0.10); the one figure that depends on it, TensorRT-LLM's maximum
throughput, moves about 1% between the two."""

RESERVE_PER_GPU_BYTES = 2 * GIB
"""Memory vLLM needs on each GPU besides weights and KV cache: activations at the largest
batch, CUDA graphs, NCCL buffers, the sampler."""

MAX_SPECULATIVE_TOKENS = 16
"""The largest K the API allows."""


@dataclass(frozen=True)
class EngineConstants:
    """How close one serving engine gets to the GPU's datasheet, and what it costs besides:
    the calibrated constants of the model."""

    name: str
    weight_bandwidth_efficiency: float
    """Share of the datasheet bandwidth that streaming the weights reaches."""
    kv_bandwidth_efficiency: float
    """Share of the datasheet bandwidth that attention reads the KV cache at."""
    compute_efficiency: float
    """Share of the datasheet tensor throughput that the linear layers reach on one GPU."""
    tensor_parallel_compute_efficiency: float
    """Compute efficiency kept per doubling of tensor parallelism: each GPU multiplies
    matrices a TP-th as wide, with less overlap of compute and communication."""
    allreduce_latency_seconds: float
    """The fixed cost of one all-reduce (two per layer with tensor parallelism)."""
    interconnect_bandwidth: float
    """Bytes per second one GPU sends to the others, for the activations an all-reduce moves:
    2 (TP - 1) / TP times their size (ring all-reduce)."""
    step_overhead_seconds: float
    """The engine's fixed cost per step: scheduling, input preparation, launches."""
    sequence_overhead_seconds: float
    """The engine's cost per running sequence per step: scheduling, sampling, output."""
    draft_pass_overhead_seconds: float
    """The fixed cost of each of the draft's K passes beyond its forward pass: its own input
    preparation, launches and sampling."""
    fp8_kv_cache: bool = False
    """Whether the engine keeps an FP8 KV cache for FP8 checkpoints by default."""


VLLM = EngineConstants(
    name="vllm",
    # Fitted together to every vLLM point of the calibration (bench/perf_fidelity.py): the
    # benchmark's 8B fit on one H100 (5.886 ms of weights, 21.0 us per token, 39.3 ns per
    # cached token, 1.207 ms per step), its 70B with a 1B draft on four H100s, and the 70B FP8
    # on two at 52.9 tokens/s. Each value is the physical quantity named and lies in the range
    # measured for it elsewhere:
    weight_bandwidth_efficiency=0.70,  # decode GEMVs split over GPUs stream at 70-85% of peak
    kv_bandwidth_efficiency=1.0,  # 39.3 ns per 128 KiB cached token is 3.34 TB/s: peak
    compute_efficiency=0.82,  # large GEMMs on one H100 reach 75-85% of the dense datasheet
    tensor_parallel_compute_efficiency=0.61,  # the 70B's speedup falling 0.92, 0.77, 0.59
    allreduce_latency_seconds=20e-6,  # custom all-reduce over NVLink, small messages: 10-25 us
    interconnect_bandwidth=450e9,  # NVLink 4: 900 GB/s both ways
    step_overhead_seconds=1.85e-3,  # 1.2 ms in the 8B fit, more with tensor parallelism
    sequence_overhead_seconds=15e-6,  # scheduling, sampling and detokenizing one sequence
    draft_pass_overhead_seconds=0.45e-3,  # drafting is a fifth of the 70B step at batch 1
)
"""vLLM with CUDA graphs, calibrated on the H100; other GPUs use the same efficiencies (assumed,
not measured) with their own datasheet numbers."""

TENSORRT_LLM = replace(VLLM, name="trtllm", fp8_kv_cache=True)
"""TensorRT-LLM, for its published figures: vLLM's constants, but NVIDIA's FP8 checkpoints
carry an FP8 KV cache (`kv_cache_quant_algo`) that it uses, which doubles the batch its cache
holds. Its one calibration point (70B FP8 on two H100s, 5869 tokens/s at most) agrees within
a few percent with that alone, so nothing else is fitted to it."""

ENGINES: dict[str, EngineConstants] = {engine.name: engine for engine in (VLLM, TENSORRT_LLM)}
"""Calibrated engines by name; a calibration point's `engine` (`vllm-0.10`, `trtllm-0.14`)
picks the one whose name it starts with, vLLM otherwise."""

VLLM_MAX_NUM_SEQS = 1024
"""vLLM's default --max-num-seqs on GPUs of 70 GiB and more: the largest batch it runs."""


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
    """The speculative draft model, at 16 bits (`DRAFT_WEIGHT_BYTES`); None decodes one token
    per step."""
    num_speculative_tokens: int = 5
    """K: tokens the draft proposes per step. Ignored without a draft."""
    kv_element_bytes: float = 2.0
    """Bytes per KV cache element: 2 for vLLM's default (`auto`, 16-bit), 1 for fp8."""
    engine: EngineConstants = VLLM
    """The serving engine's calibrated constants."""

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
        """Datasheet FLOP/s of one GPU at the precision this replica computes in."""
        if self.weights == "fp8" and self.gpu.fp8_native and self.gpu.fp8_flops is not None:
            return self.gpu.fp8_flops
        return self.gpu.bf16_flops

    def without_draft(self) -> Replica:
        """The same replica serving without speculation, to compare against."""
        return replace(self, draft=None)


@dataclass(frozen=True)
class StepTime:
    """The cost of one batched decode step, by part, each already divided over the GPUs."""

    weights_seconds: float
    """The target's weights, read once."""
    compute_seconds: float
    """The target's linear layers over every token it processes (K+1 per sequence)."""
    attention_seconds: float
    """The target's KV cache read once, and attention's arithmetic over it."""
    communication_seconds: float
    """The target's all-reduces (tensor parallelism only)."""
    overhead_seconds: float
    """The engine's fixed and per-sequence cost."""
    draft_seconds: float = 0.0
    """The draft's K passes, each a whole forward pass plus its fixed cost."""

    @property
    def seconds(self) -> float:
        """The step's duration: the sum of its parts."""
        return (
            self.weights_seconds
            + self.compute_seconds
            + self.attention_seconds
            + self.communication_seconds
            + self.overhead_seconds
            + self.draft_seconds
        )

    @property
    def draft_fraction(self) -> float:
        """The share of the step spent drafting."""
        return self.draft_seconds / self.seconds


@dataclass(frozen=True)
class _Pass:
    weights: float
    compute: float
    attention: float
    communication: float

    @property
    def seconds(self) -> float:
        return self.weights + self.compute + self.attention + self.communication


def _forward(
    replica: Replica,
    model: ModelArchitecture,
    weight_bytes: float,
    sequences: float,
    tokens_per_sequence: float,
    context_tokens: float,
) -> _Pass:
    """One forward pass of `model` over `tokens_per_sequence` new tokens of each sequence,
    each sequence with `context_tokens` in its KV cache, split over the replica's GPUs."""
    engine = replica.engine
    gpus = replica.tensor_parallel_size
    tokens = sequences * tokens_per_sequence
    bandwidth = replica.gpu.bandwidth * gpus
    flops = (
        replica.tensor_throughput
        * gpus
        * engine.compute_efficiency
        * engine.tensor_parallel_compute_efficiency ** math.log2(gpus)
    )
    attention_width = model.attention_heads * model.head_dim * model.layers
    communication = 0.0
    if gpus > 1:
        moved = 2 * (gpus - 1) / gpus * tokens * model.hidden_size * 2.0
        communication = (
            2
            * model.layers
            * (engine.allreduce_latency_seconds + moved / engine.interconnect_bandwidth)
        )
    return _Pass(
        weights=model.parameters * weight_bytes / (bandwidth * engine.weight_bandwidth_efficiency),
        compute=tokens * 2 * model.parameters_per_token / flops,
        attention=sequences
        * context_tokens
        * model.kv_bytes_per_token(replica.kv_element_bytes)
        / (bandwidth * engine.kv_bandwidth_efficiency)
        + tokens * 4 * context_tokens * attention_width / flops,
        communication=communication,
    )


def step_time(
    replica: Replica, batch_size: int, context_tokens: float, k: int | None = None
) -> StepTime:
    """One decode step of `batch_size` sequences, each with `context_tokens` in its KV cache,
    drafting `k` tokens per sequence (default: the replica's K; 0 decodes without drafting,
    as vLLM does where a speculation schedule turns it off)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    drafted = replica.speculative_tokens if k is None else k
    if drafted and replica.draft is None:
        raise ValueError("k > 0 needs a replica with a draft")
    target = _forward(
        replica,
        replica.target,
        WEIGHT_BYTES[replica.weights],
        batch_size,
        drafted + 1,
        context_tokens,
    )
    draft_seconds = 0.0
    if drafted and replica.draft is not None:
        one_pass = _forward(
            replica, replica.draft, DRAFT_WEIGHT_BYTES, batch_size, 1, context_tokens
        )
        draft_seconds = drafted * (one_pass.seconds + replica.engine.draft_pass_overhead_seconds)
    return StepTime(
        weights_seconds=target.weights,
        compute_seconds=target.compute,
        attention_seconds=target.attention,
        communication_seconds=target.communication,
        overhead_seconds=replica.engine.step_overhead_seconds
        + batch_size * replica.engine.sequence_overhead_seconds,
        draft_seconds=draft_seconds,
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
    replica: Replica,
    batch_size: int,
    context_tokens: float,
    acceptance: float,
    k: int | None = None,
) -> float:
    """One sequence's decoding speed, in tokens per second, in a batch of `batch_size`,
    drafting `k` tokens per step (default: the replica's K)."""
    drafted = replica.speculative_tokens if k is None else k
    tokens = expected_tokens_per_step(acceptance, drafted)
    return tokens / step_time(replica, batch_size, context_tokens, drafted).seconds


def throughput(
    replica: Replica,
    batch_size: int,
    context_tokens: float,
    acceptance: float,
    k: int | None = None,
) -> float:
    """The replica's generated tokens per second over the whole batch."""
    return batch_size * decode_tokens_per_second(replica, batch_size, context_tokens, acceptance, k)


def speculative_speedup(
    replica: Replica,
    batch_size: int,
    context_tokens: float,
    acceptance: float,
    k: int | None = None,
) -> float:
    """Decoding speed with the replica's draft over speed without one, at the same batch:
    above 1 speculation pays."""
    with_draft = decode_tokens_per_second(replica, batch_size, context_tokens, acceptance, k)
    plain = decode_tokens_per_second(replica.without_draft(), batch_size, context_tokens, 1.0)
    return with_draft / plain


def prefill_seconds(replica: Replica, prompt_tokens: float) -> float:
    """One pass over a prompt through the target and (to fill its KV cache) the draft, with
    attention over the prompt's first half on average; no engine overhead."""
    seconds = _forward(
        replica, replica.target, WEIGHT_BYTES[replica.weights], 1, prompt_tokens, prompt_tokens / 2
    ).seconds
    if replica.draft is not None:
        seconds += _forward(
            replica, replica.draft, DRAFT_WEIGHT_BYTES, 1, prompt_tokens, prompt_tokens / 2
        ).seconds
    return seconds


def added_prefill_seconds(replica: Replica, prompt_tokens: float) -> float:
    """What prefilling a prompt adds to a step that decodes other sequences (vLLM mixes them in
    one step): its arithmetic, attention and activations, not the weights or the all-reduces'
    latency, which the step pays anyway."""
    return prefill_seconds(replica, prompt_tokens) - prefill_seconds(replica, 0)


def time_to_first_token(replica: Replica, prompt_tokens: int) -> float:
    """Seconds to prefill a prompt alone and produce the first token: one engine step."""
    engine = replica.engine
    return (
        prefill_seconds(replica, prompt_tokens)
        + engine.step_overhead_seconds
        + engine.sequence_overhead_seconds
    )


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


@dataclass(frozen=True)
class Memory:
    """How one replica's GPU memory divides, as vLLM spends it: its share of every GPU, less
    the weights and a reserve per GPU, leaves the KV cache. Built from numbers, so that a
    model known only by its parameter count or served in a pre-quantized format is sized by
    the same rule (`memory` builds it for a `Replica`)."""

    gpu: GPU
    """The GPU product every GPU of the replica is."""
    tensor_parallel_size: int
    """GPUs the replica spans."""
    weights_bytes: float
    """The target's weights at their precision."""
    draft_weights_bytes: float
    """A separate draft model's weights (`DRAFT_WEIGHT_BYTES` per parameter); 0 without."""
    kv_bytes_per_token: float
    """KV cache bytes per token of context, target's and draft's together."""

    @property
    def usable_bytes(self) -> float:
        """What vLLM may use across the replica's GPUs."""
        return GPU_MEMORY_UTILIZATION * self.gpu.memory_bytes * self.tensor_parallel_size

    @property
    def reserve_bytes(self) -> float:
        """Activations, CUDA graphs and buffers across the replica's GPUs."""
        return RESERVE_PER_GPU_BYTES * self.tensor_parallel_size

    @property
    def kv_cache_bytes(self) -> float:
        """What is left for the KV cache; 0 or less when the weights do not fit."""
        return (
            self.usable_bytes - self.weights_bytes - self.draft_weights_bytes - self.reserve_bytes
        )

    @property
    def kv_cache_tokens(self) -> float:
        """Tokens of context the KV cache holds (0 when the weights do not fit)."""
        return max(0.0, self.kv_cache_bytes) / self.kv_bytes_per_token


def memory(replica: Replica) -> Memory:
    """How the replica's memory divides: the target at its precision, the draft at 16 bits,
    the KV cache of both at the replica's KV cache precision."""
    draft_weights = 0.0
    per_token = replica.target.kv_bytes_per_token(replica.kv_element_bytes)
    if replica.draft is not None:
        draft_weights = replica.draft.parameters * DRAFT_WEIGHT_BYTES
        per_token += replica.draft.kv_bytes_per_token(replica.kv_element_bytes)
    return Memory(
        gpu=replica.gpu,
        tensor_parallel_size=replica.tensor_parallel_size,
        weights_bytes=replica.target.parameters * WEIGHT_BYTES[replica.weights],
        draft_weights_bytes=draft_weights,
        kv_bytes_per_token=per_token,
    )


def kv_cache_tokens(replica: Replica) -> float:
    """Tokens the replica's KV cache holds (target's and draft's together). Raises ValueError,
    with the numbers, when the weights leave no room for it."""
    held = memory(replica)
    if held.kv_cache_bytes <= 0:
        weights = held.weights_bytes + held.draft_weights_bytes
        raise ValueError(
            f"{replica.target.name} needs {weights / GIB:.0f} GiB for weights at "
            f"{replica.weights} but {replica.tensor_parallel_size} x {replica.gpu.product} give "
            f"{held.usable_bytes / GIB:.0f} GiB: use fp8 or a larger tensor-parallel size"
        )
    return held.kv_cache_tokens


def max_throughput(replica: Replica, input_tokens: int, output_tokens: int) -> float:
    """Output tokens per second at the largest batch vLLM runs for requests of this shape,
    prefill included: as many sequences as the KV cache holds at their mean context (vLLM
    allocates cache blocks as sequences grow), at most vLLM's default --max-num-seqs. No
    speculation (at that batch it does not pay)."""
    plain = replica.without_draft()
    mean_context = input_tokens + output_tokens / 2
    batch = max(1, min(VLLM_MAX_NUM_SEQS, int(kv_cache_tokens(plain) / mean_context)))
    step = step_time(plain, batch, mean_context).seconds
    # Each request decodes `output_tokens` in steps shared by the batch, and its prefill
    # holds up every sequence of the batch for as long as it takes.
    per_request = output_tokens * step / batch + prefill_seconds(plain, input_tokens)
    return output_tokens / per_request


def _check_probability(value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"an acceptance rate is between 0 and 1, got {value}")
