"""The held-out split of labelled requests: which ones training never sees, so that a
classifier can be judged for promotion on labels it was not fitted on.

The rule (``RULE``, ``SHARE``): a request is held out when the first 8 bytes of
SHA-256(``RULE`` + newline + its key), read as a big-endian integer, are below ``SHARE`` (20%)
of 2**64. Its key is the request's content, the part the classifier reads: the canonical JSON
(keys sorted, no spaces, ASCII) of ``{"messages": ...}`` or ``{"prompt": ...}``, whichever the
line has. The label, its source and weight, ``max_tokens`` and the request's other fields are
not in the key, so a request keeps its side whatever file it arrives in, in whatever order,
however often, whoever labelled it (imported once, judged later) and whatever else rides with
it; two lines that ask the same thing are always on the same side. A classifier trained on any
file's training side has therefore seen no request of any file's held-out side, so the
held-out side of new labels judges a candidate and a classifier trained earlier alike.

``RULE`` names the rule and its version: an artifact records it (``learned.HeldOut``), and
changing how keys or buckets are made must change it.

Pure: labelled requests in, two sets out. Called by ``specfleet.learn.router_train`` (training
takes the training side) and ``specfleet router promote`` (evaluation takes the held-out side).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from specfleet.learn import labels
from specfleet.routing import learned

RULE = "specfleet.dev/router-split/v1"
SHARE = 0.2
"""The share of requests held out."""

_CONTENT = ("messages", "prompt")
"""The fields of a labelled line that make its key (a line has exactly one)."""
_BUCKETS = 1 << 64


@dataclass(frozen=True, slots=True)
class Divided:
    """A labelled set, in two."""

    training: labels.LabelSet
    held_out: labels.LabelSet

    def held_out_identity(self) -> learned.HeldOut:
        """The held-out side's identity, as an artifact records it."""
        return learned.HeldOut(
            rule=RULE,
            share=SHARE,
            sha256=self.held_out.sha256(),
            count=len(self.held_out.examples),
            labels=self.held_out.counts(),
        )


def key(example: labels.Labelled) -> bytes:
    """What decides a request's side: its content's canonical JSON (see the module
    docstring)."""
    line = json.loads(example.canonical)
    content = {field: line[field] for field in _CONTENT if field in line}
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def is_held_out(example: labels.Labelled) -> bool:
    digest = hashlib.sha256(RULE.encode() + b"\n" + key(example)).digest()
    return int.from_bytes(digest[:8], "big") < SHARE * _BUCKETS


def divide(data: labels.LabelSet) -> Divided:
    """The training side and the held-out side of ``data``, each in the file's order."""
    held = [is_held_out(e) for e in data.examples]
    return Divided(
        training=labels.LabelSet(
            data.tiers,
            tuple(e for e, h in zip(data.examples, held, strict=True) if not h),
            data.skipped,
        ),
        held_out=labels.LabelSet(
            data.tiers, tuple(e for e, h in zip(data.examples, held, strict=True) if h)
        ),
    )
