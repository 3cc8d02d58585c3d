"""The performance model: step times worked out by hand from datasheet and model-card numbers,
the acceptance formula, and the shape speculative decoding is known to have.

The expected values are written as arithmetic on the raw numbers (H100: 3.35 TB/s, 989 TFLOP/s
BF16, 1979 TFLOP/s FP8; Llama 3.1 70B: 70.55e9 parameters, 80 layers, 8 KV heads of 128, 64
attention heads, hidden size 8192; Llama 3.2 3B: 3.213e9 parameters, 28 layers, 8 KV heads of
128, 24 attention heads, hidden 3072) and a test engine with round constants, not taken from the
implementation. The target's weights are FP8 (1 byte per parameter); the draft's are 16-bit.
The calibrated engine is held against published measurements in tests/test_perf_fidelity.py.
"""

from __future__ import annotations

import itertools

import pytest

from specfleet import catalog, perf

H100_BANDWIDTH = 3.35e12
H100_FP8 = 1979e12
A100_BF16 = 312e12
P70 = 70.55e9
P3 = 3.213e9
KV70 = 2 * 80 * 8 * 128 * 2  # K and V, layers, KV heads, head dim, 2 bytes: 327,680 B per token
KV3 = 2 * 28 * 8 * 128 * 2  # 114,688 B per token
ATTENTION70 = 64 * 128 * 80  # heads x head dim x layers
ATTENTION3 = 24 * 128 * 28

ENGINE = perf.EngineConstants(
    name="test",
    weight_bandwidth_efficiency=0.8,
    kv_bandwidth_efficiency=0.9,
    compute_efficiency=0.5,
    tensor_parallel_compute_efficiency=0.9,
    allreduce_latency_seconds=10e-6,
    interconnect_bandwidth=400e9,
    step_overhead_seconds=1e-3,
    sequence_overhead_seconds=10e-6,
    draft_pass_overhead_seconds=0.5e-3,
)
# Two H100s: bandwidths and FP8 throughput of both, compute at 0.5 x 0.9 (one doubling).
WEIGHT_BW = 2 * H100_BANDWIDTH * 0.8
KV_BW = 2 * H100_BANDWIDTH * 0.9
FLOPS = 2 * H100_FP8 * 0.5 * 0.9

LLAMA_70B = catalog.model("meta-llama/Llama-3.1-70B-Instruct")
LLAMA_3B = catalog.model("meta-llama/Llama-3.2-3B-Instruct")
H100 = catalog.GPUS["H100-80GB"]
SPECULATIVE = perf.Replica(LLAMA_70B, H100, 2, "fp8", LLAMA_3B, 5, engine=ENGINE)
PLAIN = perf.Replica(LLAMA_70B, H100, 2, "fp8", engine=ENGINE)


def allreduces(layers: int, tokens: float, hidden: int) -> float:
    """Two all-reduces per layer on two GPUs: the latency, and the 16-bit activations sent
    once (a ring all-reduce sends 2 (TP - 1) / TP of them: 1 on two GPUs)."""
    return 2 * layers * (10e-6 + tokens * hidden * 2 / 400e9)


def target_pass(batch: int, tokens_per_sequence: int, context: float) -> float:
    tokens = batch * tokens_per_sequence
    return (
        P70 / WEIGHT_BW
        + tokens * 2 * P70 / FLOPS
        + batch * context * KV70 / KV_BW
        + tokens * 4 * context * ATTENTION70 / FLOPS
        + allreduces(80, tokens, 8192)
    )


def draft_pass(batch: int, context: float) -> float:
    return (
        2 * P3 / WEIGHT_BW
        + batch * 2 * P3 / FLOPS
        + batch * context * KV3 / KV_BW
        + batch * 4 * context * ATTENTION3 / FLOPS
        + allreduces(28, batch, 3072)
        + 0.5e-3
    )


def overhead(batch: int) -> float:
    return 1e-3 + batch * 10e-6


@pytest.mark.parametrize(("batch", "context"), [(1, 0), (1, 2048), (64, 720), (256, 256)])
def test_a_plain_step_is_the_sum_of_its_parts(batch: int, context: int) -> None:
    step = perf.step_time(PLAIN, batch, context)
    assert step.draft_seconds == 0
    assert step.seconds == pytest.approx(target_pass(batch, 1, context) + overhead(batch), rel=1e-9)


@pytest.mark.parametrize(("batch", "context", "k"), [(1, 2048, None), (32, 512, None), (8, 100, 2)])
def test_a_speculative_step_verifies_k_plus_1_tokens_after_k_draft_passes(
    batch: int, context: int, k: int | None
) -> None:
    drafted = 5 if k is None else k
    step = perf.step_time(SPECULATIVE, batch, context, k)
    assert step.draft_seconds == pytest.approx(drafted * draft_pass(batch, context), rel=1e-9)
    assert step.seconds == pytest.approx(
        target_pass(batch, drafted + 1, context)
        + overhead(batch)
        + drafted * draft_pass(batch, context),
        rel=1e-9,
    )


def test_k_0_decodes_without_drafting() -> None:
    assert perf.step_time(SPECULATIVE, 16, 512, 0) == perf.step_time(PLAIN, 16, 512)
    with pytest.raises(ValueError, match="draft"):
        perf.step_time(PLAIN, 16, 512, 3)


def test_every_sequence_and_every_token_costs_from_the_first_one_on() -> None:
    # The additive step has no flat region: each added sequence costs the same.
    steps = [perf.step_time(PLAIN, b, 1024).seconds for b in (1, 2, 3, 64, 65)]
    assert steps[1] - steps[0] == pytest.approx(steps[2] - steps[1], rel=1e-9)
    assert steps[4] - steps[3] == pytest.approx(steps[1] - steps[0], rel=1e-9)
    assert steps[1] > steps[0]


def test_fp8_without_native_support_saves_bytes_but_computes_at_bf16() -> None:
    a100 = perf.Replica(LLAMA_70B, catalog.GPUS["A100-80GB"], 2, "fp8", engine=ENGINE)
    step = perf.step_time(a100, 64, 0)
    assert step.weights_seconds == pytest.approx(P70 / (2 * 2.039e12 * 0.8), rel=1e-9)
    assert step.compute_seconds == pytest.approx(
        64 * 2 * P70 / (2 * A100_BF16 * 0.5 * 0.9), rel=1e-9
    )


def test_bf16_weights_double_the_weight_traffic() -> None:
    bf16 = perf.Replica(LLAMA_70B, H100, 2, "bf16", engine=ENGINE)
    assert perf.step_time(bf16, 1, 0).weights_seconds == pytest.approx(
        2 * perf.step_time(PLAIN, 1, 0).weights_seconds, rel=1e-9
    )


def test_tensor_parallelism_splits_the_work_and_adds_all_reduces() -> None:
    one = perf.step_time(perf.Replica(LLAMA_70B, H100, 1, "fp8", engine=ENGINE), 64, 0)
    four = perf.step_time(perf.Replica(LLAMA_70B, H100, 4, "fp8", engine=ENGINE), 64, 0)
    assert one.communication_seconds == 0
    assert four.weights_seconds == pytest.approx(one.weights_seconds / 4, rel=1e-9)
    # Two doublings: 4 GPUs at 0.9 x 0.9 of their compute.
    assert four.compute_seconds == pytest.approx(one.compute_seconds / (4 * 0.81), rel=1e-9)
    # 160 all-reduces of 64 tokens' activations, 3/4 of them sent by each GPU.
    assert four.communication_seconds == pytest.approx(
        160 * (10e-6 + 1.5 * 64 * 8192 * 2 / 400e9), rel=1e-9
    )


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


def prefill(prompt: int) -> float:
    """The prompt through target and draft in one pass each, attending to half of it on
    average, then one engine step's overhead."""
    target = (
        P70 / WEIGHT_BW
        + prompt * 2 * P70 / FLOPS
        + prompt / 2 * KV70 / KV_BW
        + prompt * 4 * prompt / 2 * ATTENTION70 / FLOPS
        + allreduces(80, prompt, 8192)
    )
    draft = (
        2 * P3 / WEIGHT_BW
        + prompt * 2 * P3 / FLOPS
        + prompt / 2 * KV3 / KV_BW
        + prompt * 4 * prompt / 2 * ATTENTION3 / FLOPS
        + allreduces(28, prompt, 3072)
    )
    return target + draft + overhead(1)


@pytest.mark.parametrize("prompt", [1, 1000])
def test_time_to_first_token_is_one_pass_over_the_prompt(prompt: int) -> None:
    assert perf.time_to_first_token(SPECULATIVE, prompt) == pytest.approx(prefill(prompt), rel=1e-9)


def test_a_long_prompt_costs_mostly_arithmetic() -> None:
    parts = prefill(4000) - overhead(1)
    weights = P70 / WEIGHT_BW + 2 * P3 / WEIGHT_BW
    assert weights < parts / 4


def test_decode_speed_and_throughput_follow_from_the_step() -> None:
    step = perf.step_time(SPECULATIVE, 8, 2048).seconds
    tokens = (1 - 0.8**6) / (1 - 0.8)
    speed = perf.decode_tokens_per_second(SPECULATIVE, 8, 2048, 0.8)
    assert speed == pytest.approx(tokens / step, rel=1e-9)
    assert perf.throughput(SPECULATIVE, 8, 2048, 0.8) == pytest.approx(8 * tokens / step)


def test_request_latency_is_prefill_then_the_steps_the_rest_needs() -> None:
    # 500 prompt tokens, 101 output tokens: the first from prefill, 100 more at 3.689 per step,
    # each step at the mean context of 500 + 101 / 2 tokens, batch 4.
    context = 500 + 101 / 2
    step = target_pass(4, 6, context) + overhead(4) + 5 * draft_pass(4, context)
    expected = prefill(500) + 100 / ((1 - 0.8**6) / (1 - 0.8)) * step
    assert perf.request_latency(SPECULATIVE, 500, 101, 4, 0.8) == pytest.approx(expected, rel=1e-9)


BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
CALIBRATED = perf.Replica(LLAMA_70B, H100, 2, "fp8", LLAMA_3B, 5)


@pytest.mark.parametrize("context", [512, 2048])
def test_speculation_pays_at_small_batches_and_fades_as_the_batch_grows(context: int) -> None:
    speedups = [perf.speculative_speedup(CALIBRATED, b, context, 0.8) for b in BATCHES]
    assert speedups[0] > 1.5
    assert all(later < earlier for earlier, later in itertools.pairwise(speedups))
    # Most of the gain is gone by a full batch.
    assert speedups[-1] < 1 + (speedups[0] - 1) / 2


def test_speculation_loses_at_a_full_batch_when_acceptance_is_mediocre() -> None:
    assert perf.speculative_speedup(CALIBRATED, 1, 512, 0.6) > 1
    assert perf.speculative_speedup(CALIBRATED, 256, 512, 0.6) < 1


@pytest.mark.parametrize("batch", BATCHES)
def test_a_draft_that_is_never_accepted_only_costs(batch: int) -> None:
    assert perf.speculative_speedup(CALIBRATED, batch, 1024, 0.0) < 1


def test_invalid_replicas_are_refused() -> None:
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        perf.Replica(LLAMA_70B, H100, 0)
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        perf.Replica(LLAMA_70B, H100, 2, "fp8", LLAMA_3B, 17)
    with pytest.raises(ValueError, match="batch_size"):
        perf.step_time(PLAIN, 0, 100)


def test_the_kv_cache_holds_what_memory_is_left_after_weights_and_reserve() -> None:
    # Two H100s at vLLM's 0.92: 70.55 GB of FP8 weights, 2 GiB reserved per GPU.
    free = 0.92 * H100.memory_bytes * 2 - P70 - 2 * 2 * 2**30
    assert perf.kv_cache_tokens(PLAIN) == pytest.approx(free / KV70, rel=1e-9)
    bf16_one_gpu = perf.Replica(LLAMA_70B, H100, 1, "bf16")
    with pytest.raises(
        ValueError, match="needs 131 GiB for weights at bf16 but 1 x H100-80GB give 73"
    ):
        perf.kv_cache_tokens(bf16_one_gpu)


def test_the_draft_is_held_at_16_bits_beside_an_fp8_target_and_shares_the_cache() -> None:
    # vLLM's --quantization fp8 does not reach a draft_model draft: 2 bytes per parameter.
    # Target and draft keep a KV cache each, so a token of context costs both.
    held = perf.memory(SPECULATIVE)
    assert held.weights_bytes == pytest.approx(P70)
    assert held.draft_weights_bytes == pytest.approx(2 * P3)
    assert held.kv_bytes_per_token == KV70 + KV3
    free = 0.92 * H100.memory_bytes * 2 - P70 - 2 * P3 - 2 * 2 * 2**30
    assert held.kv_cache_bytes == pytest.approx(free, rel=1e-9)
    assert perf.kv_cache_tokens(SPECULATIVE) == pytest.approx(free / (KV70 + KV3), rel=1e-9)
    # An FP8 KV cache halves the bytes per token of both.
    fp8_kv = perf.Replica(LLAMA_70B, H100, 2, "fp8", LLAMA_3B, 5, kv_element_bytes=1.0)
    assert perf.memory(fp8_kv).kv_bytes_per_token == (KV70 + KV3) / 2


def test_memory_that_the_weights_overfill_holds_no_kv_cache() -> None:
    held = perf.Memory(H100, 1, 80e9, 0.0, KV70)
    assert held.kv_cache_bytes < 0
    assert held.kv_cache_tokens == 0


def test_max_throughput_runs_the_batch_the_cache_holds() -> None:
    batch = int(perf.kv_cache_tokens(PLAIN) / (128 + 1024))
    step = perf.step_time(PLAIN, batch, 128 + 1024).seconds
    per_request = 2048 * step / batch + perf.prefill_seconds(PLAIN, 128)
    assert perf.max_throughput(PLAIN, 128, 2048) == pytest.approx(2048 / per_request, rel=1e-9)
    # A cache twice as large (FP8 KV) runs a larger batch and more tokens per second.
    fp8_kv = perf.Replica(LLAMA_70B, H100, 2, "fp8", kv_element_bytes=1.0, engine=ENGINE)
    assert perf.max_throughput(fp8_kv, 128, 2048) > 1.3 * perf.max_throughput(PLAIN, 128, 2048)
