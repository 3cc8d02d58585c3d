"""The GPU and model catalogs: lookups by the names users write, and the derived numbers
sizing depends on."""

from __future__ import annotations

from typing import get_args

import pytest

from specfleet import catalog
from specfleet.api.inferencemodel import GPUProduct
from specfleet.api.labels import GPU_PRODUCT_LABELS


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("meta-llama/Llama-3.1-70B-Instruct", "Llama 3.1 70B"),
        ("meta-llama/Meta-Llama-3.1-70B-Instruct", "Llama 3.1 70B"),
        ("meta-llama/Llama-3.3-70B-Instruct", "Llama 3.1 70B"),
        ("neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8", "Llama 3.1 8B"),
        ("meta-llama/Llama-3.2-3B-Instruct", "Llama 3.2 3B"),
        ("meta-llama/Llama-3.2-1B", "Llama 3.2 1B"),
        ("meta-llama/Llama-3.1-405B-Instruct", "Llama 3.1 405B"),
        ("Qwen/Qwen2.5-72B-Instruct", "Qwen2.5 72B"),
        ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5 0.5B"),
        ("Qwen/Qwen3-32B", "Qwen3 32B"),
        ("Qwen/Qwen3-30B-A3B", "Qwen3 30B-A3B"),
        ("mistralai/Mistral-7B-Instruct-v0.3", "Mistral 7B v0.3"),
        ("mistralai/Mistral-7B-v0.1", "Mistral 7B"),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "Mixtral 8x7B"),
        ("mistralai/Mixtral-8x22B-v0.1", "Mixtral 8x22B"),
    ],
)
def test_known_models_are_found_by_the_ids_people_use(name: str, expected: str) -> None:
    found = catalog.find_model(name)
    assert found is not None and found.name == expected


@pytest.mark.parametrize(
    "name", ["meta-llama/Llama-3.1-80B", "Qwen/Qwen2.5-7.5B", "acme/secret-model", "", "/"]
)
def test_unknown_models_are_not_guessed(name: str) -> None:
    assert catalog.find_model(name) is None


def test_kv_cache_per_token_follows_grouped_query_attention() -> None:
    llama70 = catalog.find_model("meta-llama/Llama-3.1-70B")
    assert llama70 is not None
    # 2 (K and V) x 80 layers x 8 KV heads x 128 dims x 2 bytes = 320 KiB per token.
    assert llama70.kv_bytes_per_token(2) == 320 * 1024
    assert llama70.kv_bytes_per_token(1) == 160 * 1024


def test_mixture_of_experts_reads_fewer_parameters_per_token() -> None:
    mixtral = catalog.find_model("mistralai/Mixtral-8x7B-v0.1")
    dense = catalog.find_model("meta-llama/Llama-3.1-70B")
    assert mixtral is not None and dense is not None
    assert mixtral.parameters_per_token < mixtral.parameters / 3
    assert dense.parameters_per_token == dense.parameters


def test_draft_and_target_of_a_family_share_a_vocabulary() -> None:
    pairs = [
        ("meta-llama/Llama-3.1-70B", "meta-llama/Llama-3.2-1B"),
        ("Qwen/Qwen3-32B", "Qwen/Qwen3-0.6B"),
    ]
    for target, draft in pairs:
        t, d = catalog.find_model(target), catalog.find_model(draft)
        assert t is not None and d is not None
        assert t.vocab_size == d.vocab_size


@pytest.mark.parametrize(
    ("product", "native"),
    [
        ("H100-80GB", True),
        ("H200-141GB", True),
        ("L40S", True),
        ("L4", True),
        ("A100-80GB", False),
        ("A100-40GB", False),
    ],
)
def test_fp8_is_native_from_ada_on(product: str, native: bool) -> None:
    assert catalog.GPUS[product].fp8_native is native


def test_every_gpu_product_of_the_api_is_in_the_catalog() -> None:
    assert set(get_args(GPUProduct)) == set(catalog.GPUS) == set(GPU_PRODUCT_LABELS)


def test_h100_numbers_are_the_datasheet_ones() -> None:
    h100 = catalog.GPUS["H100-80GB"]
    assert round(h100.memory_bytes / catalog.GIB, 1) == 79.6
    assert h100.bandwidth == pytest.approx(3.35e12)
    assert h100.fp8_flops == pytest.approx(2 * h100.bf16_flops, rel=0.01)
