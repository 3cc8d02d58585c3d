"""Evaluation: both routers apply overrides first, the learned one is judged honestly without an
artifact (nested cross-validation), the report ends with its one line, and refusals."""

from __future__ import annotations

import re

import pytest

from specfleet.api.routingpolicy import RoutingPolicySpec
from specfleet.learn import labels, router_eval
from specfleet.learn.policy import Policy
from tests.learn import traffic

LAST_LINE = re.compile(
    r"learned_quality=\d\.\d{3} learned_cost=\d\.\d{3} heuristic_quality=\d\.\d{3} "
    r"heuristic_cost=\d\.\d{3} apgr=-?\d\.\d{3} labels=\d+"
)


def labelled(count: int, seed: int) -> labels.LabelSet:
    return labels.read(traffic.jsonl(traffic.lines(count, seed)).splitlines(), traffic.TIERS)


def test_cross_validation_gives_an_honest_figure_and_the_last_line() -> None:
    policy = Policy.of(traffic.policy_spec())
    found = router_eval.evaluate(labelled(300, seed=11), policy)
    report = found.report()
    last = report.splitlines()[-1]
    assert LAST_LINE.fullmatch(last), last
    assert last == found.line()
    assert last.endswith(" labels=300")
    assert f"learned_quality={found.learned_quality:.3f} " in last
    assert f"heuristic_cost={found.heuristic_cost:.3f} " in last
    assert "5-fold cross-validation" in report
    # Never trained on the requests it routes, still near the target and far above the
    # heuristic.
    assert found.learned_quality >= 0.9
    assert found.heuristic_quality < 0.7
    assert found.learned_cost < 0.6


def test_overrides_come_first_for_both_and_an_unserved_model_counts_as_the_last_tier() -> None:
    spec = traffic.policy_spec()
    data = labels.read(
        [
            b'{"prompt": "SELECT id FROM users", "label": "simple"}',
            b'{"prompt": "tag this", "label": "simple"}',
        ],
        traffic.TIERS,
    )
    policy = Policy.of(spec)  # sql goes to llama-8b, which serves medium
    assert [policy.heuristic(e.request) for e in data.examples] == [1, 0]
    assert policy.fixed([e.request for e in data.examples]) == [1, None]
    unserved = spec.model_copy(
        update={"overrides": [spec.overrides[0].model_copy(update={"model": "sql-special"})]}
    )
    other = Policy.of(RoutingPolicySpec.model_validate(unserved.model_dump()))
    assert [other.heuristic(e.request) for e in data.examples] == [2, 0]
    assert other.notes() == [
        "overrides[0] sends to a model no tier serves: counted as the last tier (complex)"
    ]


def test_costs_are_normalised_and_a_missing_cost_is_the_tiers_position() -> None:
    spec = traffic.policy_spec()
    tiers = [spec.tiers[0], spec.tiers[1].model_copy(update={"cost": None}), spec.tiers[2]]
    policy = Policy.of(spec.model_copy(update={"tiers": tiers}))
    assert policy.costs == (1 / 20, 2 / 20, 1.0)
    assert policy.notes() == [
        "tiers without a cost, counted at their position (1 for the cheapest): medium"
    ]
    none = [t.model_copy(update={"cost": None}) for t in spec.tiers]
    assert Policy.of(spec.model_copy(update={"tiers": none})).costs == (1 / 3, 2 / 3, 1.0)


def test_too_few_labels_to_cross_validate_is_refused() -> None:
    policy = Policy.of(traffic.policy_spec())
    with pytest.raises(router_eval.EvaluationError, match=r"at least 20.*\(or give --classifier\)"):
        router_eval.evaluate(labelled(10, seed=1), policy)


def test_a_classifier_of_other_tiers_is_refused() -> None:
    classifier = traffic.constant_classifier(["a", "b", "c"])
    policy = Policy.of(traffic.policy_spec())
    with pytest.raises(
        router_eval.EvaluationError,
        match="trained for tiers a, b, c, the policy has simple, medium, complex",
    ):
        router_eval.evaluate(labelled(5, seed=1), policy, classifier)


def test_labels_all_of_the_cheapest_tier_have_no_gap_to_recover() -> None:
    classifier = traffic.constant_classifier(list(traffic.TIERS))
    data = labels.read([b'{"prompt": "hi", "label": "simple"}'] * 3, traffic.TIERS)
    with pytest.raises(router_eval.EvaluationError, match="no gap to recover"):
        router_eval.evaluate(data, Policy.of(traffic.policy_spec()), classifier)


def test_figures_for_promotion_route_overrides_first_and_name_the_classifier() -> None:
    policy = Policy.of(traffic.policy_spec())
    data = labels.read(
        [
            b'{"prompt": "SELECT id FROM users", "label": "medium"}',
            b'{"prompt": "tag this", "label": "complex"}',
            b'{"prompt": "say hi", "label": "simple"}',
        ],
        traffic.TIERS,
    )
    everything_up = traffic.constant_classifier(list(traffic.TIERS), probability=0.9)
    found = router_eval.figures_of(data, policy, everything_up)
    # The SQL override sends the first to medium (1/20 * 3); the classifier the others to complex.
    assert found.classifier == everything_up.content_hash
    assert found.quality == 1.0
    assert found.cost == pytest.approx((3 / 20 + 1.0 + 1.0) / 3)
    heuristic = router_eval.figures_of(data, policy, None)
    assert heuristic.classifier == "heuristic"
    assert heuristic.quality == pytest.approx(2 / 3)  # "tag this" goes to simple
    with pytest.raises(router_eval.EvaluationError, match="trained for tiers a, b, c"):
        router_eval.figures_of(data, policy, traffic.constant_classifier(["a", "b", "c"]))
