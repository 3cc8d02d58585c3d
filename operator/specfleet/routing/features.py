"""What the learned classifier sees of a request: the words it asks with, and the heuristic's
own reading of it.

``extract(request, classification)`` gives a request's ``Features``:

- ``terms``: the words of the text the heuristic reads (``heuristic.window``: the prompt or last
  user message, its head and tail past ``heuristic.CUE_WINDOW`` characters, lowercased), split
  as the heuristic splits them (ASCII punctuation blanked, then whitespace): each word
  (unigram), and each pair of adjacent words joined by one space (bigram) among the window's
  first and last ``BIGRAM_WORDS`` words (all of them, up to twice that), each present at most
  once. Bigrams are kept to the head and tail for speed: on the longest prompts they are most of
  a request's terms and of the router's cost, and instructions sit there; the words between
  still count as unigrams.
- ``dense``: from the heuristic's ``Classification`` of the same request, in ``DENSE`` order:
  its complexity, the prompt's and the expected answer's tokens on a log scale
  (``log1p(tokens) / log1p(8192)`` and ``/ log1p(4096)``, not capped), and each category as 0 or
  1.

A classifier's vocabulary lists terms as they are here; ``is_term`` says whether a string can
be one. ``VERSION`` names this definition: an artifact trained on other features is refused,
so any change here, or in the heuristic's window, split or scores, needs a new version.

Pure Python (the router's image has no numpy), and about as cheap as Python allows: the words
are split once (by ``heuristic.read``; ``extract`` takes the caller's ``heuristic.Window`` when
it has one), and bigrams are made and hashed by C-level helpers (``map``, ``zip``,
``str.join``, ``set.update``) without a Python loop. The router scores the same terms without
gathering them in one set (``specfleet.routing.learned.Classifier.choose``, held by tests to
what scoring these terms gives). Called by
``specfleet.routing.learned``, and by whatever trains or evaluates a classifier on captured
requests.
"""

from __future__ import annotations

import itertools
import math
import string
from collections.abc import Iterator, Sequence, Set
from dataclasses import dataclass

from specfleet.routing import heuristic
from specfleet.routing.request import ParsedRequest

VERSION = "specfleet.dev/router-features/v2"
"""This definition of the features; a classifier's artifact names the one it was trained on.
(v1 made bigrams of every word of the window.)"""

BIGRAM_WORDS = 128
"""Bigrams are made among the window's first and last this many words."""

DENSE = ("complexity", "prompt_tokens", "expected_tokens", "sql", "code", "math", "reasoning")
"""The dense features, in order."""

_PROMPT_FULL = math.log1p(8192)
_OUTPUT_FULL = math.log1p(4096)


@dataclass(frozen=True, slots=True)
class Features:
    """What the learned classifier sees of one request."""

    terms: Set[str]
    """The unigrams and bigrams present, each once."""
    dense: tuple[float, ...]
    """The dense features, in ``DENSE`` order."""


def extract(
    request: ParsedRequest,
    classification: heuristic.Classification,
    seen: heuristic.Window | None = None,
) -> Features:
    """The features of ``request``, which the heuristic classified as ``classification``
    (``seen``: ``heuristic.read(request.text)``, when the caller has it already)."""
    window = heuristic.read(request.text) if seen is None else seen
    return Features(window_terms(window), dense(classification))


def terms(text: str) -> set[str]:
    """The unigrams and bigrams of the window of ``text`` the heuristic reads."""
    return window_terms(heuristic.read(text))


def window_terms(seen: heuristic.Window) -> set[str]:
    """The unigrams and bigrams of a window the heuristic read."""
    found = set(seen.distinct)
    found.update(map(" ".join, pairs(seen.words)))
    return found


def pairs(words: Sequence[str]) -> Iterator[tuple[str, str]]:
    """The pairs of adjacent ``words`` that make bigrams: among the first and last
    ``BIGRAM_WORDS`` (all of them, up to twice that)."""
    # zip over a slice is a third faster than itertools.pairwise here (Python 3.11).
    if len(words) <= 2 * BIGRAM_WORDS:
        return zip(words, words[1:], strict=False)  # noqa: RUF007
    head, tail = words[:BIGRAM_WORDS], words[-BIGRAM_WORDS:]
    return itertools.chain(
        zip(head, head[1:], strict=False),  # noqa: RUF007
        zip(tail, tail[1:], strict=False),  # noqa: RUF007
    )


def dense(classification: heuristic.Classification) -> tuple[float, ...]:
    """The dense features of a request classified as ``classification``."""
    categories = classification.categories
    return (
        classification.complexity,
        math.log1p(classification.prompt_tokens) / _PROMPT_FULL,
        math.log1p(classification.expected_tokens) / _OUTPUT_FULL,
        1.0 if "sql" in categories else 0.0,
        1.0 if "code" in categories else 0.0,
        1.0 if "math" in categories else 0.0,
        1.0 if "reasoning" in categories else 0.0,
    )


def is_term(text: str) -> bool:
    """Whether ``terms`` can give ``text``: one or two lowercase words without whitespace or
    ASCII punctuation, joined by one space."""
    words = text.split(" ")
    return 1 <= len(words) <= 2 and all(
        word
        and word.split() == [word]
        and word.lower() == word
        and set(word).isdisjoint(string.punctuation)
        for word in words
    )
