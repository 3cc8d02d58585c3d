"""Training on a team's labelled traffic: it takes the training side of the split only, the
classifier beats the heuristic on requests it never saw, its threshold meets the target where it
was calibrated, its artifact routes as it did before it was written and names both sides, the
same input gives the same file, and every refusal."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest

from specfleet.learn import figures, labels, router_eval, router_train, split
from specfleet.learn.policy import Policy
from specfleet.routing import heuristic, learned
from tests.learn import traffic

TRAINED_AT = datetime(2026, 12, 1, tzinfo=UTC)
COUNT = 750
"""Labelled requests trained on: about 600 on the training side."""


def labelled(count: int, seed: int, noise: float = 0.05) -> labels.LabelSet:
    return labels.read(traffic.jsonl(traffic.lines(count, seed, noise)).splitlines(), traffic.TIERS)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.of(traffic.policy_spec())


@pytest.fixture(scope="module")
def trained(policy: Policy) -> router_train.Trained:
    return router_train.train(labelled(COUNT, seed=1), policy, trained_at=TRAINED_AT)


@pytest.fixture(scope="module")
def written(trained: router_train.Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("classifier")
    router_train.write(trained, directory)
    return directory


def cheapest_tuned_heuristic(data: labels.LabelSet, policy: Policy, quality: float) -> float:
    """The lowest cost at which the heuristic reaches ``quality`` on ``data``, its tiers'
    complexity limits tuned on ``data`` itself (in steps of 0.05): the best it could do."""
    classified = [heuristic.classify(e.request) for e in data.examples]
    fixed = policy.fixed([e.request for e in data.examples])
    grid = [i / 20 for i in range(21)]
    best = 1.0
    for low, high in itertools.product(grid, grid):
        routed = [
            f if f is not None else 0 if c.complexity <= low else 1 if c.complexity <= high else 2
            for f, c in zip(fixed, classified, strict=True)
        ]
        if figures.quality(routed, data.labels) >= quality:
            best = min(best, figures.cost(routed, policy.costs))
    return best


def test_on_new_traffic_it_meets_the_target_cheaper_than_any_tuning_of_the_heuristic(
    written: Path, policy: Policy
) -> None:
    unseen = labelled(400, seed=2)
    found = router_eval.evaluate(unseen, policy, learned.load(written))
    # Unseen requests, a threshold calibrated on others: within sampling of the 0.95 target.
    assert found.learned_quality >= 0.92
    assert found.heuristic_quality < 0.7  # compliance questions sent to the smallest tier
    assert found.learned_cost < 0.5 * cheapest_tuned_heuristic(
        unseen, policy, found.learned_quality
    )
    assert found.apgr > 0.7


def test_training_takes_the_training_side_only(
    trained: router_train.Trained, policy: Policy
) -> None:
    data = labelled(COUNT, seed=1)
    divided = split.divide(data)
    assert 0 < len(divided.held_out.examples) < len(divided.training.examples)
    assert trained.artifact.training == divided.training.training().model_copy(
        update={"held_out": divided.held_out_identity()}
    )
    assert trained.artifact.training.count == len(divided.training.examples)
    assert trained.report["training"]["heldOut"]["count"] == len(divided.held_out.examples)
    # The held-out lines change nothing: trained on the training side alone, the same file.
    alone = router_train.train(divided.training, policy, trained_at=TRAINED_AT)
    assert alone.artifact.model_copy(update={"training": trained.artifact.training}) == (
        trained.artifact
    )
    # Held-out requests with their labels flipped change nothing either.
    held = {e.line for e in divided.held_out.examples}
    flipped = [
        dict(line, label="complex" if line["label"] == "simple" else "simple")
        if number in held
        else line
        for number, line in enumerate(traffic.lines(COUNT, seed=1), start=1)
    ]
    other = router_train.train(
        labels.read(traffic.jsonl(flipped).splitlines(), traffic.TIERS),
        policy,
        trained_at=TRAINED_AT,
    )
    assert other.artifact.boundaries == trained.artifact.boundaries
    assert other.artifact.threshold == trained.artifact.threshold
    assert other.artifact.training.held_out != trained.artifact.training.held_out


def test_the_threshold_meets_the_target_on_the_calibration_data(
    trained: router_train.Trained, policy: Policy
) -> None:
    data = split.divide(labelled(COUNT, seed=1)).training
    report = trained.report
    assert report["crossValidated"]["quality"] >= 0.95
    assert trained.artifact.threshold == report["threshold"]
    # Recomputed from the cross-validated probabilities the training saw.
    seen = router_train.seen_of([e.request for e in data.examples])
    held_out = router_train.out_of_fold(seen, data.labels, [1.0] * len(seen), 3)
    routed = figures.route(
        held_out, report["threshold"], policy.fixed([e.request for e in data.examples])
    )
    assert figures.quality(routed, data.labels) == report["crossValidated"]["quality"]
    # A higher target costs more: the threshold moves down.
    stricter = router_train.train(
        labelled(COUNT, seed=1), policy, trained_at=TRAINED_AT, quality_target=0.99
    )
    assert stricter.report["crossValidated"]["quality"] >= 0.99
    assert stricter.report["crossValidated"]["cost"] > report["crossValidated"]["cost"]
    assert stricter.artifact.threshold < trained.artifact.threshold


def test_the_artifact_round_trips_and_routes_as_the_fitted_model(
    trained: router_train.Trained, written: Path, policy: Policy
) -> None:
    loaded = learned.load(written)
    assert loaded.tiers == policy.tiers
    assert loaded.threshold == trained.artifact.threshold
    assert loaded.artifact.training == trained.artifact.training
    assert loaded.artifact.schema_ == learned.SCHEMA
    data = labelled(300, seed=3)
    seen = router_train.seen_of([e.request for e in data.examples])
    fitted = learned.Classifier(trained.artifact, "unrounded")
    before = [fitted.tier(s) for s in seen]
    after = [loaded.tier(e.request) for e in data.examples]
    assert before == after
    assert len(set(after)) == 3  # every tier is used


def test_the_report_holds_the_curve_and_the_heuristic(
    trained: router_train.Trained, written: Path
) -> None:
    import json  # noqa: PLC0415

    report = json.loads((written / router_train.REPORT).read_text())
    assert report["contentHash"] == learned.load(written).content_hash
    assert report["heuristic"]["quality"] < 0.7
    curve = report["curve"]
    assert curve[0]["cost"] == pytest.approx(0.05) and curve[-1]["cost"] == pytest.approx(1.0)
    assert [p["quality"] for p in curve] == sorted(p["quality"] for p in curve)
    assert report["training"]["count"] == len(
        split.divide(labelled(COUNT, seed=1)).training.examples
    )


def test_the_same_input_gives_the_same_artifact(
    trained: router_train.Trained, policy: Policy
) -> None:
    again = router_train.train(labelled(COUNT, seed=1), policy, trained_at=TRAINED_AT)
    assert learned.dumps(again.artifact) == learned.dumps(trained.artifact)
    other = router_train.train(labelled(COUNT, seed=4), policy, trained_at=TRAINED_AT)
    assert learned.dumps(other.artifact) != learned.dumps(trained.artifact)


def test_the_vocabulary_keeps_terms_of_two_requests_up_to_its_limit(policy: Policy) -> None:
    data = labelled(100, seed=5)
    seen = router_train.seen_of([e.request for e in data.examples])
    terms = router_train.vocabulary(seen, 50)
    assert len(terms) == 50
    assert all(sum(term in s.terms for s in seen) >= 2 for term in terms)
    everything = router_train.vocabulary(seen, 10**6)
    assert all(sum(term in s.terms for s in seen) >= 2 for term in everything)
    assert len(everything) < len(set().union(*(s.terms for s in seen)))
    small = router_train.train(data, policy, trained_at=TRAINED_AT, max_vocabulary=50)
    assert len(small.artifact.vocabulary) == 50


def test_fewer_than_the_minimum_on_the_training_side_is_refused(policy: Policy) -> None:
    data = labelled(19, seed=1)
    held = len(split.divide(data).held_out.examples)
    with pytest.raises(
        router_train.TrainingError,
        match=rf"^{19 - held} labelled requests on the training side \({held} more held out for "
        r"evaluation, 19 in all\): training needs at least 20",
    ):
        router_train.train(data, policy, trained_at=TRAINED_AT)
    # Cross-validation of a whole file (evaluate without a classifier) counts every request.
    with pytest.raises(router_train.TrainingError, match=r"^19 labelled requests: training needs"):
        router_train.check(data)


def test_a_small_file_still_trains(policy: Policy) -> None:
    data = labelled(40, seed=1)
    result = router_train.train(data, policy, trained_at=TRAINED_AT)
    held_out = result.artifact.training.held_out
    assert held_out is not None
    assert 0 < held_out.count < 20  # too few to judge a promotion on; enough to train
    assert result.artifact.training.count + held_out.count == 40
    assert result.artifact.training.count >= router_train.MIN_LABELLED


def test_one_label_is_refused(policy: Policy) -> None:
    lines = [{"prompt": f"say hi to {n}", "label": "simple"} for n in range(30)]
    data = labels.read(traffic.jsonl(lines).splitlines(), traffic.TIERS)
    with pytest.raises(
        router_train.TrainingError,
        match=r"every one of the \d+ labelled requests on the training side \(\d+ more held out "
        r"for evaluation, 30 in all\) is labelled 'simple': training needs at least 2 different "
        "labels",
    ):
        router_train.train(data, policy, trained_at=TRAINED_AT)


def test_a_policy_of_one_tier_is_refused() -> None:
    spec = traffic.policy_spec().model_copy(update={"tiers": traffic.policy_spec().tiers[-1:]})
    single = Policy.of(spec)
    data = labels.read([b'{"prompt": "x", "label": "complex"}'] * 25, single.tiers)
    with pytest.raises(
        router_train.TrainingError, match=r"one tier \(complex\): there is no choice"
    ):
        router_train.train(data, single, trained_at=TRAINED_AT)


def test_bad_options_are_refused(policy: Policy) -> None:
    data = labelled(40, seed=1)
    with pytest.raises(router_train.TrainingError, match=r"quality target 1.5 must be in \(0, 1\]"):
        router_train.train(data, policy, trained_at=TRAINED_AT, quality_target=1.5)
    with pytest.raises(router_train.TrainingError, match="vocabulary's size 0 must be from 1"):
        router_train.train(data, policy, trained_at=TRAINED_AT, max_vocabulary=0)


def test_a_tier_without_labels_is_a_warning_and_never_routed_to(policy: Policy) -> None:
    found = [x for x in traffic.lines(400, seed=6, noise=0.0) if x["label"] != "complex"]
    data = labels.read(traffic.jsonl(found).splitlines(), traffic.TIERS)
    result = router_train.train(data, policy, trained_at=TRAINED_AT)
    assert result.warnings == [
        "no request is labelled 'complex': the classifier learns nothing of it and will "
        "seldom, if ever, send requests there"
    ]
    classifier = learned.Classifier(result.artifact, "x")
    assert all(classifier.tier(e.request) < 2 for e in labelled(200, seed=7).examples)
