"""The labelled file: what a line may hold, every refusal naming its line and the fix, leaving
bad lines out on request, and the accepted set's identity."""

from __future__ import annotations

import json
from typing import Any

import pytest

from specfleet.learn import labels

TIERS = ("simple", "medium", "complex")


def encoded(*found: Any) -> list[bytes]:
    return [x if isinstance(x, bytes) else json.dumps(x).encode() for x in found]


def test_chat_and_completion_lines_are_read_as_the_router_reads_them() -> None:
    data = labels.read(
        encoded(
            {"messages": [{"role": "user", "content": "Is this allowed?"}], "label": "complex"},
            {"prompt": "Tag this log", "max_tokens": 64, "label": "simple", "source": "judged"},
            {"prompt": "Draft a note", "label": "medium", "weight": 2.5},
        ),
        TIERS,
    )
    first, second, third = data.examples
    assert (first.request.text, first.label, first.source, first.weight) == (
        "Is this allowed?",
        2,
        "imported",
        1.0,
    )
    assert (second.request.max_tokens, second.source) == (64, "judged")
    assert third.weight == 2.5
    assert data.counts() == {"simple": 1, "medium": 1, "complex": 1}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"prompt": "x", "label": ', "line 1: not JSON"),
        (b"[1, 2]", "line 1: not a JSON object"),
        ({"label": "simple"}, "line 1: neither messages nor prompt"),
        (
            {"prompt": "x", "messages": [{"role": "user", "content": "x"}], "label": "simple"},
            "line 1: both messages and prompt: keep one",
        ),
        ({"prompt": "x"}, 'line 1: no label: add "label"'),
        (
            {"prompt": "x", "label": "huge"},
            "line 1: label 'huge' is not a tier of the policy: use one of simple, medium, complex",
        ),
        ({"prompt": "x", "label": "simple", "max_tokens": 0}, "max_tokens must be a positive"),
        ({"prompt": "x", "label": "simple", "max_tokens": "many"}, "max_tokens must be"),
        ({"prompt": "x", "label": "simple", "source": "vibes"}, "source 'vibes' is not one of"),
        ({"prompt": "x", "label": "simple", "weight": 0}, "weight 0 must be a positive number"),
        ({"prompt": "x", "label": "simple", "weight": True}, "weight true must be a positive"),
        ({"messages": [], "label": "simple"}, "messages must be a non-empty array"),
    ],
)
def test_a_bad_line_is_refused_with_its_number_and_the_fix(line: Any, expected: str) -> None:
    with pytest.raises(labels.LabelError) as refused:
        labels.read(encoded(line), TIERS, name="team.jsonl")
    message = str(refused.value)
    assert message.startswith("team.jsonl: 1 of 1 labelled lines are invalid:")
    assert expected in message
    assert message.endswith("fix them, or give --skip-invalid to leave them out")


def test_a_refusal_lists_the_first_problems_and_counts_the_rest() -> None:
    bad = [b"not json"] * 7
    good = encoded({"prompt": "x", "label": "simple"})
    with pytest.raises(labels.LabelError) as refused:
        labels.read([*good, *bad], TIERS)
    message = str(refused.value)
    assert "7 of 8 labelled lines are invalid" in message
    assert "line 2: not JSON" in message and "line 6: not JSON" in message
    assert "line 7:" not in message
    assert "and 2 more" in message


def test_skip_invalid_leaves_bad_lines_out_and_says_which() -> None:
    data = labels.read(
        [*encoded({"prompt": "x", "label": "simple"}), b"", b"{oops", b"   "],
        TIERS,
        skip_invalid=True,
    )
    assert len(data.examples) == 1
    assert [str(p) for p in data.skipped] == [
        "line 3: not JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
        "(char 1)): write one JSON object per line"
    ]


def test_identity_is_the_hash_of_canonical_lines_and_the_counts() -> None:
    written = labels.read(
        [
            b'{"label": "simple", "prompt": "hello"}',
            b'{"prompt":"why","label":"complex","source":"judged","weight":3}',
        ],
        TIERS,
    )
    # The same requests, written otherwise: key order, spacing, the defaults spelled out.
    respelled = labels.read(
        [
            b'{"prompt": "hello",   "label": "simple", "source": "imported", "weight": 1}',
            b'{"weight": 3, "source": "judged", "label": "complex", "prompt": "why"}',
        ],
        TIERS,
    )
    training = written.training()
    assert training == respelled.training()
    assert training.count == 2
    assert training.labels == {"simple": 1, "medium": 0, "complex": 1}
    assert training.sources == {"imported": 1, "judged": 1}
    changed = labels.read(
        [b'{"label": "medium", "prompt": "hello"}', b'{"prompt":"why","label":"complex"}'], TIERS
    )
    assert changed.training().sha256 != training.sha256
    assert written.examples[0].canonical == (
        b'{"label":"simple","prompt":"hello","source":"imported","weight":1}'
    )


JUDGE = {"prompt": "specfleet.dev/judge-prompt/v1", "parser": "specfleet.dev/judge-verdict/v1"}


def test_a_judged_line_records_how_it_was_judged_and_that_is_part_of_its_identity() -> None:
    plain = {"prompt": "why", "label": "complex", "source": "judged"}
    by_large = {**plain, "judge": {**JUDGE, "model": "large"}}
    data = labels.read(encoded(plain, by_large), TIERS)
    # The request read is the same; the judge field is not part of it.
    assert data.examples[0].request.payload == data.examples[1].request.payload == {"prompt": "why"}
    assert b'"judge":{"model":"large"' in data.examples[1].canonical
    # Another prompt version, another set; a line without judge keeps its identity.
    other = {**by_large, "judge": {**JUDGE, "prompt": "specfleet.dev/judge-prompt/v2"}}
    assert (
        labels.read(encoded(other), TIERS).sha256()
        != labels.read(encoded(by_large), TIERS).sha256()
    )
    assert data.examples[0].canonical == (
        b'{"label":"complex","prompt":"why","source":"judged","weight":1}'
    )


@pytest.mark.parametrize(
    ("judge", "source", "expected"),
    [
        (JUDGE, "imported", "judge is only for judged labels, and this one's source is imported"),
        (JUDGE, None, "judge is only for judged labels"),
        ("v1", "judged", 'judge "v1" must be an object of strings with prompt and parser'),
        ({"prompt": "v1"}, "judged", "must be an object of strings with prompt and parser"),
        ({**JUDGE, "temperature": 0}, "judged", "must be an object of strings"),
        ({**JUDGE, "model": 3}, "judged", "must be an object of strings"),
    ],
)
def test_a_bad_judge_field_is_refused(judge: Any, source: str | None, expected: str) -> None:
    line: dict[str, Any] = {"prompt": "x", "label": "simple", "judge": judge}
    if source is not None:
        line["source"] = source
    with pytest.raises(labels.LabelError, match="line 1: judge") as refused:
        labels.read(encoded(line), TIERS)
    assert expected in str(refused.value)
