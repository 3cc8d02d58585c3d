"""What a pass does for a RoutingPolicy's `spec.learning` beyond rendering: `status.learning`
from the learning Jobs' reports, the `Learning` condition, an Event per decision, and the
CronJob removed when learning is turned off (what the store holds stays: labels, artifacts,
decisions, and the classifier in force, which the routers stop following).

A learning Job reports through its pod: `specfleet router learn` writes one JSON object as the
container's termination message (`specfleet.learn.router_learn.Report.status_json`); a pass
that failed before writing one leaves the end of its log (`FallbackToLogsOnError`). The pods
are listed only when the CronJob started a Job (`lastScheduleTime`), or saw one succeed
(`lastSuccessfulTime`: a Job made by hand from the CronJob too), since status last read them,
and none is running; so a resync lists nothing.

From a report: the counts of the pass, the labels in the store, the classifier in force, and
its decision appended to a bounded history (`specfleet.api.learning.HISTORY`). `Learning` is
True while passes end, False (with the log's last words, or what the judge did) when the last
one failed; Unknown before any reported.

`status`, `read_report`, `events` and `condition` are pure; `run` lists and deletes through the
reconcile `Writer`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import pydantic

from specfleet import conditions
from specfleet.api.common import Condition
from specfleet.api.learning import (
    HISTORY,
    STATUS_SCHEMA,
    LearningDecision,
    LearningSpec,
    LearningStatus,
)
from specfleet.api.manifests import Manifest
from specfleet.conditions import Status
from specfleet.reconcile import Event, apply
from specfleet.render import learning as render

CONDITION = "Learning"
MESSAGE_CHARS = 1024
"""How much of a failed pass's log a condition and an Event quote."""


class Ended:
    """What the newest ended learning pod said: its report, or why it has none."""

    def __init__(self, report: Mapping[str, Any] | None, failure: str | None) -> None:
        self.report = report
        self.failure = failure


def _time(stamp: object) -> datetime | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def due(cron_job: Mapping[str, Any] | None, previous: LearningStatus | None) -> datetime | None:
    """The CronJob's latest lastScheduleTime or lastSuccessfulTime when either moved since
    status last read the pods and no Job runs now (so how it ended is there to read); else
    None."""
    status = (cron_job or {}).get("status") or {}
    times = [_time(status.get(key)) for key in ("lastScheduleTime", "lastSuccessfulTime")]
    latest = max((t for t in times if t is not None), default=None)
    if latest is None or status.get("active"):
        return None
    if previous is not None and previous.last_job_time == latest:
        return None
    return latest


def read_report(pods: Sequence[Mapping[str, Any]]) -> Ended | None:
    """The newest ended learning pod's report, or its failure; None when no pod ended."""
    ended = []
    for pod in pods:
        phase = (pod.get("status") or {}).get("phase")
        if phase not in ("Succeeded", "Failed"):
            continue
        message, code = "", None
        for container in pod["status"].get("containerStatuses", []):
            terminated = (container.get("state") or {}).get("terminated") or {}
            message, code = terminated.get("message") or "", terminated.get("exitCode")
        ended.append((pod["metadata"].get("creationTimestamp", ""), phase, message, code))
    if not ended:
        return None
    _, phase, message, code = max(ended, key=lambda entry: entry[0])
    try:
        found = json.loads(message) if message else None
    except json.JSONDecodeError:
        found = None
    if isinstance(found, dict) and found.get("schema") == STATUS_SCHEMA:
        return Ended(found, None)
    said = " ".join(message.split())[-MESSAGE_CHARS:] if message else ""
    if phase == "Succeeded":
        return Ended(None, f"the pass ended without a report: {said or 'no message'}")
    why = f"exit status {code}" if code is not None else "it was stopped"
    return Ended(None, f"the learning Job failed ({why}): {said or 'no message; see its log'}")


def status(
    previous: LearningStatus | None, scheduled: datetime | None, ended: Ended | None
) -> LearningStatus:
    """status.learning: what was there, with the report of the pass that ended when one was
    read."""
    current = previous.model_copy(deep=True) if previous is not None else LearningStatus()
    if scheduled is not None:
        current.last_job_time = scheduled
    report = ended.report if ended is not None else None
    if report is None:
        return current
    current.last_run_time = _time(report.get("time")) or current.last_run_time
    for field, key in (("labels", "labels"), ("new_labels", "newLabels")):
        value = report.get(key)
        if isinstance(value, int):
            setattr(current, field, value)
    if isinstance(report.get("inForce"), str):
        current.in_force = report["inForce"]
    counts = report.get("lastRun")
    if isinstance(counts, dict):
        current.last_run = {k: v for k, v in counts.items() if isinstance(v, int)}
    decision = _decision(report.get("decision"))
    if decision is not None and all(d.record != decision.record for d in current.decisions):
        current.decisions = [*current.decisions, decision][-HISTORY:]
    return current


def _decision(found: object) -> LearningDecision | None:
    if not isinstance(found, dict):
        return None
    try:
        return LearningDecision.model_validate(found)
    except pydantic.ValidationError:
        return None


def events(ended: Ended | None) -> list[Event]:
    """One Event for the pass that ended: its decision, or its failure."""
    if ended is None:
        return []
    if ended.failure is not None:
        return [Event("Warning", "LearningFailed", ended.failure)]
    report = ended.report or {}
    if report.get("labellingFailed"):
        return [Event("Warning", "LearningFailed", _labelling_failed(report))]
    decision = _decision(report.get("decision"))
    if decision is None:
        return []
    if decision.verdict == "Refuse":
        reason = "PromotionRefused"
    else:
        reason = "ClassifierPromoted" if decision.applied else "PromotionRecommended"
    return [Event("Normal", reason, f"{decision.candidate.classifier}: {decision.reason}")]


def _labelling_failed(report: Mapping[str, Any]) -> str:
    counts = report.get("lastRun") or {}
    return (
        f"asked {counts.get('asked', 0)} captured requests for labels and none was labelled "
        f"({counts.get('unparseable', 0)} verdicts did not parse, {counts.get('judgeErrors', 0)} "
        f"judge errors, {counts.get('tierErrors', 0)} tier errors): check the judge model and "
        "the tiers' Services; the next pass asks the same requests again"
    )


def condition(ended: Ended | None) -> tuple[Status, str, str] | None:
    """`Learning` after the pass that ended; None when none was read (it stays as it was)."""
    if ended is None:
        return None
    if ended.failure is not None:
        return ("False", "JobFailed", ended.failure)
    report = ended.report or {}
    if report.get("labellingFailed"):
        return ("False", "LabellingFailed", _labelling_failed(report))
    counts = report.get("lastRun") or {}
    decision = _decision(report.get("decision"))
    decided = f"; {decision.verdict} ({decision.rule})" if decision is not None else ""
    return (
        "True",
        "PassEnded",
        f"labelled {counts.get('labelled', 0)} of {counts.get('asked', 0)} requests asked; "
        f"{report.get('labels', 0)} labels in the store{decided}; in force: "
        f"{report.get('inForce', 'heuristic')}",
    )


def with_condition(
    found: Sequence[Condition],
    spec: LearningSpec | None,
    ended: Ended | None,
    *,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """`found` with `Learning` set from `condition` (Unknown until a pass reported), or
    removed when learning is off."""
    if spec is None:
        return [c for c in found if c.type != CONDITION]
    value = condition(ended)
    if value is None and conditions.find(found, CONDITION) is not None:
        return list(found)
    status, reason, message = value or (
        "Unknown",
        "NoPassYet",
        "no learning pass has ended yet (spec.learning.schedule says when one starts)",
    )
    return conditions.set_condition(
        found, CONDITION, status, reason, message, generation=generation, now=now
    )


def run(
    spec: LearningSpec | None,
    namespace: str,
    name: str,
    previous: LearningStatus | None,
    observed: Mapping[str, Manifest],
    writer: apply.Writer,
) -> tuple[LearningStatus | None, Ended | None]:
    """status.learning for one policy (None when it does not learn), reading the learning
    pods only when a Job ended since; removes the CronJob learning left. Also what the pass
    that ended said, for `events` and `with_condition`."""
    cron_job = observed.get(apply.key("CronJob", render.name(name)))
    if spec is None:
        if cron_job is not None:
            writer.delete("batch/v1", "CronJob", namespace, render.name(name))
        return None, None
    scheduled = due(cron_job, previous)
    ended = read_report(writer.pods(namespace, render.pods(name))) if scheduled else None
    return status(previous, scheduled, ended), ended
