"""The operator's only door to the Kubernetes API.

Writes are server-side applies under one field manager (`specfleet`), so the operator owns
exactly the fields it renders: an outside edit to one of them is reverted on the next pass,
an edit to any other field is left alone. `contains` decides whether an apply is needed at all:
when the live object already holds every rendered field, nothing is sent. `Children` remembers
which resourceVersion of each child was last found (or made) to match what was rendered, so
the watches need keep only resourceVersions, and an unchanged child is neither read nor
written. Status goes through
the status subresource with a merge patch, only when it changed, and only onto the version it
was computed from.

API failures become `ApiError`, which says whether trying again later can help.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import kubernetes
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from specfleet import metrics
from specfleet.api.labels import INFERENCE_MODEL, ROUTING_POLICY
from specfleet.api.manifests import Manifest

FIELD_MANAGER = "specfleet"


_PLURALS = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "Deployment": "deployments",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "CronJob": "cronjobs",
    "InferenceModel": "inferencemodels",
    "RoutingPolicy": "routingpolicies",
}
_TRANSIENT_STATUS = {409, 429, 500, 502, 503, 504}
NAMESPACE_TERMINATING = "NamespaceTerminating"
"""The cause the API server gives when it refuses (403) to create in a namespace being deleted."""


class ApiError(Exception):
    """A Kubernetes API call failed; `transient` says whether a retry may succeed, and
    `namespace_terminating` that the namespace is being deleted (nothing may be created in it,
    and nothing needs to be)."""

    def __init__(
        self, message: str, *, transient: bool, namespace_terminating: bool = False
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.namespace_terminating = namespace_terminating


def contains(live: Any, desired: Any) -> bool:
    """Whether `live` already holds everything in `desired`: every key of a mapping (extra
    keys, such as defaults the API server adds, are fine), lists element by element, scalars
    equal. Pure."""
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            key in live and contains(live[key], value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(live) == len(desired)
            and all(contains(a, b) for a, b in zip(live, desired, strict=True))
        )
    return bool(live == desired)


class Children:
    """Which resourceVersion of each child last matched its rendering, and that rendering's
    digest. Memory of the operator process; empty after a restart (each child is then read
    once). Thread-safe: the passes of different resources run in different threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._verified: dict[tuple[str, str, str, str], tuple[str, str]] = {}

    @staticmethod
    def key(manifest: Mapping[str, Any]) -> tuple[str, str, str, str]:
        """(namespace, owner's kind, owner's name, kind): a resource has one child of each
        kind. The owner's kind keeps an InferenceModel's and a RoutingPolicy's apart."""
        metadata = manifest["metadata"]
        found = metadata.get("labels", {})
        if ROUTING_POLICY in found:
            owner = ("RoutingPolicy", found[ROUTING_POLICY])
        else:
            owner = ("InferenceModel", found.get(INFERENCE_MODEL, metadata["name"]))
        return (metadata.get("namespace", ""), *owner, manifest["kind"])

    @staticmethod
    def digest(manifest: Mapping[str, Any]) -> str:
        return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()

    def __len__(self) -> int:
        with self._lock:
            return len(self._verified)

    def unchanged(self, manifest: Mapping[str, Any], resource_version: str | None) -> bool:
        """Whether the child at `resource_version` is known to match `manifest`."""
        with self._lock:
            known = self._verified.get(self.key(manifest))
        return resource_version is not None and known == (resource_version, self.digest(manifest))

    def remember(self, manifest: Mapping[str, Any], resource_version: str) -> None:
        entry = (resource_version, self.digest(manifest))
        with self._lock:
            self._verified[self.key(manifest)] = entry

    def forget(self, namespace: str, owner: str, owner_kind: str = "InferenceModel") -> None:
        """Drops what is known of a deleted resource's children."""
        with self._lock:
            for key in [k for k in self._verified if k[:3] == (namespace, owner_kind, owner)]:
                del self._verified[key]


def object_path(api_version: str, kind: str, namespace: str, name: str) -> str:
    """The REST path of a namespaced object."""
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{root}/namespaces/{namespace}/{_PLURALS[kind]}/{name}"


def describe(manifest: Mapping[str, Any]) -> str:
    metadata = manifest["metadata"]
    return f"{manifest['kind']} {metadata.get('namespace', '')}/{metadata['name']}"


class Kube:
    """Server-side apply and status patches over one API client."""

    def __init__(self, client: ApiClient | None = None) -> None:
        if client is None:
            try:
                kubernetes.config.load_incluster_config()
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config()
            client = ApiClient()
        self._client = client

    @classmethod
    def from_kubeconfig(cls, path: str) -> Kube:
        """A client for the cluster and identity of a kubeconfig file (not the default one)."""
        return cls(kubernetes.config.new_client_from_config(config_file=path))

    def _request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        body: Manifest | None = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> Manifest | None:
        """One API request; the object it answers with, or None for 404 on a GET or DELETE."""
        try:
            method, url, headers, payload, _ = self._client.param_serialize(
                method=method,
                resource_path=path,
                query_params=query or [],
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._client.call_api(method, url, headers, payload, _request_timeout=30)
            response.read()
        except ApiException as exc:
            raise _api_error(what, exc.status, exc.body or str(exc.reason)) from exc
        except HTTPError as exc:
            raise ApiError(f"{what}: the API server is unreachable: {exc}", transient=True) from exc
        text = (response.data or b"").decode(errors="replace")
        if method in ("GET", "DELETE") and response.status == 404:
            return None
        if not 200 <= response.status < 300:
            raise _api_error(what, response.status, text)
        answer: Manifest = json.loads(text)
        return answer

    def get_path(
        self, path: str, what: str, query: list[tuple[str, str]] | None = None
    ) -> Manifest | None:
        """The object (or list) at an API path, or None when it does not exist."""
        return self._request("GET", path, what, query=query)

    def get(self, manifest: Mapping[str, Any]) -> Manifest | None:
        """The live object a manifest describes, or None when it does not exist."""
        metadata = manifest["metadata"]
        kind = manifest["kind"]
        path = object_path(manifest["apiVersion"], kind, metadata["namespace"], metadata["name"])
        return self._request("GET", path, f"reading {describe(manifest)}")

    def pods(self, namespace: str, selector: Mapping[str, str]) -> list[Manifest]:
        """The pods in `namespace` whose labels hold `selector`."""
        labels = ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
        found = self.get_path(
            f"/api/v1/namespaces/{namespace}/pods",
            f"listing the pods {labels} in {namespace}",
            query=[("labelSelector", labels)],
        )
        items: list[Manifest] = (found or {}).get("items", [])
        return items

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Deletes one object, its dependents in the background; gone already is fine."""
        path = object_path(api_version, kind, namespace, name)
        metrics.API_WRITES.labels(kind, "DELETE").inc()
        self._request(
            "DELETE",
            path,
            f"deleting {kind} {namespace}/{name}",
            body={"propagationPolicy": "Background"},
        )

    def apply(self, manifest: Manifest) -> str:
        """Server-side apply of one object, taking ownership of every field it sets; returns
        the object's new resourceVersion."""
        metadata = manifest["metadata"]
        kind = manifest["kind"]
        path = object_path(manifest["apiVersion"], kind, metadata["namespace"], metadata["name"])
        metrics.API_WRITES.labels(kind, "PATCH").inc()
        applied = self._request(
            "PATCH",
            path,
            f"applying {describe(manifest)}",
            body=manifest,
            content_type="application/apply-patch+yaml",
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
        )
        return str((applied or {}).get("metadata", {}).get("resourceVersion", ""))

    def event(
        self, involved: Mapping[str, Any], type: str, reason: str, message: str, now: datetime
    ) -> None:
        """Posts a core/v1 Event about `involved` (a body with apiVersion, kind and metadata),
        as `kubectl describe` shows them."""
        metadata = involved["metadata"]
        namespace = metadata.get("namespace") or "default"
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        metrics.API_WRITES.labels("Event", "POST").inc()
        self._request(
            "POST",
            f"/api/v1/namespaces/{namespace}/events",
            f"posting Event {reason} about {involved['kind']} {namespace}/{metadata['name']}",
            body={
                "metadata": {"generateName": f"{metadata['name']}.", "namespace": namespace},
                "involvedObject": {
                    "apiVersion": involved["apiVersion"],
                    "kind": involved["kind"],
                    "name": metadata["name"],
                    "namespace": namespace,
                    "uid": metadata.get("uid", ""),
                },
                "type": type,
                "reason": reason,
                "message": message[:1024],
                "source": {"component": FIELD_MANAGER},
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": 1,
            },
        )

    def patch_status(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> None:
        """Merge `status` into an object's status subresource; with `resource_version`, only
        if the object is still at that version (else the API server answers 409 Conflict)."""
        path = object_path(api_version, kind, namespace, name) + "/status"
        metrics.API_WRITES.labels(kind, "PATCH").inc()
        body: Manifest = {"status": dict(status)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        self._request(
            "PATCH",
            path,
            f"updating {kind} {namespace}/{name} status",
            body=body,
            content_type="application/merge-patch+json",
            query=[("fieldManager", FIELD_MANAGER)],
        )


def _api_error(what: str, status: int, body: str) -> ApiError:
    try:
        answer = json.loads(body)
        reason = str(answer["message"])
    except (TypeError, ValueError, KeyError):
        answer, reason = {}, body[:300]
    causes = ((answer.get("details") or {}).get("causes") or []) if status == 403 else []
    return ApiError(
        f"{what}: the API server answered {status}: {reason}",
        transient=status in _TRANSIENT_STATUS,
        namespace_terminating=any(c.get("reason") == NAMESPACE_TERMINATING for c in causes),
    )
