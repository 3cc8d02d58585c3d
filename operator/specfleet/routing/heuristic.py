"""The heuristic classifier: how hard a request is, and how long its answer will be.

``classify`` is pure and cheap (microseconds for a chat turn, well under a millisecond for the
longest prompt): it reads at most ``CUE_WINDOW`` characters (the head and tail of the prompt or
last user message, where instructions sit), lowercases them once, and finds cues with set
lookups on the words and a few substring checks; the few regular expressions run only when a
cheap substring says they might match. What it reads of a text is a ``Window`` (``read``: the
window and its words); a caller that reads one first and passes it on (the router, which the
learned classifier's features then take from the same words) splits the text once.

Cues, each found at most once:
- sql: SQL keywords in SQL order (``SELECT x FROM``, ``INSERT INTO``, ``GROUP BY``, joins, DDL)
  or database names (``sql``, ``postgres``, ...), or a query about tables or columns.
- code: code fences, definitions, imports, operators such as ``=>`` and ``==``, language names
  and programming words (``function``, ``refactor``, ``traceback``, ...).
- math: arithmetic between numbers, LaTeX, math symbols and words (``integral``, ``prove``,
  ``probability``, ...).
- reasoning: words and phrases asking for analysis (``why``, ``compare``, ``trade-offs``,
  ``step by step``, ...) and numbered steps; one hit each, three or more hits is multi-step.
- length: asked-for long forms (``essay``, ``in detail``), short ones (``briefly``, ``yes or
  no``), or a word count (``in 300 words``).

Expected output tokens: a word count if one is asked for; else the longest of a base (64 for a
short plain question, 128 otherwise), each cue's typical answer (code 512, math 384, SQL 256,
reasoning 256/512/1024 for 1/2/3+ hits, long forms 1024) and a quarter of the prompt (answers to
long inputs, such as summaries, grow with them, up to 2048); a short-answer cue divides it by 4.
A client's ``max_tokens`` caps it, and also lifts it to a quarter of the cap: a client that
allows 4096 tokens expects a long answer more often than not. So a larger ``max_tokens`` never
gives a shorter expected output.

Complexity in [0, 1]: 0.25 x prompt length (log scale, 1 at 8192 tokens) + 0.20 x expected
output (log scale, 1 at 4096 tokens) + cues (reasoning 0.15 a hit up to 0.45, math 0.25, code
0.20, SQL 0.15) - 0.10 for a short-answer cue. A short factual question scores about 0.15, a
multi-step analysis 0.7 and more.

Categories (what overrides match): sql, code, math, and reasoning from two hits on. Called by
the router's app for every routed request (``specfleet_runtime.router.app``); what it returns is
what ``specfleet.routing.choice`` matches tiers and overrides against, and part of what the
learned classifier sees (``specfleet.routing.features``, which reads the same ``window``).
Weights live here, nowhere else.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass

from specfleet.api.routingpolicy import Category
from specfleet.routing.request import ParsedRequest

CUE_WINDOW = 4096
"""Characters read for cues: the first and last half of this of a longer text."""
CHARACTERS_PER_TOKEN = 4

_LENGTH_FULL = 8192  # prompt tokens at which the length term is 1
_OUTPUT_FULL = 4096  # expected tokens at which the output term is 1
_MAX_EXPECTED = 1 << 20

# Splitting on whitespace after blanking punctuation is several times faster than a regular
# expression's findall over the same text.
PUNCTUATION_TO_SPACE = str.maketrans(dict.fromkeys(string.punctuation, " "))
"""``str.translate``'s table that blanks ASCII punctuation: the window's words are what
``split()`` makes of it after."""


def _words(text: str) -> frozenset[str]:
    """The words in ``text``, separated by whitespace."""
    return frozenset(text.split())


@dataclass(frozen=True, slots=True)
class _Phrase:
    text: str
    gate: str | None
    """A word the text must contain for the phrase to be looked for (its first one); None for
    phrases of symbols, always looked for."""


def _phrases(text: str) -> tuple[_Phrase, ...]:
    """The phrases in ``text``, separated by ``|`` (whitespace around each is dropped)."""
    phrases = []
    for phrase in (p.strip() for p in text.split("|")):
        first = phrase.translate(PUNCTUATION_TO_SPACE).split()
        gate = first[0] if first and first[0].isalpha() and len(first[0]) > 1 else None
        phrases.append(_Phrase(phrase, gate))
    return tuple(phrases)


def _found(phrases: tuple[_Phrase, ...], text: str, words: set[str]) -> int:
    """How many of ``phrases`` occur in ``text`` (whose words are ``words``)."""
    return sum(1 for p in phrases if (p.gate is None or p.gate in words) and p.text in text)


_SQL_WORDS = _words("sql postgres postgresql mysql sqlite bigquery snowflake redshift tsql plpgsql")
_SQL_PHRASES = _phrases(
    r"""insert into | delete from | group by | order by | inner join | left join | right join |
    outer join | full join | cross join | create table | alter table | drop table |
    create index | create view | having count | primary key | foreign key"""
)
_SQL_SELECT = re.compile(r"\bselect\s+(?:\*|distinct\b|count\s*\(|[\w.]+\s*(?:,|from\b))")
_SQL_UPDATE = re.compile(r"\bupdate\s+\w+\s+set\b")
_SQL_QUERY = re.compile(r"\bquer(?:y|ies)\b[^.?!\n]{0,60}\b(?:table|database|schema|column)s?\b")

_CODE_WORDS = _words(
    """python javascript typescript java golang rust kotlin swift ruby php haskell scala bash
    powershell code coding script program programming algorithm compile compiler debug
    debugging traceback stacktrace segfault refactor refactoring regex api endpoint json yaml
    dockerfile html css function lambda async await bug bugs"""
)
_CODE_PHRASES = _phrases(
    r"""``` | => | == | != | #include | console.log | c++ | c# | stack trace | unit test |
    regular expression | (); | ){ | ) {"""
)
_CODE_DEFINITION = re.compile(
    r"\bdef\s+\w+\s*\(|\bclass\s+\w+\s*[:({]|(?m:^\s*(?:from\s+[\w.]+\s+)?import\s+[\w.]+)"
)

_MATH_WORDS = _words(
    """equation equations integral integrals derivative derivatives differentiate integrate
    calculus algebra algebraic geometry trigonometry theorem theorems lemma proof proofs prove
    probability probabilities variance matrix matrices eigenvalue eigenvalues eigenvector
    eigenvectors polynomial polynomials logarithm logarithms factorial primes arithmetic
    fraction fractions modulo combinatorics permutations statistics calculate"""
)
_MATH_PHRASES = _phrases(
    r"""solve for | expected value | standard deviation | \frac | \int | \sum | \sqrt | \lim |
    ∫ | ∑ | √ | π | ≤ | ≥ | ≠"""
)
# Starting every branch with a digit lets the regex engine skip to digits: 2 + 2, 3x = 9, 7 - 1.
_MATH_EXPRESSION = re.compile(r"\d[a-z]?\s*(?:[+*/^\u00d7\u00f7=]|\s-)\s*-?\d")
_MATH_POWER = re.compile(r"\^\s*\d")

_REASONING_WORDS = _words(
    """why reason reasons reasoning think analyze analyse analysis compare comparing comparison
    contrast tradeoff tradeoffs justify evaluate derive plan design strategy strategies
    implication implications consequence consequences critique argue recommend recommendation
    assess assessment prioritize prioritise optimize optimise diagnose hypothesis"""
)
_REASONING_PHRASES = _phrases(
    r"""step by step | step-by-step | explain how | explain why | pros and cons | trade-off |
    trade off | root cause | what if | walk me through | think through"""
)
_NUMBERED_STEP = re.compile(r"(?m)^\s*(\d{1,2})[.)]\s")

_LONG_WORDS = _words(
    """essay article report story detailed comprehensive thorough thoroughly elaborate chapter
    whitepaper tutorial guide"""
)
_LONG_PHRASES = _phrases("in detail | in depth | in-depth | long-form")
_SHORT_WORDS = _words("briefly brief concise concisely tldr")
_SHORT_PHRASES = _phrases(
    r"""one word | one sentence | single sentence | short answer | yes or no | just the answer |
    just the number | in a word | tl;dr"""
)
_WORD_COUNT = re.compile(r"\b(\d{1,5})\s+words\b")


@dataclass(frozen=True, slots=True)
class Classification:
    """What the router knows about a request before choosing where it goes."""

    complexity: float
    """0 (trivial) to 1 (hardest); tiers compare it with ``maxComplexity``."""
    expected_tokens: int
    """Expected output tokens (at least 1); tiers compare it with ``maxExpectedTokens``."""
    categories: frozenset[Category]
    """The request kinds found; overrides match them."""
    prompt_tokens: int
    """Estimated prompt tokens."""


@dataclass(frozen=True, slots=True)
class _Cues:
    sql: bool
    code: bool
    math: bool
    reasoning_hits: int
    long: bool
    short: bool
    words_asked: int | None


@dataclass(frozen=True, slots=True)
class Window:
    """What of a request's text is read, split once for whoever reads it."""

    text: str
    """The window (``window``), lowercased."""
    words: list[str]
    """Its words in order: ASCII punctuation blanked, then split on whitespace."""
    distinct: set[str]
    """The same words, each once."""


def read(text: str) -> Window:
    """What of ``text`` is read: its window and the window's words."""
    seen = window(text)
    words = seen.translate(PUNCTUATION_TO_SPACE).split()
    return Window(seen, words, set(words))


def classify(request: ParsedRequest, seen: Window | None = None) -> Classification:
    """Score ``request`` (see the module docstring for how); ``seen`` is ``read(request.text)``
    when the caller has it already."""
    prompt_tokens = -(-request.prompt_chars // CHARACTERS_PER_TOKEN) + request.prompt_token_ids
    cues = _find_cues(read(request.text) if seen is None else seen)
    expected = _expected_tokens(cues, prompt_tokens, request.max_tokens)
    complexity = (
        0.25 * _log_share(prompt_tokens, _LENGTH_FULL)
        + 0.20 * _log_share(expected, _OUTPUT_FULL)
        + min(0.45, 0.15 * cues.reasoning_hits)
        + (0.25 if cues.math else 0.0)
        + (0.20 if cues.code else 0.0)
        + (0.15 if cues.sql else 0.0)
        - (0.10 if cues.short else 0.0)
    )
    categories: set[Category] = set()
    if cues.sql:
        categories.add("sql")
    if cues.code:
        categories.add("code")
    if cues.math:
        categories.add("math")
    if cues.reasoning_hits >= 2:
        categories.add("reasoning")
    return Classification(
        complexity=min(1.0, max(0.0, complexity)),
        expected_tokens=expected,
        categories=frozenset(categories),
        prompt_tokens=prompt_tokens,
    )


def window(text: str) -> str:
    """What of ``text`` is read, lowercased: all of it up to ``CUE_WINDOW`` characters, else its
    first and last ``CUE_WINDOW // 2`` joined by a newline."""
    if len(text) <= CUE_WINDOW:
        return text.lower()
    half = CUE_WINDOW // 2
    return (text[:half] + "\n" + text[-half:]).lower()


def _log_share(value: int, full: int) -> float:
    return min(1.0, math.log1p(value) / math.log1p(full))


def _find_cues(seen: Window) -> _Cues:
    text, words = seen.text, seen.distinct
    sql = (
        not words.isdisjoint(_SQL_WORDS)
        or _found(_SQL_PHRASES, text, words) > 0
        or ("select" in text and _SQL_SELECT.search(text) is not None)
        or ("update" in text and _SQL_UPDATE.search(text) is not None)
        or ("quer" in text and _SQL_QUERY.search(text) is not None)
    )
    code = (
        not words.isdisjoint(_CODE_WORDS)
        or _found(_CODE_PHRASES, text, words) > 0
        or (
            ("def" in words or "class" in words or "import" in words)
            and _CODE_DEFINITION.search(text) is not None
        )
    )
    maths = (
        not words.isdisjoint(_MATH_WORDS)
        or _found(_MATH_PHRASES, text, words) > 0
        or _MATH_EXPRESSION.search(text) is not None
        or ("^" in text and _MATH_POWER.search(text) is not None)
    )
    steps = len(set(_NUMBERED_STEP.findall(text)))
    reasoning_hits = (
        len(words & _REASONING_WORDS)
        + _found(_REASONING_PHRASES, text, words)
        + (steps if steps >= 2 else 0)
    )
    words_asked = None
    if "words" in words:
        counts = [int(n) for n in _WORD_COUNT.findall(text)]
        words_asked = max(counts) if counts else None
    return _Cues(
        sql=sql,
        code=code,
        math=maths,
        reasoning_hits=reasoning_hits,
        long=not words.isdisjoint(_LONG_WORDS) or _found(_LONG_PHRASES, text, words) > 0,
        short=not words.isdisjoint(_SHORT_WORDS) or _found(_SHORT_PHRASES, text, words) > 0,
        words_asked=words_asked,
    )


def _expected_tokens(cues: _Cues, prompt_tokens: int, max_tokens: int | None) -> int:
    if cues.words_asked:
        estimate = cues.words_asked * 4 // 3
    else:
        plain = not (cues.sql or cues.code or cues.math or cues.reasoning_hits)
        estimate = max(
            64 if plain and prompt_tokens < 32 else 128,
            512 if cues.code else 0,
            384 if cues.math else 0,
            256 if cues.sql else 0,
            (0, 256, 512)[cues.reasoning_hits] if cues.reasoning_hits < 3 else 1024,
            1024 if cues.long else 0,
            min(2048, prompt_tokens // 4),
        )
        if cues.short:
            estimate = max(16, estimate // 4)
    if max_tokens is not None:
        estimate = min(max_tokens, max(estimate, max_tokens // 4))
    return max(1, min(_MAX_EXPECTED, estimate))
