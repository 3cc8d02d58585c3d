"""What the learned classifier sees: the words of the heuristic's window as unigrams and
bigrams, and the heuristic's own classification as dense features."""

from __future__ import annotations

import itertools
import math
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specfleet.api.routingpolicy import Category
from specfleet.routing import features, heuristic
from tests.routing.builders import chat, completion

FACTUAL = "What is the capital of France?"
SQL = "Write a SQL query that returns the top 5 customers by revenue."
REASONING = (
    "Think step by step. Compare the trade-offs of microservices versus a monolith, analyze "
    "the costs, and justify a recommendation."
)


def test_words_are_lowercased_with_punctuation_blanked() -> None:
    assert features.terms("Hello, World! (x+y)") == {
        "hello",
        "world",
        "x",
        "y",
        "hello world",
        "world x",
        "x y",
    }


def test_bigrams_are_adjacent_words_each_once() -> None:
    assert features.terms("to be or not to be") == {
        "to",
        "be",
        "or",
        "not",
        "to be",
        "be or",
        "or not",
        "not to",
    }
    assert features.terms("alone") == {"alone"}
    assert features.terms(" \n\t...") == set()


def test_only_the_head_and_tail_of_a_long_text_are_read() -> None:
    half = heuristic.CUE_WINDOW // 2
    filler = "lorem ipsum " * 2000
    text = "Opening words " + filler[: len(filler) // 2] + " hidden " + filler + " closing words"
    assert len(text) > 4 * half
    found = features.terms(text)
    assert {"opening", "opening words", "closing", "closing words"} <= found
    assert "hidden" not in found
    # The heuristic reads the same window: a cue in the middle is lost to both.
    middle = filler[: len(filler) // 2] + " sql " + filler[len(filler) // 2 :]
    assert "sql" not in features.terms(middle)
    assert "sql" not in heuristic.classify(chat(middle)).categories


def test_bigrams_are_made_among_the_first_and_last_words_only() -> None:
    limit = features.BIGRAM_WORDS
    words = [f"w{i}" for i in range(3 * limit)]
    found = features.terms(" ".join(words))
    assert set(words) <= found  # every word counts by itself
    bigrams = {t for t in found if " " in t}
    head, tail = words[:limit], words[-limit:]
    assert bigrams == {f"{a} {b}" for part in (head, tail) for a, b in itertools.pairwise(part)}
    assert f"w{limit - 1} w{limit}" not in found
    # Up to twice the limit, every pair.
    short = words[: 2 * limit]
    pairs = {t for t in features.terms(" ".join(short)) if " " in t}
    assert len(pairs) == 2 * limit - 1


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.text(max_size=300) | st.lists(st.sampled_from(["a", "B,", " ", "\n", "É", "ς"])).map("".join)
)
def test_the_unigrams_are_the_words_the_heuristic_reads(text: str) -> None:
    found = features.terms(text)
    words = heuristic.window(text).translate(heuristic.PUNCTUATION_TO_SPACE).split()
    assert {t for t in found if " " not in t} == set(words)
    assert {t for t in found if " " in t} == {f"{a} {b}" for a, b in itertools.pairwise(words)}
    assert all(features.is_term(t) for t in found)


@pytest.mark.parametrize(
    ("text", "is_term"),
    [
        ("word", True),
        ("two words", True),
        ("café ünïcode", True),
        ("三 個", True),
        ("", False),
        ("three words here", False),
        ("two  spaces", False),
        (" leading", False),
        ("Upper", False),
        ("don't", False),
        ("tab\there", False),
        ("nbsp\u00a0inside", False),
    ],
)
def test_what_can_be_a_term(text: str, is_term: bool) -> None:
    assert features.is_term(text) is is_term


def test_the_dense_features_of_a_request() -> None:
    classification = heuristic.classify(chat(SQL))
    dense = features.extract(chat(SQL), classification).dense
    assert len(dense) == len(features.DENSE)
    assert dense[0] == classification.complexity
    assert dense[1] == math.log1p(classification.prompt_tokens) / math.log1p(8192)
    assert dense[2] == math.log1p(classification.expected_tokens) / math.log1p(4096)
    assert dense[3:] == (1.0, 0.0, 0.0, 0.0)


def test_the_categories_come_in_the_order_of_the_api() -> None:
    assert features.DENSE[3:] == typing.get_args(Category)
    for category in typing.get_args(Category):
        classification = heuristic.Classification(0.5, 10, frozenset({category}), 10)
        dense = features.dense(classification)
        assert dense[3:] == tuple(float(c == category) for c in features.DENSE[3:])


def test_token_counts_are_not_capped() -> None:
    dense = features.dense(heuristic.classify(completion(list(range(100_000)))))
    assert dense[1] == pytest.approx(math.log1p(100_000) / math.log1p(8192))
    assert dense[1] > 1.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (FACTUAL, (0.16132912163737, 0.24383708168134, 0.50184925608516, 0, 0, 0, 0)),
        (SQL, (0.36202714996133, 0.31441595944318, 0.66711580050268, 1, 0, 0, 0)),
        (REASONING, (0.71369150983456, 0.38802506064189, 0.83342622337045, 0, 0, 0, 1)),
    ],
)
def test_the_dense_features_are_pinned(text: str, expected: tuple[float, ...]) -> None:
    # A classifier trained on these values is only valid while they hold: if the heuristic's
    # scores change, change features.VERSION too (and then these values).
    dense = features.extract(chat(text), heuristic.classify(chat(text))).dense
    assert dense == pytest.approx(expected, rel=1e-12), f"change {features.VERSION!r}"


def test_the_version_names_the_definition() -> None:
    assert features.VERSION == "specfleet.dev/router-features/v2"
