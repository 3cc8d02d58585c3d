"""The execute step: the only part of reconciling that writes.

`children` applies what a compute step rendered, each child only when its live object does
not already hold the rendering (reading it only when its resourceVersion is not known to
match), and reports each as an `Applied`. `status` writes a resource's status when it differs
from the one stored, conditional on the version read. Both go through a `Writer` (the real
one is `specfleet.kube.Kube`; tests pass a recording fake). `summary` is what the operator
keeps of each watched child, found again by `key` (its kind and name: a resource may own two
children of one kind, such as a policy's retention and learning CronJobs).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from specfleet.api import Resource
from specfleet.api.base import StatusModel
from specfleet.api.crdinfo import API_VERSION
from specfleet.api.manifests import Manifest
from specfleet.kube import Children, contains
from specfleet.reconcile import Applied


class Writer(Protocol):
    """What reconciling needs from the API: the subset of `specfleet.kube.Kube` it uses."""

    def get(self, manifest: Mapping[str, Any]) -> Manifest | None: ...

    def apply(self, manifest: Manifest) -> str: ...

    def patch_status(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> None: ...

    def pods(self, namespace: str, selector: Mapping[str, str]) -> list[Manifest]: ...

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None: ...


def key(kind: str, name: str) -> str:
    """Where a child's summary is kept among its owner's: `Kind/name`."""
    return f"{kind}/{name}"


def key_of(manifest: Mapping[str, Any]) -> str:
    """`key` of a manifest or a summary."""
    return key(manifest["kind"], manifest["metadata"]["name"])


def summary(child: Mapping[str, Any]) -> Manifest:
    """What the operator keeps of a watched child between passes: its kind, name and
    resourceVersion and, for a Deployment, what status is computed from. Small, so a fleet of
    thousands fits."""
    metadata = child.get("metadata", {})
    kept: Manifest = {
        "kind": child.get("kind"),
        "metadata": {
            "name": metadata.get("name"),
            "resourceVersion": metadata.get("resourceVersion"),
            "generation": metadata.get("generation", 0),
        },
    }
    if child.get("kind") == "Deployment":
        kept["spec"] = {"replicas": child.get("spec", {}).get("replicas")}
        kept["status"] = copy.deepcopy(child.get("status", {}))
    elif child.get("kind") == "CronJob":
        # When its Jobs last started and completed, and whether one runs: retention's and
        # learning's reports are read once a Job ended.
        status = child.get("status", {})
        kept["status"] = {
            key: status[key]
            for key in ("lastScheduleTime", "lastSuccessfulTime")
            if status.get(key)
        }
        if status.get("active"):
            kept["status"]["active"] = len(status["active"])
    return kept


def child(manifest: Manifest, seen: Manifest | None, writer: Writer, known: Children) -> Applied:
    """Applies one child unless it is known, or found, to hold the rendering. `seen` is the
    child's `summary` from the watch (None: it does not exist)."""
    applied = Applied(manifest["kind"], manifest["metadata"]["name"], changed=False)
    version = seen["metadata"]["resourceVersion"] if seen else None
    if known.unchanged(manifest, version):
        return applied
    live = writer.get(manifest) if seen is not None else None
    if live is not None and contains(live, manifest):
        known.remember(manifest, live["metadata"]["resourceVersion"])
        return applied
    known.remember(manifest, writer.apply(manifest))
    return Applied(applied.kind, applied.name, changed=True)


def children(
    manifests: Sequence[Manifest],
    observed: Mapping[str, Manifest],
    writer: Writer,
    known: Children,
) -> list[Applied]:
    """Every manifest through `child`, in order; `observed` maps a child's `key` to its
    summary."""
    return [child(m, observed.get(key_of(m)), writer, known) for m in manifests]


def _body(status: StatusModel) -> dict[str, Any]:
    dumped: dict[str, Any] = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    return dumped


def status(writer: Writer, resource: Resource, new: StatusModel) -> bool:
    """Writes `new` as the resource's status unless the stored one says the same; True if
    written. The write is conditional on the resourceVersion `resource` was read at: a status
    computed from an older read (one that would record a second autoscaling decision for the
    same interval, or put back a decision history another pass extended) fails with a
    conflict, and the pass runs again on what is stored now."""
    after = _body(new)
    if resource.status is not None and _body(resource.status) == after:
        return False
    metadata = resource.metadata
    writer.patch_status(
        API_VERSION,
        resource.crd.kind,
        metadata.namespace or "",
        metadata.name,
        after,
        metadata.resource_version,
    )
    return True
