"""The held-out split: a request's side depends on what it asks and nothing else (not the file,
its order, duplicates, the label, who labelled it or max_tokens), about a fifth is held out,
and its identity is what the artifact records."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from specfleet.learn import labels, split
from tests.learn import traffic


def read(found: list[dict[str, Any]]) -> labels.LabelSet:
    return labels.read(traffic.jsonl(found).splitlines(), traffic.TIERS)


def held(found: list[dict[str, Any]]) -> set[bytes]:
    """The keys of the held-out side."""
    return {split.key(e) for e in split.divide(read(found)).held_out.examples}


def test_about_a_fifth_is_held_out_and_the_sides_partition_the_file() -> None:
    data = read(traffic.lines(2000, seed=21))
    divided = split.divide(data)
    total = len(data.examples)
    assert len(divided.training.examples) + len(divided.held_out.examples) == total
    assert 0.17 * total < len(divided.held_out.examples) < 0.23 * total
    lines = {e.line for e in divided.training.examples} | {
        e.line for e in divided.held_out.examples
    }
    assert lines == {e.line for e in data.examples}
    # Each side keeps the file's order.
    assert [e.line for e in divided.held_out.examples] == sorted(
        e.line for e in divided.held_out.examples
    )


def test_the_rule_is_the_documented_hash() -> None:
    example = read([{"prompt": "Tag this log", "max_tokens": 9, "label": "simple"}]).examples[0]
    assert split.key(example) == b'{"prompt":"Tag this log"}'
    for example in read(traffic.lines(300, seed=26)).examples:
        digest = hashlib.sha256(b"specfleet.dev/router-split/v1\n" + split.key(example)).digest()
        expected = int.from_bytes(digest[:8], "big") < 0.2 * 2**64
        assert split.is_held_out(example) == expected


def test_a_requests_side_does_not_depend_on_the_file_or_its_order() -> None:
    found = traffic.lines(600, seed=22)
    everything = held(found)
    shuffled = list(found)
    random.Random(1).shuffle(shuffled)
    assert held(shuffled) == everything
    # Half the file, or the file with other requests mixed in: the same requests, the same side.
    assert held(found[:300]) == everything & {split.key(e) for e in read(found[:300]).examples}
    others = traffic.lines(400, seed=23)
    mixed = held(found + others)
    assert mixed & {split.key(e) for e in read(found).examples} == everything


def test_duplicates_and_relabelled_copies_share_a_side() -> None:
    found = traffic.lines(300, seed=24)
    copies = []
    for line in found:
        copy = dict(line, label="complex", source="judged", weight=3, max_tokens=17)
        copies.append(copy)
    data = read(found + copies + found)
    divided = split.divide(data)
    n = len(found)
    held_lines = {e.line for e in divided.held_out.examples}
    for i in range(n):
        sides = {i + 1 in held_lines, n + i + 1 in held_lines, 2 * n + i + 1 in held_lines}
        assert len(sides) == 1, found[i]
    # The key is the content: chat and completion of the same text are different requests.
    as_prompt = read([{"prompt": "hello there", "label": "simple"}]).examples[0]
    as_chat = read(
        [{"messages": [{"role": "user", "content": "hello there"}], "label": "simple"}]
    ).examples[0]
    assert split.key(as_prompt) != split.key(as_chat)


def test_the_held_out_identity_names_the_rule_and_the_side() -> None:
    found = traffic.lines(300, seed=25)
    divided = split.divide(read(found))
    identity = divided.held_out_identity()
    assert (identity.rule, identity.share) == ("specfleet.dev/router-split/v1", 0.2)
    assert identity.count == len(divided.held_out.examples)
    assert identity.labels == divided.held_out.counts()
    assert identity.sha256 == hashlib.sha256(labels.as_lines(divided.held_out.examples)).hexdigest()
    assert json.loads(divided.held_out.examples[0].canonical)["label"] in traffic.TIERS


def test_an_empty_file_divides_into_two_empty_sides() -> None:
    divided = split.divide(read([]))
    assert divided.training.examples == () and divided.held_out.examples == ()
    assert divided.held_out_identity().count == 0
