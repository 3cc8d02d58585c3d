"""Judging a cheaper tier's answer against the strongest tier's: the judge's prompt, the parser
of its verdict, each with a version, and the rule that turns verdicts into a label.

A request's label is the cheapest tier whose answer the judge calls as good as the strongest
tier's (the last tier's answer is the reference); the last tier when none is. ``label`` walks
the cheaper tiers from the cheapest and stops at the first answer judged as good, so a request
a small model answers well costs two answers and one verdict. A verdict that does not parse
ends the request without a label (``Outcome.unparseable``): nothing is known of that tier, and
a guess would be a wrong label. An error from a tier or from the judge ends it the same way.

The prompt (``PROMPT_VERSION``)::

    <instructions, ending: reply with one line, "Verdict: yes" or "Verdict: no">
    [Conversation]          (a chat's earlier turns, "role: text" each; only when there are)
    ...
    [Question]
    <the request's text, exactly: a chat's last user message, or the prompt>
    [Reference answer]
    <the strongest tier's answer>
    [Candidate answer]
    <the cheaper tier's answer>
    [End]

The simulator reads this layout (``specfleet_runtime.sim.capability``), so a simulator can
stand in for the judge in tests and the demo; change them together, and the version with them.

The parser (``PARSER_VERSION``): the last ``verdict: yes`` or ``verdict: no`` in the answer
(any case, ``*`` or spaces around allowed, ``yes``/``no`` as a whole word) decides; an answer
without one does not parse. A judge that reasons first and concludes last is read by its
conclusion.

Both versions go into every judged label (``specfleet.learn.labels``' ``judge`` field), so a
label set says how it was judged, and a change of prompt or parser changes its identity.

Pure: the caller gives the answers and verdicts as functions (``specfleet.learn.labelling``
asks real servers). Called by ``specfleet router labels judge``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from specfleet.routing import request

PROMPT_VERSION = "specfleet.dev/judge-prompt/v1"
PARSER_VERSION = "specfleet.dev/judge-verdict/v1"
MAX_TOKENS = 256
"""What the judge may write: room to reason a little before the verdict."""

INSTRUCTIONS = (
    "You judge answers to a request. The reference answer comes from a strong model; the "
    "candidate answer from a cheaper one. Decide whether the candidate answer is as good as "
    "the reference answer for the person who asked: as correct, as complete and as useful. "
    "Style and length do not matter, substance does. The request's text sits between "
    "[Question] and [Reference answer], exactly as it was asked.\n"
    'Reply with one line: "Verdict: yes" if the candidate answer is as good as the reference '
    'answer, "Verdict: no" if it is not.'
)

_VERDICT = re.compile(r"verdict\W{0,3}:\W{0,3}(yes|no)\b", re.IGNORECASE)


def prompt(asked: request.ParsedRequest, reference: str, candidate: str) -> str:
    """The judge's prompt for ``candidate`` against ``reference`` on the request ``asked``."""
    parts = [INSTRUCTIONS, ""]
    earlier = _earlier_turns(asked)
    if earlier:
        parts += ["[Conversation]", *earlier]
    parts += [
        "[Question]",
        asked.text,
        "[Reference answer]",
        reference.strip(),
        "[Candidate answer]",
        candidate.strip(),
        "[End]",
    ]
    return "\n".join(parts)


def parse(answer: str | None) -> bool | None:
    """The judge's verdict: True (as good), False (not as good), None (no verdict found)."""
    if not answer:
        return None
    found = _VERDICT.findall(answer)
    if not found:
        return None
    return bool(found[-1].lower() == "yes")


class Ending(enum.Enum):
    """How one request's judging ended."""

    LABELLED = "labelled"
    UNPARSEABLE = "unparseable"
    """The judge's answer held no verdict."""
    TIER_ERROR = "tier error"
    JUDGE_ERROR = "judge error"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request's result: its label (an index into the tiers) when ``LABELLED``."""

    ending: Ending
    label: int | None = None
    tier: int | None = None
    """The tier being asked or judged when it ended otherwise."""
    detail: str = ""
    """What went wrong, or the judge's answer that did not parse."""


class AskError(Exception):
    """A tier or the judge could not answer; the message says which and why."""


def label(
    tiers: int,
    answer_of: Callable[[int], str],
    verdict_of: Callable[[str], str],
    asked: request.ParsedRequest,
) -> Outcome:
    """The label of ``asked``, asking ``answer_of(tier)`` for the answers (the last tier's
    first, then the cheaper ones from the cheapest as needed) and ``verdict_of(prompt)`` for
    the judge's raw answers; both raise ``AskError`` when they cannot."""
    strongest = tiers - 1
    try:
        reference = answer_of(strongest)
    except AskError as exc:
        return Outcome(Ending.TIER_ERROR, tier=strongest, detail=str(exc))
    for tier in range(strongest):
        try:
            candidate = answer_of(tier)
        except AskError as exc:
            return Outcome(Ending.TIER_ERROR, tier=tier, detail=str(exc))
        try:
            said = verdict_of(prompt(asked, reference, candidate))
        except AskError as exc:
            return Outcome(Ending.JUDGE_ERROR, tier=tier, detail=str(exc))
        good = parse(said)
        if good is None:
            return Outcome(Ending.UNPARSEABLE, tier=tier, detail=said)
        if good:
            return Outcome(Ending.LABELLED, label=tier)
    return Outcome(Ending.LABELLED, label=strongest)


def record(model: str) -> dict[str, str]:
    """What a judged label records of how it was judged (its ``judge`` field)."""
    return {"prompt": PROMPT_VERSION, "parser": PARSER_VERSION, "model": model}


def _earlier_turns(asked: request.ParsedRequest) -> list[str]:
    """A chat's turns before its question, ``role: text`` each; none for a completion."""
    if asked.endpoint is not request.Endpoint.CHAT:
        return []
    messages: Sequence[Any] = asked.payload.get("messages") or []
    last_user = max(
        (i for i, m in enumerate(messages) if isinstance(m, Mapping) and m.get("role") == "user"),
        default=len(messages) - 1,
    )
    turns = []
    for message in messages[:last_user]:
        if isinstance(message, Mapping):
            turns.append(f"{message.get('role')}: {_text(message.get('content'))}")
    return turns


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text"))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return ""
