"""Reading specfleet resources from YAML manifests, with errors a person can act on, and the
type of a Kubernetes object's body (`Manifest`).

Used by the CLI (for files) and by tests; the operator parses bodies it receives with
`parse` too, so every path into specfleet refuses the same things the same way. `render`,
`diagnose` and `kube` share `Manifest`; it is declared here, with no Kubernetes client behind
it, so the pure modules can name it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from pydantic import ValidationError

from specfleet.api.crdinfo import API_VERSION
from specfleet.api.inferencemodel import InferenceModel
from specfleet.api.routingpolicy import RoutingPolicy

Manifest = dict[str, Any]
"""A Kubernetes object as its JSON body: what `render` builds, `kube` sends and reads back, and
`diagnose` reads from pods."""

Resource = InferenceModel | RoutingPolicy
KINDS: dict[str, type[InferenceModel] | type[RoutingPolicy]] = {
    "InferenceModel": InferenceModel,
    "RoutingPolicy": RoutingPolicy,
}

_UNION_TAG = re.compile(r"[\[\]'\-]|^(int|str|float|bool)$")


class ManifestError(ValueError):
    """A manifest that is not a valid specfleet resource; the message says where and why."""


def _where(loc: Iterable[int | str]) -> str:
    where = ""
    for part in loc:
        if isinstance(part, int):
            where += f"[{part}]"
        elif not _UNION_TAG.search(part):
            where += f".{part}" if where else part
    return where


def _explain(error: Mapping[str, Any]) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field; check its spelling and indentation"
    elif error["type"] == "missing":
        message = "required field is missing"
    return message


def describe(kind: str, name: str, error: ValidationError) -> str:
    """One line per problem: `InferenceModel llama-70b: spec.batching: <what to do>`."""
    lines: list[str] = []
    for item in error.errors(include_url=False):
        where = _where(item["loc"])
        line = f"{kind} {name or '(unnamed)'}: {where + ': ' if where else ''}{_explain(item)}"
        if line not in lines:
            lines.append(line)
    return "\n".join(lines)


def parse(document: Mapping[str, Any]) -> Resource:
    """The typed resource for one manifest or API body; raises ManifestError."""
    kind = document.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ManifestError(
            f"kind {kind!r} is not a specfleet resource; expected one of {', '.join(KINDS)}"
        )
    if document.get("apiVersion") != API_VERSION:
        raise ManifestError(
            f"{kind}: apiVersion must be {API_VERSION}, not {document.get('apiVersion')!r}"
        )
    metadata = document.get("metadata")
    name = str(metadata.get("name", "")) if isinstance(metadata, Mapping) else ""
    try:
        return KINDS[kind].model_validate(document)
    except ValidationError as exc:
        raise ManifestError(describe(kind, name, exc)) from exc


def load(text: str) -> list[Resource]:
    """Every specfleet resource in a multi-document YAML text, in order. Documents of other
    kinds (a Namespace, a Secret) are skipped; empty documents too."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestError(f"not valid YAML: {exc}") from exc
    resources: list[Resource] = []
    for document in documents:
        if not isinstance(document, Mapping):
            raise ManifestError(f"expected a mapping per YAML document, got {document!r:.60}")
        if document.get("kind") in KINDS:
            resources.append(parse(document))
    return resources
