"""Why a model's pods do not run: the cause an on-call engineer needs, read from pod status.

A Deployment only says how many replicas are ready. When none become ready, the cause is on
the pods: an image the node cannot pull, a container that cannot start (a Secret or key that
does not exist) or that keeps exiting, or GPUs no node has free. `trouble` reads the pods of
one model and names the first such cause, with the pod, the container and the words of the
kubelet or the scheduler, so status and the Warning Event say what to fix rather than
"0/1 replicas ready". Pure: `reconcile` lists the pods and turns the result into conditions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from specfleet.api.manifests import Manifest

IMAGE_PULL = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"}
)
"""Kubelet waiting reasons of a container whose image the node does not have and cannot get."""
CANNOT_START = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)
"""Kubelet waiting reasons of a container that cannot be created or started."""
CRASH_LOOP = "CrashLoopBackOff"
TERMINATION_MESSAGE_LIMIT = 400
"""Characters of a crashed container's last words kept in the message (its log's tail)."""


@dataclass(frozen=True)
class Trouble:
    """One reason the pods of a model do not run."""

    reason: str
    """`ImagePullFailed`, `ContainerCannotStart`, `CrashLooping` or `Unschedulable`: the
    condition reason and the Event reason."""
    message: str


def _containers(pod: Manifest) -> Iterable[Manifest]:
    status = pod.get("status", {})
    yield from status.get("initContainerStatuses", []) or []
    yield from status.get("containerStatuses", []) or []


def _where(pod: Manifest, container: Manifest | None = None) -> str:
    name = f"pod {pod.get('metadata', {}).get('name', '?')}"
    return f"{name}, container {container['name']}" if container else name


def _last_words(container: Manifest) -> str:
    terminated = container.get("lastState", {}).get("terminated") or {}
    code = terminated.get("exitCode")
    restarts = container.get("restartCount", 0)
    said = " ".join(str(terminated.get("message", "")).split())
    if len(said) > TERMINATION_MESSAGE_LIMIT:
        said = "..." + said[-TERMINATION_MESSAGE_LIMIT:]
    exited = f"exited with code {code}" if code is not None else "keeps exiting"
    return f"{exited} ({restarts} restarts)" + (f": {said}" if said else "")


def _pod_trouble(pod: Manifest) -> Trouble | None:
    for container in _containers(pod):
        waiting = container.get("state", {}).get("waiting") or {}
        why = waiting.get("reason", "")
        said = str(waiting.get("message", "")).strip()
        if why in IMAGE_PULL:
            return Trouble(
                "ImagePullFailed",
                f"{_where(pod, container)}: image {container.get('image', '?')} cannot be "
                f"pulled ({why}){': ' + said if said else ''}; check the image name and tag, "
                "and that the nodes can reach its registry",
            )
        if why in CANNOT_START:
            return Trouble(
                "ContainerCannotStart", f"{_where(pod, container)}: {said or why} ({why})"
            )
        if why == CRASH_LOOP:
            return Trouble("CrashLooping", f"{_where(pod, container)} {_last_words(container)}")
    for condition in pod.get("status", {}).get("conditions", []) or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            return Trouble(
                "Unschedulable",
                f"{_where(pod)} cannot be scheduled: {condition.get('message', '').strip()}",
            )
    return None


def trouble(pods: Sequence[Manifest]) -> Trouble | None:
    """The first cause, in pod name order, that keeps one of ``pods`` from running; None when
    none is known (pods still starting, or being replaced). Pods being deleted are ignored."""
    live = [p for p in pods if not p.get("metadata", {}).get("deletionTimestamp")]
    for pod in sorted(live, key=lambda p: str(p.get("metadata", {}).get("name", ""))):
        found = _pod_trouble(pod)
        if found is not None:
            return found
    return None
