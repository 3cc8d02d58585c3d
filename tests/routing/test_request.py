"""Parsing request bodies: what routing reads from each accepted shape, and a refusal naming
the parameter for each refused one."""

from __future__ import annotations

import json
import re

import pytest

from specfleet.routing import request
from specfleet.routing.request import Endpoint, parse

CHAT = Endpoint.CHAT
COMPLETIONS = Endpoint.COMPLETIONS


def user(content: object) -> dict[str, object]:
    return {"role": "user", "content": content}


@pytest.mark.parametrize(
    ("prompt", "text", "chars", "token_ids"),
    [
        ("Hello there", "Hello there", 11, 0),
        ("", "", 0, 0),
        (["one", "two"], "one\ntwo", 7, 0),
        ([1, 2, 3], "", 0, 3),
        ([[1, 2], [3]], "", 0, 3),
    ],
)
def test_completion_prompts(prompt: object, text: str, chars: int, token_ids: int) -> None:
    parsed = parse(COMPLETIONS, json.dumps({"model": "m", "prompt": prompt}).encode())
    assert (parsed.text, parsed.prompt_chars, parsed.prompt_token_ids) == (text, chars, token_ids)
    assert parsed.model == "m"
    assert parsed.stream is False
    assert parsed.max_tokens is None


def test_chat_reads_the_last_user_message_and_counts_every_message() -> None:
    messages = [
        {"role": "system", "content": "Be terse."},
        user("first question"),
        {"role": "assistant", "content": None, "tool_calls": []},
        user(
            [
                {"type": "text", "text": "look at"},
                {"type": "image_url"},
                {"type": "text", "text": "this"},
            ]
        ),
        {"role": "tool", "content": "42"},
    ]
    parsed = parse(CHAT, json.dumps({"messages": messages, "stream": True}).encode())
    assert parsed.text == "look at\nthis"
    assert (
        parsed.prompt_chars == len("Be terse.") + len("first question") + len("look at\nthis") + 2
    )
    assert parsed.stream is True
    assert parsed.model is None


def test_chat_without_a_user_message_reads_the_last_one() -> None:
    parsed = parse(CHAT, b'{"messages": [{"role": "system", "content": "only me"}]}')
    assert parsed.text == "only me"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 50, "max_tokens": 100}, 50),
        ({"max_completion_tokens": None, "max_tokens": 100}, 100),
        ({"max_tokens": None}, None),
    ],
)
def test_chat_output_cap_prefers_max_completion_tokens(
    fields: dict[str, object], expected: int | None
) -> None:
    body = {"messages": [user("hi")], **fields}
    assert parse(CHAT, json.dumps(body).encode()).max_tokens == expected


def test_completions_ignore_max_completion_tokens() -> None:
    body = {"prompt": "hi", "max_completion_tokens": 5, "max_tokens": 9}
    assert parse(COMPLETIONS, json.dumps(body).encode()).max_tokens == 9


@pytest.mark.parametrize(
    ("endpoint", "body", "message", "param"),
    [
        (CHAT, b"", "empty", None),
        (CHAT, b"   \n", "empty", None),
        (CHAT, b'{"messages": [', "not valid JSON", None),
        (CHAT, b"\xff\xfe\x00garbage", "not valid JSON", None),
        (CHAT, b'{"messages": [], "x": NaN}', "not valid JSON", None),
        (CHAT, b'{"x": 1e400}', "not valid JSON", None),
        (CHAT, b"[" * 100_000, "not valid JSON", None),
        (CHAT, b'["messages"]', "not an array", None),
        (CHAT, b'"hello"', "not a string", None),
        (CHAT, b"null", "not null", None),
        (CHAT, b"{}", "messages is missing", "messages"),
        (CHAT, b'{"messages": []}', "non-empty array", "messages"),
        (CHAT, b'{"messages": "hi"}', "non-empty array", "messages"),
        (CHAT, b'{"messages": ["hi"]}', "messages[0] must be an object", "messages[0]"),
        (CHAT, b'{"messages": [{"content": "hi"}]}', "role must be a string", "messages[0].role"),
        (
            CHAT,
            b'{"messages": [{"role": "user", "content": 5}]}',
            "string, an array of parts or null",
            "messages[0].content",
        ),
        (
            CHAT,
            b'{"messages": [{"role": "user", "content": [{"text": "x"}]}]}',
            "object with a type",
            "messages[0].content[0]",
        ),
        (
            CHAT,
            b'{"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}',
            "text must be a string",
            "messages[0].content[0].text",
        ),
        (COMPLETIONS, b'{"model": "m"}', "prompt is missing", "prompt"),
        (COMPLETIONS, b'{"prompt": null}', "prompt is missing", "prompt"),
        (COMPLETIONS, b'{"prompt": []}', "non-empty array", "prompt"),
        (COMPLETIONS, b'{"prompt": {"text": "x"}}', "non-empty array", "prompt"),
        (COMPLETIONS, b'{"prompt": ["a", 1]}', "token-id arrays", "prompt"),
        (COMPLETIONS, b'{"prompt": [true, false]}', "token-id arrays", "prompt"),
        (COMPLETIONS, b'{"prompt": "a", "model": 7}', "model must be a string", "model"),
        (COMPLETIONS, b'{"prompt": "a", "stream": "yes"}', "stream must be", "stream"),
        (COMPLETIONS, b'{"prompt": "a", "max_tokens": 0}', "positive integer", "max_tokens"),
        (COMPLETIONS, b'{"prompt": "a", "max_tokens": 1.5}', "positive integer", "max_tokens"),
        (COMPLETIONS, b'{"prompt": "a", "max_tokens": true}', "positive integer", "max_tokens"),
        (
            CHAT,
            b'{"messages": [{"role": "user", "content": "a"}], "max_completion_tokens": -1}',
            "positive integer",
            "max_completion_tokens",
        ),
    ],
)
def test_refused_bodies_name_the_parameter(
    endpoint: Endpoint, body: bytes, message: str, param: str | None
) -> None:
    with pytest.raises(request.MalformedRequestError, match=re.escape(message)) as refused:
        parse(endpoint, body)
    assert refused.value.param == param


def test_with_model_replaces_only_the_model() -> None:
    body = {"model": "assistant", "prompt": "caf\u00e9 \ud800", "max_tokens": 3, "extra": [1, {}]}
    parsed = parse(COMPLETIONS, json.dumps(body).encode())
    rewritten = json.loads(request.with_model(parsed, "med-8b"))
    assert rewritten == {**body, "model": "med-8b"}


def test_with_model_adds_a_missing_model() -> None:
    parsed = parse(COMPLETIONS, b'{"prompt": "x"}')
    assert json.loads(request.with_model(parsed, "small")) == {"prompt": "x", "model": "small"}
