"""Published measurements as the performance model predicts them.

A calibration point is one measured figure of vLLM (or another engine) decoding on a GPU, in
the format of `calibration/README.md` beside the design: the replica, the load and one metric.
`predict` gives what `specfleet.perf` says for the same figure, so `bench/perf_fidelity.py`
and tests/test_perf_fidelity.py can hold the model against every point of a file.

Pure: points in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from specfleet import catalog, perf

Metric = Literal[
    "step_seconds",
    "decode_tokens_per_second",
    "max_throughput_tokens_per_second",
    "speedup_vs_batch_1",
    "draft_time_fraction",
]
"""What a point measured (the calibration README defines each)."""

SPECULATIVE_METRICS: frozenset[str] = frozenset({"speedup_vs_batch_1", "draft_time_fraction"})
"""Metrics that need a draft."""

AGREEMENT = math.log(1.25)
"""A point agrees when |ln(predicted / measured)| is at most this: within 25%."""


@dataclass(frozen=True)
class Point:
    """One published figure and the replica and load it was measured at."""

    id: str
    metric: Metric
    value: float
    replica: perf.Replica
    batch: int = 1
    context_tokens: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    engine: str = ""
    source: str = ""


def parse(entry: Mapping[str, Any]) -> Point:
    """A point from one entry of a calibration file; ValueError names the entry and field."""
    name = entry.get("id", "<no id>")
    try:
        metric = entry["metric"]
        if metric not in get_args(Metric):
            raise ValueError(f"metric {metric!r} is not one of {', '.join(get_args(Metric))}")
        draft_name = entry.get("draft")
        if metric in SPECULATIVE_METRICS and not draft_name:
            raise ValueError(f"metric {metric} needs a draft")
        draft = catalog.model(draft_name) if draft_name else None
        weights = entry.get("weights", "bf16")
        if weights not in perf.WEIGHT_BYTES:
            raise ValueError(f"weights must be bf16 or fp8, got {weights!r}")
        gpu = catalog.GPUS.get(entry["gpu"])
        if gpu is None:
            raise ValueError(f"gpu {entry['gpu']!r} is not one of {', '.join(catalog.GPUS)}")
        engine_name = str(entry.get("engine", ""))
        engine = next(
            (e for name, e in perf.ENGINES.items() if engine_name.startswith(name)), perf.VLLM
        )
        replica = perf.Replica(
            target=catalog.model(entry["target"]),
            gpu=gpu,
            tensor_parallel_size=int(entry.get("tensor_parallel", 1)),
            weights=weights,
            draft=draft,
            num_speculative_tokens=int(entry.get("k", 1)) if draft else 1,
            kv_element_bytes=1.0 if engine.fp8_kv_cache and weights == "fp8" else 2.0,
            engine=engine,
        )
        return Point(
            id=str(name),
            metric=metric,
            value=float(entry["value"]),
            replica=replica,
            batch=int(entry.get("batch", 1)),
            context_tokens=float(entry.get("context_tokens", 0)),
            input_tokens=int(entry.get("input_tokens", 0)),
            output_tokens=int(entry.get("output_tokens", 0)),
            engine=engine_name,
            source=str(entry.get("source", "")),
        )
    except KeyError as missing:
        raise ValueError(f"calibration point {name}: field {missing} is missing") from None
    except ValueError as error:
        raise ValueError(f"calibration point {name}: {error}") from None


def predict(point: Point) -> float:
    """What the performance model says the point's metric is."""
    replica, batch, context = point.replica, point.batch, point.context_tokens
    plain = replica.without_draft()
    match point.metric:
        case "step_seconds":
            return perf.step_time(plain, batch, context).seconds
        case "decode_tokens_per_second":
            return 1.0 / perf.step_time(plain, batch, context).seconds
        case "max_throughput_tokens_per_second":
            return perf.max_throughput(plain, point.input_tokens, point.output_tokens)
        case "draft_time_fraction":
            return perf.step_time(replica, batch, context).draft_fraction
        case "speedup_vs_batch_1":
            # Tokens per step cancel in the ratio: only the step times remain.
            def cost(size: int) -> float:
                return (
                    perf.step_time(replica, size, context).seconds
                    / perf.step_time(plain, size, context).seconds
                )

            return cost(1) / cost(batch)


def log_error(point: Point) -> float:
    """ln(predicted / measured): 0 is exact, +-0.223 is 25% off."""
    return math.log(predict(point) / point.value)


def speedup_sign_error(point: Point) -> bool:
    """Whether a speedup point's prediction lies on the other side of 1 than its measurement
    (speculation predicted to pay where it was measured not to, or the reverse)."""
    if point.metric != "speedup_vs_batch_1":
        return False
    return (predict(point) > 1.0) != (point.value > 1.0)
