"""What training and evaluation read of a RoutingPolicy: its tiers and their costs, and how its
own rules route a request (overrides first, then the tiers' ``when``), before readiness.

Costs: each tier's ``cost``, normalised so a request on the last tier costs 1.0 (so sending
everything there costs 1.0). A tier without ``cost`` is assumed to cost its position, 1 for the
cheapest, 2 for the next, and so on (``assumed`` names those tiers): set ``cost`` on every tier,
or on none, for figures that mean something.

Overrides: a request an override matches goes where the override sends it, for the heuristic
and the learned classifier alike (the router checks overrides first). An override's model maps
to the first tier served by that model; a model no tier serves is counted as the last tier
(as good as any, and as costly: ``unserved`` names those overrides).

Pure; ``specfleet.routing.choice`` decides, as the router does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from specfleet.api.routingpolicy import RoutingPolicySpec
from specfleet.routing import choice, heuristic
from specfleet.routing.request import ParsedRequest


@dataclass(frozen=True, slots=True)
class Policy:
    """A policy's tiers, costs and rules, ready to route labelled requests offline."""

    tiers: tuple[str, ...]
    costs: tuple[float, ...]
    """Each tier's cost per request, normalised so that the last tier's is 1.0."""
    assumed: tuple[str, ...]
    """The tiers without a cost, assumed to cost their position."""
    rules: choice.Rules
    override_tiers: tuple[int, ...]
    """Each override's tier: the first tier served by its model, else the last tier."""
    unserved: tuple[int, ...]
    """The overrides whose model no tier serves."""

    @classmethod
    def of(cls, spec: RoutingPolicySpec) -> Policy:
        raw = [t.cost if t.cost is not None else float(i + 1) for i, t in enumerate(spec.tiers)]
        models = [t.model for t in spec.tiers]
        override_tiers = []
        unserved = []
        for i, override in enumerate(spec.overrides):
            if override.model in models:
                override_tiers.append(models.index(override.model))
            else:
                override_tiers.append(len(models) - 1)
                unserved.append(i)
        return cls(
            tiers=tuple(t.name for t in spec.tiers),
            costs=tuple(c / raw[-1] for c in raw),
            assumed=tuple(t.name for t in spec.tiers if t.cost is None),
            rules=choice.Rules.of(spec.tiers, spec.overrides),
            override_tiers=tuple(override_tiers),
            unserved=tuple(unserved),
        )

    def overridden(self, request: ParsedRequest) -> int | None:
        """The tier an override sends ``request`` to; None when no override matches."""
        found = self.rules.override(request.text, heuristic.classify(request))
        return None if found is None else self.override_tiers[found]

    def fixed(self, requests: Sequence[ParsedRequest]) -> list[int | None]:
        """``overridden`` of each request."""
        return [self.overridden(r) for r in requests]

    def heuristic(self, request: ParsedRequest) -> int:
        """The tier the policy's own rules give ``request``: an override's, else the first
        tier whose ``when`` holds."""
        classification = heuristic.classify(request)
        found = self.rules.override(request.text, classification)
        if found is not None:
            return self.override_tiers[found]
        return self.rules.tier(classification)

    def notes(self) -> list[str]:
        """What the figures assume of this policy, one sentence each."""
        said = []
        if self.assumed:
            said.append(
                f"tiers without a cost, counted at their position (1 for the cheapest): "
                f"{', '.join(self.assumed)}"
            )
        for i in self.unserved:
            said.append(
                f"overrides[{i}] sends to a model no tier serves: counted as the last tier "
                f"({self.tiers[-1]})"
            )
        return said
