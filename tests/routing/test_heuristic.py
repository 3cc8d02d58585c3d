"""The heuristic classifier: the properties routing relies on, each on a table of prompts."""

from __future__ import annotations

import pytest

from specfleet.routing import heuristic
from specfleet.routing.heuristic import classify
from tests.routing.builders import chat, completion

FACTUAL = [
    "What is the capital of France?",
    "Who wrote Hamlet?",
    "When did the Berlin Wall fall?",
    "Translate 'good morning' to French.",
]
MULTI_STEP = [
    "Think step by step. Compare the trade-offs of microservices versus a monolith for a team "
    "of twelve engineers, analyze the operational costs, and justify a recommendation.",
    "Explain why the 2008 financial crisis happened, evaluate the policy responses and their "
    "consequences, and argue which one mattered most.",
    "Plan a migration of our billing system:\n1. list the risks\n2. design the rollout\n"
    "3. assess the rollback strategy",
]
SQL = [
    "Write a SQL query that returns the top 5 customers by revenue.",
    "SELECT name, total FROM orders WHERE total > 100 -- why is this slow?",
    "select * from users where id = 4",
    "How do I do an inner join between invoices and payments?",
    "Write a query over the accounts table that finds duplicates.",
    "In Postgres, how do I index a jsonb column?",
    "insert into audit (id) values (1) fails, what is wrong",
]
NOT_SQL = [
    "Select the best answer from the options below.",
    "Please update me on the project.",
    "What is the capital of France?",
]
CODE = [
    "Write a Python function that parses ISO 8601 dates.",
    "```\nfor i in range(10): print(i)\n```",
    "def area(r):\n    return 3.14 * r * r\nwhat does this do?",
    "Why does my JavaScript promise never resolve?",
    "const f = (x) => x + 1; explain",
]
MATH = [
    "Solve for x: 3x + 5 = 20",
    "What is the integral of sin(x)?",
    "Prove that there are infinitely many primes.",
    "What is 2^10?",
    "Compute 17 * 23",
]


@pytest.mark.parametrize("text", SQL)
def test_sql_cues_give_the_sql_category(text: str) -> None:
    assert "sql" in classify(chat(text)).categories


@pytest.mark.parametrize("text", NOT_SQL)
def test_english_that_looks_like_sql_is_not_sql(text: str) -> None:
    assert "sql" not in classify(chat(text)).categories


@pytest.mark.parametrize("text", CODE)
def test_code_cues_give_the_code_category(text: str) -> None:
    assert "code" in classify(chat(text)).categories


@pytest.mark.parametrize("text", MATH)
def test_math_cues_give_the_math_category(text: str) -> None:
    assert "math" in classify(chat(text)).categories


@pytest.mark.parametrize("text", FACTUAL)
def test_a_short_factual_question_is_simple_and_short(text: str) -> None:
    result = classify(chat(text))
    assert result.categories == frozenset()
    assert result.complexity <= 0.3
    assert result.expected_tokens <= 128


@pytest.mark.parametrize("text", MULTI_STEP)
def test_multi_step_reasoning_scores_above_every_factual_question(text: str) -> None:
    result = classify(chat(text))
    assert "reasoning" in result.categories
    assert result.complexity > 0.6
    assert result.expected_tokens >= 1024
    assert all(result.complexity > classify(chat(q)).complexity for q in FACTUAL)


def test_a_longer_max_tokens_never_gives_a_shorter_expected_output() -> None:
    caps = [1, 8, 16, 64, 128, 256, 512, 1024, 2048, 4096, 16384, 131072]
    for text in [*FACTUAL, *MULTI_STEP, *CODE]:
        expected = [classify(chat(text, max_tokens=cap)).expected_tokens for cap in caps]
        assert expected == sorted(expected), text
        assert expected[0] == 1
        assert expected[-1] > expected[1]
        assert all(e <= cap for e, cap in zip(expected, caps, strict=True))


def test_the_cap_lifts_the_estimate_to_a_quarter_of_itself() -> None:
    assert classify(chat(FACTUAL[0], max_tokens=4096)).expected_tokens == 1024
    assert classify(chat(FACTUAL[0])).expected_tokens < 1024


def test_a_longer_max_tokens_never_lowers_complexity() -> None:
    scores = [classify(chat(FACTUAL[0], max_tokens=cap)).complexity for cap in (16, 256, 8192)]
    assert scores == sorted(scores)
    assert scores[0] < scores[-1]


def test_asking_for_a_short_answer_expects_less_and_scores_lower() -> None:
    plain = classify(chat("Explain how tides work."))
    short = classify(chat("Explain how tides work, briefly, in one sentence."))
    assert short.expected_tokens < plain.expected_tokens
    assert short.complexity < plain.complexity


def test_asking_for_a_long_form_expects_a_long_answer() -> None:
    assert classify(chat("Write a detailed essay on the causes of WWI.")).expected_tokens >= 1024


def test_a_word_count_sets_the_expected_length() -> None:
    assert classify(chat("Describe Rome in 300 words.")).expected_tokens == 400
    assert classify(chat("Describe Rome in 30 words.")).expected_tokens == 40


def test_a_longer_prompt_scores_higher() -> None:
    paragraph = "The committee met on Tuesday and agreed on the budget for next year. "
    scores = [classify(chat("Summarize: " + paragraph * n)).complexity for n in (1, 10, 100)]
    assert scores == sorted(scores)
    assert scores[0] < scores[-1]


def test_token_id_prompts_count_as_prompt_tokens() -> None:
    assert classify(completion(list(range(1000)))).prompt_tokens == 1000
    assert classify(completion("x" * 400)).prompt_tokens == 100


def test_cues_are_read_from_the_head_and_tail_of_a_long_text_only() -> None:
    filler = "lorem ipsum " * 2000
    assert "sql" in classify(chat("Write SQL for this. " + filler)).categories
    assert "sql" in classify(chat(filler + " Now write SQL for this.")).categories
    middle = filler[: len(filler) // 2] + " sql " + filler[len(filler) // 2 :]
    assert len(middle) > 2 * heuristic.CUE_WINDOW
    assert "sql" not in classify(chat(middle)).categories
