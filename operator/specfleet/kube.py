"""The operator's only door to the Kubernetes API.

Writes are server-side applies under one field manager (`specfleet`), so the operator owns
exactly the fields it renders: an outside edit to one of them is reverted on the next pass,
an edit to any other field is left alone. `contains` decides whether an apply is needed at all:
when the live object already holds every rendered field, nothing is sent. Status goes through
the status subresource with a merge patch, and only when it changed.

API failures become `ApiError`, which says whether trying again later can help.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import kubernetes
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from specfleet import metrics

FIELD_MANAGER = "specfleet"

Manifest = dict[str, Any]

_PLURALS = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "Deployment": "deployments",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "InferenceModel": "inferencemodels",
    "RoutingPolicy": "routingpolicies",
}
_TRANSIENT_STATUS = {409, 429, 500, 502, 503, 504}


class ApiError(Exception):
    """A Kubernetes API call failed; `transient` says whether a retry may succeed."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


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

    def _call(
        self,
        kind: str,
        path: str,
        body: Manifest,
        content_type: str,
        what: str,
        query: list[tuple[str, str]],
    ) -> None:
        metrics.API_WRITES.labels(kind, "PATCH").inc()
        try:
            method, url, headers, payload, _ = self._client.param_serialize(
                method="PATCH",
                resource_path=path,
                query_params=query,
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
        if not 200 <= response.status < 300:
            raise _api_error(what, response.status, (response.data or b"").decode(errors="replace"))

    def apply(self, manifest: Manifest) -> None:
        """Server-side apply of one object, taking ownership of every field it sets."""
        metadata = manifest["metadata"]
        kind = manifest["kind"]
        path = object_path(manifest["apiVersion"], kind, metadata["namespace"], metadata["name"])
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        what = f"applying {describe(manifest)}"
        self._call(kind, path, manifest, "application/apply-patch+yaml", what, query)

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        """Merge `status` into an object's status subresource."""
        path = object_path(api_version, kind, namespace, name) + "/status"
        what = f"updating {kind} {namespace}/{name} status"
        query = [("fieldManager", FIELD_MANAGER)]
        self._call(
            kind, path, {"status": dict(status)}, "application/merge-patch+json", what, query
        )


def _api_error(what: str, status: int, body: str) -> ApiError:
    try:
        reason = str(json.loads(body)["message"])
    except (TypeError, ValueError, KeyError):
        reason = body[:300]
    return ApiError(
        f"{what}: the API server answered {status}: {reason}",
        transient=status in _TRANSIENT_STATUS,
    )
