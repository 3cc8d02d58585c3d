"""The performance model: step times worked out by hand from datasheet and model-card numbers,
the acceptance formula, and the shape speculative decoding is known to have.

The expected values are written as arithmetic on the raw numbers (H100: 3.35 TB/s, 989 TFLOP/s
BF16, 1979 TFLOP/s FP8; Llama 3.1 70B: 70.55e9 parameters, 80 layers, 8 KV heads of 128; Llama
3.2 3B: 3.213e9 parameters, 28 layers, 8 KV heads of 128), not taken from the implementation.
The target's weights are FP8 (1 byte per parameter); the draft's are 16-bit (2 bytes), as vLLM
serves a separate draft model.
"""

from __future__ import annotations

import itertools

import pytest

from specfleet import catalog, perf

H100_BANDWIDTH = 3.35e12
H100_FP8 = 1979e12
A100_BANDWIDTH = 2.039e12
A100_BF16 = 312e12
P70 = 70.55e9
P3 = 3.213e9
KV70 = 2 * 80 * 8 * 128 * 2  # K and V, layers, KV heads, head dim, 2 bytes: 327,680 B per token
KV3 = 2 * 28 * 8 * 128 * 2  # 114,688 B per token
B3 = 2 * P3  # the draft's weight bytes at 16 bits
TP2 = 2 * 0.9  # two GPUs at the documented 0.9 efficiency of one doubling
OVERHEAD = 0.001


LLAMA_70B = catalog.model("meta-llama/Llama-3.1-70B-Instruct")
LLAMA_3B = catalog.model("meta-llama/Llama-3.2-3B-Instruct")
H100 = catalog.GPUS["H100-80GB"]
SPECULATIVE = perf.Replica(LLAMA_70B, H100, 2, "fp8", LLAMA_3B, 5)
PLAIN = perf.Replica(LLAMA_70B, H100, 2, "fp8")


@pytest.mark.parametrize(
    ("replica", "batch", "context", "memory", "compute"),
    [
        # No draft, one sequence, empty cache: 70.55 GB of FP8 weights over two GPUs.
        # Compute: 2 FLOPs x 70.55e9 parameters x 1 token.
        (PLAIN, 1, 0, P70 / TP2 / H100_BANDWIDTH, 2 * P70 / TP2 / H100_FP8),
        # Draft K=5, one sequence at 2048 tokens: target weights once, draft weights 5 times,
        # the target's KV once and the draft's 5 times. Compute: the target verifies 6 tokens,
        # the draft proposes 5.
        (
            SPECULATIVE,
            1,
            2048,
            (P70 + 5 * B3 + 2048 * (KV70 + 5 * KV3)) / TP2 / H100_BANDWIDTH,  # 17.33 ms
            2 * (6 * P70 + 5 * P3) / TP2 / H100_FP8,  # 0.25 ms
        ),
        # 256 sequences at 256 tokens: 63 ms of arithmetic against 24 ms of memory traffic.
        (
            SPECULATIVE,
            256,
            256,
            (P70 + 5 * B3 + 256 * 256 * (KV70 + 5 * KV3)) / TP2 / H100_BANDWIDTH,
            2 * 256 * (6 * P70 + 5 * P3) / TP2 / H100_FP8,
        ),
    ],
    ids=["plain-batch-1", "speculative-batch-1", "speculative-batch-256"],
)
def test_step_time_is_the_roofline_of_memory_and_compute(
    replica: perf.Replica, batch: int, context: int, memory: float, compute: float
) -> None:
    step = perf.step_time(replica, batch, context)
    assert step.memory_seconds == pytest.approx(memory, rel=1e-9)
    assert step.compute_seconds == pytest.approx(compute, rel=1e-9)
    assert step.seconds == pytest.approx(max(memory, compute) + OVERHEAD, rel=1e-9)
    assert step.compute_bound is (compute > memory)


def test_a_large_speculative_batch_is_compute_bound_and_a_small_one_is_not() -> None:
    assert perf.step_time(SPECULATIVE, 256, 256).compute_bound
    assert not perf.step_time(SPECULATIVE, 1, 256).compute_bound


def test_fp8_without_native_support_saves_bytes_but_computes_at_bf16() -> None:
    a100 = perf.Replica(LLAMA_70B, catalog.GPUS["A100-80GB"], 2, "fp8")
    step = perf.step_time(a100, 64, 0)
    assert step.memory_seconds == pytest.approx(P70 / TP2 / A100_BANDWIDTH, rel=1e-9)
    assert step.compute_seconds == pytest.approx(2 * 64 * P70 / TP2 / A100_BF16, rel=1e-9)


def test_bf16_weights_double_the_weight_traffic() -> None:
    bf16 = perf.Replica(LLAMA_70B, H100, 2, "bf16")
    assert perf.step_time(bf16, 1, 0).memory_seconds == pytest.approx(
        2 * P70 / TP2 / H100_BANDWIDTH, rel=1e-9
    )


def test_tensor_parallelism_divides_the_work_at_a_modest_efficiency() -> None:
    one = perf.step_time(perf.Replica(LLAMA_70B, H100, 1, "fp8"), 1, 0).memory_seconds
    four = perf.step_time(perf.Replica(LLAMA_70B, H100, 4, "fp8"), 1, 0).memory_seconds
    assert one == pytest.approx(P70 / H100_BANDWIDTH, rel=1e-9)
    # Two doublings: 4 GPUs x 0.9 x 0.9.
    assert four == pytest.approx(one / (4 * 0.81), rel=1e-9)


@pytest.mark.parametrize(
    ("acceptance", "k", "expected"),
    [
        (0.8, 5, (1 - 0.8**6) / (1 - 0.8)),  # 3.689
        (0.5, 1, 1.5),  # one draft accepted half the time, plus the target's token
        (0.0, 5, 1.0),  # every draft rejected: only the target's token
        (1.0, 5, 6.0),  # every draft accepted: K+1
        (0.999999, 5, 6.0),  # continuous at a=1
        (0.7, 0, 1.0),  # no drafts
    ],
)
def test_expected_tokens_per_step(acceptance: float, k: int, expected: float) -> None:
    assert perf.expected_tokens_per_step(acceptance, k) == pytest.approx(expected, rel=1e-5)


def test_reported_rate_counts_drafts_discarded_after_a_rejection() -> None:
    # K=2 at a=0.5: the first draft is accepted half the time, the second a quarter:
    # (0.5 + 0.25) / 2 drafts.
    assert perf.reported_acceptance_rate(0.5, 2) == pytest.approx(0.375)
    assert perf.reported_acceptance_rate(1.0, 5) == 1.0
    assert perf.reported_acceptance_rate(0.0, 5) == 0.0


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.375, 0.5, 0.9, 1.0])
def test_a_reported_rate_converts_back_to_the_per_token_probability(rate: float) -> None:
    acceptance = perf.acceptance_from_reported(rate, 5)
    assert acceptance >= rate
    assert perf.reported_acceptance_rate(acceptance, 5) == pytest.approx(rate, abs=1e-9)
    assert perf.acceptance_from_reported(0.375, 2) == pytest.approx(0.5)


def test_rates_outside_zero_to_one_are_refused() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        perf.expected_tokens_per_step(1.2, 5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        perf.acceptance_from_reported(-0.1, 5)


def test_time_to_first_token_of_a_long_prompt_is_compute_bound() -> None:
    # 1000 prompt tokens through target and draft: 2 x (70.55e9 + 3.213e9) x 1000 FLOPs
    # = 147.5 TFLOP over 2 x 0.9 GPUs at 1979 TFLOP/s = 41.4 ms, against 12.8 ms of weights.
    expected = 2 * (P70 + P3) * 1000 / TP2 / H100_FP8 + OVERHEAD
    assert perf.time_to_first_token(SPECULATIVE, 1000) == pytest.approx(expected, rel=1e-9)
    # A one-token prompt only has to read the weights once.
    short = (P70 + B3) / TP2 / H100_BANDWIDTH + OVERHEAD
    assert perf.time_to_first_token(SPECULATIVE, 1) == pytest.approx(short, rel=1e-9)


def test_decode_speed_and_throughput_follow_from_the_step() -> None:
    step = (P70 + 5 * B3 + 8 * 2048 * (KV70 + 5 * KV3)) / TP2 / H100_BANDWIDTH + OVERHEAD
    tokens = (1 - 0.8**6) / (1 - 0.8)
    speed = perf.decode_tokens_per_second(SPECULATIVE, 8, 2048, 0.8)
    assert speed == pytest.approx(tokens / step, rel=1e-9)
    assert perf.throughput(SPECULATIVE, 8, 2048, 0.8) == pytest.approx(8 * tokens / step)


def test_request_latency_is_prefill_then_the_steps_the_rest_needs() -> None:
    # 500 prompt tokens, 101 output tokens: the first from prefill, 100 more at 3.689 per step,
    # each step at the mean context of 500 + 101 / 2 tokens, batch 4.
    prefill = 2 * (P70 + P3) * 500 / TP2 / H100_FP8 + OVERHEAD
    context = 500 + 101 / 2
    step = (P70 + 5 * B3 + 4 * context * (KV70 + 5 * KV3)) / TP2 / H100_BANDWIDTH + OVERHEAD
    expected = prefill + 100 / ((1 - 0.8**6) / (1 - 0.8)) * step
    assert perf.request_latency(SPECULATIVE, 500, 101, 4, 0.8) == pytest.approx(expected, rel=1e-9)


BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


@pytest.mark.parametrize("context", [512, 2048])
def test_speculation_pays_at_small_batches_and_fades_as_the_batch_grows(context: int) -> None:
    speedups = [perf.speculative_speedup(SPECULATIVE, b, context, 0.8) for b in BATCHES]
    assert speedups[0] > 1.5
    assert all(later < earlier for earlier, later in itertools.pairwise(speedups))
    # Most of the gain is gone by a full batch.
    assert speedups[-1] < 1 + (speedups[0] - 1) / 2


def test_speculation_loses_at_a_full_batch_when_acceptance_is_mediocre() -> None:
    assert perf.speculative_speedup(SPECULATIVE, 1, 512, 0.6) > 1
    assert perf.speculative_speedup(SPECULATIVE, 256, 512, 0.6) < 1


@pytest.mark.parametrize("batch", BATCHES)
def test_a_draft_that_is_never_accepted_only_costs(batch: int) -> None:
    assert perf.speculative_speedup(SPECULATIVE, batch, 1024, 0.0) < 1


def test_invalid_replicas_are_refused() -> None:
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        perf.Replica(LLAMA_70B, H100, 0)
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        perf.Replica(LLAMA_70B, H100, 2, "fp8", LLAMA_3B, 17)
    with pytest.raises(ValueError, match="batch_size"):
        perf.step_time(PLAIN, 0, 100)
