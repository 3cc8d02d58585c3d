"""Which override or tier a classified request is given by a policy's rules, before readiness.

A RoutingPolicy's rules, compiled once by ``Rules.of`` (patterns compiled, conditions kept in
order), decide a request in two steps, each pure:

1. Overrides, in order: one whose ``pattern`` is found in the request's text (the prompt or last
   user message; ``re.search``, case-sensitive unless the pattern says otherwise) or whose
   ``category`` the classification holds, matches (``Match.matches``).
2. Tiers: the first whose ``when`` holds (every limit set: complexity <= maxComplexity,
   expected tokens <= maxExpectedTokens); the last tier takes everything (``Rules.tier``).

What the backends' readiness does to that choice (an override whose model is not ready is
skipped, an unready tier served by its nearest ready neighbour) and the fallback are the
router's (``specfleet_runtime.router.routing``), which calls ``Match.matches`` and
``Rules.tier`` on every routed request. ``Rules.override`` is the first step without readiness,
for scoring requests offline as the policy would route them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from specfleet.api.routingpolicy import Category, Override, OverrideMatch, Tier, TierCondition
from specfleet.routing.heuristic import Classification


@dataclass(frozen=True, slots=True)
class Match:
    """What one override matches: a compiled pattern, or a category."""

    pattern: re.Pattern[str] | None
    category: Category | None

    @classmethod
    def of(cls, match: OverrideMatch) -> Match:
        # The API model has made sure that a pattern compiles.
        pattern = None if match.pattern is None else re.compile(match.pattern)
        return cls(pattern, match.category)

    def matches(self, text: str, classification: Classification) -> bool:
        """Whether a request with ``text``, classified as ``classification``, matches."""
        if self.pattern is not None:
            return self.pattern.search(text) is not None
        return self.category in classification.categories


def holds(when: TierCondition | None, classification: Classification) -> bool:
    """Whether a tier with condition ``when`` takes a request classified as ``classification``
    (no condition: every request)."""
    if when is None:
        return True
    if when.max_complexity is not None and classification.complexity > when.max_complexity:
        return False
    return not (
        when.max_expected_tokens is not None
        and classification.expected_tokens > when.max_expected_tokens
    )


@dataclass(frozen=True, slots=True)
class Rules:
    """A policy's overrides and tiers, ready for deciding requests."""

    tiers: tuple[str, ...]
    """The tiers' names, cheapest first."""
    conditions: tuple[TierCondition | None, ...]
    """Each tier's ``when``, in the same order."""
    overrides: tuple[Match, ...]
    """Each override's match, in the policy's order."""

    @classmethod
    def of(cls, tiers: Sequence[Tier], overrides: Sequence[Override]) -> Rules:
        """The rules of a policy's (or a router configuration's) ``tiers`` and ``overrides``."""
        if not tiers:
            raise ValueError("a policy has at least one tier")
        return cls(
            tuple(t.name for t in tiers),
            tuple(t.when for t in tiers),
            tuple(Match.of(o.match) for o in overrides),
        )

    def tier(self, classification: Classification) -> int:
        """The index of the first tier whose ``when`` holds for ``classification``, else the
        last tier's."""
        for i, when in enumerate(self.conditions):
            if holds(when, classification):
                return i
        return len(self.conditions) - 1

    def override(self, text: str, classification: Classification) -> int | None:
        """The index of the first override that matches, whatever its model's readiness; None
        when none does."""
        for i, match in enumerate(self.overrides):
            if match.matches(text, classification):
                return i
        return None
