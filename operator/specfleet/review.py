"""On-call review of an InferenceModel's autoscaling decisions: `specfleet review` (a
RoutingPolicy's promotion decisions are `specfleet.learn.review`'s).

The core is pure: `table` and `as_json` format the recorded decisions, `replay` re-runs their
observations through the operator's own autoscaling step (`specfleet.autoscale.step`) under
the model's policy or another (an `autoscaling:` + `batching:` document) and `differences`
says where it would have decided otherwise. `plot` draws acceptance, P99 against its target
and the limit over time into a PNG (matplotlib, Agg backend, imported only there). Reading the
resource is the thin shell: `read_file` for a manifest with status, `read_cluster` (and
`read_policy`) through `kubectl get -o json`. Called by `specfleet.cli`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from specfleet import api
from specfleet import plan as planner
from specfleet.api.inferencemodel import (
    AutoscalingSpec,
    BatchingSpec,
    Decision,
    InferenceModel,
    InferenceModelSpec,
)
from specfleet.api.routingpolicy import RoutingPolicy
from specfleet.autoscale import speculation, step


class ReviewError(Exception):
    """The resource or the policy cannot be read; the message says which and why."""


def read_file(path: Path) -> InferenceModel:
    """The first InferenceModel of a manifest file (with its status)."""
    found = read_any(path)
    if not isinstance(found, InferenceModel):
        raise ReviewError(f"{path}: its first resource is a RoutingPolicy, not an InferenceModel")
    return found


def read_any(path: Path) -> InferenceModel | RoutingPolicy:
    """The first InferenceModel or RoutingPolicy of a manifest file (with its status)."""
    try:
        resources = api.load(path.read_text())
    except api.ManifestError as exc:
        raise ReviewError(f"{path}: {exc}") from exc
    for resource in resources:
        if isinstance(resource, InferenceModel | RoutingPolicy):
            return resource
    raise ReviewError(f"{path}: no InferenceModel or RoutingPolicy in it")


def read_cluster(name: str, namespace: str | None) -> InferenceModel:
    """The InferenceModel as the cluster of the current kubeconfig has it, through kubectl
    (so every kubeconfig and auth plugin kubectl supports works)."""
    return parse_model(_kubectl_get("inferencemodels.specfleet.dev", name, namespace))


def read_policy(name: str, namespace: str | None) -> RoutingPolicy:
    """The RoutingPolicy as the cluster has it, through kubectl."""
    body = _kubectl_get("routingpolicies.specfleet.dev", name, namespace)
    try:
        return RoutingPolicy.model_validate(body)
    except ValueError as exc:
        raise ReviewError(f"not a RoutingPolicy: {exc}") from exc


def _kubectl_get(resource: str, name: str, namespace: str | None) -> dict[str, Any]:
    command = ["kubectl", "get", resource, name, "-o", "json"]
    if namespace:
        command += ["-n", namespace]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ReviewError("kubectl is not on PATH; use --from-file with a saved manifest") from exc
    if done.returncode:
        # kubectl's last line says what went wrong; lines before it repeat client retries.
        said = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise ReviewError(f"kubectl get: {said[-1]}")
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def parse_model(body: dict[str, Any]) -> InferenceModel:
    try:
        return InferenceModel.model_validate(body)
    except ValueError as exc:
        raise ReviewError(f"not an InferenceModel: {exc}") from exc


def decisions(model: InferenceModel) -> list[Decision]:
    return list(model.status.decisions) if model.status else []


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(recorded: Sequence[Decision], p99_target: float | None = None) -> str:
    """The decisions as a table, oldest first: what was seen, what was decided, and why."""
    target = f" (target {p99_target:g}s)" if p99_target is not None else ""
    header = (
        *("TIME", "FROM", "TO", "APPLIED", "RULE", "ACCEPT", f"P99{target}", "QUEUE"),
        *("INFLIGHT", "TOK/S"),
    )
    rows = [header]
    for d in recorded:
        o = d.observation
        rows.append(
            (
                d.time.strftime("%Y-%m-%d %H:%M:%S"),
                str(d.from_limit),
                str(d.to_limit),
                "yes" if d.applied else "no",
                d.rule,
                _num(o.acceptance_rate),
                _num(o.p99_seconds),
                _num(o.queue_depth, 1),
                _num(o.in_flight, 1),
                _num(o.throughput, 0),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    changed = [d for d in recorded if d.to_limit != d.from_limit]
    schedules = [d for d in recorded if d.schedule is not None]
    lines.append(
        f"{len(recorded)} decisions, {len(changed)} changes"
        + (f", {len(schedules)} speculation schedule proposals" if schedules else "")
    )
    for d in recorded:
        if d.to_limit != d.from_limit:
            lines.append(f"{d.time:%H:%M:%S} {d.rule}: {d.message}")
        if d.schedule is not None:
            lines.append(f"{d.time:%H:%M:%S} {d.schedule.rule}: {speculation.message(d.schedule)}")
    return "\n".join(lines)


def as_json(recorded: Sequence[Decision]) -> str:
    return json.dumps(
        [d.model_dump(by_alias=True, mode="json", exclude_none=True) for d in recorded], indent=2
    )


def load_policy(text: str, fallback: InferenceModelSpec) -> tuple[AutoscalingSpec, BatchingSpec]:
    """The `autoscaling:` and `batching:` of a policy document (either may be missing: the
    model's own is kept), validated like the spec's."""
    document = yaml.safe_load(text) or {}
    if not isinstance(document, dict):
        raise ReviewError("the policy file must be a mapping with autoscaling: and batching:")
    document = document.get("spec", document)
    try:
        autoscaling = AutoscalingSpec.model_validate(
            document.get("autoscaling", fallback.autoscaling.model_dump(by_alias=True))
        )
        batching = BatchingSpec.model_validate(
            document.get("batching", fallback.batching.model_dump(by_alias=True))
        )
    except ValueError as exc:
        raise ReviewError(f"policy: {exc}") from exc
    return autoscaling, batching


def _schedule_start(
    recorded: Sequence[Decision], model: InferenceModel
) -> float | list[float] | None:
    """What the speculation schedule was computed for when the history began: what its first
    schedule decision moved from, else what status says now."""
    first = next((d.schedule for d in recorded if d.schedule is not None), None)
    if first is not None:
        return first.from_acceptance_by_position or first.from_acceptance
    return step.recorded_acceptance(model.status)


def replay(
    recorded: Sequence[Decision],
    model: InferenceModel,
    autoscaling: AutoscalingSpec | None = None,
    batching: BatchingSpec | None = None,
) -> list[Decision]:
    """The decisions the operator's autoscaling step makes on the recorded observations, at
    the same times, starting from the same limit and the speculation schedule in force when
    the history began, under `model`'s spec with `autoscaling` and `batching` in place of its
    own (when given). Its own decisions are its history, and their limits and schedules the
    ones in force (the load it would have seen is the recorded one: the replay cannot know how
    its limits would have changed the metrics). Under the model's own policy it gives back
    every decision of a history the operator recorded from its first decision on."""
    spec = model.spec.model_copy(
        update={
            "autoscaling": autoscaling or model.spec.autoscaling,
            "batching": batching or model.spec.batching,
        }
    )
    start = _schedule_start(recorded, model)
    schedule = None
    if spec.draft is not None and spec.draft.schedule == "auto":
        plan = planner.plan(model.metadata.name, spec, start)
        schedule = step.planned_schedule(spec, plan, start)
    limit = recorded[0].from_limit if recorded else 0
    history: list[Decision] = []
    replayed: list[Decision] = []
    for original in recorded:
        taken = step.advance(history, original.observation, spec, limit, schedule, original.time)
        replayed.append(taken.decision)
        history, limit, schedule = taken.history, taken.limit, taken.schedule
    return replayed


@dataclass(frozen=True)
class Difference:
    original: Decision
    replayed: Decision


def differences(recorded: Sequence[Decision], replayed: Sequence[Decision]) -> list[Difference]:
    """Where the replay decided another limit or by another rule."""
    return [
        Difference(a, b)
        for a, b in zip(recorded, replayed, strict=True)
        if (a.to_limit, a.rule, _schedule_key(a)) != (b.to_limit, b.rule, _schedule_key(b))
    ]


def _schedule_key(decision: Decision) -> tuple[str, str, bool] | None:
    change = decision.schedule
    return None if change is None else (change.rule, change.ranges, change.applied)


def differences_table(found: Sequence[Difference], total: int) -> str:
    if not found:
        return f"the replayed policy decides as recorded at all {total} decisions"
    header = ("TIME", "RECORDED", "REPLAYED")
    rows = [header]
    for f in found:
        a, b = f.original, f.replayed
        rows.append(
            (
                f"{a.time:%Y-%m-%d %H:%M:%S}",
                f"{a.from_limit}->{a.to_limit} {a.rule}",
                f"{b.from_limit}->{b.to_limit} {b.rule}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.append(f"{len(found)} of {total} decisions differ")
    return "\n".join(lines)


def plot(recorded: Sequence[Decision], path: Path, *, title: str, p99_target: float | None) -> None:
    """Acceptance, P99 against its target and the limit over time, one panel each, into a PNG."""
    import matplotlib  # noqa: PLC0415  (only `--plot` needs it, and it is slow to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    times = [d.time for d in recorded]
    figure, (accept, latency, limit) = plt.subplots(
        3, 1, sharex=True, figsize=(10, 7), constrained_layout=True
    )
    figure.suptitle(title)
    accept.plot(times, [d.observation.acceptance_rate for d in recorded], marker=".")
    accept.set_ylabel("acceptance")
    accept.set_ylim(0, 1)
    accept.axhline(0.6, color="tab:red", linestyle=":", label="unhealthy below 0.6")
    accept.legend(loc="lower left")
    latency.plot(times, [d.observation.p99_seconds for d in recorded], marker=".", label="P99")
    if p99_target is not None:
        latency.axhline(p99_target, color="tab:red", linestyle="--", label="target")
    latency.set_ylabel("P99 latency (s)")
    latency.set_ylim(bottom=0)
    latency.legend(loc="upper left")
    limit.step(times, [d.to_limit for d in recorded], where="post", label="limit decided")
    changed = [d for d in recorded if d.to_limit != d.from_limit]
    limit.scatter(
        [d.time for d in changed if d.applied],
        [d.to_limit for d in changed if d.applied],
        color="tab:green",
        zorder=3,
        label="applied change",
    )
    limit.scatter(
        [d.time for d in changed if not d.applied],
        [d.to_limit for d in changed if not d.applied],
        color="tab:orange",
        marker="x",
        zorder=3,
        label="recommended only",
    )
    limit.set_ylabel("batch limit")
    limit.set_ylim(bottom=0)
    limit.set_xlabel("time (UTC)")
    limit.legend(loc="lower right")
    figure.autofmt_xdate()
    figure.savefig(path, dpi=100)
    plt.close(figure)
