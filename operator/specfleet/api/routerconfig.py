"""The router's configuration file: its format, shared by the operator that writes it and the
router that reads it.

The operator renders one RoutingPolicy, and the InferenceModels it names, into a ConfigMap; the
router pod mounts its key as a file passed to ``specfleet-router --config``. The file is YAML or
JSON (camelCase keys, unknown keys refused) holding:

    policy: assistant             # the RoutingPolicy's name: clients send it (or "auto") as
                                  # "model" to be routed
    tiers:                        # RoutingPolicy spec.tiers, verbatim: cheapest first
    - {name: simple, model: llama-3b, when: {maxComplexity: 0.3, maxExpectedTokens: 256}, cost: 1}
    - {name: medium, model: llama-8b, when: {maxComplexity: 0.6, maxExpectedTokens: 1024}, cost: 3}
    - {name: complex, model: llama-70b, cost: 20}
    overrides:                    # spec.overrides, verbatim: checked first, first match wins
    - {match: {category: sql}, model: llama-8b, reason: the 3B draft gets SQL wrong}
    classifier: heuristic         # spec.classifier; or a learned classifier's artifact:
                                  # {path: /etc/specfleet/classifier/classifier.json}
                                  # or the one in force in the capture store (spec.learning):
                                  # {inForce: {pollSeconds: 30}}
    fallback: {enabled: true}     # spec.fallback
    timeouts: {firstByteSeconds: 120}   # spec.timeouts
    backends:                     # resolved by the operator: InferenceModel name -> its Service
      llama-3b: {url: "http://llama-3b.ml.svc:80", ready: true}
      llama-8b: {url: "http://llama-8b.ml.svc:80", ready: true, servedModelName: llama-3.1-8b}
      llama-70b: {url: null, ready: false}   # not Ready yet, or missing: skipped, not an error
    apiKeysFile: /etc/specfleet/api-keys     # optional: where spec.apiKeys' Secret is mounted

``tiers``, ``overrides``, ``classifier``, ``fallback`` and ``timeouts`` are the RoutingPolicy's
own types (``specfleet.api.routingpolicy``), so the operator copies the spec across and the same
rules hold (``routingpolicy.TIER_RULES``: unique tier names, only the last tier without
``when``). ``classifier`` may also name a learned classifier's artifact (``LearnedClassifier``:
the file, or a directory holding ``classifier.json``, mounted by whoever writes this file), or
follow the classifier in force in the policy's capture store (``InForceClassifier``: what the
learning loop's latest applied promotion put there, ``specfleet.api.storelayout``; the
operator renders this for a policy with ``spec.learning``, and it needs ``capture``, which
says where the store is): the router then picks a routed request's tier with it once no
override matched, and keeps to the heuristic while no artifact can be read or fits the tiers
(``specfleet_runtime.router.artifact``).
``backends`` maps each InferenceModel name that a tier or override names to where its Service
answers: ``url`` (the base URL, without ``/v1``), ``ready`` (the operator's view of the
InferenceModel's Ready condition) and ``servedModelName`` (what the backend expects in
``model``; default: the InferenceModel name). A model missing from ``backends``, not ready, or
without a URL is skipped by routing, never a reason to refuse the file. ``apiKeysFile`` is read
by ``specfleet_runtime.router.keys``; unset, requests need no key.

Pure. Called by ``specfleet.render.routingpolicy`` (to build the file, so the operator cannot
render one the router refuses) and by ``specfleet_runtime.router`` (``config`` rereads the file
while the router runs, ``routing`` routes by it).
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

import pydantic
import yaml
from pydantic import Discriminator, Field, StringConstraints, Tag

from specfleet.api.base import ApiModel, Rule
from specfleet.api.capture import CaptureConfig
from specfleet.api.routingpolicy import TIER_RULES, Fallback, Override, Tier, Timeouts


class ConfigError(ValueError):
    """The text does not hold a valid configuration; the message says where and why."""


class Backend(ApiModel):
    """Where one InferenceModel's requests go."""

    url: Annotated[str, StringConstraints(pattern=r"^http://[^/\s]+(/\S*)?$")] | None = None
    """The base URL of the model's Service, such as ``http://llama-8b.ml.svc:80`` (plain HTTP:
    the proxy core speaks HTTP/1.1 to in-cluster Services)."""
    ready: bool = False
    """Whether the operator saw the InferenceModel Ready; only ready backends get traffic."""
    served_model_name: Annotated[str, StringConstraints(min_length=1)] | None = None
    """The name the backend serves the model under. Unset: the InferenceModel's name."""

    @pydantic.model_validator(mode="after")
    def _ready_needs_url(self) -> Self:
        if self.ready and self.url is None:
            raise ValueError("a backend that is ready needs a url")
        return self


class LearnedClassifier(ApiModel):
    """A learned classifier to pick tiers with (``specfleet.routing.learned``)."""

    path: Annotated[str, StringConstraints(min_length=1)]
    """Its artifact: the file, or a directory holding ``classifier.json`` (a mounted
    ConfigMap or volume). Reread while the router runs; its tiers must be ``tiers``' names, in
    order."""


class StorePolling(ApiModel):
    """How the router follows the store's in-force pointer."""

    poll_seconds: Annotated[float, Field(ge=1.0, le=3600.0)] = 30.0
    """How often each router process reads the pointer (one small object); the artifact is
    read only when the pointer names another."""


class InForceClassifier(ApiModel):
    """The learned classifier in force in the capture store (``capture.store``), under the
    policy's root: the one ``learning/in-force.json`` names; the heuristic while none is."""

    in_force: StorePolling


def _classifier_kind(value: object) -> str:
    if isinstance(value, str):
        return "heuristic"
    if isinstance(value, InForceClassifier) or (isinstance(value, dict) and "inForce" in value):
        return "inForce"
    return "learned"


Classifier = Annotated[
    Annotated[Literal["heuristic"], Tag("heuristic")]
    | Annotated[LearnedClassifier, Tag("learned")]
    | Annotated[InForceClassifier, Tag("inForce")],
    Discriminator(_classifier_kind),
]
"""``heuristic``, a learned classifier's artifact, or the one in force in the capture store
(an error names only the one a value looks like)."""


class RouterConfig(ApiModel):
    """The whole configuration file (see the module docstring)."""

    # The RoutingPolicy's own rules: a hand-written file must not route differently from what
    # the API server would have accepted.
    rules = (
        *TIER_RULES,
        Rule(  # the file is no CRD: the check is pydantic's alone
            cel="",
            message="classifier: inForce follows the classifier in force in the capture store, "
            "so the file needs capture (its store); add capture, or name the artifact with "
            "classifier: {path: ...}",
            check=lambda c: (
                not isinstance(c.classifier, InForceClassifier) or c.capture is not None
            ),
        ),
    )

    policy: Annotated[str, StringConstraints(min_length=1)]
    """The RoutingPolicy's name, which clients send as ``model`` to be routed."""
    tiers: list[Tier] = Field(min_length=1)
    """The policy's tiers, cheapest first. The last one takes whatever the others do not."""
    overrides: list[Override] = Field(default_factory=list)
    """Checked before the tiers, in order; the first match with a ready backend wins."""
    classifier: Classifier = "heuristic"
    """What picks a routed request's tier once no override matched: the tiers' ``when``
    against the heuristic's classification (``specfleet.routing.heuristic``), or a learned
    classifier's artifact. Overrides always match on the heuristic's classification."""
    fallback: Fallback = Fallback()
    """Whether a backend that fails before its first byte is retried once on the next tier up."""
    timeouts: Timeouts = Timeouts()
    """How long a backend may take to send its response headers."""
    backends: dict[str, Backend] = Field(default_factory=dict)
    """InferenceModel name -> where it answers."""
    api_keys_file: Annotated[str, StringConstraints(min_length=1)] | None = None
    """Where the API keys are mounted (a Secret volume directory, or a YAML/JSON file mapping
    key names to keys). Unset: no key needed."""
    capture: CaptureConfig | None = None
    """What the router captures and where it writes (``specfleet.api.capture``). Unset:
    nothing is kept."""


def parse_config(text: str) -> RouterConfig:
    """The configuration in a file's text; raises ConfigError saying what is wrong."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not YAML or JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping with policy, tiers and backends, got {text[:80]!r}")
    try:
        return RouterConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: pydantic.ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)
