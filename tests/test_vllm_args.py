"""Every command line specfleet renders is parsed by vLLM's own `vllm serve` parser.

vLLM runs in its own virtualenv (scripts/setup-vllm); tests/vllm_check.py parses there and
reports what vLLM understood, so this test fails on a flag vLLM does not know, a value it
does not accept, a value that reaches vLLM different from what the spec says, or a spelling of
a rendered flag that `extraArgs` could use to override it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from specfleet import api, perf, plan
from specfleet.api import vllmflags
from specfleet.api.common import ObjectMeta
from specfleet.api.inferencemodel import InferenceModel, InferenceModelSpec
from specfleet.render import vllm
from tests.corpus import EXAMPLES, ROOT

CACHE = Path(os.environ.get("SPECFLEET_CACHE", Path.home() / ".cache" / "specfleet"))
VLLM_PYTHON = Path(
    os.environ.get("SPECFLEET_VLLM_PYTHON", CACHE / "vllm-0.32.0" / "bin" / "python")
)
MODEL = {"name": "meta-llama/Llama-3.1-70B-Instruct"}
DRAFT = {"name": "meta-llama/Llama-3.2-1B-Instruct"}

SPECS: dict[str, dict[str, Any]] = {
    **{
        f"quantization-{q}": {"quantization": q}
        for q in ("auto", "fp8", "none", "awq", "gptq", "compressed-tensors", "modelopt")
    },
    **{
        f"kv-{d}": {"kvCacheDtype": d, "maxModelLen": 8192}
        for d in ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")
    },
    **{
        f"draft-{m}": {"draft": {"method": m, "model": DRAFT, "numSpeculativeTokens": 3}}
        for m in ("draft_model", "eagle", "eagle3")
    },
    "draft-ngram": {"draft": {"method": "ngram", "numSpeculativeTokens": 4}},
    "schedule-fixed": {"draft": {"model": DRAFT, "schedule": "fixed"}},
    "schedule-manual": {
        "draft": {
            "model": DRAFT,
            "numSpeculativeTokens": 4,
            "schedule": "manual",
            "ranges": [
                {"minBatch": 1, "maxBatch": 8, "numSpeculativeTokens": 4},
                {"minBatch": 9, "maxBatch": 64, "numSpeculativeTokens": 2},
                {"minBatch": 65, "maxBatch": 512, "numSpeculativeTokens": 0},
            ],
        }
    },
    "schedule-restart-mode": {
        "draft": {"model": DRAFT},
        "batching": {"mode": "Restart", "max": 256, "initial": 16},
    },
    "draft-mtp": {"draft": {"method": "mtp", "numSpeculativeTokens": 1}},
    "revisions": {
        "model": {**MODEL, "revision": "main"},
        "draft": {"model": {**DRAFT, "revision": "v1"}},
    },
    "explicit-gpus": {"gpu": {"count": 8}, "servedModelName": "chat-large"},
    "restart-mode": {"batching": {"mode": "Restart", "max": 128, "initial": 32}},
    "extra-args": {"extraArgs": ["--enable-chunked-prefill", "--max-num-batched-tokens=8192"]},
}


def _cases() -> list[tuple[str, InferenceModel]]:
    cases = [
        (f"{path.stem}:{r.metadata.name}", r)
        for path in EXAMPLES
        for r in api.load(path.read_text())
        if isinstance(r, InferenceModel)
    ]
    for case_id, fields in SPECS.items():
        spec = InferenceModelSpec.model_validate({"model": MODEL, **fields})
        cases.append((case_id, InferenceModel(metadata=ObjectMeta(name="m"), spec=spec)))
    return cases


CASES = _cases()


def _command(model: InferenceModel) -> tuple[list[str], plan.Plan, int]:
    result = plan.plan(model.metadata.name, model.spec)
    assert result.fits, result.errors
    limit = model.spec.batching.initial or model.spec.batching.max
    max_num_seqs = limit if model.spec.batching.mode == "Restart" else model.spec.batching.max
    name = model.spec.served_model_name or model.metadata.name
    schedule = vllm.schedule_ranges(model.spec, result)
    return vllm.serve_args(model.spec, result, name, max_num_seqs, schedule), result, max_num_seqs


def _vllm_parse(cases: list[dict[str, Any]]) -> dict[str, Any]:
    if not VLLM_PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{VLLM_PYTHON} is missing: run scripts/setup-vllm")
        pytest.skip(f"vLLM is not installed at {VLLM_PYTHON}: run scripts/setup-vllm")
    run = subprocess.run(
        [str(VLLM_PYTHON), str(ROOT / "tests" / "vllm_check.py")],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report: dict[str, Any] = json.loads(run.stdout)
    return report


VALUES = {
    vllmflags.MODEL: "m2",
    vllmflags.REVISION: "r2",
    vllmflags.SERVED_MODEL_NAME: "x",
    vllmflags.TENSOR_PARALLEL_SIZE: "2",
    vllmflags.QUANTIZATION: "fp8",
    vllmflags.KV_CACHE_DTYPE: "fp8",
    vllmflags.MAX_MODEL_LEN: "4096",
    vllmflags.MAX_NUM_SEQS: "3",
    vllmflags.SPECULATIVE_CONFIG: '{"method": "ngram", "num_speculative_tokens": 2}',
    vllmflags.HOST: "1.2.3.4",
    vllmflags.PORT: "9",
    vllmflags.GPU_MEMORY_UTILIZATION: "0.5",
    vllmflags.ENABLE_PREFIX_CACHING: None,
}
"""A value each rendered flag takes (None: a switch)."""


def _attempts() -> dict[str, list[str]]:
    """Ways an extraArgs entry might set a rendered flag: each spelling exactly, with `=`,
    with `_` for `-`, every prefix of it, a value glued to a short one, one JSON key."""
    attempts: dict[str, list[str]] = {}
    for flag, value in VALUES.items():
        for name in flag.names:
            forms = {name, name.replace("-", "_").replace("__", "--", 1)}
            forms |= {name[:end] for end in range(2, len(name))}
            for form in forms:
                attempts[form] = [form] if value is None else [form, value]
                if value is not None:
                    attempts[f"{form}={value}"] = [f"{form}={value}"]
                    if not form.startswith("--"):
                        attempts[form + value] = [form + value]
    attempts["--speculative-config.method"] = ["--speculative-config.method", "ngram"]
    return attempts


ATTEMPTS = _attempts()


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    cases = [{"id": case_id, "args": _command(model)[0]} for case_id, model in CASES]
    removed = vllmflags.REMOVED_FLAGS
    cases += [{"id": f"removed{flag}", "args": ["m", flag, "x"]} for flag in removed]
    cases.append({"id": "baseline", "args": ["m"]})
    cases += [{"id": f"attempt {key}", "args": ["m", *args]} for key, args in ATTEMPTS.items()]
    return _vllm_parse(cases)


@pytest.fixture(scope="module")
def parsed(report: dict[str, Any]) -> dict[str, Any]:
    return {r["id"]: r for r in report["results"]}


def test_the_table_covers_every_example_and_option() -> None:
    assert len(CASES) >= len(SPECS) + 3


@pytest.mark.parametrize(("case_id", "model"), CASES, ids=[c[0] for c in CASES])
def test_vllm_accepts_the_rendered_command_as_the_spec_means_it(
    parsed: dict[str, Any], case_id: str, model: InferenceModel
) -> None:
    args, result, max_num_seqs = _command(model)
    assert not set(args) & set(vllmflags.REMOVED_FLAGS)
    report = parsed[case_id]
    assert report["error"] is None, report["error"]
    seen = report["parsed"]
    assert seen["model_tag"] == model.spec.model.name
    assert seen["served_model_name"] == [model.spec.served_model_name or model.metadata.name]
    assert seen["tensor_parallel_size"] == result.tensor_parallel_size
    assert seen["max_num_seqs"] == max_num_seqs
    assert seen["max_model_len"] == result.max_model_len
    assert seen["kv_cache_dtype"] == model.spec.kv_cache_dtype
    assert seen["quantization"] == (None if result.quantization == "none" else result.quantization)
    assert seen["revision"] == model.spec.model.revision
    assert seen["gpu_memory_utilization"] == perf.GPU_MEMORY_UTILIZATION
    assert seen["enable_prefix_caching"] is True
    draft = model.spec.draft
    if draft is None:
        assert seen["speculative_config"] is None
    else:
        speculation = seen["speculative_config"]
        assert speculation["method"] == draft.method
        assert speculation["num_speculative_tokens"] == draft.num_speculative_tokens
        assert speculation.get("model") == (draft.model.name if draft.model else None)
        # vLLM's own schedule rules held it (tests/vllm_check.py builds its lookup table).
        schedule = vllm.schedule_ranges(model.spec, result)
        expected = [list(r) for r in schedule] if schedule else None
        assert speculation.get("num_speculative_tokens_per_batch_size") == expected
        if draft.schedule == "auto" and draft.method == "draft_model":
            assert expected, "an auto schedule is rendered for a timed draft"


def test_some_rendered_schedule_turns_drafting_off_and_vllm_builds_its_lookup(
    parsed: dict[str, Any],
) -> None:
    lookups = {case_id: r["lookup"] for case_id, r in parsed.items() if r.get("lookup")}
    assert "schedule-manual" in lookups
    manual = lookups["schedule-manual"]
    # Index = batch size: K=4 up to 8, 2 up to 64, none above (capped at --max-num-seqs 256).
    assert manual[1] == manual[8] == 4 and manual[9] == manual[64] == 2
    assert manual[65] == manual[-1] == 0 and len(manual) == 256 + 1
    assert "schedule-fixed" not in lookups


@pytest.mark.parametrize("flag", list(vllmflags.REMOVED_FLAGS))
def test_vllm_refuses_the_removed_flags(parsed: dict[str, Any], flag: str) -> None:
    assert "unrecognized arguments" in parsed[f"removed{flag}"]["error"]


@pytest.mark.parametrize("flag", vllmflags.RENDERED, ids=lambda f: f.name)
def test_every_spelling_vllm_has_for_a_rendered_flag_is_spec_owned(
    report: dict[str, Any], flag: vllmflags.Flag
) -> None:
    # vLLM reads `-sc` as --speculative-config and `--no-enable-prefix-caching` as the
    # opposite of what specfleet renders: extraArgs may use none of them.
    spellings = report["spellings"]
    assert flag.name in spellings, f"vLLM {report['vllm']} has no {flag.name}"
    assert set(spellings[flag.name]) == set(flag.names)
    assert set(flag.names) <= set(vllmflags.SPEC_OWNED_FLAGS)


def test_every_spelling_vllm_reads_as_a_rendered_flag_is_refused(
    parsed: dict[str, Any],
) -> None:
    # Whatever vLLM's parser accepts and reads as a setting specfleet renders, extraArgs may
    # not carry: prefixes, `_` for `-`, glued values, JSON keys.
    baseline = parsed["baseline"]["parsed"]
    setting = []
    for key in ATTEMPTS:
        result = parsed[f"attempt {key}"]
        if result["error"] is None and result["parsed"] != baseline:
            setting.append(key)
    assert len(setting) > 3 * len(VALUES)  # the parser does read many of them
    missed = [key for key in setting if vllmflags.sets(key, vllmflags.SPEC_OWNED_FLAGS) is None]
    assert missed == []


def test_no_other_flag_of_vllm_is_refused(report: dict[str, Any]) -> None:
    owned = set(vllmflags.SPEC_OWNED_FLAGS)
    others = [flag for flag in report["spellings"] if flag not in owned]
    assert len(others) > 100
    refused = [f for f in others if vllmflags.sets(f, vllmflags.SPEC_OWNED_FLAGS) is not None]
    assert refused == []
