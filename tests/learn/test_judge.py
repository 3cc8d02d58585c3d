"""The judge's prompt and verdict parser (versions, garbage), the labelling rule over fake
answers and verdicts, and what the labelling run reads, samples and paces: all pure."""

from __future__ import annotations

import json
from typing import Any

import pytest

from specfleet.learn import judge, labelling
from specfleet.routing import request
from specfleet_runtime.sim import capability

CHAT = request.Endpoint.CHAT


def parsed(body: dict[str, Any], endpoint: request.Endpoint = CHAT) -> request.ParsedRequest:
    return request.parse(endpoint, json.dumps(body).encode())


def test_the_versions_name_what_they_version() -> None:
    assert judge.PROMPT_VERSION == "specfleet.dev/judge-prompt/v1"
    assert judge.PARSER_VERSION == "specfleet.dev/judge-verdict/v1"
    assert judge.record("large") == {
        "prompt": judge.PROMPT_VERSION,
        "parser": judge.PARSER_VERSION,
        "model": "large",
    }


def test_the_prompt_holds_the_question_exactly_and_both_answers() -> None:
    question = "Does clause 14\nlet us keep invoices?  "
    asked = parsed(
        {
            "messages": [
                {"role": "system", "content": "You are the legal desk."},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi, what do you need?"},
                {"role": "user", "content": [{"type": "text", "text": question}]},
            ]
        }
    )
    text = judge.prompt(asked, " the reference \n", "the candidate")
    assert text.startswith(judge.INSTRUCTIONS)
    assert '"Verdict: yes"' in text and '"Verdict: no"' in text
    assert text.endswith(
        "[Conversation]\nsystem: You are the legal desk.\nuser: Hello\n"
        "assistant: Hi, what do you need?\n"
        f"[Question]\n{question}\n[Reference answer]\nthe reference\n"
        "[Candidate answer]\nthe candidate\n[End]"
    )
    # The layout the simulator reads: its judge finds the same sections.
    assert capability.judge_prompt(text) == capability.JudgePrompt(
        question, "the reference", "the candidate"
    )


def test_a_completions_prompt_has_no_conversation() -> None:
    text = judge.prompt(parsed({"prompt": "Tag this"}, request.Endpoint.COMPLETIONS), "a", "b")
    assert "[Conversation]" not in text
    assert "[Question]\nTag this\n[Reference answer]\na\n" in text


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Verdict: yes", True),
        ("Verdict: no", False),
        ("verdict:YES", True),
        ("**Verdict:** No", False),
        ("The candidate misses the date.\nVerdict: no\n", False),
        ("Verdict: no. On reflection the candidate is complete.\nVerdict: yes", True),
        ("Verdict: yes!", True),
        # Garbage: no verdict, or not a whole yes/no.
        ("", None),
        (None, None),
        ("yes", None),
        ("The candidate is as good.", None),
        ("Verdict: maybe", None),
        ("Verdict: yesterday's answer", None),
        ("verdicts: none", None),
        (" speculation batches limits pays a requests", None),
    ],
)
def test_the_parser_reads_the_last_verdict_or_none(answer: str | None, expected: bool) -> None:
    assert judge.parse(answer) is expected


class Script:
    """Answers per tier and verdicts in order, recording what was asked."""

    def __init__(self, answers: dict[int, str | Exception], verdicts: list[str | Exception]):
        self.answers = answers
        self.verdicts = verdicts
        self.asked: list[int] = []
        self.prompts: list[str] = []

    def answer(self, tier: int) -> str:
        self.asked.append(tier)
        found = self.answers[tier]
        if isinstance(found, Exception):
            raise found
        return found

    def verdict(self, prompt: str) -> str:
        self.prompts.append(prompt)
        found = self.verdicts.pop(0)
        if isinstance(found, Exception):
            raise found
        return found


ASKED = parsed({"messages": [{"role": "user", "content": "Is it allowed?"}]})


def run(script: Script, tiers: int = 3) -> judge.Outcome:
    return judge.label(tiers, script.answer, script.verdict, ASKED)


def test_the_label_is_the_cheapest_tier_judged_as_good_asked_no_further() -> None:
    script = Script({0: "a0", 1: "a1", 2: "ref"}, ["Verdict: no", "Verdict: yes"])
    assert run(script) == judge.Outcome(judge.Ending.LABELLED, label=1)
    assert script.asked == [2, 0, 1]
    assert "[Reference answer]\nref\n[Candidate answer]\na0\n" in script.prompts[0]
    assert "[Reference answer]\nref\n[Candidate answer]\na1\n" in script.prompts[1]

    cheapest = Script({0: "a0", 1: "a1", 2: "ref"}, ["Verdict: yes"])
    assert run(cheapest).label == 0
    assert cheapest.asked == [2, 0]


def test_the_strongest_tier_is_the_label_when_no_cheaper_answer_is_as_good() -> None:
    script = Script({0: "a0", 1: "a1", 2: "ref"}, ["Verdict: no", "Verdict: no"])
    assert run(script) == judge.Outcome(judge.Ending.LABELLED, label=2)
    # One tier: its own answer is the label, and nobody is asked to judge.
    alone = Script({0: "ref"}, [])
    assert run(alone, tiers=1) == judge.Outcome(judge.Ending.LABELLED, label=0)


def test_a_verdict_that_does_not_parse_drops_the_request_never_a_label() -> None:
    script = Script({0: "a0", 1: "a1", 2: "ref"}, ["I think so", "Verdict: yes"])
    outcome = run(script)
    assert outcome == judge.Outcome(judge.Ending.UNPARSEABLE, tier=0, detail="I think so")
    assert script.asked == [2, 0]


def test_errors_name_the_tier_or_the_judge() -> None:
    down = Script({0: "a0", 1: judge.AskError("tier medium: 503"), 2: "ref"}, ["Verdict: no"])
    assert run(down) == judge.Outcome(judge.Ending.TIER_ERROR, tier=1, detail="tier medium: 503")
    reference = Script({2: judge.AskError("tier complex: refused")}, [])
    assert run(reference).ending is judge.Ending.TIER_ERROR
    assert run(reference).tier == 2
    busy = Script({0: "a0", 1: "a1", 2: "ref"}, [judge.AskError("judge: timeout")])
    assert run(busy) == judge.Outcome(judge.Ending.JUDGE_ERROR, tier=0, detail="judge: timeout")


def line(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def record(path: str, body: Any, **more: Any) -> bytes:
    return line({"schema": "v1", "id": "r", "request": {"path": path, "body": body}, **more})


def test_requests_are_read_from_captured_records_and_labelled_lines() -> None:
    counts = labelling.Counts()
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 9, "model": "assistant"}
    found = list(
        labelling.requests(
            [
                record("/v1/chat/completions", {**chat, "weight": "heavy", "label": 3}),
                b"",
                line({"prompt": "Tag this", "label": "simple", "source": "judged", "weight": 2}),
                record("/v1/completions", {"prompt": "Tag"}, truncated=True),
                record("/v1/embeddings", {"input": "x"}),
                record("/v1/completions", "not an object"),
                record("/v1/completions", {"prompt": [1, 2, 3]}),
                record("/v1/completions", {"prompt": ["a", "b"]}),
                line({"messages": []}),
                record("/v1/completions", {"prompt": "a", "messages": []}),
                b"{oops",
                line({"label": "simple"}),
            ],
            counts,
        )
    )
    assert [(a.line, a.body) for a in found] == [(1, chat), (3, {"prompt": "Tag this"})]
    assert found[0].parsed.max_tokens == 9
    assert (counts.lines, counts.unreadable) == (11, 9)
    assert (
        counts.details[0] == "line 4: a captured record cut to fit (truncated): its body may be cut"
    )


def test_the_sample_is_chosen_by_content_and_grows_with_the_share() -> None:
    counts = labelling.Counts()
    asked = list(
        labelling.requests([line({"prompt": f"question {i}"}) for i in range(400)], counts)
    )
    half = {a.line for a in asked if labelling.sampled(a, 0.5)}
    tenth = {a.line for a in asked if labelling.sampled(a, 0.1)}
    assert tenth < half
    assert 140 < len(half) < 260 and 15 < len(tenth) < 70
    assert all(labelling.sampled(a, 1.0) for a in asked)
    # By content: the same request in another line is in or out alike.
    again = next(labelling.requests([line({"prompt": "question 7"})], counts))
    assert labelling.sampled(again, 0.5) == (8 in half)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0  # quarters add up exactly in binary
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_pacer_spaces_calls_by_the_rate() -> None:
    clock = FakeClock()
    pacer = labelling.Pacer(4, clock, clock.sleep)
    pacer.wait()  # the first call starts at once
    pacer.wait()
    clock.now += 0.125  # a call that took 1/8 s
    pacer.wait()
    clock.now += 1.0  # a slow call: the next starts at once
    pacer.wait()
    assert clock.slept == [0.25, 0.125]
    with pytest.raises(ValueError, match="rate must be above 0"):
        labelling.Pacer(0, clock, clock.sleep)
