"""The simulator's capability seam: difficulty by topic words (else the heuristic's complexity),
answers that depend on the question and on whether it was answered well, judge prompts read
back into their sections and answered with a verdict; and the real process with and without
`--capability`."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from specfleet.routing import heuristic, request
from specfleet_runtime.sim import capability, cli
from tests.sim.process import running_sim

COMPLIANCE = "Does the DPA clause let us keep EU invoices for 7 years?"
LOG = "Tag this log with one category: timeout, disk.\nERROR def handle(): traceback line 9"
PLAIN = "What is the capital of France?"


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        (COMPLIANCE, 0.9),
        ("Is the SUBPROCESSOR list part of our compliance audit?", 0.95),  # the hardest decides
        (LOG, 0.1),
        ("Summarise: the outage, for the team.", 0.5),
    ],
)
def test_topic_words_decide_difficulty(question: str, expected: float) -> None:
    assert capability.difficulty(question) == expected


def test_a_question_without_topic_words_is_as_hard_as_the_heuristic_says() -> None:
    for question in (PLAIN, "Prove that the integral of x^2 from 0 to 1 is 1/3, step by step."):
        parsed = request.parse(
            request.Endpoint.COMPLETIONS, json.dumps({"prompt": question}).encode()
        )
        assert capability.difficulty(question) == heuristic.classify(parsed).complexity
    # Different questions, different difficulties: the fallback is not a constant.
    assert capability.difficulty(PLAIN) < capability.difficulty(
        "Prove that the integral of x^2 from 0 to 1 is 1/3, step by step."
    )


def test_the_table_holds_cues_the_heuristic_gives_the_other_way() -> None:
    """A short compliance question looks easy to the heuristic and a long log with code words
    looks hard: the seam's difficulty is what a classifier can learn and the heuristic cannot."""

    def complexity(text: str) -> float:
        parsed = request.parse(request.Endpoint.COMPLETIONS, json.dumps({"prompt": text}).encode())
        return heuristic.classify(parsed).complexity

    long_log = (
        LOG + "\n" + "\n".join(f"WARN worker.py line {n} function retry()" for n in range(80))
    )
    assert complexity(COMPLIANCE) < 0.3 < capability.difficulty(COMPLIANCE)
    assert capability.difficulty(long_log) < 0.3 < complexity(long_log)


def test_capability_at_least_the_difficulty_answers_well() -> None:
    assert capability.answers_well(0.9, COMPLIANCE)
    assert not capability.answers_well(0.89, COMPLIANCE)
    assert capability.answers_well(0.1, LOG)
    assert capability.answers_well(1.0, COMPLIANCE)


def test_an_answer_depends_on_the_question_and_whether_it_is_good() -> None:
    good, poor = capability.answer(PLAIN, True), capability.answer(PLAIN, False)
    assert good != poor
    assert good == capability.answer(PLAIN, True)
    assert good != capability.answer(PLAIN + " ", True)
    assert len(capability.pieces(good)) == capability.ANSWER_WORDS
    assert "".join(capability.pieces(good)) == good


def judge_text(question: str, reference: str, candidate: str, before: str = "Judge.") -> str:
    return (
        f"{before}\n[Question]\n{question}\n[Reference answer]\n{reference}\n"
        f"[Candidate answer]\n{candidate}\n[End]"
    )


def test_a_judge_prompt_is_read_back_into_its_sections() -> None:
    question = "\nTwo lines,\n  kept exactly  \n"
    found = capability.judge_prompt(judge_text(question, " ref ", " cand "))
    assert found == capability.JudgePrompt(question=question, reference="ref", candidate="cand")
    # Markers out of order, or missing: not a judge prompt.
    assert capability.judge_prompt("[Question]\nq\n[Candidate answer]\nc\n[End]") is None
    assert (
        capability.judge_prompt(
            "[Reference answer]\nr\n[Question]\nq\n[Candidate answer]\nc\n[End]"
        )
        is None
    )
    assert capability.judge_prompt(PLAIN) is None


def test_the_judge_says_yes_only_to_the_good_answer() -> None:
    good, poor = capability.answer(COMPLIANCE, True), capability.answer(COMPLIANCE, False)
    # Whatever the judge's own capability, and whatever the reference says.
    for judge_capability in (0.0, 1.0):
        assert capability.reply(judge_capability, judge_text(COMPLIANCE, good, good)) == (
            "Verdict: yes"
        )
        assert capability.reply(judge_capability, judge_text(COMPLIANCE, poor, poor)) == (
            "Verdict: no"
        )
        assert capability.reply(judge_capability, judge_text(COMPLIANCE, poor, good)) == (
            "Verdict: yes"
        )
    # Anything but a judge prompt is a question.
    assert capability.reply(0.95, COMPLIANCE) == good
    assert capability.reply(0.5, COMPLIANCE) == poor


def test_capability_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="--capability must be between 0 and 1"):
        cli.Simulation(architecture=cli.DEFAULT_ARCHITECTURE, served_model_name="m", capability=1.5)


def post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    call = urllib.request.Request(
        url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(call, timeout=30) as answer:
        found: dict[str, Any] = json.loads(answer.read())
    return found


def test_the_process_answers_by_its_capability_and_judges() -> None:
    with running_sim("--model", "m", "--capability", "0.5", "--time-factor", "0.01") as url:

        def chat(content: str, **more: Any) -> dict[str, Any]:
            body = {"model": "m", "messages": [{"role": "user", "content": content}], **more}
            choice: dict[str, Any] = post(url, "/v1/chat/completions", body)["choices"][0]
            return choice

        easy = chat(LOG)
        assert easy["message"]["content"] == capability.answer(LOG, True)
        assert easy["finish_reason"] == "stop"
        assert chat(COMPLIANCE)["message"]["content"] == capability.answer(COMPLIANCE, False)
        # The question is the last user message (its text parts), whatever came before it.
        body = {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": COMPLIANCE},
                {"role": "assistant", "content": "Which region?"},
                {"role": "user", "content": [{"type": "text", "text": LOG}]},
            ],
        }
        answer = post(url, "/v1/chat/completions", body)["choices"][0]["message"]["content"]
        assert answer == capability.answer(LOG, True)
        # A completion's prompt is its question; a smaller max_tokens cuts the answer.
        cut = post(url, "/v1/completions", {"model": "m", "prompt": LOG, "max_tokens": 3})
        assert cut["choices"][0]["text"] == "".join(
            capability.pieces(capability.answer(LOG, True))[:3]
        )
        assert cut["choices"][0]["finish_reason"] == "length"
        good = capability.answer(COMPLIANCE, True)
        verdict = chat(judge_text(COMPLIANCE, good, good))["message"]["content"]
        assert verdict == "Verdict: yes"


def test_without_capability_the_simulator_answers_as_before() -> None:
    with running_sim("--model", "m", "--time-factor", "0.01") as url:
        body = {"model": "m", "prompt": LOG, "max_tokens": 16}
        text = post(url, "/v1/completions", body)["choices"][0]["text"]
        good = capability.answer(COMPLIANCE, True)
        judged = post(
            url,
            "/v1/chat/completions",
            {
                "model": "m",
                "messages": [{"role": "user", "content": judge_text(COMPLIANCE, good, good)}],
            },
        )["choices"][0]["message"]["content"]
    assert len(text.split()) == 16
    assert text not in (capability.answer(LOG, True), capability.answer(LOG, False))
    assert "Verdict" not in judged
