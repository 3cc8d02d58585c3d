"""GPU sizing: how many GPUs one replica of an InferenceModel needs, and why.

Pure: takes a spec, returns a `Plan`; no I/O. Called by `reconcile` (the plan goes into status
and drives rendering), by `specfleet plan` and by `specfleet render`.

Memory per replica is counted by the performance model's rule (`perf.Memory`: weights, draft,
reserve and KV cache within vLLM's share of the GPUs); the planner asks it for room for the KV
cache of `batching.max` sequences of `batching.averageTokens` each (and at least one sequence
of the full context, which vLLM requires to start). The smallest tensor-parallel size that
fits, and divides the attention heads, wins. A spec that cannot fit gets the numbers and the
changes that would make it fit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from specfleet import catalog, perf, schedule
from specfleet.api.inferencemodel import (
    LONG_CONTEXT_FP8_KV_LIMIT,
    MAX_GPUS_PER_REPLICA,
    InferenceModelSpec,
    MemoryPlan,
    ModelSource,
    PlanStatus,
    ScheduleRange,
)
from specfleet.catalog import GIB, GPU, ModelArchitecture

TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)
"""Sizes `gpu.count: auto` considers, smallest first."""

SPECULATION_MIN_SIZE_RATIO = 3.0
"""A draft should be at least this many times smaller than its target to pay."""

SPECULATION_MIN_TARGET_PARAMETERS = 7e9
"""Below about this size a target decodes fast enough that drafting rarely pays."""

ESTIMATED_KV_BYTES_PER_TOKEN_PER_BILLION = 4.6 * 1024
ESTIMATED_KV_BYTES_PER_TOKEN_BASE = 100 * 1024
"""For a model known only by its parameter count: 16-bit KV bytes per token as a linear fit
that lies above every grouped-query-attention model in the catalog (conservative)."""

_SIZE_SUFFIX = {"M": 1e6, "B": 1e9, "T": 1e12}

PRIOR_DRAFT_ACCEPTANCE = 0.8
"""The draft acceptance (the probability each drafted token is accepted) an auto schedule
assumes until one is measured: a same-family draft on chat traffic, which vLLM reports as an
acceptance rate of 0.54 at K=5 and 0.64 at K=3."""

DRAFTLESS_METHODS = ("ngram", "mtp")
"""Speculation methods with no separate draft model (n-gram lookup; the target's own MTP
layers)."""


def parse_parameters(text: str) -> float:
    """`70B` -> 7.0e10; `350M` -> 3.5e8."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([MBT])", text)
    if not match:
        raise ValueError(f"{text!r} is not a parameter count such as 70B or 350M")
    return float(match.group(1)) * _SIZE_SUFFIX[match.group(2)]


def _gib(value: float) -> float:
    return round(value / GIB, 1)


@dataclass(frozen=True)
class ModelSize:
    """What sizing needs of one model: its parameters and, where known, its shape."""

    name: str
    parameters: float
    architecture: ModelArchitecture | None
    """None when only the parameter count is known (KV cache is then estimated)."""

    def kv_bytes_per_token(self, dtype_bytes: float) -> float:
        if self.architecture:
            return self.architecture.kv_bytes_per_token(dtype_bytes)
        per_billion = ESTIMATED_KV_BYTES_PER_TOKEN_PER_BILLION * self.parameters / 1e9
        return (ESTIMATED_KV_BYTES_PER_TOKEN_BASE + per_billion) * dtype_bytes / 2


def model_size(source: ModelSource) -> ModelSize | str:
    """The size of a model from hints, the catalog or its parameter count; or why not."""
    if source.architecture is not None and source.parameters is not None:
        hints = source.architecture
        shape = ModelArchitecture(
            name=source.name,
            parameters=parse_parameters(source.parameters),
            layers=hints.layers,
            hidden_size=hints.hidden_size,
            attention_heads=hints.attention_heads,
            kv_heads=hints.kv_heads,
            head_dim=hints.head_dim,
            vocab_size=hints.vocab_size,
            max_context=hints.max_context or 0,
        )
        return ModelSize(source.name, shape.parameters, shape)
    known = catalog.find_model(source.name)
    if known is not None:
        parameters = parse_parameters(source.parameters) if source.parameters else known.parameters
        return ModelSize(source.name, parameters, known)
    if source.parameters is not None:
        return ModelSize(source.name, parse_parameters(source.parameters), None)
    return (
        f"the catalog does not know model {source.name}; set its parameters (for example "
        "parameters: 70B) or its architecture (layers, hiddenSize, attentionHeads, kvHeads, "
        "headDim, vocabSize)"
    )


@dataclass(frozen=True)
class Plan:
    """What one replica of an InferenceModel needs, or why it cannot be served."""

    name: str
    """The InferenceModel's name."""
    gpu: GPU
    fits: bool
    """Whether target, draft and KV cache fit; False means the spec must change."""
    tensor_parallel_size: int
    """GPUs per replica (when it does not fit: the size the numbers are for)."""
    quantization: str
    """Weight precision served: `fp8`, `none`, or a pre-quantized format."""
    kv_cache_dtype: str
    max_model_len: int | None
    weights_bytes: float
    draft_weights_bytes: float
    kv_cache_bytes: float
    """KV cache reserved for the batch ceiling."""
    usable_bytes: float
    """GPU memory vLLM may use across the replica's GPUs."""
    decode_tokens_per_second: float | None = None
    """One sequence alone, without drafting, by the calibrated performance model; None when
    the model's shape is unknown."""
    schedule: schedule.Schedule = ()
    """The speculation schedule in force: K per batch-size range (empty without a draft)."""
    schedule_acceptance: float | None = None
    """The draft acceptance (at position 0) an auto schedule was computed for."""
    replica: perf.Replica | None = None
    """The replica as the performance model times it; None when the target's shape is
    unknown."""
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    """Facts worth showing that are neither errors nor warnings."""

    @property
    def messages(self) -> list[str]:
        return [*self.errors, *self.warnings, *self.notes]

    def status(self) -> PlanStatus:
        """The plan as InferenceModel status shows it."""
        return PlanStatus(
            tensor_parallel_size=self.tensor_parallel_size,
            quantization=self.quantization,
            kv_cache_dtype=self.kv_cache_dtype,
            max_model_len=self.max_model_len,
            memory=MemoryPlan(
                weights_gib=_gib(self.weights_bytes),
                draft_weights_gib=_gib(self.draft_weights_bytes),
                kv_cache_gib=_gib(self.kv_cache_bytes),
                usable_gib=_gib(self.usable_bytes),
            ),
            decode_tokens_per_second=self.decode_tokens_per_second,
            schedule=[
                ScheduleRange(
                    min_batch=r.first,
                    max_batch=r.last,
                    num_speculative_tokens=r.k,
                    speedup=[r.speedup_first, r.speedup_last],
                )
                for r in self.schedule
            ],
            schedule_acceptance=self.schedule_acceptance,
            warnings=list(self.warnings),
        )

    def summary(self) -> dict[str, Any]:
        """The plan as `specfleet plan --output json` prints it."""
        return {
            "name": self.name,
            "fits": self.fits,
            "gpu": self.gpu.product,
            "tensorParallelSize": self.tensor_parallel_size,
            "quantization": self.quantization,
            "kvCacheDtype": self.kv_cache_dtype,
            "maxModelLen": self.max_model_len,
            "weightsGiB": _gib(self.weights_bytes),
            "draftWeightsGiB": _gib(self.draft_weights_bytes),
            "kvCacheGiB": _gib(self.kv_cache_bytes),
            "usableGiB": _gib(self.usable_bytes),
            "decodeTokensPerSecond": self.decode_tokens_per_second,
            "schedule": [
                {
                    "minBatch": r.first,
                    "maxBatch": r.last,
                    "numSpeculativeTokens": r.k,
                    "speedup": [r.speedup_first, r.speedup_last],
                }
                for r in self.schedule
            ],
            "scheduleAcceptance": self.schedule_acceptance,
            "messages": self.messages,
        }


def _served_quantization(spec: InferenceModelSpec, gpu: GPU) -> str:
    if spec.quantization == "auto":
        return "fp8" if gpu.fp8_native else "none"
    return spec.quantization


@dataclass(frozen=True)
class _Need:
    """What one replica must hold, apart from the GPU count: the weights, and the KV cache of
    the batch ceiling at the average size, but never less than one full-length sequence."""

    weights: float
    draft_weights: float
    kv_per_token: float
    sequences: int
    average_tokens: int
    max_model_len: int

    @property
    def kv(self) -> float:
        return self.kv_per_token * max(self.sequences * self.average_tokens, self.max_model_len)

    def memory(self, gpu: GPU, tensor_parallel_size: int) -> perf.Memory:
        return perf.Memory(
            gpu, tensor_parallel_size, self.weights, self.draft_weights, self.kv_per_token
        )

    def total(self, gpu: GPU, tensor_parallel_size: int) -> float:
        held = self.memory(gpu, tensor_parallel_size)
        return self.weights + self.draft_weights + self.kv + held.reserve_bytes

    def fits(self, gpu: GPU, tensor_parallel_size: int) -> bool:
        return self.memory(gpu, tensor_parallel_size).kv_cache_bytes >= self.kv

    def largest_batch(self, gpu: GPU, tensor_parallel_size: int) -> int:
        room = self.memory(gpu, tensor_parallel_size).kv_cache_bytes
        if room < self.kv_per_token * self.max_model_len:
            return 0
        return int(room // (self.kv_per_token * self.average_tokens))


def _speculation_warnings(target: ModelSize, draft: ModelSize | None) -> list[str]:
    warnings = []
    if target.parameters < SPECULATION_MIN_TARGET_PARAMETERS:
        warnings.append(
            f"speculation is unlikely to pay: the target has {target.parameters / 1e9:.1f}B "
            "parameters, and below about 7B decoding is rarely slow enough for drafts to help"
        )
    if draft and draft.parameters * SPECULATION_MIN_SIZE_RATIO > target.parameters:
        warnings.append(
            f"speculation is unlikely to pay: the draft ({draft.parameters / 1e9:.1f}B) is not "
            f"at least {SPECULATION_MIN_SIZE_RATIO:.0f}x smaller than the target "
            f"({target.parameters / 1e9:.1f}B); use a smaller draft"
        )
    return warnings


def _vocabulary_error(target: ModelSize, draft: ModelSize | None) -> str | None:
    if draft is None or target.architecture is None or draft.architecture is None:
        return None
    if target.architecture.vocab_size == draft.architecture.vocab_size:
        return None
    return (
        f"draft.model {draft.name} has a vocabulary of {draft.architecture.vocab_size} tokens "
        f"but the target has {target.architecture.vocab_size}; vLLM needs a draft that shares "
        "the target's tokenizer (for example a smaller model of the same family)"
    )


def _fixes(
    spec: InferenceModelSpec, gpu: GPU, need: _Need, sizes: list[int], target: ModelSize
) -> list[str]:
    """Single changes to the spec that would make it fit, each checked, cheapest first."""
    tried = sizes[-1]
    fixes = []
    if spec.quantization == "none" and gpu.fp8_native:
        fp8 = replace(need, weights=target.parameters * perf.SERVED_WEIGHT_BYTES["fp8"])
        if any(fp8.fits(gpu, tp) for tp in sizes):
            fixes.append("quantization: fp8")
    if spec.gpu.count != "auto":
        larger = [tp for tp in TENSOR_PARALLEL_SIZES if tp > tried and need.fits(gpu, tp)]
        if larger:
            fixes.append(f"gpu.count: {larger[0]}")
    batch = need.largest_batch(gpu, tried)
    if batch >= spec.batching.min:
        fixes.append(f"batching.max: {batch} (or lower)")
    if (
        spec.kv_cache_dtype == "auto"
        and need.max_model_len <= LONG_CONTEXT_FP8_KV_LIMIT
        and replace(need, kv_per_token=need.kv_per_token / 2).fits(gpu, tried)
    ):
        fixes.append("kvCacheDtype: fp8")
    if not fixes:
        fixes.append(
            "more than one change: no single change to quantization, gpu.count, batching.max "
            "or kvCacheDtype fits it; combine them, or use larger GPUs or a smaller model"
        )
    return fixes


def timed_replica(
    spec: InferenceModelSpec,
    gpu: GPU,
    tensor_parallel_size: int,
    quantization: str,
    target: ModelSize,
    draft: ModelSize | None,
) -> perf.Replica | None:
    """The replica as the performance model times it; None when the target's shape is
    unknown. The draft is timed only when it is a separate model of known shape."""
    if target.architecture is None:
        return None
    timed_draft = None
    if draft is not None and spec.draft is not None and spec.draft.method == "draft_model":
        timed_draft = draft.architecture
    return perf.Replica(
        target.architecture,
        gpu,
        tensor_parallel_size,
        "fp8" if perf.SERVED_WEIGHT_BYTES[quantization] == 1.0 else "bf16",
        timed_draft,
        spec.draft.num_speculative_tokens if spec.draft is not None else 1,
        1.0 if spec.kv_cache_dtype.startswith("fp8") else 2.0,
    )


def _schedule(
    spec: InferenceModelSpec,
    replica: perf.Replica | None,
    draft_acceptance: schedule.Acceptance | None,
) -> tuple[schedule.Schedule, float | None]:
    """The speculation schedule the spec asks for, with its expected speedups where the model
    can time the draft, and the acceptance rate an auto schedule assumed."""
    draft = spec.draft
    if draft is None:
        return (), None
    last = spec.batching.max
    acceptance = PRIOR_DRAFT_ACCEPTANCE if draft_acceptance is None else draft_acceptance
    timed = replica if replica is not None and replica.draft is not None else None
    context = spec.batching.average_tokens
    if draft.schedule == "manual" and draft.ranges is not None:
        given = schedule.of_triples(
            [(r.min_batch, r.max_batch, r.num_speculative_tokens) for r in draft.ranges]
        )
    elif draft.schedule == "auto" and timed is not None:
        first = acceptance if isinstance(acceptance, float | int) else acceptance[0]
        return schedule.best(timed, acceptance, last, context), float(first)
    else:
        given = schedule.fixed(draft.num_speculative_tokens, last)
    if timed is None:
        return given, None
    return schedule.with_speedups(given, timed, acceptance, context), None


def plan(
    name: str, spec: InferenceModelSpec, draft_acceptance: schedule.Acceptance | None = None
) -> Plan:
    """The GPU plan of one InferenceModel's spec. `draft_acceptance` is what an auto
    speculation schedule is computed for: the measured probability that a drafted token is
    accepted, or vLLM's per-position rates; None assumes `PRIOR_DRAFT_ACCEPTANCE`."""
    gpu = catalog.GPUS[spec.gpu.product]
    quantization = _served_quantization(spec, gpu)
    kv_dtype_bytes = 1.0 if spec.kv_cache_dtype.startswith("fp8") else 2.0
    errors: list[str] = []
    warnings: list[str] = []
    notes: list[str] = []

    target = model_size(spec.model)
    draft: ModelSize | None = None
    if spec.draft is not None and spec.draft.model is not None:
        sized = model_size(spec.draft.model)
        if isinstance(sized, str):
            errors.append(f"draft.model: {sized}")
        else:
            draft = sized
    if isinstance(target, str):
        return Plan(
            name=name,
            gpu=gpu,
            fits=False,
            tensor_parallel_size=0,
            quantization=quantization,
            kv_cache_dtype=spec.kv_cache_dtype,
            max_model_len=spec.max_model_len,
            weights_bytes=0,
            draft_weights_bytes=0,
            kv_cache_bytes=0,
            usable_bytes=0,
            errors=(f"model: {target}", *errors),
        )

    if quantization == "fp8" and not gpu.fp8_native:
        warnings.append(
            f"FP8 is not native on {gpu.product} (compute capability "
            f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}): vLLM falls back to "
            "weight-only FP8, which saves memory but not compute"
        )
    if spec.draft is not None:
        warnings.extend(_speculation_warnings(target, draft))
        vocabulary = _vocabulary_error(target, draft)
        if vocabulary:
            errors.append(vocabulary)
    if target.architecture is None:
        notes.append(
            f"KV cache per token is estimated from {target.parameters / 1e9:.0f}B parameters; "
            "set model.architecture for an exact plan"
        )

    max_model_len = spec.max_model_len or (
        target.architecture.max_context if target.architecture else None
    )
    if not max_model_len:
        errors.append("maxModelLen: the model's context length is unknown; set maxModelLen")
        max_model_len = spec.batching.average_tokens

    kv_per_token = target.kv_bytes_per_token(kv_dtype_bytes)
    if draft is not None:
        kv_per_token += draft.kv_bytes_per_token(kv_dtype_bytes)
    need = _Need(
        weights=target.parameters * perf.SERVED_WEIGHT_BYTES[quantization],
        draft_weights=draft.parameters * perf.DRAFT_WEIGHT_BYTES if draft else 0.0,
        kv_per_token=kv_per_token,
        sequences=spec.batching.max,
        average_tokens=spec.batching.average_tokens,
        max_model_len=max_model_len,
    )

    heads = target.architecture.attention_heads if target.architecture else None
    if spec.gpu.count == "auto":
        sizes = [tp for tp in TENSOR_PARALLEL_SIZES if heads is None or heads % tp == 0]
    else:
        sizes = [spec.gpu.count]
        if heads is not None and heads % spec.gpu.count:
            usable_counts = ", ".join(
                str(tp) for tp in range(1, MAX_GPUS_PER_REPLICA + 1) if heads % tp == 0
            )
            errors.append(
                f"gpu.count: {spec.gpu.count} GPUs cannot split {heads} attention heads "
                f"evenly; use one of {usable_counts}, or auto"
            )
    fitting = [tp for tp in sizes if need.fits(gpu, tp)]
    tensor_parallel_size = fitting[0] if fitting else sizes[-1]
    held = need.memory(gpu, tensor_parallel_size)
    if not fitting:
        precision = "bf16" if quantization == "none" else quantization
        errors.append(
            f"needs {_gib(need.total(gpu, tensor_parallel_size))} GiB per replica (weights "
            f"{_gib(need.weights)} at {precision}, draft {_gib(need.draft_weights)}, KV cache "
            f"{_gib(need.kv)} for {spec.batching.max} x {spec.batching.average_tokens} tokens, "
            f"reserve {_gib(perf.RESERVE_PER_GPU_BYTES)} per GPU) but {tensor_parallel_size} x "
            f"{gpu.product} give {_gib(held.usable_bytes)} GiB at "
            f"{perf.GPU_MEMORY_UTILIZATION:.0%} memory utilisation; use "
            + ", or ".join(_fixes(spec, gpu, need, sizes, target))
        )
    replica = timed_replica(spec, gpu, tensor_parallel_size, quantization, target, draft)
    alone = (
        round(perf.decode_tokens_per_second(replica.without_draft(), 1, 0, 1.0), 1)
        if replica is not None
        else None
    )
    ranges, schedule_acceptance = _schedule(spec, replica, draft_acceptance)
    return Plan(
        name=name,
        gpu=gpu,
        fits=not errors,
        decode_tokens_per_second=alone,
        schedule=ranges,
        schedule_acceptance=schedule_acceptance,
        replica=replica,
        tensor_parallel_size=tensor_parallel_size,
        quantization=quantization,
        kv_cache_dtype=spec.kv_cache_dtype,
        max_model_len=max_model_len,
        weights_bytes=need.weights,
        draft_weights_bytes=need.draft_weights,
        kv_cache_bytes=need.kv,
        usable_bytes=held.usable_bytes,
        errors=tuple(errors),
        warnings=tuple(warnings),
        notes=tuple(notes),
    )
