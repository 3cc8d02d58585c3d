"""The RoutingPolicy resource: one OpenAI-compatible endpoint in front of several
InferenceModels, sending each request to the cheapest model that can answer it.

The single source of truth for the resource's shape, as `specfleet.api.inferencemodel` is for
InferenceModel.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, StringConstraints

from specfleet.api import crdinfo
from specfleet.api.base import ApiModel, Rule, StatusModel
from specfleet.api.capture import CaptureSpec, CaptureStatus
from specfleet.api.common import Conditions, ObjectMeta, ObjectName, Toleration
from specfleet.api.learning import LearningSpec, LearningStatus

MAX_TIERS = 16
MAX_OVERRIDES = 32

Category = Literal["sql", "code", "math", "reasoning"]
"""Request categories the classifier recognises."""


class TierCondition(ApiModel):
    """Which requests a tier takes: every limit that is set must hold."""

    rules = (
        Rule(
            cel="has(self.maxComplexity) || has(self.maxExpectedTokens)",
            message="tiers[].when must set maxComplexity, maxExpectedTokens or both; "
            "to catch every request, make the tier last and drop its when",
            check=lambda w: w.max_complexity is not None or w.max_expected_tokens is not None,
        ),
    )

    max_complexity: Annotated[float, Field(ge=0, le=1)] | None = None
    """The highest classifier complexity score (0 trivial, 1 hardest) this tier takes."""
    max_expected_tokens: Annotated[int, Field(ge=1)] | None = None
    """The longest expected output, in tokens, this tier takes."""


class Tier(ApiModel):
    """One model the policy may send requests to."""

    name: ObjectName
    """The tier's name; it appears in response headers and metrics."""
    model: ObjectName
    """The InferenceModel (in the same namespace) that serves this tier."""
    when: TierCondition | None = None
    """Which requests this tier takes. Every tier but the last needs one; the last takes
    everything the others do not."""
    cost: Annotated[float, Field(gt=0)] | None = None
    """Relative cost of a request on this tier, for the router's saving estimate."""


def _compiles(pattern: str) -> str:
    """The router searches with Python's `re`; the API server cannot check that syntax, so a
    pattern it accepted is refused here (by `specfleet render`, and by the operator with an
    InvalidSpec Event) instead of being skipped by the router."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(
            f"{pattern!r} is not a regular expression in Python's re syntax ({exc}); "
            "escape the characters meant literally, e.g. \\( for ("
        ) from None
    return pattern


class OverrideMatch(ApiModel):
    """What a request must look like for an override to apply: a pattern or a category."""

    rules = (
        Rule(
            cel="has(self.pattern) != has(self.category)",
            message="overrides[].match must set exactly one of pattern or category",
            check=lambda m: (m.pattern is None) != (m.category is None),
        ),
    )

    pattern: (
        Annotated[str, StringConstraints(min_length=1, max_length=1024), AfterValidator(_compiles)]
        | None
    ) = None
    """A regular expression (Python's re syntax, case-sensitive unless it starts with (?i))
    searched in the prompt (or the last user message)."""
    category: Category | None = None
    """A category the classifier detects."""


class Override(ApiModel):
    """A request kind that goes to a named model whatever its complexity, for example SQL
    generation, which a draft model often gets wrong, to a model served without speculation."""

    match: OverrideMatch
    """Which requests the override takes."""
    model: ObjectName
    """The InferenceModel (in the same namespace) that serves them."""
    reason: Annotated[str, StringConstraints(max_length=1024)] = ""
    """Why, for the people who read the policy later."""


class Fallback(ApiModel):
    """What happens when a backend fails before sending the first byte."""

    enabled: bool = True
    """Retry once on the next tier up when a backend fails before its first byte: no
    connection, no response headers within timeouts.firstByteSeconds, a 5xx, or busy (429, or a
    gate's 503 queue_timeout). Streams already started are never retried."""


DEFAULT_FIRST_BYTE_SECONDS = 120.0


class Timeouts(ApiModel):
    """How long the router waits for a backend."""

    first_byte_seconds: Annotated[float, Field(ge=1, le=3600)] = DEFAULT_FIRST_BYTE_SECONDS
    """Seconds from sending a request to a backend (connecting included) to its response
    headers; past them the backend counts as failed: the request falls back, or gets 504
    upstream_timeout. A stream's headers come once its gate admits it; a whole answer's come
    with its end, so this also bounds answers that are not streamed. The router asks the gate
    to queue the request for at most one second less (X-Specfleet-Queue-Timeout), so a busy
    gate answers 503 queue_timeout, with its Retry-After, before the router would give up on it
    as dead."""


class ApiKeys(ApiModel):
    """Clients' API keys, kept in a Secret: each key of the Secret names a client and its value
    is that client's key."""

    secret_name: ObjectName
    """The Secret (in the same namespace). Requests need `Authorization: Bearer <a value>`; the
    router labels usage metrics with the key's name, never its value, and rereads the Secret
    without a restart."""


class ServiceSpec(ApiModel):
    """The router's Service."""

    port: Annotated[int, Field(ge=1, le=65535)] = 80
    """The port clients connect to."""
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    """The Service type."""


class Placement(ApiModel):
    """Where the router pods run: they need no GPU, so a CPU pool suits them."""

    node_selector: dict[str, str] | None = None
    """Node labels the router pods require. Unset: any node."""
    tolerations: list[Toleration] | None = Field(default=None, max_length=32)
    """Taints the router pods tolerate. Unset: none."""


TIER_RULES: tuple[Rule, ...] = (
    Rule(
        cel="self.tiers.all(t, self.tiers.exists_one(u, u.name == t.name))",
        message="tiers: every tier name must be unique; rename the duplicate",
        check=lambda s: len({t.name for t in s.tiers}) == len(s.tiers),
        field_path=".tiers",
    ),
    Rule(
        cel="size(self.tiers) == 0 || self.tiers.filter(t, !has(t.when)).size() <= 1",
        message="tiers: every tier but the last needs when (maxComplexity or "
        "maxExpectedTokens); only the last tier catches everything",
        check=lambda s: all(t.when is not None for t in s.tiers[:-1]),
        field_path=".tiers",
    ),
    Rule(
        cel="size(self.tiers) == 0 || !has(self.tiers[size(self.tiers) - 1].when)",
        message="tiers: the last tier catches every request the others do not take; "
        "remove its when",
        check=lambda s: not s.tiers or s.tiers[-1].when is None,
        field_path=".tiers",
    ),
)
"""The rules of a list of tiers, for any object with a `tiers` field: the RoutingPolicy spec
(checked by the API server too) and the router's configuration file
(`specfleet.api.routerconfig`), so a file cannot route differently from what the API server
would have accepted."""


LEARNING_RULES: tuple[Rule, ...] = (
    Rule(
        cel="!has(self.learning) || has(self.capture)",
        message="learning needs capture: the classifier is trained on the requests the router "
        "captures, and its labels and decisions are kept in the capture store; set "
        "spec.capture (a sampleRate and a store) or remove spec.learning",
        check=lambda s: s.learning is None or s.capture is not None,
        field_path=".learning",
    ),
)


class RoutingPolicySpec(ApiModel):
    """The desired routing."""

    rules = TIER_RULES + LEARNING_RULES

    tiers: list[Tier] = Field(min_length=1, max_length=MAX_TIERS)
    """Models ordered cheapest first. A request goes to the first tier whose `when` holds."""
    overrides: list[Override] = Field(default_factory=list, max_length=MAX_OVERRIDES)
    """Checked before the tiers, in order; the first match wins."""
    classifier: Literal["heuristic"] = "heuristic"
    """How requests are scored: heuristic reads length, code, SQL, math and reasoning cues and
    the expected output length."""
    fallback: Fallback = Fallback()
    """Retrying on a failed backend."""
    timeouts: Timeouts = Timeouts()
    """How long a backend may take to start answering."""
    api_keys: ApiKeys | None = None
    """Require an API key on every request. Unset: the router takes requests without one."""
    replicas: Annotated[int, Field(ge=0, le=64)] = 2
    """Router replicas."""
    workers: Annotated[int, Field(ge=1, le=16)] = 1
    """Router processes in each replica, sharing its port: one serves about one core's worth
    of requests (a few thousand a second), so give a replica more where its node has the
    cores, or add replicas. Each worker asks for half a core and 128Mi (224Mi with capture,
    for its writer process)."""
    service: ServiceSpec = ServiceSpec()
    """The router's Service."""
    placement: Placement = Placement()
    """Node labels and tolerations of the router pods."""
    capture: CaptureSpec | None = None
    """Keep a redacted sample of the requests the router routes, with its decisions. Unset:
    nothing is kept."""
    learning: LearningSpec | None = None
    """Train the router's classifier on the captured requests, labelled by a judge model, and
    promote it under review (needs capture). Unset: the heuristic routes."""


class Backend(StatusModel):
    """Where one tier's requests go now."""

    tier: str
    """The tier's name."""
    model: str
    """The InferenceModel serving it."""
    service: str | None = None
    """The in-cluster URL of the model's Service, once it exists."""
    ready: bool
    """Whether the router sends traffic to it."""
    message: str = ""
    """Why it is not ready, when it is not."""


class RoutingPolicyStatus(StatusModel):
    """What the operator observed and did."""

    observed_generation: int | None = None
    """The metadata.generation the status describes."""
    conditions: Conditions
    """Ready, Progressing, Degraded."""
    tiers: str | None = None
    """The tier names, cheapest first, joined for `kubectl get` (a column shows one value)."""
    backends: list[Backend] = Field(default_factory=list)
    """One entry per tier and override model."""
    ready_backends: int | None = None
    """How many backends are ready."""
    endpoint: str | None = None
    """The in-cluster URL of the router."""
    capture: CaptureStatus | None = None
    """What capture kept and dropped, when spec.capture is set."""
    learning: LearningStatus | None = None
    """The classifier in force and the learning loop's last decisions, when spec.learning is
    set."""


class RoutingPolicy(ApiModel):
    """An OpenAI-compatible router that sends each request to the cheapest capable model."""

    crd: ClassVar[crdinfo.CrdInfo] = crdinfo.CrdInfo(
        kind="RoutingPolicy",
        plural="routingpolicies",
        short_names=("rp",),
        printer_columns=(
            crdinfo.Column("Tiers", "string", ".status.tiers", "Tiers, cheapest first"),
            crdinfo.Column("Backends", "integer", ".status.readyBackends", "Backends ready"),
            crdinfo.READY,
            crdinfo.AGE,
        ),
    )
    rules = (crdinfo.child_name_rule("RoutingPolicy", "the router's Deployment and Service"),)

    api_version: Literal["specfleet.dev/v1alpha1"] = "specfleet.dev/v1alpha1"
    kind: Literal["RoutingPolicy"] = "RoutingPolicy"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: RoutingPolicySpec
    status: RoutingPolicyStatus | None = None
