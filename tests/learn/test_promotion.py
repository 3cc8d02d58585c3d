"""The promotion rule, branch by branch, its margins at their edges, the minimum of held-out
labels, the pin, and decisions that survive JSON and replay to themselves."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from specfleet.learn import promotion
from specfleet.learn.promotion import Figures, Objective

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
CANDIDATE = "sha256:" + "c" * 64
PREVIOUS = "sha256:" + "p" * 64
OBJECTIVE = Objective()  # target 0.95, tolerance 0.02 (meets at 0.93), cost margin 0.05
ENOUGH = 200


def candidate(quality: float, cost: float) -> Figures:
    return Figures(CANDIDATE, quality, cost)


def in_force(quality: float, cost: float, name: str = promotion.HEURISTIC) -> Figures:
    return Figures(name, quality, cost)


@pytest.mark.parametrize(
    ("mine", "theirs", "labels", "verdict", "rule", "said"),
    [
        # Both meet the target; the candidate is cheaper by at least 5%.
        ((0.96, 0.30), (0.95, 0.40, PREVIOUS), ENOUGH, "Promote", "Cheaper", "costs 25.0% less"),
        ((0.94, 0.38), (0.97, 0.40, PREVIOUS), ENOUGH, "Promote", "Cheaper", "5.0% less"),
        # Cheaper, but by less than the margin.
        ((0.96, 0.39), (0.95, 0.40, PREVIOUS), ENOUGH, "Refuse", "NotCheaper", "saves 2.5%"),
        (
            (0.99, 0.45),
            (0.95, 0.40, PREVIOUS),
            ENOUGH,
            "Refuse",
            "NotCheaper",
            "candidate costs 12.5% more per request",
        ),
        # The candidate meets the target where the heuristic does not: promoted, dearer.
        ((0.95, 0.37), (0.53, 0.17), ENOUGH, "Promote", "MeetsWhereInForceMisses", "does not"),
        # Within the tolerance below the target still meets it; below it does not.
        ((0.93, 0.37), (0.53, 0.17), ENOUGH, "Promote", "MeetsWhereInForceMisses", "0.930"),
        ((0.929, 0.10), (0.53, 0.17), ENOUGH, "Refuse", "MissesTarget", "misses"),
        # Missing the target, however cheap, even when the one in force misses it by more.
        ((0.90, 0.05), (0.53, 0.17), ENOUGH, "Refuse", "MissesTarget", "at least 0.930"),
        # Too few held-out labels: refused before any figure is judged.
        ((0.99, 0.10), (0.53, 0.17), 118, "Refuse", "TooFewLabels", "fewer than the 119"),
        ((0.99, 0.10), (0.53, 0.17), 0, "Refuse", "TooFewLabels", "0 held-out labels"),
        ((0.99, 0.10), (0.53, 0.17), 119, "Promote", "MeetsWhereInForceMisses", "119 held-out"),
        # The candidate is the classifier in force.
        ((0.99, 0.10), (0.99, 0.10, CANDIDATE), ENOUGH, "Refuse", "InForce", "already in force"),
    ],
)
def test_each_branch_of_the_rule(
    mine: tuple[float, float],
    theirs: tuple[float, float] | tuple[float, float, str],
    labels: int,
    verdict: str,
    rule: str,
    said: str,
) -> None:
    decision = promotion.decide(OBJECTIVE, candidate(*mine), in_force(*theirs), labels, now=NOW)
    assert (decision.verdict, decision.rule) == (verdict, rule), decision.reason
    assert said in decision.reason
    assert decision.applied == (verdict == "Promote")
    assert decision.line().startswith(f"decision={verdict.lower()} rule={rule} ")


def test_a_pin_wins_over_any_candidate() -> None:
    better = candidate(0.99, 0.05)
    refused = promotion.decide(
        OBJECTIVE, better, in_force(0.5, 0.5, PREVIOUS), ENOUGH, now=NOW, pin=PREVIOUS
    )
    assert (refused.verdict, refused.rule) == ("Refuse", "Pinned")
    assert refused.reason.startswith(f"the policy pins {PREVIOUS}, which wins over any candidate")
    # The pinned one is promoted whatever its figures, and with no labels at all.
    pinned = promotion.decide(
        OBJECTIVE, candidate(0.1, 1.0), in_force(0.99, 0.1), 0, now=NOW, pin=CANDIDATE
    )
    assert (pinned.verdict, pinned.rule, pinned.pin) == ("Promote", "Pinned", CANDIDATE)
    assert "pins" in pinned.reason


def test_recommend_records_a_promotion_without_applying_it() -> None:
    found = promotion.decide(
        OBJECTIVE, candidate(0.96, 0.3), in_force(0.5, 0.1), ENOUGH, now=NOW, mode="Recommend"
    )
    assert (found.verdict, found.applied, found.mode) == ("Promote", False, "Recommend")


@pytest.mark.parametrize(
    ("objective", "expected"),
    [
        (Objective(), 119),  # 0.95 * 0.05 / 0.02**2 = 118.75
        (Objective(quality_target=0.9, quality_tolerance=0.02), 225),
        (Objective(quality_target=0.99, quality_tolerance=0.02), 30),  # 24.75: the floor
        (Objective(quality_target=0.95, quality_tolerance=0.01), 475),
        (Objective(quality_target=1.0, quality_tolerance=0.01), 30),
    ],
)
def test_the_minimum_of_held_out_labels_bounds_the_standard_error(
    objective: Objective, expected: int
) -> None:
    assert objective.min_labels() == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"quality_target": 0.0}, r"quality target 0.0 must be in \(0, 1\]"),
        ({"quality_target": 1.2}, "quality target 1.2"),
        ({"quality_tolerance": 0.0}, "quality tolerance 0.0 must be above 0"),
        ({"quality_target": 0.5, "quality_tolerance": 0.6}, "below the target 0.5"),
        ({"cost_margin": 1.0}, r"cost margin 1.0 must be in \[0, 1\)"),
        ({"cost_margin": -0.1}, "cost margin -0.1"),
    ],
)
def test_an_objective_that_cannot_be_judged_is_refused(
    values: dict[str, float], expected: str
) -> None:
    with pytest.raises(promotion.PromotionError, match=expected):
        Objective(**values)


DECISIONS = [
    promotion.decide(
        OBJECTIVE,
        candidate(0.96, 0.30),
        in_force(0.95, 0.40, PREVIOUS),
        300,
        now=NOW,
        held_out="ab" * 32,
    ),
    promotion.decide(
        OBJECTIVE, candidate(0.95, 0.37), in_force(0.53, 0.17), 150, now=NOW, mode="Recommend"
    ),
    promotion.decide(OBJECTIVE, candidate(0.90, 0.05), in_force(0.53, 0.17), 150, now=NOW),
    promotion.decide(
        Objective(0.9, 0.05, 0.1), candidate(0.96, 0.39), in_force(0.95, 0.40), 40, now=NOW
    ),
    promotion.decide(OBJECTIVE, candidate(0.96, 0.39), in_force(0.95, 0.40), 10, now=NOW),
    promotion.decide(
        OBJECTIVE, candidate(0.99, 0.05), in_force(0.5, 0.5), 0, now=NOW, pin=PREVIOUS
    ),
]


@pytest.mark.parametrize("decision", DECISIONS, ids=lambda d: d.rule)
def test_a_decision_survives_json_and_replays_to_itself(decision: promotion.Decision) -> None:
    stored = json.loads(json.dumps(promotion.as_json(decision)))
    back = promotion.from_json(stored)
    assert back == decision
    assert promotion.replay(back) == decision
    assert promotion.differences([back]) == []


def test_the_record_is_camel_case_json() -> None:
    found = promotion.as_json(DECISIONS[0])
    assert found["time"] == "2026-12-07T12:00:00Z"
    assert found["inForce"] == {"classifier": PREVIOUS, "quality": 0.95, "cost": 0.40}
    assert found["objective"] == {
        "qualityTarget": 0.95,
        "qualityTolerance": 0.02,
        "costMargin": 0.05,
    }
    assert found["heldOut"] == "ab" * 32 and "pin" not in found


def test_a_record_the_rule_would_not_make_shows_as_a_difference() -> None:
    stored = promotion.as_json(DECISIONS[2])  # MissesTarget
    stored["candidate"]["quality"] = 0.97  # as if the figures were edited
    edited = promotion.from_json(stored)
    [(recorded, replayed)] = promotion.differences([edited, DECISIONS[0]])
    assert recorded.rule == "MissesTarget"
    assert (replayed.verdict, replayed.rule) == ("Promote", "MeetsWhereInForceMisses")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.pop("objective"), "needs objective"),
        (lambda d: d.update(verdict="Maybe"), "verdict 'Maybe' is not one of Promote, Refuse"),
        (lambda d: d.update(rule="Vibes"), "rule 'Vibes' is not one of Pinned"),
        (lambda d: d.update(time="2026-12-07T12:00:00"), "has no time zone"),
        (lambda d: d.update(candidate=[1]), "figures must be an object"),
        (lambda d: d["inForce"].update(quality="high"), "not a promotion decision"),
        (lambda d: d["inForce"].update(quality=1.5), "quality 1.5 is not in"),
        (lambda d: d["candidate"].update(cost=-0.1), "cost -0.1 is not a cost"),
        (lambda d: d.update(applied="false"), "applied 'false' is not true or false"),
    ],
)
def test_a_broken_record_is_refused(
    change: Callable[[dict[str, Any]], object], expected: str
) -> None:
    stored = promotion.as_json(DECISIONS[0])
    change(stored)
    with pytest.raises(promotion.PromotionError, match=expected):
        promotion.from_json(stored)
