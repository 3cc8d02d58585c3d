"""GPU sizing. Expected numbers are worked out here from the models' published configurations
(not read from the catalog), so a wrong catalog entry or formula fails."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from specfleet import catalog, perf, plan, schedule
from specfleet.api.inferencemodel import InferenceModelSpec
from tests.corpus import ROOT

GIB = 2**30
H100_USABLE = 0.92 * 81559 * 2**20  # bytes vLLM may use on one H100-80GB

LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
LLAMA_3B = "meta-llama/Llama-3.2-3B-Instruct"
# KV bytes per token at 16 bits: 2 (K, V) x layers x KV heads x head dim x 2 bytes.
KV_70B = 2 * 80 * 8 * 128 * 2
KV_3B = 2 * 28 * 8 * 128 * 2


def _spec(**fields: Any) -> InferenceModelSpec:
    fields.setdefault("model", {"name": LLAMA_70B})
    return InferenceModelSpec.model_validate(fields)


def test_70b_fp8_with_3b_draft_on_h100_needs_four_gpus_at_256_sequences() -> None:
    result = plan.plan("llama-70b", _spec(draft={"model": {"name": LLAMA_3B}}))
    weights = 70.55e9 * 1  # fp8: one byte per parameter
    draft = 3.213e9 * 2  # the draft is served at 16 bits
    kv = (KV_70B + KV_3B) * 256 * 1024
    assert result.fits and not result.errors
    assert result.quantization == "fp8"
    assert result.weights_bytes == pytest.approx(weights)
    assert result.draft_weights_bytes == pytest.approx(draft)
    assert result.kv_cache_bytes == pytest.approx(kv)
    # Two GPUs are too few, four are enough: the smallest that fits wins.
    assert weights + draft + kv + 2 * 2 * GIB > 2 * H100_USABLE
    assert weights + draft + kv + 4 * 2 * GIB <= 4 * H100_USABLE
    assert result.tensor_parallel_size == 4


def test_the_plan_counts_memory_by_the_performance_models_rule() -> None:
    # The simulator and the benchmarks size the KV cache with perf.memory: the plan's ceiling
    # must fit in what it leaves at the chosen size, and not at the next smaller one.
    result = plan.plan("llama-70b", _spec(draft={"model": {"name": LLAMA_3B}}))
    assert result.replica is not None
    held = perf.memory(result.replica)
    assert result.usable_bytes == held.usable_bytes
    assert result.weights_bytes == held.weights_bytes
    assert result.draft_weights_bytes == held.draft_weights_bytes
    assert result.kv_cache_bytes <= held.kv_cache_bytes
    two = perf.memory(dataclasses.replace(result.replica, tensor_parallel_size=2))
    assert result.kv_cache_bytes > two.kv_cache_bytes


def test_the_decode_speed_is_the_performance_models_for_one_sequence_alone() -> None:
    result = plan.plan("m", _spec(gpu={"count": 4}, draft={"model": {"name": LLAMA_3B}}))
    # The target alone on four H100s at FP8, no drafting, one sequence with an empty cache.
    plain = perf.Replica(catalog.model(LLAMA_70B), catalog.GPUS["H100-80GB"], 4, "fp8")
    step = perf.step_time(plain, 1, 0).seconds
    assert result.decode_tokens_per_second == pytest.approx(1 / step, abs=0.1)
    # Fewer GPUs read more weights each: slower.
    two = plan.plan("m", _spec(gpu={"count": 2}))
    assert two.decode_tokens_per_second is not None
    assert result.decode_tokens_per_second is not None
    assert two.decode_tokens_per_second < result.decode_tokens_per_second
    assert (
        plan.plan(
            "m", _spec(model={"name": "acme/x", "parameters": "7B"}, maxModelLen=4096)
        ).decode_tokens_per_second
        is None
    )


def test_a_smaller_batch_ceiling_needs_fewer_gpus() -> None:
    result = plan.plan("m", _spec(draft={"model": {"name": LLAMA_3B}}, batching={"max": 64}))
    assert result.fits and result.tensor_parallel_size == 2


def test_kv_cache_always_holds_one_full_length_sequence() -> None:
    result = plan.plan("m", _spec(maxModelLen=131072, batching={"max": 1, "averageTokens": 16}))
    assert result.kv_cache_bytes == pytest.approx(KV_70B * 131072)


def test_fp8_kv_cache_halves_kv_memory() -> None:
    auto = plan.plan("m", _spec(maxModelLen=8192))
    fp8 = plan.plan("m", _spec(maxModelLen=8192, kvCacheDtype="fp8"))
    assert fp8.kv_cache_bytes == pytest.approx(auto.kv_cache_bytes / 2)


@pytest.mark.parametrize(
    ("product", "served"),
    [("H100-80GB", "fp8"), ("L40S", "fp8"), ("A100-80GB", "none"), ("A100-40GB", "none")],
)
def test_auto_quantization_is_fp8_only_where_it_is_native(product: str, served: str) -> None:
    result = plan.plan("m", _spec(model={"name": LLAMA_8B}, gpu={"product": product}))
    assert result.quantization == served


def test_explicit_fp8_on_a100_warns_about_the_weight_only_fallback() -> None:
    result = plan.plan("m", _spec(quantization="fp8", gpu={"product": "A100-80GB"}))
    assert any("not native on A100-80GB" in w for w in result.warnings)


def test_infeasible_spec_is_refused_with_the_numbers_and_working_fixes() -> None:
    result = plan.plan("m", _spec(quantization="none", gpu={"count": 2}))
    assert not result.fits
    (error,) = result.errors
    bf16_gib = round(70.55e9 * 2 / GIB, 1)
    assert f"weights {bf16_gib} at bf16" in error
    assert f"2 x H100-80GB give {round(2 * H100_USABLE / GIB, 1)} GiB" in error
    # FP8 at two GPUs still does not fit the KV cache; four GPUs do: only that is offered.
    assert error.endswith("use gpu.count: 4")


def test_every_offered_fix_makes_the_spec_fit() -> None:
    spec = _spec(
        model={"name": LLAMA_8B},
        maxModelLen=8192,
        batching={"max": 1024},
        gpu={"count": 1},
        quantization="none",
    )
    (error,) = plan.plan("m", spec).errors
    fixes = error.split("; use ")[1].split(", or ")
    assert len(fixes) >= 2
    for fix in fixes:
        field, value = fix.removesuffix(" (or lower)").split(": ")
        changed = spec.model_dump(by_alias=True, exclude_none=True)
        if field == "batching.max":
            changed["batching"]["max"] = int(value)
        elif field == "gpu.count":
            changed["gpu"]["count"] = int(value)
        else:
            changed[field] = value
        assert plan.plan("m", InferenceModelSpec.model_validate(changed)).fits, fix


def test_nothing_fits_on_one_node_says_so() -> None:
    result = plan.plan(
        "m",
        _spec(
            model={"name": "meta-llama/Llama-3.1-405B"},
            quantization="none",
            gpu={"product": "A100-40GB"},
        ),
    )
    assert not result.fits
    assert "8 x A100-40GB" in result.errors[0]
    assert "no single change" in result.errors[0]


def test_gpu_count_must_split_the_attention_heads() -> None:
    result = plan.plan("m", _spec(model={"name": LLAMA_3B}, gpu={"count": 5}))
    assert not result.fits
    assert any(
        "cannot split 24 attention heads" in e and "1, 2, 3, 4, 6, 8" in e for e in result.errors
    )


def test_a_draft_with_another_vocabulary_is_refused() -> None:
    result = plan.plan("m", _spec(draft={"model": {"name": "Qwen/Qwen3-0.6B"}}))
    assert not result.fits
    assert any("vocabulary of 151936" in e and "128256" in e for e in result.errors)


@pytest.mark.parametrize(
    ("target", "draft", "expected"),
    [
        (LLAMA_8B, LLAMA_3B, "not at least 3x smaller"),
        (LLAMA_3B, "meta-llama/Llama-3.2-1B", "below about 7B"),
    ],
)
def test_speculation_that_is_unlikely_to_pay_is_warned_about(
    target: str, draft: str, expected: str
) -> None:
    result = plan.plan("m", _spec(model={"name": target}, draft={"model": {"name": draft}}))
    assert result.fits
    assert any(expected in w for w in result.warnings)


def test_a_good_draft_gets_no_warning() -> None:
    assert plan.plan("m", _spec(draft={"model": {"name": LLAMA_3B}})).warnings == ()


def test_unknown_model_without_hints_says_what_to_set() -> None:
    result = plan.plan("m", _spec(model={"name": "acme/house-model"}))
    assert not result.fits
    assert "parameters: 70B" in result.errors[0] and "architecture" in result.errors[0]


def test_unknown_model_with_a_parameter_count_is_estimated_conservatively() -> None:
    estimated = plan.plan(
        "m", _spec(model={"name": "acme/house-70b", "parameters": "70.55B"}, maxModelLen=16384)
    )
    exact = plan.plan("m", _spec(maxModelLen=16384))
    assert estimated.fits
    assert estimated.weights_bytes == pytest.approx(exact.weights_bytes)
    assert estimated.kv_cache_bytes >= exact.kv_cache_bytes
    assert any("estimated" in n for n in estimated.notes)


def test_architecture_hints_size_the_kv_cache_exactly() -> None:
    hints = {
        "layers": 48,
        "hiddenSize": 6144,
        "attentionHeads": 48,
        "kvHeads": 8,
        "headDim": 128,
        "vocabSize": 65536,
        "maxContext": 32768,
    }
    result = plan.plan(
        "m", _spec(model={"name": "acme/house-30b", "parameters": "30B", "architecture": hints})
    )
    assert result.kv_cache_bytes == pytest.approx(2 * 48 * 8 * 128 * 2 * 256 * 1024)
    assert result.max_model_len == 32768


def test_status_carries_the_plan_in_gib() -> None:
    status = plan.plan("m", _spec()).status().model_dump(by_alias=True)
    assert status["tensorParallelSize"] == plan.plan("m", _spec()).tensor_parallel_size
    assert status["memory"]["weightsGiB"] == round(70.55e9 / GIB, 1)
    assert set(status["memory"]) == {"weightsGiB", "draftWeightsGiB", "kvCacheGiB", "usableGiB"}


@pytest.mark.parametrize(("text", "value"), [("70B", 70e9), ("350M", 350e6), ("1.5T", 1.5e12)])
def test_parameter_counts(text: str, value: float) -> None:
    assert plan.parse_parameters(text) == value


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "specfleet"
    return subprocess.run([str(script), *args], capture_output=True, text=True, check=False)


def test_cli_prints_json_plans_of_every_example() -> None:
    result = _cli("plan", "--output", "json", *map(str, sorted((ROOT / "examples").glob("*.yaml"))))
    assert result.returncode == 0, result.stderr
    plans = {p["name"]: p for p in json.loads(result.stdout)}
    assert set(plans) == {"llama-3b", "llama-8b", "llama-70b"}
    for p in plans.values():
        assert {
            "name",
            "tensorParallelSize",
            "fits",
            "weightsGiB",
            "draftWeightsGiB",
            "kvCacheGiB",
            "messages",
        } <= set(p)
    assert plans["llama-70b"]["draftWeightsGiB"] > 0


def test_cli_exits_1_when_a_spec_does_not_fit(tmp_path: Path) -> None:
    manifest = tmp_path / "big.yaml"
    manifest.write_text(
        "apiVersion: specfleet.dev/v1alpha1\nkind: InferenceModel\nmetadata: {name: big}\n"
        f"spec:\n  model: {{name: {LLAMA_70B}}}\n  quantization: none\n  gpu: {{count: 1}}\n"
    )
    result = _cli("plan", str(manifest))
    assert result.returncode == 1
    assert "big: needs" in result.stdout and "NO" in result.stdout


def test_cli_names_the_file_and_field_of_an_invalid_manifest() -> None:
    bad = ROOT / "tests" / "manifests" / "invalid" / "k-out-of-range.yaml"
    result = _cli("plan", str(bad))
    assert result.returncode == 2
    assert "k-out-of-range.yaml" in result.stderr
    assert "spec.draft.numSpeculativeTokens" in result.stderr


def _draft(**fields: Any) -> dict[str, Any]:
    return {"model": {"name": LLAMA_3B}, **fields}


def test_an_auto_schedule_is_the_best_one_for_the_prior_acceptance() -> None:
    result = plan.plan("m", _spec(draft=_draft()))
    replica = perf.Replica(
        catalog.model(LLAMA_70B),
        catalog.GPUS["H100-80GB"],
        result.tensor_parallel_size,
        "fp8",
        catalog.model(LLAMA_3B),
        5,
    )
    best = schedule.best(replica, plan.PRIOR_DRAFT_ACCEPTANCE, 256, _spec().batching.average_tokens)
    assert [(r.first, r.last, r.k) for r in result.schedule] == [
        (r.first, r.last, r.k) for r in best
    ]
    assert result.schedule_acceptance == plan.PRIOR_DRAFT_ACCEPTANCE
    # K falls with the batch.
    ks = [r.k for r in result.schedule]
    assert ks == sorted(ks, reverse=True) and ks[0] > ks[-1]
    status = result.status()
    assert status.schedule[0].min_batch == 1 and status.schedule[-1].max_batch == 256
    assert status.schedule[0].speedup[0] > status.schedule[-1].speedup[-1] > 0


def test_a_measured_acceptance_moves_the_auto_schedule() -> None:
    low = plan.plan("m", _spec(draft=_draft()), draft_acceptance=0.2)
    high = plan.plan("m", _spec(draft=_draft()), draft_acceptance=0.9)
    assert low.schedule_acceptance == 0.2
    assert schedule.k_at(low.schedule, 64) < schedule.k_at(high.schedule, 64)
    # A draft that is rarely accepted does not pay at a full batch.
    assert schedule.k_at(low.schedule, 256) == 0


def test_fixed_and_manual_schedules_are_what_the_spec_says() -> None:
    fixed = plan.plan("m", _spec(draft=_draft(schedule="fixed", numSpeculativeTokens=4)))
    assert [(r.first, r.last, r.k) for r in fixed.schedule] == [(1, 256, 4)]
    assert fixed.schedule_acceptance is None
    ranges = [
        {"minBatch": 1, "maxBatch": 8, "numSpeculativeTokens": 5},
        {"minBatch": 9, "maxBatch": 256, "numSpeculativeTokens": 0},
    ]
    manual = plan.plan("m", _spec(draft=_draft(schedule="manual", ranges=ranges)))
    assert [(r.first, r.last, r.k) for r in manual.schedule] == [(1, 8, 5), (9, 256, 0)]
    assert manual.schedule[0].speedup_first > 1 and manual.schedule[1].speedup_first == 1.0


def test_no_draft_no_schedule_and_an_untimed_method_drafts_k_everywhere() -> None:
    assert plan.plan("m", _spec()).schedule == ()
    ngram = plan.plan("m", _spec(draft={"method": "ngram", "numSpeculativeTokens": 3}))
    assert [(r.first, r.last, r.k) for r in ngram.schedule] == [(1, 256, 3)]
    assert ngram.schedule_acceptance is None
