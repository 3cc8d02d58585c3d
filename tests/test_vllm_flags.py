"""Every flag specfleet renders for vLLM is one the spec owns, so `extraArgs` cannot override
it: the flags `render.vllm` writes and the ones the API refuses come from one table
(`specfleet.api.vllmflags`), and this test fails when a flag is rendered without being listed.
tests/test_vllm_args.py checks the aliases against vLLM's own parser."""

from __future__ import annotations

from typing import Any

import pytest

from specfleet import api, crdgen, plan
from specfleet.api import vllmflags
from specfleet.api.inferencemodel import InferenceModel
from specfleet.render import inferencemodel as render
from specfleet.render import vllm
from tests.corpus import EXAMPLES

TARGET = {"name": "meta-llama/Llama-3.1-70B-Instruct"}
DRAFT = {"name": "meta-llama/Llama-3.2-1B-Instruct"}
MANUAL = [
    {"minBatch": 1, "maxBatch": 8, "numSpeculativeTokens": 4},
    {"minBatch": 9, "maxBatch": 512, "numSpeculativeTokens": 0},
]

SPECS: dict[str, dict[str, Any]] = {
    "defaults": {},
    **{
        f"quantization-{q}": {"quantization": q}
        for q in ("auto", "fp8", "none", "awq", "gptq", "compressed-tensors", "modelopt")
    },
    "auto-quantization-without-fp8": {"gpu": {"product": "A100-80GB"}},
    "fp8-kv-cache": {"kvCacheDtype": "fp8", "maxModelLen": 8192},
    "context-length": {"maxModelLen": 32768},
    **{
        f"draft-{m}": {"draft": {"method": m, "model": DRAFT, "numSpeculativeTokens": 3}}
        for m in ("draft_model", "eagle", "eagle3")
    },
    **{f"draft-{m}": {"draft": {"method": m, "numSpeculativeTokens": 2}} for m in ("mtp", "ngram")},
    **{f"schedule-{s}": {"draft": {"model": DRAFT, "schedule": s}} for s in ("auto", "fixed")},
    "schedule-manual": {
        "draft": {"model": DRAFT, "numSpeculativeTokens": 4, "schedule": "manual", "ranges": MANUAL}
    },
    "revisions": {
        "model": {**TARGET, "revision": "main"},
        "draft": {"model": {**DRAFT, "revision": "v1"}},
    },
    "served-name-and-gpus": {"servedModelName": "chat", "gpu": {"count": 8}},
    "restart-mode": {"batching": {"mode": "Restart", "max": 128, "initial": 32}},
}


def _models() -> dict[str, InferenceModel]:
    models = {
        f"{path.stem}:{r.metadata.name}": r
        for path in EXAMPLES
        for r in api.load(path.read_text())
        if isinstance(r, InferenceModel)
    }
    for case_id, fields in SPECS.items():
        model = api.parse(
            {
                "apiVersion": api.API_VERSION,
                "kind": "InferenceModel",
                "metadata": {"name": "m"},
                "spec": {"model": TARGET, **fields},
            }
        )
        assert isinstance(model, InferenceModel)
        models[case_id] = model
    return models


MODELS = _models()


def _rendered_flags(model: InferenceModel) -> list[str]:
    """The flags of the command line the operator renders, extraArgs left out."""
    result = plan.plan(model.metadata.name, model.spec)
    assert result.fits, result.errors
    limit = render.initial_limit(model)
    max_num_seqs = limit if model.spec.batching.mode == "Restart" else model.spec.batching.max
    args = vllm.serve_args(
        model.spec,
        result,
        render.served_name(model),
        max_num_seqs,
        vllm.schedule_ranges(model.spec, result),
    )
    own = args[: len(args) - len(model.spec.extra_args)]
    assert own[0] == model.spec.model.name, "the model comes first, as the positional argument"
    return [arg for arg in own[1:] if arg.startswith("-")]


@pytest.mark.parametrize("case_id", list(MODELS))
def test_every_rendered_flag_is_spec_owned(case_id: str) -> None:
    flags = _rendered_flags(MODELS[case_id])
    assert flags
    assert [f for f in flags if f not in vllmflags.SPEC_OWNED_FLAGS] == []


def test_the_cases_render_every_flag_of_the_table() -> None:
    # The converse: a flag listed but never rendered is stale, or the cases above miss a spec
    # that renders it. The model is rendered as the positional argument, never as --model.
    rendered = {flag for model in MODELS.values() for flag in _rendered_flags(model)}
    assert rendered == {f.name for f in vllmflags.RENDERED if f is not vllmflags.MODEL}


def _with_extra_args(args: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "InferenceModel",
        "metadata": {"name": "m"},
        "spec": {"model": TARGET, "extraArgs": args},
    }


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--gpu-memory-utilization", "0.99"], "--gpu-memory-utilization"),
        (["--gpu-memory-utilization=0.99"], "--gpu-memory-utilization"),
        (["--device-memory-utilization=0.99"], "--device-memory-utilization"),
        (["--enable-chunked-prefill", "--enable-prefix-caching"], "--enable-prefix-caching"),
        (["--no-enable-prefix-caching"], "--no-enable-prefix-caching"),
        (["-sc", '{"method": "ngram"}'], "-sc"),
        # Spellings vLLM's parser reads as the same flags (tests/test_vllm_args.py checks them
        # all with the parser itself).
        (["--gpu-memory-util", "0.5"], "--gpu-memory-utilization"),
        (["--max_num_seqs=3"], "--max-num-seqs"),
        (["--speculative-config.method", "ngram"], "--speculative-config"),
        (["--enable-prefix"], "--enable-prefix-caching"),
        (["-qfp8"], "-q"),
        (["-t", "2"], "-tp"),
    ],
)
def test_extra_args_may_not_override_a_flag_specfleet_renders(args: list[str], flag: str) -> None:
    with pytest.raises(api.ManifestError) as refused:
        api.parse(_with_extra_args(args))
    message = str(refused.value)
    assert message.startswith("InferenceModel m: spec: extraArgs repeats a flag")
    assert flag in message


def test_extra_args_that_specfleet_does_not_render_are_kept() -> None:
    args = [
        "--enable-chunked-prefill",
        "--max-num-batched-tokens=8192",
        "--seed",
        "7",
        "--model-impl",
        "vllm",
        "--tokenizer-revision=main",
        "-pp",
        "1",
        "--compilation-config.level",
        "3",
    ]
    model = api.parse(_with_extra_args(args))
    assert isinstance(model, InferenceModel) and model.spec.extra_args == args


def test_the_crd_refuses_every_spec_owned_flag_in_both_forms() -> None:
    spec = crdgen.crd(InferenceModel)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = spec["properties"]["spec"]["x-kubernetes-validations"]
    (owned,) = [r for r in rules if r["message"].startswith("extraArgs repeats a flag")]
    for flag in vllmflags.SPEC_OWNED_FLAGS:
        assert f"'{flag}'" in owned["rule"], flag
        assert flag in owned["message"], flag
    assert "replace('_', '-')" in owned["rule"]
