"""Redaction: every built-in detector on planted values, anywhere in a body; what must survive."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from specfleet.api.capture import RedactionPattern
from specfleet_runtime.capture import redaction

CARD = "4111 1111 1111 1111"  # a test Visa number: its Luhn digit holds
CARD_PLAIN = "5500005555555559"
NOT_A_CARD = "4111 1111 1111 1112"  # same shape, wrong check digit
BEARER = "Bearer abc123DEF456ghi789JKL"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJqYW5lIn0.c2lnbmF0dXJlLXZhbHVl"
OPENAI_KEY = "sk-proj-AbCdEfGhIjKlMnOpQrStUv12"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
GITHUB_TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2


@pytest.mark.parametrize(
    ("text", "expected", "detector"),
    [
        ("write to jane.doe+x@example.co.uk today", "write to [email] today", "email"),
        (f"my card is {CARD}.", "my card is [card].", "card"),
        (f"card:{CARD_PLAIN}", "card:[card]", "card"),
        ("call (415) 555-0132 now", "call [phone] now", "phone"),
        ("or +44 7911 123456", "or [phone]", "phone"),
        ("or +447911123456", "or [phone]", "phone"),
        ("or 415-555-0132", "or [phone]", "phone"),
        (f"Authorization: {BEARER}", "Authorization: [bearer]", "bearer"),
        (f"token {JWT} here", "token [jwt] here", "jwt"),
        (f"use {OPENAI_KEY}", "use [api_key]", "api_key"),
        (f"aws {AWS_KEY} key", "aws [api_key] key", "api_key"),
        (f"gh {GITHUB_TOKEN}", "gh [api_key]", "api_key"),
        ('config api_key="Zx9Yw8Vu7Ts6Rq5P"', 'config api_key="[api_key]"', "api_key"),
        ("password: hunter2hunter2hunter2", "password: [api_key]", "api_key"),
    ],
)
def test_a_built_in_detector_replaces_its_match(text: str, expected: str, detector: str) -> None:
    counts: Counter[str] = Counter()
    assert redaction.Redactor().text(text, counts) == expected
    assert counts == {detector: 1}


@pytest.mark.parametrize(
    "text",
    [
        "What is the capital of France?",
        f"order {NOT_A_CARD} is not a card",
        "order number 12345678901234 shipped",
        "on 2024-01-15 at 10:30, version 3.11.4, host 192.168.1.100",
        "ISBN 978-3-16-148410-0 costs 1,234,567.89",
        "x = 10 000 000; count 1 2 3 4 5 6 7 8 9 10",
        "the token budget is 4096 tokens; the secret is patience",
        "def f(a, b):\n    return a @ b  # matrix product",
    ],
)
def test_ordinary_text_and_digits_survive(text: str) -> None:
    counts: Counter[str] = Counter()
    assert redaction.Redactor().text(text, counts) == text
    assert not counts


def test_the_luhn_check() -> None:
    assert redaction.luhn_valid("4111111111111111")
    assert redaction.luhn_valid("79927398713")
    assert not redaction.luhn_valid("4111111111111112")
    assert not redaction.luhn_valid("79927398710")


def test_every_string_of_nested_messages_and_tool_calls_is_redacted() -> None:
    body = {
        "model": "assistant",
        "messages": [
            {"role": "system", "content": "Reach support at help@corp.example."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"Charge {CARD} please"},
                    {"type": "image_url", "image_url": {"url": "https://img.example/a.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {
                            "name": "send_mail",
                            "arguments": json.dumps({"to": "bob@example.org", "auth": BEARER}),
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": f"sent; key {OPENAI_KEY}"},
        ],
        "max_tokens": 64,
    }
    original = json.dumps(body)
    counts: Counter[str] = Counter()
    redacted = redaction.Redactor().redact(body, counts)
    text = json.dumps(redacted)
    for planted in ("help@corp.example", CARD, "bob@example.org", BEARER, OPENAI_KEY):
        assert planted not in text
    assert counts == {"email": 2, "card": 1, "bearer": 1, "api_key": 1}
    assert json.dumps(body) == original, "the input is not changed"
    assert isinstance(redacted, dict)
    assert redacted["max_tokens"] == 64
    assert redacted["messages"][1]["content"][1]["image_url"]["url"] == "https://img.example/a.png"
    assert redacted["messages"][2]["tool_calls"][0]["function"]["name"] == "send_mail"


def test_the_teams_patterns_run_after_the_built_in_ones() -> None:
    redactor = redaction.Redactor(
        [
            RedactionPattern(name="ticket", regex=r"\bTKT-\d{4,}\b"),
            RedactionPattern(name="account", regex=r"\bACC\d{6}\b"),
        ]
    )
    counts: Counter[str] = Counter()
    text = "TKT-12345 for ACC123456 and ACC654321, mail ops@example.com"
    assert redactor.text(text, counts) == "[ticket] for [account] and [account], mail [email]"
    assert counts == {"ticket": 1, "account": 2, "email": 1}


FRAGMENTS = (
    *(" ", "\n", "-", ".", "@", "+", "(", ")", ":", "=", '"', "'", "_", "/", "9", "00"),
    *("hello", "jane.doe", "example.com", "é", "日本", "2024-01-15", "abcdEFGH"),
    *("BEARER", "bearer ", "Bearer\t", "eyJ", "sk-", "AKIA", "ghp_", "xoxb-", "AIza"),
    *("API_KEY", "Token", "password", "4111", "1111", "415", "555", "0132", "+44", "7911"),
    "123456",
)


def test_the_screen_finds_a_match_exactly_where_some_built_in_detector_does() -> None:
    """The one search that lets a string skip the detectors must never miss what one of them
    would match (nor, by design, match where none does)."""
    rng = random.Random(7)
    texts = [
        *(
            "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 24)))
            for _ in range(5000)
        ),
        CARD, CARD_PLAIN, NOT_A_CARD, BEARER, JWT, OPENAI_KEY, AWS_KEY, GITHUB_TOKEN,
        "bearer " + "x" * 8, "PASSWORD= " + "a" * 16, "(415) 555-0132", "+4479111234",
    ]  # fmt: skip
    disagreements = [
        text
        for text in texts
        if (redaction.SCREEN.search(text) is not None)
        != any(d.pattern.search(text) for d in redaction.BUILT_IN)
    ]
    assert disagreements == []
    assert sum(redaction.SCREEN.search(text) is not None for text in texts) > 500


def test_a_string_the_screen_passes_still_meets_the_teams_patterns() -> None:
    redactor = redaction.Redactor([RedactionPattern(name="ticket", regex=r"\bTKT-\d{4,}\b")])
    counts: Counter[str] = Counter()
    assert redaction.SCREEN.search("see TKT-12345") is None
    assert redactor.text("see TKT-12345", counts) == "see [ticket]"
    assert counts == {"ticket": 1}
