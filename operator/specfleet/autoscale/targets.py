"""Whether an InferenceModel meets its latency targets, and when it does not, whether the batch
limit can: the `LatencyTargetsMet` condition.

The policy (`specfleet.autoscale.policy`) moves the batch limit against a breach; this module
says, in status, when no batch limit will do: a target the performance model already misses at
the smallest batch (`TargetUnreachable`), or a breach the limit has stopped moving
(`BatchCannotMoveLatency`: a shrink that did not pay, a floor under which requests would queue,
the time between tokens over target while requests queue), each with the figures and what would
meet it. Otherwise `TargetsMet`, `OverTarget` (the autoscaler is acting), `NotMeasured` or
`NoTargets`.

What each P99 can be at best, by `specfleet.perf` on the plan's replica:
- the time between tokens is one decode step (vLLM records one gap per step, however many
  tokens speculation gave it), so at best a step of `batching.min` sequences at
  `batching.averageTokens` of context, with the speculation schedule's K at that batch;
- the time to first token is at best a prompt of `batching.averageTokens` prefilled alone.
Both are lower bounds (a step that also prefills new prompts takes longer), so a target under
them cannot be met. The end-to-end P99 has no such bound: it depends on the answers' length.

Pure: no I/O, no clock. Called where the operator records an autoscaling decision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from specfleet import perf, schedule
from specfleet import plan as planner
from specfleet.api.inferencemodel import Decision, InferenceModelSpec, Observation
from specfleet.autoscale.policy import DECREASE, Target, latency_targets
from specfleet.catalog import GPUS
from specfleet.conditions import Status

CONDITION = "LatencyTargetsMet"
"""The condition's type."""


@dataclass(frozen=True)
class Verdict:
    """The `LatencyTargetsMet` condition's status, reason and message."""

    status: Status
    reason: str
    message: str


def verdict(
    spec: InferenceModelSpec,
    plan: planner.Plan | None,
    observation: Observation,
    decision: Decision | None,
) -> Verdict:
    """The condition for a model: its spec, its plan (None or without a replica: the shape is
    unknown, so nothing is judged out of reach), the newest observation and the decision made
    on it."""
    targets = latency_targets(spec.autoscaling)
    if not targets:
        return Verdict(
            "True",
            "NoTargets",
            "autoscaling sets no latency target (ttftP99Target, itlP99Target, p99Target)",
        )
    if plan is not None and (replica := plan.replica) is not None:
        unreachable = [
            why for target in targets if (why := _out_of_reach(spec, plan, replica, target))
        ]
        if unreachable:
            return Verdict("False", "TargetUnreachable", "; ".join(unreachable))
    values = {target: target.value(observation) for target in targets}
    unknown = [target.label for target, value in values.items() if value is None]
    if unknown:
        return Verdict("Unknown", "NotMeasured", f"no {', '.join(unknown)} measured yet")
    figures = "; ".join(
        f"{target.label} {target.fmt(value)} {'over' if value > target.seconds else 'under'} "
        f"the {target.fmt(target.seconds)} target"
        for target, value in _known(values)
    )
    breached = [target for target, value in _known(values) if value > target.seconds]
    if not breached:
        return Verdict("True", "TargetsMet", figures)
    stuck = _batch_cannot_move(spec, observation, decision, breached)
    if stuck is not None:
        return Verdict("False", "BatchCannotMoveLatency", f"{figures}: {stuck}")
    acting = (
        f"the autoscaler acts ({decision.rule}: {decision.from_limit} -> {decision.to_limit})"
        if decision is not None
        else "no autoscaling decision yet"
    )
    return Verdict("False", "OverTarget", f"{figures}; {acting}")


def _known(values: dict[Target, float | None]) -> list[tuple[Target, float]]:
    return [(target, value) for target, value in values.items() if value is not None]


def best_case(
    spec: InferenceModelSpec, plan: planner.Plan, replica: perf.Replica, target: Target
) -> float | None:
    """The least the performance model says `target`'s P99 can be on `replica`: one step at
    the smallest batch (inter-token), one prompt prefilled alone (first token); None for the
    end-to-end latency, which depends on the answers' length."""
    context = spec.batching.average_tokens
    if target.kind == "itl":
        batch = spec.batching.min
        k = schedule.k_at(plan.schedule, batch) if replica.draft is not None else 0
        return perf.step_time(replica, batch, context, k).seconds
    if target.kind == "ttft":
        return perf.time_to_first_token(replica, context)
    return None


def _out_of_reach(
    spec: InferenceModelSpec, plan: planner.Plan, replica: perf.Replica, target: Target
) -> str:
    """Why `target` is out of any batch limit's reach, with what would meet it; "" when it
    is within reach."""
    best = best_case(spec, plan, replica, target)
    if best is None or best <= target.seconds:
        return ""
    shape = (
        f"{replica.tensor_parallel_size} x {replica.gpu.product} at {replica.weights}"
        f", {spec.batching.average_tokens} tokens per sequence"
    )
    if target.kind == "itl":
        k = schedule.k_at(plan.schedule, spec.batching.min) if replica.draft is not None else 0
        at = f"one decode step of batching.min ({spec.batching.min}) sequences" + (
            f" drafting K={k}" if k else ""
        )
    else:
        at = f"prefilling one prompt of batching.averageTokens ({spec.batching.average_tokens})"
    fixes = _fixes(spec, plan, replica, target)
    return (
        f"{target.label} target {target.fmt(target.seconds)} is below {at}: "
        f"{target.fmt(best)} by the performance model ({shape}), so no batch limit meets it; "
        f"it would take {' or '.join([*fixes, f'a target of at least {target.fmt(best)}'])}"
    )


def _fixes(
    spec: InferenceModelSpec, plan: planner.Plan, replica: perf.Replica, target: Target
) -> list[str]:
    """Changes of the spec under which the performance model meets `target`."""
    found: list[str] = []

    def meets(candidate: perf.Replica) -> float | None:
        best = best_case(spec, plan, candidate, target)
        return best if best is not None and best <= target.seconds else None

    for size in planner.TENSOR_PARALLEL_SIZES:
        if size <= replica.tensor_parallel_size:
            continue
        best = meets(replace(replica, tensor_parallel_size=size))
        if best is not None:
            found.append(f"gpu.count: {size} ({target.fmt(best)})")
            break
    faster = [
        f"gpu.product: {product} ({target.fmt(best)})"
        for product, gpu in GPUS.items()
        if product != replica.gpu.product and (best := meets(replace(replica, gpu=gpu))) is not None
    ]
    found.extend(faster[:2])
    if target.kind == "itl" and replica.draft is not None:
        k = schedule.k_at(plan.schedule, spec.batching.min)
        plain = perf.step_time(replica, spec.batching.min, spec.batching.average_tokens, 0)
        if k and plain.seconds <= target.seconds:
            found.append(
                f"no drafting at small batches (draft.schedule manual with K=0 there: "
                f"{target.fmt(plain.seconds)} a step, one token each)"
            )
    if target.kind == "ttft":
        found.append("shorter prompts (or prefix caching of their shared part)")
    return found


def _batch_cannot_move(
    spec: InferenceModelSpec,
    observation: Observation,
    decision: Decision | None,
    breached: Sequence[Target],
) -> str | None:
    """Why the batch limit cannot bring the breached P99s under target, from the decision
    made on this observation; None while it still can."""
    if decision is None:
        return None
    rule = decision.rule
    replicas = spec.replicas
    running = observation.in_flight
    queue = observation.queue_depth or 0.0
    lead = next((t for t in breached if rule.startswith(f"{t.kind}-")), breached[0])
    if rule.endswith("-breach-no-gain"):
        return (
            f"shrinking the batch did not lower the {lead.label} ({rule}), so the batch is "
            f"not what makes it slow; {_advice(spec, observation, lead)}"
        )
    if rule == "itl-breach-saturated" or rule.endswith("-breach-floor"):
        load = f"{running:.3g} in flight" if running is not None else "the load"
        if queue >= 1:
            load += f" and {queue:.3g} waiting"
        wanted = replicas + 1
        if running:
            wanted = max(wanted, math.ceil(replicas * (running + queue) / (running * DECREASE)))
        return (
            f"{load} over {replicas} replica(s) keep the batch this large, and a smaller limit "
            f"would only queue them ({rule}); more replicas would: spec.replicas {wanted} or "
            "more, so each runs fewer sequences"
        )
    if rule == "bounds" and decision.to_limit <= spec.batching.min:
        return (
            f"the limit is at batching.min ({spec.batching.min}); lower batching.min or "
            f"{_advice(spec, observation, lead)}"
        )
    return None


def _advice(spec: InferenceModelSpec, observation: Observation, target: Target) -> str:
    """What would meet a P99 that the batch does not move."""
    if target.kind == "p99":
        ttft, itl, p99 = (
            observation.ttft_p99_seconds,
            observation.itl_p99_seconds,
            observation.p99_seconds,
        )
        steps = ""
        if ttft is not None and itl and p99 is not None and p99 > ttft:
            steps = (
                f" ({p99:.2f}s is the first token's {ttft:.2f}s and about "
                f"{(p99 - ttft) / itl:.0f} decode steps of {itl * 1000:.0f}ms: a long answer)"
            )
        return (
            "end-to-end latency grows with each answer's length, which no batch limit "
            f"shortens{steps}; set ttftP99Target and itlP99Target, which the batch moves, or "
            "a p99Target for the answers' typical length, or cap their length (max_tokens)"
        )
    if target.kind == "ttft":
        return (
            "the prompts' prefill, not the batch, makes the first token slow: more GPUs per "
            "replica (gpu.count), a faster GPU, or shorter prompts"
        )
    return (
        "each decode step is slow at any batch: more GPUs per replica (gpu.count), a faster "
        "GPU, or fewer draft tokens (draft.numSpeculativeTokens)"
    )
