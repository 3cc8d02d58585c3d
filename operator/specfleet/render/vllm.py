"""The vLLM command line for an InferenceModel: the one place that writes `vllm serve` args.

vLLM renames and removes flags between releases (`--speculative-model`,
`--num-speculative-tokens` and `--use-v2-block-manager` are gone), so this module targets the
release range in `VLLM_VERSIONS`, and tests/test_vllm_args.py parses every command line it
renders with vLLM's own argument parser. The flags' names, and which spec field owns each, are
`api.vllmflags`' (the API refuses `extraArgs` that repeat one). Pure: data in, argument list
out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from specfleet import perf
from specfleet.api import vllmflags as flags
from specfleet.api.inferencemodel import InferenceModelSpec
from specfleet.plan import Plan

VLLM_VERSIONS = ">=0.32,<0.34"
"""The vLLM releases whose `vllm serve` accepts what this module renders."""

PORT = 8000
"""The port vLLM listens on inside the pod (the gate listens on another)."""


ScheduleRanges = Sequence[tuple[int, int, int]]
"""A speculation schedule as vLLM reads it: (first batch size, last batch size, K), from 1 up."""


def speculative_config(
    spec: InferenceModelSpec, plan: Plan, schedule: ScheduleRanges | None = None
) -> dict[str, Any] | None:
    """The --speculative-config object, or None without speculation. A `schedule` renders
    as vLLM's `num_speculative_tokens_per_batch_size` (dynamic speculative decoding); None
    drafts `numSpeculativeTokens` at every batch size."""
    draft = spec.draft
    if draft is None:
        return None
    config: dict[str, Any] = {
        "method": draft.method,
        "num_speculative_tokens": draft.num_speculative_tokens,
    }
    if draft.model is not None:
        config["model"] = draft.model.name
        if draft.model.revision:
            config["revision"] = draft.model.revision
        # vLLM accepts 1 or the target's size; sharding the draft like the target keeps every
        # GPU's share of the draft small.
        config["draft_tensor_parallel_size"] = plan.tensor_parallel_size
    if schedule:
        config["num_speculative_tokens_per_batch_size"] = [list(r) for r in schedule]
    return config


def schedule_ranges(spec: InferenceModelSpec, plan: Plan) -> ScheduleRanges | None:
    """The planned speculation schedule as vLLM reads it; None for `schedule: fixed` (K at
    every batch size is vLLM's default) and without a draft."""
    if spec.draft is None or spec.draft.schedule == "fixed" or not plan.schedule:
        return None
    return [r.as_vllm() for r in plan.schedule]


def serve_args(
    spec: InferenceModelSpec,
    plan: Plan,
    served_name: str,
    max_num_seqs: int,
    schedule: ScheduleRanges | None = None,
) -> list[str]:
    """The arguments after `vllm serve`: the model first, then flags, `extraArgs` last.
    `schedule` is the speculation schedule in force (see `speculative_config`)."""
    args = [
        spec.model.name,
        flags.SERVED_MODEL_NAME.name,
        served_name,
        flags.HOST.name,
        "0.0.0.0",  # Prometheus scrapes /metrics on the pod IP; clients use the gate
        flags.PORT.name,
        str(PORT),
        flags.TENSOR_PARALLEL_SIZE.name,
        str(plan.tensor_parallel_size),
        flags.KV_CACHE_DTYPE.name,
        plan.kv_cache_dtype,
        flags.MAX_NUM_SEQS.name,
        str(max_num_seqs),
        flags.GPU_MEMORY_UTILIZATION.name,
        # The share the plan's memory was counted at.
        str(perf.GPU_MEMORY_UTILIZATION),
        flags.ENABLE_PREFIX_CACHING.name,
    ]
    if plan.quantization != "none":
        args += [flags.QUANTIZATION.name, plan.quantization]
    if plan.max_model_len:
        args += [flags.MAX_MODEL_LEN.name, str(plan.max_model_len)]
    if spec.model.revision:
        args += [flags.REVISION.name, spec.model.revision]
    speculation = speculative_config(spec, plan, schedule)
    if speculation is not None:
        args += [flags.SPECULATIVE_CONFIG.name, json.dumps(speculation, separators=(",", ":"))]
    return args + list(spec.extra_args)
