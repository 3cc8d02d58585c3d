"""The learning loop's cursor over captured batches, and its names in the store: which batches
a pass reads, how far it moves, and that nothing it writes is taken for a batch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from specfleet import capturestore
from specfleet.api import storelayout
from specfleet.api.capture import BatchKey
from specfleet.learn import LearnError, router_learn
from specfleet.learn.router_learn import Cursor

ROOT = "ml/routingpolicy/assistant"
T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def batch(minutes: float, pod: str = "router-0", seq: int = 0) -> capturestore.Batch:
    key = BatchKey(T0 + timedelta(minutes=minutes), "router", pod, seq, 10)
    return capturestore.Batch(key.name(ROOT), BatchKey.parse(key.name(ROOT)) or key, 100)


def test_a_fresh_cursor_reads_everything() -> None:
    batches = [batch(0), batch(5), batch(30)]
    assert router_learn.unread(batches, Cursor()) == batches


def test_a_pass_reads_each_batch_once() -> None:
    first = [batch(0), batch(30)]
    cursor = router_learn.advanced(Cursor(), first)
    assert cursor.since == T0 + timedelta(minutes=30) - router_learn.LATE
    # The batch at 0 is behind the cursor; the one at 30 is remembered as read.
    assert cursor.seen == {first[1].path}
    assert router_learn.unread(first, cursor) == []


def test_a_batch_landing_late_is_read_within_the_window_and_passed_by_after() -> None:
    cursor = router_learn.advanced(Cursor(), [batch(30)])
    late = batch(25, pod="router-1")  # written before the newest read, landed after
    too_late = batch(15, pod="router-2")  # more than LATE before it
    newer = batch(31)
    assert router_learn.unread([late, too_late, batch(30), newer], cursor) == [late, newer]


def test_the_cursor_never_moves_back_and_forgets_what_it_passed() -> None:
    cursor = router_learn.advanced(Cursor(), [batch(0), batch(60)])
    older = router_learn.advanced(cursor, [batch(55, pod="router-1")])
    assert older.since == cursor.since
    moved = router_learn.advanced(older, [batch(120)])
    assert moved.since == T0 + timedelta(minutes=120) - router_learn.LATE
    assert moved.seen == {batch(120).path}


def test_the_cursor_keeps_what_training_saw() -> None:
    cursor = Cursor(T0, frozenset({batch(1).path}), trained_labels=40)
    assert router_learn.advanced(cursor, [batch(2)]).trained_labels == 40
    assert Cursor.of_json(cursor.as_json(), "cursor.json") == cursor
    assert Cursor.of_json(Cursor().as_json(), "cursor.json") == Cursor()


@pytest.mark.parametrize(
    "found",
    [
        [],
        {"schema": "other"},
        {**Cursor().as_json(), "seen": "x"},
        {**Cursor().as_json(), "trainedLabels": True},
        {**Cursor().as_json(), "since": "yesterday"},
        {**Cursor().as_json(), "since": "2026-12-07T09:00:00"},
    ],
)
def test_a_cursor_that_is_not_one_is_named(found: object) -> None:
    with pytest.raises(LearnError, match=r"^learning/cursor.json: not the learning loop's cursor"):
        Cursor.of_json(found, "learning/cursor.json")


def test_the_loop_s_names_are_not_batches() -> None:
    content = "sha256:" + "ab" * 32
    names = [
        storelayout.cursor(ROOT),
        storelayout.in_force(ROOT),
        storelayout.classifier(ROOT, content),
        storelayout.decision(ROOT, T0, "Promote", content),
    ]
    assert names == [
        f"{ROOT}/learning/cursor.json",
        f"{ROOT}/learning/in-force.json",
        f"{ROOT}/learning/classifiers/sha256-{'ab' * 32}.json",
        f"{ROOT}/learning/decisions/20261207T090000000000Z-promote-abababababababab.json",
    ]
    assert capturestore.parse_batches((name, 1) for name in names) == []
    assert storelayout.hash_of(names[2]) == content
    assert storelayout.hash_of(names[0]) is None


@pytest.mark.parametrize("text", ["heuristic", "sha256:AB", "sha256:" + "a" * 63, "ab" * 32])
def test_only_a_content_hash_names_an_artifact(text: str) -> None:
    assert not storelayout.is_content_hash(text)
    with pytest.raises(ValueError, match="is not a content hash"):
        storelayout.classifier(ROOT, text)
