"""Quality, cost, the threshold sweep and APGR, on cases small enough to compute by hand."""

from __future__ import annotations

import random

import numpy as np
import pytest

from specfleet.learn import figures
from specfleet.routing import features, learned

# Two tiers costing 1 and 2: normalised, 0.5 and 1.0.
COSTS = (0.5, 1.0)
LABELS = [0, 0, 1, 1]
PROBABILITIES = np.array([[0.1], [0.6], [0.4], [0.9]])


def test_apgr_of_a_hand_computed_case() -> None:
    # q_weak = 2/4 = 0.5 (half the labels are the cheapest tier); the gap is 1 - 0.5.
    # Lowering the threshold sends requests up in the order of their probability:
    #   above 0.9:   none up             cost (4 x 0.5) / 4          = 0.5    quality 0.5  PGR 0
    #   0.6 to 0.9:  0.9 (label 1)       cost (3 x 0.5 + 1) / 4      = 0.625  quality 0.75 PGR 0.5
    #   0.4 to 0.6:  and 0.6 (label 0)   cost (2 x 0.5 + 2) / 4      = 0.75   quality 0.75 PGR 0.5
    #   0.1 to 0.4:  and 0.4 (label 1)   cost (0.5 + 3) / 4          = 0.875  quality 1    PGR 1
    #   below 0.1:   all up              cost 1                               quality 1    PGR 1
    # Trapezoids of width 0.125: (0 + 0.5) / 2 + (0.5 + 0.5) / 2 + (0.5 + 1) / 2 + (1 + 1) / 2
    # = 0.25 + 0.5 + 0.75 + 1 = 2.5, times 0.125 = 0.3125; over the cost range 1 - 0.5: 0.625.
    assert figures.apgr(PROBABILITIES, LABELS, COSTS) == pytest.approx(0.625)
    points = figures.sweep(PROBABILITIES, LABELS, COSTS)
    assert [(p.cost, p.quality) for p in points] == [
        (0.5, 0.5),
        (0.625, 0.75),
        (0.75, 0.75),
        (0.875, 1.0),
        (1.0, 1.0),
    ]
    assert [p.threshold for p in points] == pytest.approx([0.95, 0.75, 0.5, 0.25, 0.05])


def test_apgr_of_a_perfect_and_an_inverted_ranking() -> None:
    perfect = np.array([[0.1], [0.2], [0.8], [0.9]])
    inverted = np.array([[0.8], [0.9], [0.1], [0.2]])
    # Perfect: the two label-1 requests go up first, PGR 0, 0.5, 1, 1, 1 at costs 0.5 to 1 by
    # 0.125: trapezoids 0.25 + 0.75 + 1 + 1 = 3, x 0.125 / 0.5 = 0.75 (the best possible with
    # half the labels above the cheapest tier). Inverted: PGR 0, 0, 0, 0.5, 1: 1 x 0.25 = 0.25.
    assert figures.apgr(perfect, LABELS, COSTS) == pytest.approx(0.75)
    assert figures.apgr(inverted, LABELS, COSTS) == pytest.approx(0.25)


def test_apgr_is_undefined_without_a_gap_or_a_cost_range() -> None:
    with pytest.raises(ValueError, match="every label is the cheapest tier"):
        figures.apgr(PROBABILITIES, [0, 0, 0, 0], COSTS)
    with pytest.raises(ValueError, match="costs as much as the last"):
        figures.apgr(PROBABILITIES, LABELS, (1.0, 1.0))


def test_the_sweep_agrees_with_routing_at_each_threshold_and_with_the_classifier() -> None:
    rng = random.Random(7)
    labels = [rng.randrange(3) for _ in range(60)]
    probabilities = np.array([[rng.random(), rng.random()] for _ in labels])
    costs = (0.05, 0.15, 1.0)
    fixed: list[int | None] = [1 if i % 9 == 0 else None for i in range(60)]
    for point in figures.sweep(probabilities, labels, costs, fixed):
        routed = figures.route(probabilities, point.threshold, fixed)
        assert figures.quality(routed, labels) == pytest.approx(point.quality)
        assert figures.cost(routed, costs) == pytest.approx(point.cost)
    # A classifier with no terms whose probabilities are these (intercepts logit(p)) routes as
    # figures.route does.
    for row in probabilities[:10]:
        artifact = learned.Artifact.model_validate(
            {
                "tiers": ["a", "b", "c"],
                "vocabulary": [],
                "boundaries": [
                    {"intercept": float(np.log(p / (1 - p))), "weights": [], "dense": [0.0] * 7}
                    for p in row
                ],
                "threshold": 0.5,
                "qualityTarget": 0.9,
                "training": {
                    "sha256": "0" * 64,
                    "count": 1,
                    "labels": {"a": 1},
                    "sources": {"x": 1},
                },
                "trainedAt": "2026-12-01T00:00:00Z",
            }
        )
        classifier = learned.Classifier(artifact, "x")
        seen = features.Features(frozenset(), (0.0,) * len(features.DENSE))
        for threshold in (0.2, 0.5, 0.8):
            assert classifier.tier(seen, threshold) == int(
                figures.route(row[None, :], threshold)[0]
            )


def test_the_operating_point_is_the_cheapest_that_meets_the_target() -> None:
    points = figures.sweep(PROBABILITIES, LABELS, COSTS)
    assert figures.operating_point(points, 0.75).cost == 0.625
    assert figures.operating_point(points, 0.9).cost == 0.875
    assert figures.operating_point(points, 0.5).cost == 0.5


def test_confusion_counts_label_by_routed_tier() -> None:
    assert figures.confusion([0, 1, 1, 2], [0, 0, 2, 2], 3) == [[1, 1, 0], [0, 0, 0], [0, 1, 1]]
