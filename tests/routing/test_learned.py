"""The learned classifier's artifact and scorer: a round trip through its file, every refusal of a
file that is not a whole, unchanged artifact of this version, and how requests are scored and
routed."""

from __future__ import annotations

import copy
import gzip
import json
import math
import pickle
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specfleet.routing import features, heuristic, learned
from tests.routing.builders import chat

FUZZ = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

TIERS = ["simple", "medium", "complex"]
VOCABULARY = ["sql", "query", "step by", "step", "hello", "capital", "the capital"]
DENSE_NONE = (0.0,) * len(features.DENSE)


def artifact_data(**changes: Any) -> dict[str, Any]:
    """A three-tier classifier: SQL and step-by-step push requests up, greetings down."""
    data: dict[str, Any] = {
        "tiers": TIERS,
        "vocabulary": VOCABULARY,
        "boundaries": [
            {
                "intercept": -1.5,
                "weights": [3.0, 1.0, 2.5, 0.5, -2.0, -1.0, -0.25],
                "dense": [2.0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0],
            },
            {
                "intercept": -3.0,
                "weights": [0.5, 0.0, 2.0, 1.0, -2.0, 0.0, 0.0],
                "dense": [3.0, 0.25, 1.0, 0.0, 0.5, 0.5, 1.5],
            },
        ],
        "threshold": 0.5,
        "qualityTarget": 0.95,
        "training": {
            "sha256": "ab" * 32,
            "count": 12,
            "labels": {"simple": 5, "medium": 4, "complex": 3},
            "sources": {"judge": 10, "import": 2},
        },
        "trainedAt": "2025-06-01T12:00:00Z",
    }
    data.update(changes)
    return data


def artifact(**changes: Any) -> learned.Artifact:
    return learned.Artifact.model_validate(artifact_data(**changes))


def written() -> dict[str, Any]:
    """The example's file, as JSON."""
    data: dict[str, Any] = json.loads(learned.dumps(artifact()))
    return data


def sealed(data: dict[str, Any]) -> bytes:
    """``data`` as a file whose content hash matches, whatever the content."""
    content = {key: value for key, value in data.items() if key != "contentHash"}
    return json.dumps({**content, "contentHash": learned.content_hash(content)}).encode()


def seen(*terms: str, dense: tuple[float, ...] = DENSE_NONE) -> features.Features:
    return features.Features(set(terms), dense)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# -------------------------------------------------------------------------------------------
# The file.


def test_an_artifact_survives_its_file(tmp_path: Path) -> None:
    path = learned.dump(artifact(), tmp_path)
    assert path == tmp_path / "classifier.json"
    loaded = learned.load(tmp_path)
    assert loaded.artifact == artifact()
    assert loaded.tiers == ("simple", "medium", "complex")
    assert loaded.threshold == 0.5
    stored = json.loads(path.read_bytes())
    assert loaded.content_hash == stored["contentHash"]
    assert loaded.content_hash.startswith("sha256:")
    assert stored["schema"] == "specfleet.dev/router-classifier/v2"
    assert "heldOut" not in stored["training"]  # none given: left out, not null
    assert stored["features"] == features.VERSION
    assert stored["trainedAt"] == "2025-06-01T12:00:00Z"
    assert learned.load(path).content_hash == loaded.content_hash


HELD_OUT = {
    "rule": "specfleet.dev/router-split/v1",
    "share": 0.2,
    "sha256": "cd" * 32,
    "count": 3,
    "labels": {"simple": 1, "medium": 1, "complex": 1},
}


def test_the_held_out_labels_survive_the_file() -> None:
    data = artifact_data(training={**artifact_data()["training"], "heldOut": HELD_OUT})
    file = learned.dumps(learned.Artifact.model_validate(data))
    assert json.loads(file)["training"]["heldOut"] == HELD_OUT
    held_out = learned.loads(file).artifact.training.held_out
    assert held_out is not None
    assert (held_out.rule, held_out.share, held_out.count) == (HELD_OUT["rule"], 0.2, 3)


def test_a_file_of_the_first_schema_still_loads_under_its_own_hash() -> None:
    """A v1 file, as the v1 writer wrote it (no heldOut): loaded as it was, and routes."""
    data = {**written(), "schema": learned.SCHEMA_V1}
    file = sealed(data)
    loaded = learned.loads(file)
    assert loaded.content_hash == json.loads(file)["contentHash"]
    assert loaded.artifact.schema_ == learned.SCHEMA_V1
    assert loaded.artifact.training.held_out is None
    assert loaded.tier(chat("hello")) == learned.loads(learned.dumps(artifact())).tier(
        chat("hello")
    )


def test_the_writer_rounds_weights_to_six_significant_digits() -> None:
    data = artifact_data()
    data["boundaries"][0]["intercept"] = -1.23456789
    data["boundaries"][0]["weights"][0] = 0.000123456789
    data["boundaries"][1]["dense"][0] = 98765.4321
    loaded = learned.loads(learned.dumps(learned.Artifact.model_validate(data)))
    boundaries = loaded.artifact.boundaries
    assert boundaries[0].intercept == -1.23457
    assert boundaries[0].weights[0] == 0.000123457
    assert boundaries[1].dense[0] == 98765.4


def test_the_content_hash_covers_the_content_not_its_layout() -> None:
    data = written()
    stated = data.pop("contentHash")
    assert learned.content_hash(data) == stated
    assert learned.content_hash(dict(reversed(data.items()))) == stated
    data["threshold"] = 0.6
    assert learned.content_hash(data) != stated


def test_a_large_vocabulary_fits_a_configmap_gzipped() -> None:
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    pool = sorted({"".join(rng.choices(letters, k=rng.randint(3, 10))) for _ in range(40_000)})
    vocabulary = pool[:16_384] + sorted(
        {f"{rng.choice(pool)} {rng.choice(pool)}" for _ in range(16_384)}
    )
    vocabulary = list(dict.fromkeys(vocabulary))
    assert len(vocabulary) > 32_000

    def boundary() -> dict[str, Any]:
        return {
            "intercept": rng.gauss(0, 1),
            "weights": [rng.gauss(0, 0.3) for _ in vocabulary],
            "dense": [rng.gauss(0, 1) for _ in features.DENSE],
        }

    data = artifact_data(
        tiers=["t0", "t1", "t2", "t3"],
        vocabulary=vocabulary,
        boundaries=[boundary(), boundary(), boundary()],
        training={"sha256": "0" * 64, "count": 1, "labels": {"t0": 1}, "sources": {"x": 1}},
    )
    file = learned.dumps(learned.Artifact.model_validate(data))
    assert len(gzip.compress(file)) < 1024 * 1024
    assert len(learned.loads(file).artifact.vocabulary) == len(vocabulary)


# -------------------------------------------------------------------------------------------
# What is refused.


def refused(data: bytes, *expected: str) -> str:
    with pytest.raises(learned.ArtifactError) as caught:
        learned.loads(data, source="/models/classifier.json")
    message = str(caught.value)
    assert message.startswith("/models/classifier.json: "), message
    for part in expected:
        assert part in message, message
    return message


def changed(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    data = written()
    change(data)
    return data


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(schema="specfleet.dev/router-classifier/v3"), "schema is 'specfleet"),
        (lambda d: d.pop("schema"), "schema is 'None'"),
        (lambda d: d.update(features="specfleet.dev/router-features/v0"), "train it again"),
    ],
)
def test_another_schema_or_feature_version_is_refused(
    change: Callable[[dict[str, Any]], object], expected: str
) -> None:
    refused(sealed(changed(change)), expected)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda d: d["boundaries"][0]["weights"].pop(),
            "boundaries[0].weights: 6 weights for a vocabulary of 7 terms",
        ),
        (lambda d: d["vocabulary"].append("extra"), "vocabulary of 8 terms"),
        (lambda d: d["boundaries"].pop(), "3 tiers need 2 boundaries, not 1"),
        (lambda d: d["boundaries"][1]["dense"].pop(), "boundaries[1].dense: 6 weights"),
        (lambda d: d.update(tiers=["simple"], boundaries=[]), "at least 2 items"),
        (lambda d: d["vocabulary"].__setitem__(1, "sql"), "listed twice"),
        (lambda d: d["vocabulary"].__setitem__(1, "Query"), "vocabulary[1]: 'Query' is not"),
        (lambda d: d["vocabulary"].__setitem__(1, "a b c"), "vocabulary[1]"),
        (lambda d: d["tiers"].__setitem__(2, "simple"), "tiers must be unique"),
        (lambda d: d["boundaries"][0]["weights"].__setitem__(0, 1e7), "less than or equal"),
        (lambda d: d["boundaries"][0].update(intercept="1"), "boundaries.0.intercept"),
        (lambda d: d.update(threshold=1.0), "threshold"),
        (lambda d: d.update(trainedAt="2025-06-01T12:00:00"), "trainedAt"),
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d["training"]["labels"].update(huge=0), "['huge'] are not tiers"),
        (lambda d: d["training"].update(count=13), "training.labels add up to 12"),
        (lambda d: d["training"]["sources"].update(judge=11), "training.sources add up to 13"),
        (lambda d: d["training"].update(sha256="xyz"), "training.sha256"),
        (
            lambda d: d["training"].update(heldOut={**HELD_OUT, "labels": {"huge": 3}}),
            "training.heldOut.labels: ['huge'] are not tiers",
        ),
        (
            lambda d: d["training"].update(heldOut={**HELD_OUT, "count": 4}),
            "training.heldOut.labels add up to 3, not training.heldOut.count 4",
        ),
        (
            lambda d: d["training"].update(heldOut={**HELD_OUT, "share": 1.0}),
            "training.heldOut.share",
        ),
        (
            lambda d: d.update(
                schema=learned.SCHEMA_V1, training={**d["training"], "heldOut": HELD_OUT}
            ),
            "training.heldOut: a specfleet.dev/router-classifier/v1 artifact has none",
        ),
    ],
)
def test_shapes_that_do_not_agree_are_refused(
    change: Callable[[dict[str, Any]], object], expected: str
) -> None:
    refused(sealed(changed(change)), expected)


def test_a_changed_file_is_refused() -> None:
    data = written()
    data["boundaries"][0]["weights"][0] = 30.0
    refused(json.dumps(data).encode(), "does not match the content", "changed after")


def test_a_file_without_its_content_hash_is_refused() -> None:
    data = written()
    del data["contentHash"]
    refused(json.dumps(data).encode(), "contentHash is missing")


def test_a_truncated_file_is_refused() -> None:
    file = learned.dumps(artifact())
    for cut in (1, len(file) // 2, len(file) - 1):
        refused(file[:cut], "not a classifier's JSON")
    refused(b"", "not a classifier's JSON")


EXPLODED: list[str] = []


def explode() -> None:
    EXPLODED.append("unpickled")


class Bomb:
    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return explode, ()


def test_a_pickle_is_refused_without_being_unpickled(tmp_path: Path) -> None:
    (tmp_path / "classifier.json").write_bytes(pickle.dumps(Bomb()))
    with pytest.raises(learned.ArtifactError, match="not a classifier's JSON"):
        learned.load(tmp_path)
    refused(pickle.dumps(artifact_data(), protocol=0), "not a classifier's JSON")
    assert EXPLODED == []


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"[1, 2]", "a JSON list, not an object"),
        (b'{"schema": NaN}', "NaN is not valid JSON"),
        (b'{"schema": 1e999}', "number out of range"),
        (b"\xff\xfe\x00\x00garbage", "not a classifier's JSON"),
        (b"[" * 100_000, "not a classifier's JSON"),
        (b"apiVersion: v1\nkind: ConfigMap\n", "not a classifier's JSON"),
    ],
)
def test_other_files_are_refused(data: bytes, expected: str) -> None:
    refused(data, expected)


def test_a_file_too_large_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = learned.dump(artifact(), tmp_path)
    monkeypatch.setattr(learned, "MAX_BYTES", file.stat().st_size - 1)
    with pytest.raises(learned.ArtifactError, match="larger than"):
        learned.load(file)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(learned.ArtifactError, match=r"classifier\.json: cannot be read"):
        learned.load(tmp_path)


@FUZZ
@given(st.data())
def test_a_damaged_file_is_refused_whole_or_loaded_whole(data: st.DataObject) -> None:
    file = bytearray(learned.dumps(artifact()))
    for _ in range(data.draw(st.integers(1, 3))):
        file[data.draw(st.integers(0, len(file) - 1))] = data.draw(st.integers(0, 255))
    try:
        loaded = learned.loads(bytes(file))
    except learned.ArtifactError:
        return
    # Only a change that leaves the content as it was (such as an escape's case) loads.
    assert loaded.artifact == artifact()


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(learned.ArtifactError):
        learned.loads(data)


# -------------------------------------------------------------------------------------------
# Scoring and routing.


def expected_probabilities(
    terms: set[str], dense: tuple[float, ...], data: dict[str, Any] | None = None
) -> list[float]:
    """The logistic models, computed the long way."""
    data = data or artifact_data()
    weight = {
        term: [b["weights"][i] for b in data["boundaries"]]
        for i, term in enumerate(data["vocabulary"])
    }
    return [
        sigmoid(
            b["intercept"]
            + sum(weight[t][j] for t in terms if t in weight)
            + sum(w * x for w, x in zip(b["dense"], dense, strict=True))
        )
        for j, b in enumerate(data["boundaries"])
    ]


@pytest.mark.parametrize(
    ("terms", "dense"),
    [
        ((), DENSE_NONE),
        (("sql", "query"), DENSE_NONE),
        (("step by", "step", "hello", "unknown", "words"), DENSE_NONE),
        (("the capital", "capital"), (0.2, 0.3, 0.5, 0.0, 0.0, 0.0, 0.0)),
        (("sql",), (0.7, 1.2, 0.9, 1.0, 1.0, 0.0, 1.0)),
    ],
)
def test_probabilities_are_the_logistic_models(
    terms: tuple[str, ...], dense: tuple[float, ...]
) -> None:
    classifier = learned.loads(learned.dumps(artifact()))
    got = classifier.probabilities(seen(*terms, dense=dense))
    assert got == pytest.approx(expected_probabilities(set(terms), dense), rel=1e-9)


def test_a_word_counts_once_however_often_it_is_said() -> None:
    classifier = learned.loads(learned.dumps(artifact()))
    classification = heuristic.classify(chat("sql"))
    once = features.extract(chat("sql"), classification)
    thrice = features.extract(chat("sql sql, SQL!"), classification)
    assert classifier.scores(once) == classifier.scores(thrice)


def test_scores_do_not_depend_on_the_order_of_the_terms() -> None:
    data = artifact_data(
        vocabulary=["big", "tiny", "minus"],
        boundaries=[
            {"intercept": 0.0, "weights": [1e6, 1e-6, -1e6], "dense": [0.0] * 7},
            {"intercept": 0.0, "weights": [-1e6, 1e-6, 1e6], "dense": [0.0] * 7},
        ],
    )
    classifier = learned.Classifier(learned.Artifact.model_validate(data), "sha256:x")
    orders = [("big", "tiny", "minus"), ("big", "minus", "tiny"), ("tiny", "minus", "big")]
    scores = {
        classifier.scores(features.Features(dict.fromkeys(order).keys(), DENSE_NONE))
        for order in orders
    }
    assert len(scores) == 1
    assert next(iter(scores)) == pytest.approx((1e-6, 1e-6), abs=1e-12)


def test_the_largest_weights_on_every_term_keep_the_boundaries_apart() -> None:
    vocabulary = [f"w{i}" for i in range(4096)]
    top = learned.MAX_WEIGHT
    data = artifact_data(
        vocabulary=vocabulary,
        boundaries=[
            {"intercept": 0.5, "weights": [-top] * 4096, "dense": [0.0] * 7},
            {"intercept": -0.5, "weights": [top] * 4096, "dense": [0.0] * 7},
        ],
    )
    classifier = learned.Classifier(learned.Artifact.model_validate(data), "sha256:x")
    assert classifier.scores(seen(*vocabulary)) == (0.5 - 4096 * top, -0.5 + 4096 * top)
    assert classifier.scores(seen("w0")) == (0.5 - top, -0.5 + top)


@pytest.mark.parametrize(
    ("threshold", "tier"),
    [(0.05, 2), (0.5, 1), (0.95, 0)],
)
def test_a_request_goes_to_the_first_tier_it_probably_needs_no_more_than(
    threshold: float, tier: int
) -> None:
    classifier = learned.loads(learned.dumps(artifact()))
    request = seen("sql", "query")  # p = (0.92, 0.08)
    p = classifier.probabilities(request)
    assert p[0] > 0.9 and 0.05 < p[1] < 0.1
    assert classifier.tier(request, threshold) == tier


def test_the_artifacts_threshold_is_the_default() -> None:
    request = seen("sql", "query")
    low = learned.loads(learned.dumps(artifact(threshold=0.05)))
    high = learned.loads(learned.dumps(artifact(threshold=0.95)))
    assert (low.tier(request), high.tier(request)) == (2, 0)


def test_a_boundary_below_the_threshold_wins_even_past_one_above() -> None:
    # p = (low, high): the first tier is enough, whatever the second boundary says.
    data = artifact_data()
    data["boundaries"][1]["intercept"] = 10.0
    classifier = learned.Classifier(learned.Artifact.model_validate(data), "sha256:x")
    assert classifier.tier(seen("hello")) == 0


@pytest.mark.parametrize(
    "text",
    [
        "Hello! What is the capital of France?",
        "Write a SQL query for the top customers.",
        "Think step by step and compare the options.",
    ],
)
def test_a_request_is_routed_as_its_features_are(text: str) -> None:
    classifier = learned.loads(learned.dumps(artifact()))
    request = chat(text)
    expected = classifier.tier(features.extract(request, heuristic.classify(request)))
    assert classifier.tier(request) == expected


def test_the_examples_route_where_their_words_send_them() -> None:
    classifier = learned.loads(learned.dumps(artifact()))
    routed = [
        classifier.tier(chat(text))
        for text in ("Hello!", "Write a SQL query.", "SQL, step by step, why?")
    ]
    assert routed == [0, 1, 2]


weights = st.floats(-5, 5, allow_nan=False)


@FUZZ
@given(
    st.lists(st.tuples(weights, st.lists(weights, min_size=4, max_size=4)), min_size=1, max_size=4),
    st.sets(st.sampled_from(["a", "b", "c", "d"])),
    st.lists(st.floats(0, 2), min_size=7, max_size=7),
    st.floats(0.001, 0.999),
    st.floats(0.001, 0.999),
)
def test_a_higher_threshold_never_sends_a_request_to_a_more_expensive_tier(
    boundaries: list[tuple[float, list[float]]],
    terms: set[str],
    dense: list[float],
    t1: float,
    t2: float,
) -> None:
    data = artifact_data(
        tiers=[f"t{i}" for i in range(len(boundaries) + 1)],
        vocabulary=["a", "b", "c", "d"],
        boundaries=[{"intercept": b, "weights": ws, "dense": [0.5] * 7} for b, ws in boundaries],
        training={"sha256": "0" * 64, "count": 1, "labels": {"t0": 1}, "sources": {"x": 1}},
    )
    classifier = learned.Classifier(learned.Artifact.model_validate(data), "sha256:x")
    request = seen(*terms, dense=tuple(dense))
    low, high = sorted((t1, t2))
    assert classifier.tier(request, high) <= classifier.tier(request, low)
    assert 0 <= classifier.tier(request, low) <= len(boundaries)


def test_the_classifier_keeps_its_artifact_unchanged() -> None:
    data = artifact_data()
    before = copy.deepcopy(data)
    classifier = learned.Classifier(learned.Artifact.model_validate(data), "sha256:x")
    classifier.tier(seen("sql"))
    assert data == before


# -------------------------------------------------------------------------------------------
# The router's way: the heuristic's window, no terms made.

WORDS = ["sql", "step", "by", "hello", "the", "capital", "café", "x"]


@FUZZ
@given(
    st.lists(
        st.sampled_from([*WORDS, "SQL", "Step", "BY", "!", ",", " ", "\n", "(", "'"]), max_size=700
    ).map(" ".join),
    st.lists(st.floats(-4, 4, allow_nan=False), min_size=2 * 72, max_size=2 * 72),
    st.integers(0, 6),
)
def test_choose_picks_the_tier_that_scoring_the_terms_picks(
    text: str, draws: list[float], skip: int
) -> None:
    # Every word and pair of words over WORDS, some left out; bigrams whose words repeat too.
    terms = [*WORDS, *(f"{a} {b}" for a in WORDS for b in WORDS)]
    vocabulary = terms[skip::2] + terms[skip + 1 :: 7]
    vocabulary = list(dict.fromkeys(vocabulary))
    data = artifact_data(
        vocabulary=vocabulary,
        boundaries=[
            {"intercept": draws[j], "weights": draws[2 + 70 * j :][: len(vocabulary)], "dense": d}
            for j, d in enumerate(([0.5] * 7, [0.1] * 7))
        ],
    )
    classifier = learned.loads(learned.dumps(learned.Artifact.model_validate(data)))
    request = chat(text)
    window = heuristic.read(request.text)
    classification = heuristic.classify(request, window)
    seen_terms = features.extract(request, classification, window)
    # At each boundary's own probability as the threshold, a score a rounding away would flip
    # the tier: the two ways must score alike, not just nearly.
    for threshold in (None, *classifier.probabilities(seen_terms)):
        expected = classifier.tier(seen_terms, threshold)
        assert classifier.choose(window, classification, threshold) == expected
    assert classifier.tier(request) == classifier.tier(seen_terms)


def test_choose_finds_the_bigrams_of_the_window() -> None:
    data = artifact_data()
    data["boundaries"][0].update(intercept=-1.0, weights=[0.0] * 6 + [5.0])  # "the capital"
    classifier = learned.Classifier(learned.Artifact.model_validate(data), "sha256:x")
    for text, tier in (("The capital?", 1), ("capital the", 0), ("the, capital", 1)):
        request = chat(text)
        window = heuristic.read(request.text)
        assert classifier.choose(window, heuristic.classify(request, window)) == tier, text
