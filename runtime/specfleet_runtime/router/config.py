"""The router's configuration file: its format, and a poller that notices when it changes.

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
    classifier: heuristic         # spec.classifier
    fallback: {enabled: true}     # spec.fallback
    backends:                     # resolved by the operator: InferenceModel name -> its Service
      llama-3b: {url: "http://llama-3b.ml.svc:80", ready: true}
      llama-8b: {url: "http://llama-8b.ml.svc:80", ready: true, servedModelName: llama-3.1-8b}
      llama-70b: {url: null, ready: false}   # not Ready yet, or missing: skipped, not an error
    apiKeysFile: /etc/specfleet/api-keys     # optional: where spec.apiKeys' Secret is mounted

``tiers``, ``overrides``, ``classifier`` and ``fallback`` are the RoutingPolicy's own types
(``specfleet.api.routingpolicy``), so the operator copies the spec across and the same rules
hold (unique tier names, only the last tier without ``when``). ``backends`` maps each
InferenceModel name that a tier or override names to where its Service answers: ``url`` (the
base URL, without ``/v1``), ``ready`` (the operator's view of the InferenceModel's Ready
condition) and ``servedModelName`` (what the backend expects in ``model``; default: the
InferenceModel name). A model missing from ``backends``, not ready, or without a URL is skipped
by routing, never a reason to refuse the file. ``apiKeysFile`` is read by
``specfleet_runtime.router.keys``; unset, requests need no key.

Kubernetes updates a ConfigMap volume by swapping a symlink, so ``ConfigFile.poll`` simply
rereads the file on every tick (as the gate's limit file does); a file that is missing or
invalid keeps the last good configuration and is reported once per distinct problem. Called by
``specfleet_runtime.router.app`` (the reload task), ``cli`` (the first load) and tests; it needs
neither aiohttp nor the network, so the operator can import it to render the file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal, Self

import pydantic
import yaml
from pydantic import Field, StringConstraints

from specfleet.api.base import ApiModel
from specfleet.api.routingpolicy import Fallback, Override, Tier

log = logging.getLogger(__name__)

AUTO = "auto"
"""The model name that asks for routing whatever the policy is called."""

# A reload needs no hurry: backends change readiness over seconds, and rereading a small file
# once a second costs nothing.
POLL_INTERVAL = 1.0


class ConfigError(ValueError):
    """The configuration file cannot be read or does not hold a valid configuration."""


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


class RouterConfig(ApiModel):
    """The whole configuration file (see the module docstring)."""

    policy: Annotated[str, StringConstraints(min_length=1)]
    """The RoutingPolicy's name, which clients send as ``model`` to be routed."""
    tiers: list[Tier] = Field(min_length=1)
    """The policy's tiers, cheapest first. The last one takes whatever the others do not."""
    overrides: list[Override] = Field(default_factory=list)
    """Checked before the tiers, in order; the first match with a ready backend wins."""
    classifier: Literal["heuristic"] = "heuristic"
    """How requests are scored (``specfleet_runtime.router.classifier``)."""
    fallback: Fallback = Fallback()
    """Whether a backend that fails before its first byte is retried once on the next tier up."""
    backends: dict[str, Backend] = Field(default_factory=dict)
    """InferenceModel name -> where it answers."""
    api_keys_file: Annotated[str, StringConstraints(min_length=1)] | None = None
    """Where the API keys are mounted (a Secret volume directory, or a YAML/JSON file mapping
    key names to keys). Unset: no key needed."""

    # The RoutingPolicy's own rules, checked again: a hand-written file must not route
    # differently from what the API server would have accepted.
    @pydantic.model_validator(mode="after")
    def _tiers_as_the_api_requires(self) -> Self:
        if len({t.name for t in self.tiers}) != len(self.tiers):
            raise ValueError("tiers: every tier name must be unique; rename the duplicate")
        if any(t.when is None for t in self.tiers[:-1]):
            raise ValueError("tiers: every tier but the last needs when")
        if self.tiers[-1].when is not None:
            raise ValueError("tiers: the last tier catches every request; remove its when")
        return self


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


class ConfigFile:
    """Rereads a configuration file and reports the configuration when its content changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last_text: str | None = None
        self._last_error: str | None = None

    def poll(self) -> RouterConfig | None:
        """The new configuration if the file changed to a valid one since the last poll."""
        try:
            text = self.path.read_text()
        except OSError as exc:
            self._report(f"cannot read config file {self.path}: {exc.strerror}")
            return None
        if text == self._last_text:
            return None
        self._last_text = text
        try:
            config = parse_config(text)
        except ConfigError as exc:
            self._report(f"config file {self.path}: {exc}")
            return None
        self._last_error = None
        return config

    @property
    def error(self) -> str | None:
        """The problem with the file as last read, if any."""
        return self._last_error

    def _report(self, message: str) -> None:
        if message != self._last_error:
            log.warning("%s; keeping the current configuration", message)
            self._last_error = message
