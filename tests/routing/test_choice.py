"""A policy's choice before readiness: the first tier whose limits hold, the first override that
matches, on the example policy's three tiers (simple <= 0.3 / 256 tokens, medium <= 0.6 / 1024,
complex)."""

from __future__ import annotations

from typing import Any

import pytest

from specfleet.api.routingpolicy import Override, Tier
from specfleet.routing import choice
from specfleet.routing.heuristic import Classification

TIERS = [
    Tier.model_validate(
        {"name": "simple", "model": "s", "when": {"maxComplexity": 0.3, "maxExpectedTokens": 256}}
    ),
    Tier.model_validate(
        {"name": "medium", "model": "m", "when": {"maxComplexity": 0.6, "maxExpectedTokens": 1024}}
    ),
    Tier.model_validate({"name": "complex", "model": "l"}),
]
OVERRIDES = [
    Override.model_validate({"match": {"pattern": r"\bEXPLAIN\b"}, "model": "l"}),
    Override.model_validate({"match": {"category": "sql"}, "model": "m"}),
    Override.model_validate({"match": {"pattern": r"(?i)translate"}, "model": "s"}),
]
RULES = choice.Rules.of(TIERS, OVERRIDES)


def scored(complexity: float, expected: int, *categories: Any) -> Classification:
    return Classification(complexity, expected, frozenset(categories), prompt_tokens=10)


@pytest.mark.parametrize(
    ("complexity", "expected", "tier"),
    [
        (0.0, 1, 0),
        (0.3, 256, 0),  # limits are inclusive
        (0.31, 10, 1),
        (0.1, 257, 1),  # every limit that is set must hold
        (0.6, 1024, 1),
        (0.61, 10, 2),
        (0.1, 5000, 2),
        (1.0, 100_000, 2),  # the last tier takes everything
    ],
)
def test_the_first_tier_whose_limits_hold(complexity: float, expected: int, tier: int) -> None:
    assert RULES.tier(scored(complexity, expected)) == tier


def test_a_last_tier_with_limits_still_takes_everything() -> None:
    rules = choice.Rules.of(TIERS[:2], [])
    assert rules.tier(scored(0.9, 10)) == 1


def test_a_condition_with_one_limit_checks_only_that_one() -> None:
    tokens_only = Tier.model_validate(
        {"name": "short", "model": "s", "when": {"maxExpectedTokens": 100}}
    )
    rules = choice.Rules.of([tokens_only, TIERS[2]], [])
    assert rules.tier(scored(1.0, 100)) == 0
    assert rules.tier(scored(0.0, 101)) == 1


@pytest.mark.parametrize(
    ("text", "categories", "override"),
    [
        ("EXPLAIN ANALYZE select 1", ("sql",), 0),  # the first match wins, in order
        ("explain analyze select 1", ("sql",), 1),  # patterns are case-sensitive...
        ("Please TRANSLATE this", (), 2),  # ...unless they say otherwise
        ("tune this query", ("sql",), 1),
        ("hello", ("code", "math"), None),
    ],
)
def test_the_first_override_that_matches(
    text: str, categories: tuple[Any, ...], override: int | None
) -> None:
    assert RULES.override(text, scored(0.1, 10, *categories)) == override


def test_a_pattern_is_searched_anywhere_in_the_text() -> None:
    match = choice.Match.of(OVERRIDES[0].match)
    assert match.matches("first line\nthen EXPLAIN it", scored(0.1, 10))
    assert not match.matches("EXPLAINED", scored(0.1, 10, "sql"))


def test_the_rules_keep_the_policys_order_and_names() -> None:
    assert RULES.tiers == ("simple", "medium", "complex")
    assert RULES.conditions[2] is None
    assert [m.category for m in RULES.overrides] == [None, "sql", None]
    with pytest.raises(ValueError, match="at least one tier"):
        choice.Rules.of([], OVERRIDES)
