"""On-call review of a RoutingPolicy's promotion decisions: `specfleet review rp/NAME`.

The decisions are the ones `status.learning` keeps (the last ten: verdict, rule, reason, and
the held-out figures of the candidate and of the classifier then in force). `table` prints
them; `replay` decides each again under a `learning:` (the policy's own, or an edited one
from a file: another quality target, tolerance, cost margin, pin or mode) with the operator's
own rule (`specfleet.learn.promotion.decide`), on the same figures, and `differences_table`
says where it would have decided otherwise. Under the policy's own objective every decision
comes back as recorded. A replay judges the recorded figures: it cannot know what another
objective would have trained (training calibrates to the quality target).

Pure. Called by `specfleet.cli`, which reads the policy (`specfleet.review` reads it through
kubectl, as it reads an InferenceModel).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pydantic
import yaml

from specfleet.api.learning import LearningDecision, LearningSpec
from specfleet.learn import LearnError, promotion


def table(recorded: Sequence[LearningDecision]) -> str:
    """The decisions as a table, oldest first, then why each was made."""
    header = ("TIME", "VERDICT", "RULE", "APPLIED", "LABELS", "CANDIDATE", "QUALITY", "COST")
    rows: list[tuple[str, ...]] = [(*header, "IN FORCE", "QUALITY", "COST")]
    for d in recorded:
        rows.append(
            (
                f"{d.time:%Y-%m-%d %H:%M:%S}",
                d.verdict,
                d.rule,
                "yes" if d.applied else "no",
                str(d.labels),
                _short(d.candidate.classifier),
                f"{d.candidate.quality:.3f}",
                f"{d.candidate.cost:.3f}",
                _short(d.in_force.classifier),
                f"{d.in_force.quality:.3f}",
                f"{d.in_force.cost:.3f}",
            )
        )
    lines = _aligned(rows)
    promoted = sum(d.verdict == "Promote" for d in recorded)
    applied = sum(d.applied for d in recorded)
    lines.append(f"{len(recorded)} decisions, {promoted} promotions, {applied} applied")
    lines += [f"{d.time:%H:%M:%S} {d.rule}: {d.reason}" for d in recorded]
    return "\n".join(lines)


def _short(classifier: str) -> str:
    """A content hash to its first 12 hex digits (as a table shows it); heuristic as it is."""
    return classifier[: len("sha256:") + 12] if classifier.startswith("sha256:") else classifier


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def load_learning(text: str, fallback: LearningSpec) -> LearningSpec:
    """The `learning:` of a document: a RoutingPolicy manifest (its spec.learning), or a
    document with `learning:` at its top; `fallback` when it has none. Raises LearnError."""
    document = yaml.safe_load(text) or {}
    if not isinstance(document, dict):
        raise LearnError("the replay file must be a YAML mapping with learning: (or a manifest)")
    found = (document.get("spec") or {}).get("learning", document.get("learning"))
    if found is None:
        return fallback
    try:
        return LearningSpec.model_validate(found)
    except pydantic.ValidationError as exc:
        raise LearnError(f"learning: {exc}") from None


def replay(
    recorded: Sequence[LearningDecision], learning: LearningSpec
) -> list[promotion.Decision]:
    """Each decision taken again under `learning`, on the figures it recorded."""
    objective = promotion.Objective(
        quality_target=learning.objective.quality_target,
        quality_tolerance=learning.objective.quality_tolerance,
        cost_margin=learning.objective.cost_margin,
    )
    return [
        promotion.decide(
            objective,
            promotion.Figures(d.candidate.classifier, d.candidate.quality, d.candidate.cost),
            promotion.Figures(d.in_force.classifier, d.in_force.quality, d.in_force.cost),
            d.labels,
            now=d.time,
            pin=learning.pin,
            mode=learning.mode,
        )
        for d in recorded
    ]


@dataclass(frozen=True)
class Difference:
    recorded: LearningDecision
    replayed: promotion.Decision


def differences(
    recorded: Sequence[LearningDecision], replayed: Sequence[promotion.Decision]
) -> list[Difference]:
    """Where the replay gave another verdict, rule or application."""
    return [
        Difference(a, b)
        for a, b in zip(recorded, replayed, strict=True)
        if (a.verdict, a.rule, a.applied) != (b.verdict, b.rule, b.applied)
    ]


def differences_table(found: Sequence[Difference], total: int) -> str:
    if not found:
        return f"the replayed objective decides as recorded at all {total} decisions"
    rows: list[tuple[str, ...]] = [("TIME", "RECORDED", "REPLAYED")]
    for f in found:
        a, b = f.recorded, f.replayed
        rows.append(
            (
                f"{a.time:%Y-%m-%d %H:%M:%S}",
                f"{a.verdict} {a.rule}" + ("" if a.applied else " (not applied)"),
                f"{b.verdict} {b.rule}" + ("" if b.applied else " (not applied)"),
            )
        )
    lines = _aligned(rows)
    lines.append(f"{len(found)} of {total} decisions differ")
    lines += [f"{f.recorded.time:%H:%M:%S} replayed: {f.replayed.reason}" for f in found]
    return "\n".join(lines)
