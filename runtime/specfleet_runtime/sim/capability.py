"""The simulator standing in for models of different strength, and for a judge of their answers:
a seam for tests and the demo, not a model of language.

A simulated model may be given a **capability** in [0, 1] (``specfleet-sim --capability``);
without one it answers as it always has (simulated words from the seed). Every question has a
**difficulty** in [0, 1] (``difficulty``). A model answers a question **well** when its
capability is at least the question's difficulty, and its answer is then ``answer(question,
True)``, else ``answer(question, False)``: a few simulated words that depend on the question and
on that one bit alone, never on the model, the seed or the sampling parameters. So any
simulator can write the good answer to any question again, which is what its judge does.

The question is what a real model would be answering: a chat's last user message (its text
parts), or a completion's prompt (each prompt of a batch on its own).

Difficulty, pure and deterministic: the question's words (lowercased, ASCII punctuation
blanked, as ``specfleet.routing.heuristic`` splits them) are looked up in ``TOPICS``, a table of
a team's own vocabulary (contracts and compliance are hard, sorting logs is easy); the hardest
topic word found decides. A question with no topic word gets the heuristic's own complexity
(``specfleet.routing.heuristic.classify`` of the question as a completion prompt). The table's
words are cues the heuristic does not read, so labels judged here teach a classifier what the
heuristic cannot see: a two-line compliance question needs the strongest model, a long log to
tag with a category the cheapest.

Judging: a chat request whose last user message holds the sections ``[Question]``,
``[Reference answer]``, ``[Candidate answer]`` and ``[End]``, each marker on a line of its own
and in that order (the layout of ``specfleet.learn.judge``'s prompt), is a judge prompt; a
simulator with a capability answers it with ``Verdict: yes`` when the candidate (whitespace
trimmed) is the good answer to the question, else ``Verdict: no``. The simulated judge is ideal:
it knows the good answer whatever its own capability, and reads the reference only as part of
the prompt. It learns nothing from the request but that text: not which model answered.

Structured output (``response_format``, a forced tool call) is written from its schema as
before; capability shapes free text only. An answer is handed out one word per token and ends
with ``stop`` (``length``, cut, when ``max_tokens`` is smaller), without stop strings.

Pure. Called by ``specfleet_runtime.sim.server``; the tests read ``difficulty`` to know which
tier should win each question.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from specfleet.routing import heuristic, request
from specfleet_runtime.sim.engine import WORDS

TOPICS: dict[str, float] = {
    # Contracts, regulation and audit: short questions that need the strongest model.
    "compliance": 0.9,
    "contract": 0.9,
    "contracts": 0.9,
    "clause": 0.9,
    "indemnity": 0.95,
    "liability": 0.9,
    "subprocessor": 0.95,
    "gdpr": 0.9,
    "regulator": 0.85,
    "audit": 0.85,
    "warranty": 0.8,
    # Writing for people: the middle.
    "draft": 0.5,
    "rewrite": 0.45,
    "summarise": 0.5,
    "summarize": 0.5,
    "translate": 0.55,
    "outage": 0.5,
    # Sorting and looking up: the cheapest model will do, however long the input.
    "tag": 0.1,
    "categorise": 0.1,
    "categorize": 0.1,
    "category": 0.1,
    "triage": 0.15,
    "lookup": 0.05,
    "greet": 0.05,
}
"""Difficulty of a question by its topic words; the hardest word found decides."""

ANSWER_WORDS = 8
"""Words in a simulated answer (one token each): within the default max_tokens of 16."""

JUDGE_MARKERS = ("[Question]", "[Reference answer]", "[Candidate answer]", "[End]")
"""The judge prompt's section markers, each on a line of its own, in this order."""


def difficulty(question: str) -> float:
    """How hard ``question`` is, in [0, 1] (see the module docstring)."""
    words = set(question.lower().translate(heuristic.PUNCTUATION_TO_SPACE).split())
    found = [TOPICS[word] for word in words & TOPICS.keys()]
    if found:
        return max(found)
    parsed = request.parse(request.Endpoint.COMPLETIONS, json.dumps({"prompt": question}).encode())
    return heuristic.classify(parsed).complexity


def answers_well(capability: float, question: str) -> bool:
    """Whether a model of ``capability`` answers ``question`` well."""
    return capability >= difficulty(question)


def answer(question: str, well: bool) -> str:
    """The answer to ``question``, good or poor: ``ANSWER_WORDS`` simulated words, each with
    its leading space as a token's text has it."""
    digest = hashlib.sha256(f"{'good' if well else 'poor'}\x00{question}".encode()).digest()
    return "".join(" " + WORDS[digest[i] % len(WORDS)] for i in range(ANSWER_WORDS))


@dataclass(frozen=True, slots=True)
class JudgePrompt:
    """The sections of a judge prompt."""

    question: str
    reference: str
    candidate: str


def judge_prompt(text: str) -> JudgePrompt | None:
    """The sections of ``text`` if it is a judge prompt, else None. The question is the lines
    (exactly, as asked) from the first ``[Question]`` line to the last ``[Reference answer]``
    line before the last ``[Candidate answer]`` line; the candidate runs from there to the last
    ``[End]`` line (both answers trimmed of whitespace)."""
    lines = text.split("\n")
    stripped = [line.strip() for line in lines]

    def last(marker: str, before: int) -> int:
        for i in range(before - 1, -1, -1):
            if stripped[i] == marker:
                return i
        return -1

    question_at = stripped.index(JUDGE_MARKERS[0]) if JUDGE_MARKERS[0] in stripped else -1
    end_at = last(JUDGE_MARKERS[3], len(lines))
    candidate_at = last(JUDGE_MARKERS[2], end_at)
    reference_at = last(JUDGE_MARKERS[1], candidate_at)
    if not -1 < question_at < reference_at < candidate_at < end_at:
        return None
    return JudgePrompt(
        question="\n".join(lines[question_at + 1 : reference_at]),
        reference="\n".join(lines[reference_at + 1 : candidate_at]).strip(),
        candidate="\n".join(lines[candidate_at + 1 : end_at]).strip(),
    )


def verdict(prompt: JudgePrompt) -> str:
    """The simulated judge's answer to a judge prompt."""
    good = prompt.candidate == answer(prompt.question, True).strip()
    return "Verdict: yes" if good else "Verdict: no"


def reply(capability: float, text: str) -> str:
    """What a model of ``capability`` says to ``text`` (a chat's last user message, or a
    prompt): a verdict to a judge prompt, else its answer."""
    judged = judge_prompt(text)
    if judged is not None:
        return verdict(judged)
    return answer(text, answers_well(capability, text))


def pieces(text: str) -> list[str]:
    """A reply cut into tokens: one word (with the whitespace before it) each."""
    return re.findall(r"\s*\S+", text)
