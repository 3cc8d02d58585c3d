"""Labelled requests: the file a classifier is trained and evaluated on.

JSON lines, one request per line (blank lines are skipped):

    {"messages": [{"role": "user", "content": "..."}], "label": "medium"}
    {"prompt": "...", "max_tokens": 256, "label": "simple", "source": "judged", "weight": 2}

- ``messages`` (a chat request) or ``prompt`` (a completion), exactly one of them; the line
  without ``label``, ``source`` and ``weight`` is read by ``specfleet.routing.request.parse`` as
  the router reads a body, so training sees what the router sees (``max_tokens``, ``model`` and
  the request's other fields are read, or passed over, as the router does).
- ``label``: the cheapest tier of the policy whose answer is good enough.
- ``source`` (optional): where the label came from, ``imported`` (the default: labels brought
  from elsewhere) or ``judged`` (a judge model compared the tiers' answers).
- ``weight`` (optional): a positive number, 1 by default: how much the request counts in
  training (implicit signals, such as a user's retry, may weigh a request; they never label
  one). Figures (quality, cost) count each request once.
- ``judge`` (optional, only with ``source`` ``judged``): how the label was judged, an object
  ``{"prompt": VERSION, "parser": VERSION, "model": NAME}`` (``specfleet.learn.judge``'s
  versions and the judge's served model name), written by ``specfleet router labels judge``.
  It is part of the line, so of the set's identity: labels judged by another prompt, parser or
  judge are another set. Judged lines from before it existed read as they always did.

``read`` parses a file against the policy's tiers: each problem names its line and the fix. A
file with bad lines is refused (``LabelError``, the first few problems and how many), unless
``skip_invalid`` leaves them out (``LabelSet.skipped`` says how many). ``LabelSet.training``
is the accepted set's identity for the artifact (``specfleet.routing.learned.Training``): the
SHA-256 of its canonical lines (each accepted object with ``source`` and ``weight`` filled in,
keys sorted, no spaces, ASCII, one per line), and its counts per label and per source. The
canonical lines are also what ``specfleet router labels import`` stores.

Pure: bytes in, data out.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from specfleet.learn import LearnError
from specfleet.routing import learned, request

SOURCES = ("imported", "judged")
"""Where a label may come from."""
DEFAULT_SOURCE = "imported"
JUDGE_FIELDS = ("prompt", "parser", "model")
"""What a judged label's ``judge`` field may hold."""
SHOWN_PROBLEMS = 5
"""How many problems a refusal lists."""

_OWN_FIELDS = ("label", "source", "weight", "judge")
"""The fields of a line that are not the request's."""


class LabelError(LearnError):
    """A labelled file that cannot be used as it is; the message says where and what to fix."""


class LineError(LabelError):
    """One line that is not a labelled request."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Labelled:
    """One accepted labelled request."""

    line: int
    """Its line number in the file (from 1)."""
    request: request.ParsedRequest
    label: int
    """The index of its label among the policy's tiers (cheapest first)."""
    source: str
    weight: float
    canonical: bytes
    """The line as stored and hashed (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class LabelSet:
    """The accepted labelled requests of a file, for a policy's tiers."""

    tiers: tuple[str, ...]
    examples: tuple[Labelled, ...]
    skipped: tuple[Problem, ...] = ()
    """The invalid lines left out (with ``skip_invalid``)."""

    @property
    def labels(self) -> list[int]:
        return [e.label for e in self.examples]

    def counts(self) -> dict[str, int]:
        """How many requests carry each tier's label, every tier listed, cheapest first."""
        found = Counter(e.label for e in self.examples)
        return {tier: found[i] for i, tier in enumerate(self.tiers)}

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for example in self.examples:
            digest.update(example.canonical + b"\n")
        return digest.hexdigest()

    def training(self) -> learned.Training:
        """The identity of this set, as an artifact records it."""
        if not self.examples:
            raise LabelError("no labelled requests")
        return learned.Training(
            sha256=self.sha256(),
            count=len(self.examples),
            labels=self.counts(),
            sources=dict(sorted(Counter(e.source for e in self.examples).items())),
        )


def parse_line(text: bytes, number: int, tiers: Sequence[str]) -> Labelled:
    """One line (without its newline); raises LabelError naming the line and the fix."""

    def problem(message: str) -> LineError:
        return LineError(Problem(number, message))

    try:
        found = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        first = (str(exc).splitlines() or ["nested too deeply"])[0][:120]
        raise problem(f"not JSON ({first}): write one JSON object per line") from None
    if not isinstance(found, dict):
        raise problem("not a JSON object: write one object per line, {messages or prompt, label}")
    has_messages, has_prompt = "messages" in found, "prompt" in found
    if has_messages == has_prompt:
        raise problem(
            "both messages and prompt: keep one (a chat request has messages, a completion a "
            "prompt)"
            if has_messages
            else "neither messages nor prompt: a chat request has messages, a completion a prompt"
        )
    label = found.get("label")
    choices = ", ".join(tiers)
    if label is None:
        raise problem(f'no label: add "label": the cheapest good enough tier, one of {choices}')
    if not isinstance(label, str) or label not in tiers:
        raise problem(
            f"label {str(label)[:80]!r} is not a tier of the policy: use one of {choices}"
        )
    source = found.get("source", DEFAULT_SOURCE)
    if source not in SOURCES:
        raise problem(f"source {str(source)[:80]!r} is not one of {', '.join(SOURCES)}")
    judged_by = found.get("judge")
    if judged_by is not None:
        if source != "judged":
            raise problem(
                f"judge is only for judged labels, and this one's source is {source}: drop "
                'judge, or set "source": "judged"'
            )
        if (
            not isinstance(judged_by, dict)
            or not set(judged_by) <= set(JUDGE_FIELDS)
            or not all(isinstance(judged_by.get(key), str) for key in ("prompt", "parser"))
            or not all(isinstance(value, str) for value in judged_by.values())
        ):
            raise problem(
                f"judge {json.dumps(judged_by)[:80]} must be an object of strings with prompt "
                "and parser (their versions) and optionally model"
            )
    weight = found.get("weight", 1)
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not math.isfinite(weight)
        or weight <= 0
    ):
        raise problem(f"weight {json.dumps(weight)[:40]} must be a positive number (default 1)")
    body = {key: value for key, value in found.items() if key not in _OWN_FIELDS}
    endpoint = request.Endpoint.CHAT if has_messages else request.Endpoint.COMPLETIONS
    try:
        parsed = request.parse(endpoint, json.dumps(body).encode())
    except request.MalformedRequestError as exc:
        raise problem(f"{exc} (the request is read as the router reads {endpoint.value})") from None
    canonical = json.dumps(
        {**found, "source": source, "weight": weight},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()
    return Labelled(number, parsed, tiers.index(label), source, float(weight), canonical)


def read(
    lines: Iterable[bytes],
    tiers: Sequence[str],
    *,
    skip_invalid: bool = False,
    name: str = "labels",
) -> LabelSet:
    """The labelled requests of a file's lines, for a policy's ``tiers`` (cheapest first).
    Raises LabelError listing the first problems unless ``skip_invalid``; ``name`` names the
    file in messages."""
    examples: list[Labelled] = []
    problems: list[Problem] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        try:
            examples.append(parse_line(text, number, tiers))
        except LineError as exc:
            problems.append(exc.problem)
    if problems and not skip_invalid:
        shown = "\n".join(f"  {p}" for p in problems[:SHOWN_PROBLEMS])
        more = len(problems) - SHOWN_PROBLEMS
        raise LabelError(
            f"{name}: {len(problems)} of {len(problems) + len(examples)} labelled lines are "
            f"invalid:\n{shown}"
            + (f"\n  and {more} more" if more > 0 else "")
            + "\nfix them, or give --skip-invalid to leave them out"
        )
    return LabelSet(tuple(tiers), tuple(examples), tuple(problems))


def as_lines(examples: Iterable[Labelled]) -> bytes:
    """The canonical lines of ``examples``, each ending in a newline."""
    return b"".join(e.canonical + b"\n" for e in examples)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
