"""The InferenceModel resource: one served model and everything it needs.

This module is the single source of truth for the resource's shape: `crdgen` writes the CRD from
it, the operator parses every body with it, and the CLI validates manifests with it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import (
    Field,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
)

from specfleet.api import crdinfo
from specfleet.api.base import ApiModel, Rule, StatusModel
from specfleet.api.capture import CaptureSpec, CaptureStatus
from specfleet.api.common import (
    DURATION_PATTERN,
    Conditions,
    Duration,
    EnvVar,
    ObjectMeta,
    ResourceRequirements,
    SecretKeyRef,
    Toleration,
)
from specfleet.api.vllmflags import REMOVED_FLAGS, SPEC_OWNED_FLAGS, cel_sets, flag_name, sets

GPUProduct = Literal["H100-80GB", "H200-141GB", "A100-80GB", "A100-40GB", "L40S", "L4"]
"""The GPUs specfleet knows how to plan for."""

MAX_GPUS_PER_REPLICA = 8
"""Tensor parallelism stays inside one node; the largest GPU nodes have eight."""

DECISION_HISTORY_LIMIT = 32
"""How many autoscaling decisions status keeps, newest last."""

LONG_CONTEXT_FP8_KV_LIMIT = 8192
"""Above this context length a quantized KV cache loses noticeable quality."""


def _owned_flags_message() -> str:
    by_field: dict[str, list[str]] = {}
    for flag, field in SPEC_OWNED_FLAGS.items():
        by_field.setdefault(field, []).append(flag)
    fields = "; ".join(
        f"{field} ({', '.join(flags)})" for field, flags in by_field.items() if field
    )
    fixed = ", ".join(by_field.get("", []))
    return (
        f"extraArgs repeats a flag a field sets (in any spelling vLLM reads: abbreviated, "
        f"with _ for -, or one JSON key after a dot); set the field instead: {fields}. "
        f"specfleet owns {fixed}"
    )


def _cel_flag_list(flags: dict[str, str]) -> str:
    return "[" + ", ".join(f"'{flag}'" for flag in flags) + "]"


def _cel_no_flags(flags: dict[str, str]) -> str:
    listed = _cel_flag_list(flags)
    return (
        f"!has(self.extraArgs) || self.extraArgs.all(a, !(a in {listed})"
        f" && !{listed}.exists(f, a.startsWith(f + '=')))"
    )


class ArchitectureHints(ApiModel):
    """The shape of a model the built-in catalog does not know, from its config.json, so the
    planner can size its KV cache exactly."""

    layers: Annotated[int, Field(ge=1, le=1024)]
    """num_hidden_layers."""
    hidden_size: Annotated[int, Field(ge=1)]
    """hidden_size."""
    attention_heads: Annotated[int, Field(ge=1)]
    """num_attention_heads."""
    kv_heads: Annotated[int, Field(ge=1)]
    """num_key_value_heads (equal to attention heads without grouped-query attention)."""
    head_dim: Annotated[int, Field(ge=1)]
    """head_dim (usually hidden_size / num_attention_heads)."""
    vocab_size: Annotated[int, Field(ge=1)]
    """vocab_size; a draft must share its target's."""
    max_context: Annotated[int, Field(ge=1)] | None = None
    """max_position_embeddings; unset means maxModelLen must be set."""


class ModelSource(ApiModel):
    """Where a model's weights come from."""

    rules = (
        Rule(
            cel="!has(self.architecture) || has(self.parameters)",
            message="model.architecture needs model.parameters too (for example 70B): the "
            "weights' size comes from the parameter count",
            check=lambda m: m.architecture is None or m.parameters is not None,
            field_path=".parameters",
        ),
    )

    name: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    """Hugging Face model id (`org/name`) or a URI or path vLLM can load."""
    revision: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    """Branch, tag or commit of the model repository; unset means its default branch."""
    parameters: Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)?[MBT]$")] | None = None
    """Parameter count such as `70B` or `350M`, for models the built-in catalog does not know."""
    architecture: ArchitectureHints | None = None
    """The model's shape, for models the built-in catalog does not know."""
    credentials: SecretKeyRef | None = None
    """The Secret key holding a Hugging Face token, for gated models. Never inline a token."""


MAX_SCHEDULE_RANGES = 16
"""The most batch-size ranges a speculation schedule may have."""

MAX_BATCH = 4096
"""The largest batch size any field names (batching.max's bound)."""


class SpeculationRange(ApiModel):
    """K for one range of batch sizes: vLLM drafts this many tokens per step while the
    number of requests it schedules in a step lies in [minBatch, maxBatch]."""

    rules = (
        Rule(
            cel="self.minBatch <= self.maxBatch",
            message="draft.ranges[]: minBatch must not exceed maxBatch",
            check=lambda r: r.min_batch <= r.max_batch,
        ),
    )

    min_batch: Annotated[int, Field(ge=1, le=MAX_BATCH)]
    """The smallest batch size of the range."""
    max_batch: Annotated[int, Field(ge=1, le=MAX_BATCH)]
    """The largest batch size of the range (inclusive)."""
    num_speculative_tokens: Annotated[int, Field(ge=0, le=16)]
    """K in this range; 0 turns speculation off."""


def _ranges_tile(ranges: list[SpeculationRange]) -> bool:
    """Whether the ranges start at batch 1 and each starts right after the one before."""
    ends = [0] + [r.max_batch for r in ranges]
    return bool(ranges) and all(
        r.min_batch == end + 1 for r, end in zip(ranges, ends, strict=False)
    )


class DraftSpec(ApiModel):
    """Speculative decoding: a cheap proposer drafts tokens that the target verifies in one
    pass, so each decoding step can emit several tokens."""

    rules = (
        Rule(
            cel="self.method in ['ngram', 'mtp'] || has(self.model)",
            message="draft.model is required for methods draft_model, eagle and eagle3; "
            "set draft.model.name, or use method ngram or mtp, which need no draft model",
            check=lambda d: d.method in ("ngram", "mtp") or d.model is not None,
        ),
        Rule(
            cel="(self.schedule == 'manual') == has(self.ranges)",
            message="draft.ranges goes with draft.schedule: manual and only with it; set "
            "schedule: manual to give the ranges, or drop ranges for auto or fixed",
            check=lambda d: (d.schedule == "manual") == (d.ranges is not None),
            field_path=".ranges",
        ),
        Rule(
            cel="!has(self.ranges) || (size(self.ranges) > 0 && self.ranges[0].minBatch == 1"
            " && self.ranges.map(r, r.minBatch).isSorted()"
            " && self.ranges.all(r, r.minBatch == 1"
            " || self.ranges.exists(p, p.maxBatch + 1 == r.minBatch)))",
            message="draft.ranges must tile the batch sizes: the first starts at minBatch 1 and "
            "each next one at the previous maxBatch + 1, in order",
            check=lambda d: d.ranges is None or _ranges_tile(d.ranges),
            field_path=".ranges",
        ),
        Rule(
            cel="!has(self.ranges) || self.ranges.all(r, "
            "r.numSpeculativeTokens <= self.numSpeculativeTokens)",
            message="draft.ranges[].numSpeculativeTokens must not exceed "
            "draft.numSpeculativeTokens, the most tokens vLLM drafts",
            check=lambda d: (
                d.ranges is None
                or all(r.num_speculative_tokens <= d.num_speculative_tokens for r in d.ranges)
            ),
            field_path=".ranges",
        ),
    )

    model: ModelSource | None = None
    """The draft model (or EAGLE head). It must share the target's vocabulary."""
    num_speculative_tokens: Annotated[int, Field(ge=1, le=16)] = 5
    """K, the number of tokens drafted per step."""
    method: Literal["draft_model", "eagle", "eagle3", "mtp", "ngram"] = "draft_model"
    """How drafts are proposed: a separate draft model, an EAGLE head, the target's own
    multi-token-prediction layers, or n-gram lookup in the prompt."""
    schedule: Literal["auto", "fixed", "manual"] = "auto"
    """K per batch size (vLLM's dynamic speculative decoding). auto: computed from the
    performance model and the acceptance rate, K=0 (no drafting) where speculation does not
    pay, retuned from the measured acceptance; fixed: numSpeculativeTokens at every batch
    size; manual: as `ranges` says."""
    ranges: (
        Annotated[list[SpeculationRange], Field(min_length=1, max_length=MAX_SCHEDULE_RANGES)]
        | None
    ) = None
    """The schedule when `schedule` is manual: batch-size ranges from 1 up, each with its K.
    The last range's K holds for every larger batch."""


GPU_COUNT_MESSAGE = (
    f"gpu.count must be 'auto' or a whole number of GPUs from 1 to {MAX_GPUS_PER_REPLICA}"
)
GPUCount = Annotated[
    Annotated[int, Field(ge=1, le=MAX_GPUS_PER_REPLICA)] | Literal["auto"],
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                {
                    "rule": "type(self) == string ? self == 'auto'"
                    f" : (self >= 1 && self <= {MAX_GPUS_PER_REPLICA})",
                    "message": GPU_COUNT_MESSAGE,
                }
            ],
        }
    ),
]


class GPUSpec(ApiModel):
    """The GPUs each replica runs on, and where to find them."""

    product: GPUProduct = "H100-80GB"
    """The GPU model; the planner sizes memory and decides FP8 from it."""
    count: GPUCount = "auto"
    """GPUs per replica (the tensor-parallel size), or `auto` for the smallest count that fits
    target, draft and KV cache."""

    node_selector: dict[str, str] | None = None
    """Node labels the pods require. Unset: the NVIDIA GPU Feature Discovery product label of
    `product`."""
    tolerations: list[Toleration] | None = Field(default=None, max_length=32)
    """Taints the pods tolerate. Unset: the `nvidia.com/gpu` taint GPU node pools carry."""

    @field_validator("count", mode="wrap")
    @classmethod
    def _one_message_for_count(cls, value: object, handler: ValidatorFunctionWrapHandler) -> object:
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(GPU_COUNT_MESSAGE) from None


class BatchingSpec(ApiModel):
    """How many sequences one replica decodes at once."""

    rules = (
        Rule(
            cel="self.min <= self.max",
            message="batching.min must not exceed batching.max; lower min or raise max",
            check=lambda b: b.min <= b.max,
            field_path=".min",
        ),
        Rule(
            cel="!has(self.initial) || (self.min <= self.initial && self.initial <= self.max)",
            message="batching.initial must lie between batching.min and batching.max",
            check=lambda b: b.initial is None or b.min <= b.initial <= b.max,
            field_path=".initial",
        ),
    )

    min: Annotated[int, Field(ge=1, le=MAX_BATCH)] = 1
    """The lowest limit the autoscaler may set."""
    max: Annotated[int, Field(ge=1, le=MAX_BATCH)] = 256
    """The ceiling: vLLM's `--max-num-seqs`, and the highest limit the autoscaler may set. The
    planner reserves KV cache for it."""
    initial: Annotated[int, Field(ge=1, le=MAX_BATCH)] | None = None
    """The limit before the first autoscaling decision. Unset: `max`."""
    average_tokens: Annotated[int, Field(ge=16, le=10_000_000)] = 1024
    """Average tokens (prompt and output) a running sequence holds in the KV cache. The
    planner reserves KV cache for `max` sequences of this size."""
    mode: Literal["Live", "Restart"] = "Live"
    """Live: vLLM runs at `max` and the gate sidecar admits the current limit, so a change
    needs no restart. Restart: the limit is vLLM's own `--max-num-seqs` and a change rolls the
    Deployment."""


class AcceptanceBands(ApiModel):
    """Speculative acceptance rates that move the batch limit: above `high` speculation pays
    and the batch may grow, below `low` it costs and the batch shrinks."""

    rules = (
        Rule(
            cel="self.low < self.high",
            message="autoscaling.acceptanceBands.low must be below high",
            check=lambda a: a.low < a.high,
            field_path=".low",
        ),
    )

    high: Annotated[float, Field(ge=0, le=1)] = 0.85
    """At or above this acceptance rate the limit may double."""
    low: Annotated[float, Field(ge=0, le=1)] = 0.65
    """Below this acceptance rate the limit halves."""


def _cel_below_p99(field: str) -> str:
    # Guarded like the interval rule: a malformed duration is reported by its pattern.
    return (
        f"!has(self.{field}) || !has(self.p99Target)"
        f" || !(self.{field}.matches('{DURATION_PATTERN}')"
        f" && self.p99Target.matches('{DURATION_PATTERN}'))"
        f" || duration(self.{field}) < duration(self.p99Target)"
    )


def _below_p99(autoscaling: AutoscalingSpec, target: Duration | None) -> bool:
    end_to_end = autoscaling.p99_target
    return target is None or end_to_end is None or target.seconds < end_to_end.seconds


class AutoscalingSpec(ApiModel):
    """Retuning the batch limit from measured acceptance rate and P99 latency targets: time
    to first token, time between tokens, end to end."""

    rules = (
        Rule(
            # The pattern checks run on their own; guard so a malformed duration is reported
            # by its pattern, not as a conversion error of this rule.
            cel=f"!(self.interval.matches('{DURATION_PATTERN}')"
            f" && self.window.matches('{DURATION_PATTERN}'))"
            " || duration(self.interval) <= duration(self.window)",
            message="autoscaling.interval must not exceed autoscaling.window; a decision "
            "needs at least one interval of observations",
            check=lambda a: a.interval.seconds <= a.window.seconds,
            field_path=".interval",
        ),
        Rule(
            cel=_cel_below_p99("ttftP99Target"),
            message="autoscaling.ttftP99Target must be below p99Target: the first token comes "
            "before the last; lower ttftP99Target or raise p99Target",
            check=lambda a: _below_p99(a, a.ttft_p99_target),
            field_path=".ttftP99Target",
        ),
        Rule(
            cel=_cel_below_p99("itlP99Target"),
            message="autoscaling.itlP99Target must be below p99Target: one gap between tokens "
            "is a small part of a whole answer; lower itlP99Target or raise p99Target",
            check=lambda a: _below_p99(a, a.itl_p99_target),
            field_path=".itlP99Target",
        ),
    )

    enabled: bool = True
    """Whether the autoscaler looks at this model at all."""
    mode: Literal["Apply", "Recommend"] = "Apply"
    """Apply changes the limit. Recommend computes and records every decision but changes
    nothing, so on-call can review before trusting it."""
    interval: Duration = Duration("30s")
    """How often a decision is made."""
    window: Duration = Duration("5m")
    """How far back each observation looks."""
    p99_target: Duration | None = None
    """The P99 end-to-end latency (queueing included) to stay under. It grows with every
    answer's length, which the batch limit cannot shorten: prefer ttftP99Target and
    itlP99Target, and keep this one for a known answer length. Unset: no end-to-end target."""
    ttft_p99_target: Duration | None = None
    """The P99 time to first token to stay under (queueing at the gate included), such as
    500ms for interactive use. A breach while requests queue grows the limit; one with
    nothing queued shrinks it (a prompt is prefilled in a step that decodes the whole batch).
    Unset: no time-to-first-token target."""
    itl_p99_target: Duration | None = None
    """The P99 inter-token latency to stay under: the time between two consecutive outputs of
    one streamed answer (vLLM's decode step, which grows with the batch; with speculation a
    step may give several tokens), such as 50ms. A breach shrinks the limit, or holds it
    while requests queue (fewer running would only lengthen the queue). Unset: no
    inter-token target. Without any of the three targets acceptance alone drives the limit."""
    acceptance_bands: AcceptanceBands = AcceptanceBands()
    """Acceptance rates that move the limit."""
    cooldown: Duration | None = None
    """The least time between two changes. Unset: 2m in Live mode, 10m in Restart mode."""
    max_step: Annotated[float, Field(ge=1, le=16)] = 2.0
    """The largest factor one decision may change the limit by (2 = at most double or
    halve)."""


class InferenceModelSpec(ApiModel):
    """The desired state of one served model."""

    rules = (
        Rule(
            cel="!has(self.maxModelLen) || self.batching.averageTokens <= self.maxModelLen",
            message="batching.averageTokens must not exceed maxModelLen: no sequence holds "
            "more than maxModelLen tokens",
            check=lambda s: s.max_model_len is None or s.batching.average_tokens <= s.max_model_len,
            field_path=".batching",
        ),
        Rule(
            cel="!self.kvCacheDtype.startsWith('fp8') || self.allowLongContextFP8KVCache"
            f" || (has(self.maxModelLen) && self.maxModelLen <= {LONG_CONTEXT_FP8_KV_LIMIT})",
            message="kvCacheDtype fp8 degrades contexts longer than "
            f"{LONG_CONTEXT_FP8_KV_LIMIT} tokens: set maxModelLen to "
            f"{LONG_CONTEXT_FP8_KV_LIMIT} or less, or set allowLongContextFP8KVCache: true "
            "to accept the loss",
            check=lambda s: (
                not s.kv_cache_dtype.startswith("fp8")
                or s.allow_long_context_fp8_kv_cache
                or (s.max_model_len is not None and s.max_model_len <= LONG_CONTEXT_FP8_KV_LIMIT)
            ),
            field_path=".kvCacheDtype",
        ),
        Rule(
            cel=_cel_no_flags(REMOVED_FLAGS),
            message="extraArgs names a flag vLLM removed: use draft.model instead of "
            "--speculative-model and draft.numSpeculativeTokens instead of "
            "--num-speculative-tokens; drop --use-v2-block-manager",
            check=lambda s: all(flag_name(a) not in REMOVED_FLAGS for a in s.extra_args),
            field_path=".extraArgs",
        ),
        Rule(
            cel=f"!has(self.extraArgs) || self.extraArgs.all(a, !{cel_sets(SPEC_OWNED_FLAGS)})",
            message=_owned_flags_message(),
            check=lambda s: all(sets(a, SPEC_OWNED_FLAGS) is None for a in s.extra_args),
            field_path=".extraArgs",
        ),
    )

    model: ModelSource
    """The target model."""
    served_model_name: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    """The name clients put in the OpenAI `model` field. Unset: the InferenceModel's name."""
    draft: DraftSpec | None = None
    """Speculative decoding. Unset: none."""
    quantization: Literal[
        "auto", "fp8", "none", "awq", "gptq", "compressed-tensors", "modelopt"
    ] = "auto"
    """Weight precision. auto: FP8 where the GPU runs it natively (Hopper, Ada), none
    elsewhere. fp8 quantizes a 16-bit checkpoint at load; none serves it as it is; the others
    name a pre-quantized checkpoint's format."""
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    """KV cache precision. auto keeps the model's 16-bit dtype; fp8 halves KV memory but
    degrades long contexts."""
    allow_long_context_fp8_kv_cache: bool = Field(default=False, alias="allowLongContextFP8KVCache")
    """Accept an fp8 KV cache with maxModelLen above 8192 (or unset)."""
    max_model_len: Annotated[int, Field(ge=128, le=10_000_000)] | None = None
    """The longest context served, prompt and output together. Unset: the model's own."""
    gpu: GPUSpec = GPUSpec()
    """GPUs per replica and their placement."""
    replicas: Annotated[int, Field(ge=0, le=1024)] = 1
    """Number of vLLM replicas. The scale subresource exposes it to HPA or KEDA."""
    batching: BatchingSpec = BatchingSpec()
    """Concurrent sequences per replica."""
    autoscaling: AutoscalingSpec = AutoscalingSpec()
    """Retuning the batch limit from live metrics."""
    image: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None
    """The vLLM image. Unset: the operator's default for its supported vLLM version."""
    resources: ResourceRequirements | None = None
    """CPU and memory of the vLLM container (GPUs come from the plan)."""
    env: list[EnvVar] = Field(default_factory=list, max_length=64)
    """Extra environment variables of the vLLM container."""
    extra_args: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=64
    )
    """Extra `vllm serve` arguments, appended last. Flags that a field sets are refused."""
    capture: CaptureSpec | None = None
    """Keep a redacted sample of the requests this model answers, as its gate sees them (the
    target's own outputs, for aligning the draft). Unset: nothing is kept."""


class MemoryPlan(StatusModel):
    """Memory per replica, in GiB, summed over its GPUs."""

    weights_gib: float = Field(alias="weightsGiB")
    """Target weights at the chosen precision."""
    draft_weights_gib: float = Field(default=0.0, alias="draftWeightsGiB")
    """Draft weights."""
    kv_cache_gib: float = Field(alias="kvCacheGiB")
    """KV cache reserved for `batching.max` sequences."""
    usable_gib: float = Field(alias="usableGiB")
    """GPU memory vLLM may use (memory utilisation x GPUs)."""


class ScheduleRange(StatusModel):
    """K for one range of batch sizes in the speculation schedule in force, and what the
    performance model expects it to give."""

    min_batch: int
    """The smallest batch size of the range."""
    max_batch: int
    """The largest batch size of the range (inclusive); the last range's K holds for every
    larger batch too."""
    num_speculative_tokens: int
    """K in this range; 0: no drafting."""
    speedup: list[float] = Field(default_factory=list)
    """Expected decoding speed over no drafting, at minBatch and at maxBatch."""


class PlanStatus(StatusModel):
    """What the planner decided for the current spec (`specfleet.plan.Plan.status()`)."""

    tensor_parallel_size: int
    """GPUs per replica."""
    quantization: str
    """The weight precision actually served."""
    kv_cache_dtype: str = "auto"
    """The KV cache precision."""
    max_model_len: int | None = None
    """The context length served."""
    decode_tokens_per_second: float | None = None
    """One sequence's decoding speed alone, without drafting, by the calibrated performance
    model."""
    schedule: list[ScheduleRange] = Field(default_factory=list)
    """The speculation schedule: K per batch-size range (empty without a draft)."""
    schedule_acceptance: float | None = None
    """The acceptance rate (as vLLM reports it) an auto schedule was computed for."""
    memory: MemoryPlan
    """The memory breakdown."""
    warnings: list[str] = Field(default_factory=list)
    """Why the plan may not pay off, in words."""


class Observation(StatusModel):
    """What the autoscaler measured over one window."""

    time: datetime | None = None
    """When the newest sample behind it was scraped; the autoscaler holds the limit when it
    is older than two intervals (stale metrics). Unset: treated as fresh."""
    acceptance_rate: float | None = None
    """Accepted draft tokens over drafted tokens."""
    p99_seconds: float | None = None
    """P99 end-to-end latency, queueing included."""
    ttft_p99_seconds: float | None = None
    """P99 time to first token: at the gates for streamed answers, their queue included;
    vLLM's own (without the gates' queue) when nothing streamed in the window."""
    itl_p99_seconds: float | None = None
    """P99 inter-token latency, vLLM's: the time between two consecutive outputs of a
    sequence, one decode step."""
    queue_depth: float | None = None
    """Requests waiting at the gate, averaged."""
    throughput: float | None = None
    """Generated tokens per second."""
    in_flight: float | None = None
    """Requests the gates let through to vLLM, averaged: how many the load keeps running.
    Optional: without it a low acceptance band lowers the limit without that floor."""
    kv_cache_usage: float | None = None
    """The share of vLLM's KV cache in use (0 to 1), averaged, of the fullest replica.
    Optional: without it (or without inFlight) nothing caps a larger limit at what the KV
    cache holds."""
    preemptions: float | None = None
    """Running sequences vLLM preempted for want of KV cache over the window (each then
    recomputes what it had). Optional: without it nothing stops growth or shrinks the limit
    for preemptions."""
    draft_acceptance: float | None = None
    """The probability that the draft's first proposed token is accepted: vLLM's accepted
    tokens at draft position 0 over its drafts. Unlike acceptanceRate it does not depend on
    how many tokens each step drafted, so it is what the speculation schedule is computed
    from. Optional: without it the schedule is not retuned."""
    acceptance_by_position: list[float] | None = None
    """vLLM's accepted tokens at each draft position over its drafts, from position 0 (whose
    value is draftAcceptance). Over a mix of prompts they fall slower than one acceptance
    would say (easy prompts accept long runs), which is what a larger K gains from; the
    speculation schedule is computed from them. Optional: without them, from
    draftAcceptance alone."""


class ScheduleDecision(StatusModel):
    """A proposed change of the speculation schedule (`draft.schedule: auto`), recorded with
    the limit decision of the same interval."""

    rule: str
    """`schedule-retune` (proposed, applied in Apply mode by a rolling restart) or
    `schedule-cooldown` (it would pay, but the last change is too recent)."""
    from_acceptance: float | None = Field(default=None, alias="fromAcceptance")
    """The draft acceptance the schedule in force was computed for; unset: the planner's
    prior."""
    from_acceptance_by_position: list[float] | None = Field(
        default=None, alias="fromAcceptanceByPosition"
    )
    """The per-position acceptance the schedule in force was computed for, when measured."""
    to_acceptance: float = Field(alias="toAcceptance")
    """The smoothed measured draft acceptance the new schedule is computed for."""
    to_acceptance_by_position: list[float] | None = Field(
        default=None, alias="toAcceptanceByPosition"
    )
    """The smoothed per-position acceptance the new schedule is computed for, when measured."""
    ranges: str
    """The new schedule, as `1-4:K3 5-40:K2 41+:K0`."""
    gain: float
    """The goodput the performance model expects the new schedule to add at the observed
    batch, as a fraction (0.08 is 8%)."""
    applied: bool
    """False when only recommended, or held by the cooldown."""


class Decision(StatusModel):
    """One autoscaling decision, with everything needed to replay it."""

    time: datetime
    """When it was made."""
    from_limit: int = Field(alias="from")
    """The limit before."""
    to_limit: int = Field(alias="to")
    """The limit decided."""
    rule: str
    """The policy rule that fired."""
    applied: bool
    """False when only recommended (autoscaling.mode Recommend) or when vetoed."""
    observation: Observation = Field(default_factory=Observation)
    """The inputs."""
    message: str = ""
    """The reasoning, in words."""
    schedule: ScheduleDecision | None = None
    """A speculation schedule change proposed in the same interval, if any."""


class InferenceModelStatus(StatusModel):
    """What the operator observed and did."""

    observed_generation: int | None = None
    """The metadata.generation the status describes."""
    conditions: Conditions
    """Ready, Progressing, Degraded, SpeculationHealthy, MetricsAvailable,
    LatencyTargetsMet."""
    plan: PlanStatus | None = None
    """The GPU plan."""
    replicas: int | None = None
    """Replicas that exist (for the scale subresource)."""
    ready_replicas: int | None = None
    """Replicas that pass their readiness probe."""
    selector: str | None = None
    """The pods' label selector (for the scale subresource)."""
    batch_limit: int | None = None
    """The concurrent sequences each replica admits now."""
    acceptance_rate: float | None = None
    """The last measured speculative acceptance rate."""
    p99_seconds: float | None = None
    """The last measured P99 end-to-end latency."""
    schedule_acceptance: float | None = None
    """The draft acceptance the speculation schedule in force was computed for, set by the
    last applied schedule change; unset: the planner's prior."""
    schedule_acceptance_by_position: list[float] | None = None
    """The per-position acceptance the schedule in force was computed for, when measured."""
    last_decision: Decision | None = None
    """The newest autoscaling decision."""
    decisions: list[Decision] = Field(default_factory=list, max_length=DECISION_HISTORY_LIMIT)
    """Recent decisions, oldest first."""
    capture: CaptureStatus | None = None
    """What capture kept and dropped, when spec.capture is set."""


class InferenceModel(ApiModel):
    """One model served by vLLM with a speculative draft and FP8 weights, its batch limit
    tuned from live metrics."""

    crd: ClassVar[crdinfo.CrdInfo] = crdinfo.CrdInfo(
        kind="InferenceModel",
        plural="inferencemodels",
        short_names=("im",),
        printer_columns=(
            crdinfo.Column("Model", "string", ".spec.model.name", "The target model"),
            crdinfo.Column(
                "GPUs", "integer", ".status.plan.tensorParallelSize", "GPUs per replica"
            ),
            crdinfo.Column("Replicas", "integer", ".status.readyReplicas", "Replicas ready"),
            crdinfo.Column("Limit", "integer", ".status.batchLimit", "Current batch limit"),
            crdinfo.Column(
                "Acceptance", "number", ".status.acceptanceRate", "Speculative acceptance rate"
            ),
            crdinfo.Column(
                "P99", "number", ".status.p99Seconds", "P99 end-to-end latency, seconds"
            ),
            crdinfo.Column(
                "Latency",
                "string",
                '.status.conditions[?(@.type=="LatencyTargetsMet")].reason',
                "Whether the latency targets are met, and if not why",
            ),
            crdinfo.READY,
            crdinfo.AGE,
        ),
        scale=True,
    )
    rules = (crdinfo.child_name_rule("InferenceModel", "its Deployment and Services"),)

    api_version: Literal["specfleet.dev/v1alpha1"] = "specfleet.dev/v1alpha1"
    kind: Literal["InferenceModel"] = "InferenceModel"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: InferenceModelSpec
    status: InferenceModelStatus | None = None
