"""Kubernetes-style conditions, kept the way `kubectl describe` readers expect: one entry per
type, `lastTransitionTime` moving only when `status` flips. Pure; used by `reconcile`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from specfleet.api.common import Condition

Status = Literal["True", "False", "Unknown"]


def set_condition(
    conditions: Sequence[Condition],
    type: str,
    status: Status,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """`conditions` with `type` set; the others are kept in order."""
    previous = next((c for c in conditions if c.type == type), None)
    changed_at = previous.last_transition_time if previous and previous.status == status else now
    updated = Condition(
        type=type,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=changed_at,
        observed_generation=generation,
    )
    if previous is None:
        return [*conditions, updated]
    return [updated if c.type == type else c for c in conditions]


def find(conditions: Sequence[Condition], type: str) -> Condition | None:
    return next((c for c in conditions if c.type == type), None)
