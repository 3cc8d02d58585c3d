"""Types both custom resources share: durations, quantities, conditions, metadata, and the
small subset of core Kubernetes types (tolerations, env vars, resources) that a spec carries.

The subsets are typed rather than free-form so that a typo is refused when the manifest is
applied, not when the Deployment that carries it is created minutes later.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, GetCoreSchemaHandler, StringConstraints, WithJsonSchema
from pydantic_core import core_schema

from specfleet.api.base import ApiModel, Rule, StatusModel

DURATION_PATTERN = r"^([0-9]+([.][0-9]+)?(ms|s|m|h))+$"
DURATION_MAX_LENGTH = 16
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(value: str) -> float:
    """Seconds in a Duration string; raises ValueError for anything that is not one. A field
    typed `Duration` has them already, as `.seconds`."""
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"{value!r} is not a duration such as 30s, 5m or 800ms")
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(value))


class Duration(str):
    """A Go-style duration such as `30s`, `5m`, `1h30m` or `800ms` (what CEL's duration() reads).

    Parsed once, when the model is validated: it stays the string it was written as (on the
    wire, in the CRD's schema, in `==`), and carries its length as `seconds` and `delta`.
    """

    _seconds: float

    def __new__(cls, value: str) -> Duration:
        seconds = duration_seconds(value)
        duration = super().__new__(cls, value)
        duration._seconds = seconds
        return duration

    @property
    def seconds(self) -> float:
        """The duration in seconds (`800ms` is 0.8)."""
        return self._seconds

    @property
    def delta(self) -> timedelta:
        """The duration as a timedelta."""
        return timedelta(seconds=self._seconds)

    def __repr__(self) -> str:
        return f"Duration({str(self)!r})"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        # A string with the pattern (so the CRD's schema is unchanged), then made a Duration.
        return core_schema.no_info_after_validator_function(
            cls,
            core_schema.str_schema(pattern=DURATION_PATTERN, max_length=DURATION_MAX_LENGTH),
            serialization=core_schema.to_string_ser_schema(when_used="always"),
        )


QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]"
    r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
Quantity = Annotated[
    int | Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN)],
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes resource quantity such as `4`, `500m` or `64Gi`."""

DNS_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
ObjectName = Annotated[str, StringConstraints(pattern=DNS_LABEL_PATTERN, max_length=63)]
"""The name of a Kubernetes object in the same namespace (a DNS-1035 label)."""


class ObjectMeta(ApiModel):
    """The parts of `metadata` specfleet reads; everything else is kept as it is."""

    model_config = ConfigDict(extra="allow")

    name: str = ""
    namespace: str | None = None
    generation: int | None = None
    uid: str | None = None
    resource_version: str | None = None
    """The version the operator read; its status writes are conditional on it."""
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class Condition(StatusModel):
    """A Kubernetes-style condition (the shape of metav1.Condition)."""

    type: Annotated[str, StringConstraints(max_length=316)]
    """Ready, Progressing, Degraded, SpeculationHealthy or MetricsAvailable."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: Annotated[str, StringConstraints(max_length=1024)]
    """One CamelCase word that a program can switch on."""
    message: Annotated[str, StringConstraints(max_length=32768)] = ""
    """What happened and, where something is wrong, what to do about it."""
    last_transition_time: datetime
    """When `status` last changed."""
    observed_generation: int | None = None
    """The metadata.generation this condition was computed from."""


Conditions = Annotated[
    list[Condition],
    Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]
"""Conditions keyed by type, as Kubernetes lists them."""


class SecretKeyRef(ApiModel):
    """A key of a Secret in the same namespace; its value never appears in the resource."""

    name: ObjectName
    """The Secret's name."""
    key: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    """The key within the Secret."""


class ConfigMapKeyRef(ApiModel):
    """A key of a ConfigMap in the same namespace."""

    name: ObjectName
    """The ConfigMap's name."""
    key: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    """The key within the ConfigMap."""


class FieldRef(ApiModel):
    """A field of the pod, such as `metadata.name` or `status.podIP`."""

    field_path: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    """The path of the field."""


class EnvVarSource(ApiModel):
    """Where an environment variable's value comes from; exactly one source."""

    rules = (
        Rule(
            cel="[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef)]"
            ".filter(x, x).size() == 1",
            message="env[].valueFrom must set exactly one of secretKeyRef, configMapKeyRef "
            "or fieldRef",
            check=lambda s: [s.secret_key_ref, s.config_map_key_ref, s.field_ref].count(None) == 2,
        ),
    )

    secret_key_ref: SecretKeyRef | None = None
    """A key of a Secret."""
    config_map_key_ref: ConfigMapKeyRef | None = None
    """A key of a ConfigMap."""
    field_ref: FieldRef | None = None
    """A field of the pod."""


class EnvVar(ApiModel):
    """An environment variable for the vLLM container."""

    rules = (
        Rule(
            cel="has(self.value) != has(self.valueFrom)",
            message="env[]: set exactly one of value or valueFrom",
            check=lambda e: (e.value is None) != (e.value_from is None),
        ),
    )

    name: Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", max_length=256)]
    """The variable's name."""
    value: Annotated[str, StringConstraints(max_length=32768)] | None = None
    """A literal value."""
    value_from: EnvVarSource | None = None
    """A value read from a Secret, a ConfigMap or the pod."""


class Toleration(ApiModel):
    """A pod toleration, as in the core API."""

    key: Annotated[str, StringConstraints(max_length=316)] | None = None
    """The taint key; empty with operator Exists matches every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists matches any value; Equal matches `value`."""
    value: Annotated[str, StringConstraints(max_length=63)] | None = None
    """The taint value, for operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """The taint effect to tolerate; empty tolerates every effect."""
    toleration_seconds: Annotated[int, Field(ge=0)] | None = None
    """For NoExecute: how long the pod stays bound after the taint appears."""


class ResourceRequirements(ApiModel):
    """CPU, memory and other resources of the vLLM container. GPUs are not set here: the
    planner sets `nvidia.com/gpu` from the tensor-parallel size."""

    rules = (
        Rule(
            cel="!(has(self.limits) && 'nvidia.com/gpu' in self.limits)"
            " && !(has(self.requests) && 'nvidia.com/gpu' in self.requests)",
            message="resources must not set nvidia.com/gpu: the operator sets it from the "
            "tensor-parallel size; use gpu.count instead",
            check=lambda r: (
                "nvidia.com/gpu" not in (r.limits or {})
                and "nvidia.com/gpu" not in (r.requests or {})
            ),
        ),
    )

    requests: dict[str, Quantity] | None = None
    """Minimum resources, such as `cpu: 8` and `memory: 64Gi`."""
    limits: dict[str, Quantity] | None = None
    """Maximum resources."""
