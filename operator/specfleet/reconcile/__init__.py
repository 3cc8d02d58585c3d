"""Reconciling a resource: calculate, then execute.

`inferencemodel` and `routingpolicy` compute, without I/O, the children a resource should have
and, once they are applied, its status and Events. `apply` is the one step that writes:
children by server-side apply when their live objects do not already hold what was rendered,
each reported as an `Applied`, and a resource's status when it changed. Each kind's `run`
strings the two together for one pass. This module holds what both kinds share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from specfleet.api.manifests import Manifest


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the resource."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Applied:
    """One child as the apply step left it: `changed` when it was written."""

    kind: str
    name: str
    changed: bool

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass
class Outcome:
    """What one pass did."""

    children: list[Applied] = field(default_factory=list)
    """Every child the pass rendered, in order, and whether it was written."""
    status_changed: bool = False
    events: list[Event] = field(default_factory=list)
    refused: str | None = None
    """Why the spec cannot be served as written (recorded in status), what to change."""
    next_decision: datetime | None = None
    """When the resource's next autoscaling decision falls due, when it has any."""

    @property
    def applied(self) -> list[Applied]:
        """The children written."""
        return [child for child in self.children if child.changed]


def wrote(kind: str, *passes: Sequence[Applied]) -> bool:
    """Whether any of `passes` wrote a child of `kind`."""
    return any(child.kind == kind and child.changed for done in passes for child in done)


def deployment_current(
    deployment: Manifest | None, wanted: int, *, just_applied: bool = False
) -> bool:
    """Whether an observed Deployment's status speaks for its current spec with `wanted`
    replicas: the controller has seen its latest generation, and no change made this pass
    (`just_applied`) postdates it."""
    if just_applied or deployment is None:
        return False
    status = deployment.get("status", {})
    return bool(
        status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
        and deployment.get("spec", {}).get("replicas") == wanted
    )
