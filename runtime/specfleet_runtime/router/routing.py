"""Where a request goes: the routing decision, pure.

``Table`` turns a ``RouterConfig`` into a lookup table once per configuration (the policy's
``specfleet.routing.choice.Rules``, served names indexed, readiness resolved); a request is then
decided with no I/O:

1. ``model`` names the policy, ``auto`` or nothing: the request is *routed*.
   a. Overrides, in order: the first that matches (its pattern is found in the request's text,
      the prompt or last user message, or the classifier found its category;
      ``specfleet.routing.choice.Match``) and whose model has a ready backend, wins.
   b. Tiers: the first whose ``when`` holds, the last tier taking everything
      (``specfleet.routing.choice.Rules.tier``); or, with a learned classifier in force (a
      ``Chooser`` holding one), the tier it picks (``specfleet.routing.learned.Classifier.choose``,
      whose tiers are the policy's, in order). If its backend is not ready, the nearest ready
      tier above it serves instead (more capable), else the nearest ready one below (degraded,
      but answered); with no ready tier at all, NoBackendError (503).
   c. Fallback (when enabled): the nearest ready tier above the one serving, with another
      model; for an override, above the first tier with the override's model, or the last ready
      tier if the override's model serves no tier. One retry, never more.
2. ``model`` names a backend's served model, or its InferenceModel: the request goes there
   (*direct*; as it is when it named the served model, else with that name in ``model``), with
   no fallback (the client chose the model); NoBackendError if it is not ready.
3. Anything else: ModelNotFoundError (404) listing what can be asked for.

Called by ``specfleet_runtime.router.app`` (which times the classification on its own, so it
calls ``is_routed``, ``direct`` and ``routed``, and says which ``Chooser`` is in force) and by
tests through ``decide``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from specfleet.api.routerconfig import RouterConfig
from specfleet.routing import choice, heuristic, learned
from specfleet.routing.request import ParsedRequest
from specfleet_runtime.router import errors

AUTO = "auto"
"""The model name that asks for routing whatever the policy is called."""


class RouteKind(enum.Enum):
    TIER = "tier"
    OVERRIDE = "override"
    DIRECT = "direct"


@dataclass(frozen=True, slots=True)
class Chooser:
    """What picks a routed request's tier once no override matched: the tiers' ``when``
    (the heuristic's classification against the policy's limits), or a learned classifier."""

    learned: learned.Classifier | None = None
    """The learned classifier, whose tiers are the policy's in order; None: the heuristic."""

    @property
    def kind(self) -> str:
        """``heuristic`` or ``learned``."""
        return "heuristic" if self.learned is None else "learned"

    @property
    def content_hash(self) -> str | None:
        """The learned classifier's artifact's content hash; None for the heuristic."""
        return None if self.learned is None else self.learned.content_hash


HEURISTIC = Chooser()
"""The heuristic: what routes when no learned classifier is in force."""


@dataclass(frozen=True, slots=True)
class Target:
    """One backend a request may be sent to."""

    model: str
    """The InferenceModel's name; response headers and metrics name it."""
    served_name: str
    """What the backend expects in ``model``."""
    url: str
    """The backend's base URL."""
    tier: str | None
    """The tier this target serves as, for tier routes and fallbacks; None otherwise."""
    cost: float | None
    """The relative cost of a request here (the first tier with this model), if declared."""


@dataclass(frozen=True, slots=True)
class Route:
    """The decision: where to send a request, and where to retry it once."""

    kind: RouteKind
    target: Target
    fallback: Target | None
    classification: heuristic.Classification | None
    """What routing was based on; None for direct requests, which are not classified."""
    chooser: Chooser | None = None
    """What was in force to pick the tier (an override's route was not picked by it); None
    for direct requests."""

    @property
    def targets(self) -> tuple[Target, ...]:
        return (self.target,) if self.fallback is None else (self.target, self.fallback)


@dataclass(frozen=True, slots=True)
class _Tier:
    name: str
    target: Target | None
    """None when its model has no ready backend."""


@dataclass(frozen=True, slots=True)
class _Override:
    match: choice.Match
    target: Target | None
    below: int
    """The index of the first tier with this model (fallback starts above it), or the number
    of tiers if the model serves no tier."""


class Table:
    """One configuration, ready for deciding requests."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.problems: list[str] = []
        """What in the configuration is skipped (for the shell to log); never fatal."""
        costs: dict[str, float] = {}
        for tier in config.tiers:
            if tier.cost is not None:
                costs.setdefault(tier.model, tier.cost)
        self.baseline_cost = config.tiers[-1].cost
        """What the last (largest) tier costs a request, the saving's yardstick."""

        def target(model: str, tier: str | None) -> Target | None:
            backend = config.backends.get(model)
            if backend is None or not backend.ready or backend.url is None:
                return None
            return Target(
                model, backend.served_model_name or model, backend.url, tier, costs.get(model)
            )

        self.rules = choice.Rules.of(config.tiers, config.overrides)
        """The policy's choice before readiness."""
        self._tiers = tuple(_Tier(t.name, target(t.model, t.name)) for t in config.tiers)
        first_tier: dict[str, int] = {}
        for i, tier in enumerate(config.tiers):
            first_tier.setdefault(tier.model, i)
        self._overrides = tuple(
            _Override(
                match,
                target(override.model, None),
                first_tier.get(override.model, len(config.tiers)),
            )
            for override, match in zip(config.overrides, self.rules.overrides, strict=True)
        )
        # Direct requests name a served model; every backend answers to its served name.
        self._served: dict[str, Target | None] = {}
        self._served_models: dict[str, str] = {}
        for model, backend in sorted(config.backends.items()):
            name = backend.served_model_name or model
            if name in (config.policy, AUTO):
                self.problems.append(
                    f"backends.{model}: served model name {name!r} is also the policy's; "
                    "requests naming it are routed, never sent to it directly"
                )
                continue
            self._served_models.setdefault(name, model)
            self._served.setdefault(name, target(model, None))
        # ...or the InferenceModel's name (what X-Specfleet-Model says), where no served name
        # or the policy's takes it.
        self._aliases: dict[str, str] = {}
        for model, backend in sorted(config.backends.items()):
            name = backend.served_model_name or model
            taken = model in self._served or model in (config.policy, AUTO)
            if name in self._served and not taken:
                self._aliases[model] = name
        for entry in self._tiers:
            if entry.target is None:
                self.problems.append(f"tiers.{entry.name}: no ready backend; skipped")

    @property
    def model_names(self) -> list[str]:
        """What ``/v1/models`` lists: the policy, ``auto``, then every served model (an
        InferenceModel's name is accepted too, but not listed twice)."""
        names = [self.config.policy, AUTO] if self.config.policy != AUTO else [AUTO]
        return [*names, *sorted(self._served)]

    def knows(self, model: str) -> bool:
        """Whether a request may name ``model`` (listed, or an InferenceModel's name)."""
        return self.is_routed(model) or model in self._served or model in self._aliases

    @property
    def ready_tiers(self) -> list[str]:
        return [t.name for t in self._tiers if t.target is not None]

    def is_routed(self, model: str | None) -> bool:
        """Whether a request naming ``model`` is classified and routed (else: direct)."""
        return model is None or model in (self.config.policy, AUTO)

    def direct(self, model: str) -> Route:
        """The route of a request naming a served model or an InferenceModel."""
        model = self._aliases.get(model, model)
        if model not in self._served:
            raise errors.ModelNotFoundError(
                f"the model {model[:200]!r} does not exist here; use one of "
                + ", ".join(repr(name) for name in self.model_names),
                param="model",
            )
        target = self._served[model]
        if target is None:
            raise errors.NoBackendError(
                f"the model {model!r} ({self._served_models[model]}) has no ready backend; "
                f"retry later, or send model {self.config.policy!r} to be routed"
            )
        return Route(RouteKind.DIRECT, target, None, None)

    def routed(
        self,
        request: ParsedRequest,
        classification: heuristic.Classification,
        chooser: Chooser = HEURISTIC,
        seen: heuristic.Window | None = None,
    ) -> Route:
        """The route of a request naming the policy (see the module docstring); ``seen`` is
        the heuristic's window of it, when the caller read it (a learned ``chooser`` reads it
        otherwise)."""
        for override in self._overrides:
            if override.target is None:
                continue
            if override.match.matches(request.text, classification):
                return Route(
                    RouteKind.OVERRIDE,
                    override.target,
                    self._fallback(override.below, override.target.model),
                    classification,
                    chooser,
                )
        if chooser.learned is None:
            chosen = self.rules.tier(classification)
        else:
            window = heuristic.read(request.text) if seen is None else seen
            chosen = chooser.learned.choose(window, classification)
        serving = self._nearest_ready(chosen)
        if serving is None:
            raise errors.NoBackendError(
                f"no tier of policy {self.config.policy!r} has a ready backend; retry later"
            )
        target = self._tiers[serving].target
        assert target is not None
        return Route(
            RouteKind.TIER,
            target,
            self._fallback(serving, target.model),
            classification,
            chooser,
        )

    def _nearest_ready(self, chosen: int) -> int | None:
        above = range(chosen, len(self._tiers))
        below = range(chosen - 1, -1, -1)
        return next((i for i in (*above, *below) if self._tiers[i].target is not None), None)

    def _fallback(self, index: int, model: str) -> Target | None:
        """The nearest ready tier above ``index`` with another model than ``model``; for an
        override whose model serves no tier (``index`` past the last), the last such tier."""
        if not self.config.fallback.enabled:
            return None
        if index >= len(self._tiers):
            candidates = range(len(self._tiers) - 1, -1, -1)
        else:
            candidates = range(index + 1, len(self._tiers))
        for i in candidates:
            target = self._tiers[i].target
            if target is not None and target.model != model:
                return target
        return None


def decide(
    table: Table,
    request: ParsedRequest,
    classify: Callable[[ParsedRequest], heuristic.Classification] = heuristic.classify,
    chooser: Chooser = HEURISTIC,
) -> Route:
    """The route for ``request``: direct, or classified and routed."""
    if table.is_routed(request.model):
        return table.routed(request, classify(request), chooser)
    assert request.model is not None
    return table.direct(request.model)
