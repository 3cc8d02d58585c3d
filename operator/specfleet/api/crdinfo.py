"""What a resource's CRD says besides its schema: names, printer columns, subresources.

Each resource model declares a `CrdInfo` next to its fields, so the type stays the one place that
describes the resource; `specfleet.crdgen` turns both into the CustomResourceDefinition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from specfleet.api.base import Rule
from specfleet.api.common import DNS_LABEL_PATTERN

GROUP = "specfleet.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "specfleet"

CHILD_NAME_MAX = 52
"""Longest resource name: children append suffixes such as `-gate` and stay within 63."""


def is_child_name(name: str) -> bool:
    """Whether `name` can name the Deployments and Services made for a resource."""
    return len(name) <= CHILD_NAME_MAX and bool(re.match(DNS_LABEL_PATTERN, name))


def child_name_rule(kind: str, children: str) -> Rule:
    """The rule on a resource's own name, which its children's names are made from."""
    return Rule(
        cel=f"self.metadata.name.matches('{DNS_LABEL_PATTERN}')"
        f" && size(self.metadata.name) <= {CHILD_NAME_MAX}",
        message=f"metadata.name must be a DNS label (lowercase letters, digits and '-', "
        f"starting with a letter) of at most {CHILD_NAME_MAX} characters, because it names "
        f"{children}; rename the {kind}",
        check=lambda resource: is_child_name(resource.metadata.name),
    )


@dataclass(frozen=True)
class Column:
    """One `kubectl get` column."""

    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str


READY = Column("Ready", "string", '.status.conditions[?(@.type=="Ready")].status', "Ready")
AGE = Column("Age", "date", ".metadata.creationTimestamp", "Time since creation")


@dataclass(frozen=True)
class CrdInfo:
    """Names, columns and subresources of one custom resource."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    printer_columns: tuple[Column, ...]
    scale: bool = False
    """Whether the scale subresource maps .spec.replicas (so HPA or KEDA can own replicas)."""

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"
