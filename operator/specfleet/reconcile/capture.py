"""What a pass does for `spec.capture` beyond rendering: the `status.capture` it reports, and
the retention CronJob it removes when capture is turned off (records already in the store stay;
`specfleet capture` still reads them).

Retention reports through its Job's pod: `specfleet capture retain` writes one JSON line as the
container's termination message (`capturestore.RetentionReport`: `keptRecords`, `keptBytes`,
...). The pods are listed only when the CronJob's `lastSuccessfulTime` moved past what
status says, so a resync lists nothing.

What the pods wrote and dropped comes from their counters in Prometheus (`Counter`, when the
operator has a Prometheus), on every pass of a capturing resource.

`status` and `report` are pure; `run` reads and deletes through the reconcile `Writer`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from specfleet.api.capture import CaptureSpec, CaptureStatus
from specfleet.api.manifests import Manifest
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
    cron_job = observed.get("CronJob")
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
