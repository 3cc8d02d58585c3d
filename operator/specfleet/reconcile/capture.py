"""What a pass does for `spec.capture` beyond rendering: the `status.capture` it reports, and
the retention CronJob it removes when capture is turned off (records already in the store stay;
`specfleet capture` still reads them).

Retention reports through its Job's pod: `specfleet capture retain` writes one JSON line as the
container's termination message (`capturestore.RetentionReport`: `keptRecords`, `keptBytes`,
...). The pods are listed only when the CronJob's `lastSuccessfulTime` moved past what
status says, so a resync lists nothing.

What the pods wrote and dropped comes from their counters in Prometheus (`Counter`, when the
operator has a Prometheus), on every pass of a capturing resource; from how they moved since
the last pass, the `Capturing` condition says whether records reach the store (`condition`).

`status`, `report` and `condition` are pure; `run` reads and deletes through the reconcile `Writer`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from specfleet import conditions
from specfleet.api.capture import CaptureSpec, CaptureStatus
from specfleet.api.common import Condition
from specfleet.api.manifests import Manifest
from specfleet.conditions import Status
from specfleet.prometheus import CaptureCounts
from specfleet.reconcile import apply
from specfleet.render import capture as render

Counter = Callable[[str, str, str], CaptureCounts | None]
"""Reads what a resource's pods counted (kind, namespace, name), from Prometheus."""


def last_success(cron_job: Mapping[str, Any] | None) -> datetime | None:
    """When the retention CronJob last completed a Job (from its `apply.summary`)."""
    stamp = ((cron_job or {}).get("status") or {}).get("lastSuccessfulTime")
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None


def report(pods: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The newest succeeded retention pod's report, or None when none left one."""
    reports = []
    for pod in pods:
        if pod.get("status", {}).get("phase") != "Succeeded":
            continue
        for container in pod["status"].get("containerStatuses", []):
            message = ((container.get("state") or {}).get("terminated") or {}).get("message")
            try:
                found = json.loads(message) if message else None
            except json.JSONDecodeError:
                continue
            if isinstance(found, dict):
                reports.append((pod["metadata"].get("creationTimestamp", ""), found))
    return max(reports, key=lambda entry: entry[0])[1] if reports else None


def status(
    previous: CaptureStatus | None,
    retained: datetime | None,
    found: Mapping[str, Any] | None,
    counts: CaptureCounts | None = None,
) -> CaptureStatus:
    """status.capture: what was there, with retention's last run and report when newer, and
    the pods' counters when Prometheus had them."""
    current = previous.model_copy() if previous is not None else CaptureStatus()
    if counts is not None:
        current.captured = counts.written
        current.dropped = dict(counts.dropped)
    if retained is not None:
        current.last_retention_time = retained
    if found is not None:
        for field, key in (("kept_records", "keptRecords"), ("kept_bytes", "keptBytes")):
            value = found.get(key)
            if isinstance(value, int):
                setattr(current, field, value)
    return current


CONDITION = "Capturing"
"""The condition that says whether the pods' records reach the store."""
_STORE_ERROR = "store_error"


def condition(
    previous: CaptureStatus | None, current: CaptureStatus | None
) -> tuple[Status, str, str] | None:
    """`Capturing` from the counters of the last two passes: False while records fail to
    reach the store (more `store_error` drops than last time), True while more are written
    (saying what else was dropped), Unknown before anything was counted; None when nothing
    moved (the condition stays as it was) or capture is off."""
    if current is None or current.captured is None:
        return None
    before = previous.captured if previous is not None else None
    was = previous if previous is not None and before is not None else None
    failed = current.dropped.get(_STORE_ERROR, 0) - (was.dropped.get(_STORE_ERROR, 0) if was else 0)
    if failed > 0:
        return (
            "False",
            "StoreError",
            f"{failed} records dropped since the last look because the store refused them or "
            "could not be reached (store_error): check that the bucket or claim exists, its "
            "endpoint, and the credentials Secret; the pods log the store's answer once a minute",
        )
    if was is None and current.captured == 0:
        return ("Unknown", "NothingWritten", "no record written yet: no request sampled so far")
    if before is not None and current.captured <= before:
        return None
    others = ", ".join(f"{n} {why}" for why, n in sorted(current.dropped.items()) if n)
    return (
        "True",
        "Writing",
        f"{current.captured} records written" + (f"; dropped: {others}" if others else ""),
    )


def with_condition(
    found: Sequence[Condition],
    previous: CaptureStatus | None,
    current: CaptureStatus | None,
    *,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """`found` with `Capturing` set from `condition`, or removed when capture is off."""
    if current is None:
        return [c for c in found if c.type != CONDITION]
    value = condition(previous, current)
    if value is None:
        return list(found)
    return conditions.set_condition(found, CONDITION, *value, generation=generation, now=now)


def run(
    spec: CaptureSpec | None,
    kind: str,
    namespace: str,
    name: str,
    previous: CaptureStatus | None,
    observed: Mapping[str, Manifest],
    writer: apply.Writer,
    count: Counter | None = None,
) -> CaptureStatus | None:
    """status.capture for one resource (None when it does not capture), reading the
    retention pods only when a Job completed since; removes the CronJob capture left."""
    cron_job = observed.get(apply.key("CronJob", render.retention_name(name)))
    if spec is None:
        if cron_job is not None:
            writer.delete("batch/v1", "CronJob", namespace, render.retention_name(name))
        return None
    retained = last_success(cron_job)
    found = None
    if retained is not None and (previous is None or previous.last_retention_time != retained):
        found = report(writer.pods(namespace, render.retention_pods(kind, name)))
    counts = count(kind, namespace, name) if count is not None else None
    return status(previous, retained, found, counts)
