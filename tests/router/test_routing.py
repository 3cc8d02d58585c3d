"""The routing decision: tiers, overrides, readiness, fallback and direct requests, on the
example policy's three tiers (simple <= 0.3 / 256 tokens, medium <= 0.6 / 1024, complex)."""

from __future__ import annotations

from typing import Any

import pytest

from specfleet.routing import learned
from specfleet.routing.heuristic import Classification
from specfleet_runtime.router import errors
from specfleet_runtime.router.routing import HEURISTIC, Chooser, Route, RouteKind, Table, decide
from tests.router.builders import backends, classifier, config, content_hash
from tests.routing.builders import POLICY, chat

FACTUAL = "What is the capital of France?"
REASONING = (
    "Think step by step. Compare the trade-offs of microservices versus a monolith, analyze "
    "the costs, and justify a recommendation."
)
SQL = "Write a SQL query that returns the top 5 customers by revenue."


def scored(complexity: float, expected: int, *categories: Any) -> Classification:
    return Classification(complexity, expected, frozenset(categories), prompt_tokens=10)


def route(table: Table, complexity: float, expected: int, *categories: Any) -> Route:
    return table.routed(chat("anything"), scored(complexity, expected, *categories))


def names(r: Route) -> tuple[str | None, str | None]:
    return r.target.tier, None if r.fallback is None else r.fallback.tier


@pytest.mark.parametrize(
    ("complexity", "expected", "tier", "fallback"),
    [
        (0.0, 1, "simple", "medium"),
        (0.3, 256, "simple", "medium"),  # limits are inclusive
        (0.31, 10, "medium", "complex"),
        (0.1, 257, "medium", "complex"),  # every limit that is set must hold
        (0.6, 1024, "medium", "complex"),
        (0.61, 10, "complex", None),
        (0.1, 5000, "complex", None),
        (1.0, 100_000, "complex", None),
    ],
)
def test_the_first_tier_whose_limits_hold_wins(
    complexity: float, expected: int, tier: str, fallback: str | None
) -> None:
    r = route(Table(config()), complexity, expected)
    assert r.kind is RouteKind.TIER
    assert names(r) == (tier, fallback)


def test_a_target_names_the_backend_and_its_served_name_and_cost() -> None:
    r = route(Table(config()), 0.5, 10)
    assert r.target.model == "medium"
    assert r.target.served_name == "med-8b"
    assert r.target.url == "http://medium:80"
    assert r.target.cost == 3
    assert r.fallback is not None and r.fallback.served_name == "large"


@pytest.mark.parametrize(
    ("down", "complexity", "tier", "fallback"),
    [
        (["small"], 0.1, "medium", "complex"),  # the next tier up serves
        (["small", "medium"], 0.1, "complex", None),
        (["medium"], 0.1, "simple", "complex"),  # the fallback skips a tier that is down
        (["medium"], 0.5, "complex", None),
        (["large"], 0.9, "medium", None),  # nothing above: the nearest below answers
        (["large", "medium"], 0.9, "simple", None),
    ],
)
def test_tiers_without_a_ready_backend_are_skipped(
    down: list[str], complexity: float, tier: str, fallback: str | None
) -> None:
    table = Table(config(backends=backends(**dict.fromkeys(down, False))))
    assert names(route(table, complexity, 10)) == (tier, fallback)
    tier_of = {"small": "simple", "medium": "medium", "large": "complex"}
    assert table.ready_tiers == [tier_of[m] for m in tier_of if m not in down]


def test_a_model_missing_from_backends_or_without_url_is_not_ready() -> None:
    bs = backends()
    del bs["small"]
    bs["medium"] = {"url": None, "ready": False}
    table = Table(config(backends=bs))
    assert names(route(table, 0.0, 1)) == ("complex", None)
    assert table.ready_tiers == ["complex"]
    assert any("simple" in p for p in table.problems)


def test_no_ready_tier_is_a_503_not_a_crash() -> None:
    table = Table(config(backends=backends(small=False, medium=False, large=False)))
    with pytest.raises(errors.NoBackendError, match="no tier of policy 'assistant'") as refused:
        route(table, 0.1, 10)
    assert refused.value.status == 503


def test_fallback_disabled_names_no_fallback() -> None:
    table = Table(config(fallback={"enabled": False}))
    assert names(route(table, 0.1, 10)) == ("simple", None)


def test_the_fallback_never_retries_the_same_model() -> None:
    tiers = config().model_dump(by_alias=True)["tiers"]
    tiers[1]["model"] = "small"  # simple and medium share a model
    r = route(Table(config(tiers=tiers)), 0.1, 10)
    assert r.target.model == "small"
    assert r.fallback is not None and r.fallback.tier == "complex"


def test_a_category_override_wins_over_the_tiers() -> None:
    r = route(Table(config()), 0.1, 10, "sql")
    assert r.kind is RouteKind.OVERRIDE
    assert (r.target.model, r.target.tier) == ("medium", None)
    # The next tier up from the override model's own tier.
    assert r.fallback is not None and r.fallback.tier == "complex"


def test_overrides_are_checked_in_order_and_the_first_match_wins() -> None:
    overrides = [
        {"match": {"pattern": r"(?i)\bpostgres\b"}, "model": "large"},
        {"match": {"category": "sql"}, "model": "medium"},
    ]
    table = Table(config(overrides=overrides))
    postgres = table.routed(chat("Tune this postgres query"), scored(0.1, 10, "sql"))
    assert postgres.target.model == "large"
    plain_sql = table.routed(chat("Write a query"), scored(0.1, 10, "sql"))
    assert plain_sql.target.model == "medium"
    neither = table.routed(chat("Hello"), scored(0.1, 10))
    assert neither.kind is RouteKind.TIER


def test_an_override_whose_backend_is_down_is_skipped() -> None:
    table = Table(config(backends=backends(medium=False)))
    r = route(table, 0.1, 10, "sql")
    assert (r.kind, r.target.tier) == (RouteKind.TIER, "simple")


def test_an_override_model_outside_the_tiers_falls_back_to_the_last_tier() -> None:
    bs = {**backends(), "sql-model": {"url": "http://sql:80", "ready": True}}
    overrides = [{"match": {"category": "sql"}, "model": "sql-model"}]
    r = route(Table(config(backends=bs, overrides=overrides)), 0.1, 10, "sql")
    assert r.target.model == "sql-model"
    assert r.target.cost is None
    assert r.fallback is not None and r.fallback.tier == "complex"


def test_patterns_search_the_last_user_message() -> None:
    overrides = [{"match": {"pattern": "^translate"}, "model": "large"}]
    table = Table(config(overrides=overrides))
    assert table.routed(chat("translate this"), scored(0.1, 10)).target.model == "large"
    assert table.routed(chat("please translate"), scored(0.1, 10)).target.model == "small"


@pytest.mark.parametrize("model", [POLICY, "auto", None])
def test_the_policy_name_auto_or_no_model_is_routed(model: str | None) -> None:
    r = decide(Table(config()), chat(FACTUAL, model=model))
    assert r.kind is RouteKind.TIER
    assert r.classification is not None


@pytest.mark.parametrize(
    ("text", "kind", "model"),
    [
        (FACTUAL, RouteKind.TIER, "small"),
        (REASONING, RouteKind.TIER, "large"),
        (SQL, RouteKind.OVERRIDE, "medium"),
        ("Write a Python function that parses ISO dates.", RouteKind.TIER, "medium"),
    ],
)
def test_the_labelled_mix_lands_where_the_example_policy_says(
    text: str, kind: RouteKind, model: str
) -> None:
    r = decide(Table(config()), chat(text))
    assert (r.kind, r.target.model) == (kind, model)


@pytest.mark.parametrize(("name", "model"), [("small", "small"), ("med-8b", "medium")])
def test_a_served_model_name_goes_there_directly_without_fallback(name: str, model: str) -> None:
    r = decide(Table(config()), chat(REASONING, model=name))
    assert (r.kind, r.target.model, r.fallback, r.classification) == (
        RouteKind.DIRECT,
        model,
        None,
        None,
    )


def test_a_direct_request_to_a_model_that_is_down_is_a_503() -> None:
    table = Table(config(backends=backends(small=False)))
    with pytest.raises(errors.NoBackendError, match="'small'"):
        decide(table, chat(FACTUAL, model="small"))


@pytest.mark.parametrize("name", ["gpt-4", "med-8", "", "Assistant"])
def test_an_unknown_model_is_a_404_listing_the_choices(name: str) -> None:
    with pytest.raises(errors.ModelNotFoundError) as refused:
        decide(Table(config()), chat(FACTUAL, model=name))
    assert refused.value.status == 404
    assert refused.value.param == "model"
    for choice in ("'assistant'", "'med-8b'", "'small'", "'large'", "'auto'"):
        assert choice in str(refused.value)


def test_the_inferencemodel_name_reaches_the_same_backend_as_the_served_name() -> None:
    # "medium" is the InferenceModel (X-Specfleet-Model names it); it serves as med-8b.
    table = Table(config())
    by_model = decide(table, chat(FACTUAL, model="medium"))
    by_served = decide(table, chat(FACTUAL, model="med-8b"))
    assert by_model == by_served
    assert (by_model.kind, by_model.target.served_name) == (RouteKind.DIRECT, "med-8b")
    assert table.knows("medium") and table.knows("med-8b") and table.knows("auto")
    assert not table.knows("med-8")


def test_an_inferencemodel_name_another_backend_serves_under_goes_to_that_one() -> None:
    bs = {
        **backends(),
        "small": {"url": "http://small:80", "ready": True, "servedModelName": "medium"},
    }
    table = Table(config(backends=bs))
    assert decide(table, chat(FACTUAL, model="medium")).target.model == "small"


def test_model_names_list_the_policy_auto_then_the_served_models() -> None:
    assert Table(config()).model_names == [POLICY, "auto", "large", "med-8b", "small"]


def test_a_served_name_equal_to_the_policy_is_routed_and_reported() -> None:
    bs = {
        **backends(),
        "large": {"url": "http://large:80", "ready": True, "servedModelName": POLICY},
    }
    table = Table(config(backends=bs))
    assert decide(table, chat(FACTUAL, model=POLICY)).kind is RouteKind.TIER
    assert any("also the policy's" in p for p in table.problems)


def test_baseline_cost_is_the_last_tiers() -> None:
    assert Table(config()).baseline_cost == 20


# -------------------------------------------------------------------------------------------
# A learned classifier in force picks the tier; overrides, readiness and fallback are as ever.

LEARNED = Chooser(learned.loads(classifier({"capital": 2, "customers": 0, "draft": 1})))


def test_a_learned_classifier_picks_the_tier_the_heuristic_would_not() -> None:
    table = Table(config())
    assert decide(table, chat(FACTUAL)).target.tier == "simple"
    by_learned = decide(table, chat(FACTUAL), chooser=LEARNED)
    assert (by_learned.kind, names(by_learned)) == (RouteKind.TIER, ("complex", None))
    assert by_learned.chooser is LEARNED
    assert decide(table, chat(REASONING)).target.tier == "complex"
    assert decide(table, chat(REASONING), chooser=LEARNED).target.tier == "simple"
    assert decide(table, chat(FACTUAL)).chooser is HEURISTIC


def test_overrides_are_checked_before_the_learned_classifier() -> None:
    # SQL's category matches the override; the classifier would send "customers" to simple.
    r = decide(Table(config()), chat(SQL), chooser=LEARNED)
    assert (r.kind, r.target.model, r.chooser) == (RouteKind.OVERRIDE, "medium", LEARNED)


def test_the_learned_tier_is_served_by_the_nearest_ready_one_with_fallback_above() -> None:
    table = Table(config(backends=backends(medium=False)))
    r = decide(table, chat("A draft, please."), chooser=LEARNED)
    assert names(r) == ("complex", None)
    table = Table(config(backends=backends(large=False)))
    assert names(decide(table, chat(FACTUAL), chooser=LEARNED)) == ("medium", None)


def test_a_direct_request_is_not_classified() -> None:
    r = decide(Table(config()), chat(FACTUAL, model="small"), chooser=LEARNED)
    assert (r.kind, r.chooser, r.classification) == (RouteKind.DIRECT, None, None)


def test_the_chooser_says_what_it_is() -> None:
    assert (HEURISTIC.kind, HEURISTIC.content_hash) == ("heuristic", None)
    assert LEARNED.kind == "learned"
    file = classifier({"capital": 2, "customers": 0, "draft": 1})
    assert LEARNED.content_hash == content_hash(file)
