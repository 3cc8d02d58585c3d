"""Fuzzing the pure request path (parse, classify, decide) with hypothesis: whatever the bytes,
the outcome is a routing decision or the intended 4xx, never another exception.

Examples are bounded (sizes and counts) so the whole file runs in seconds in the unit suite;
no example database is written (CI runs are independent)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specfleet.routing import request
from specfleet.routing.request import Endpoint
from specfleet_runtime.router import errors
from specfleet_runtime.router.routing import Route, Table, decide
from tests.router.builders import config
from tests.routing.builders import POLICY

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

NEAR_VALID = settings(FUZZ, max_examples=400)

TABLE = Table(
    config(
        overrides=[
            {"match": {"pattern": r"(?i)\bselect\b.*\bfrom\b"}, "model": "large"},
            {"match": {"category": "sql"}, "model": "medium"},
            {"match": {"category": "math"}, "model": "large"},
        ]
    )
)
SERVED = ["small", "med-8b", "large"]
TIER_MODELS = {"small", "medium", "large"}


def outcome(endpoint: Endpoint, body: bytes) -> Route | errors.ClientError:
    """What the router's pure core makes of a body: a route, or the client error it answers."""
    try:
        return decide(TABLE, request.parse(endpoint, body))
    except request.MalformedRequestError as exc:
        return errors.InvalidRequestError.of(exc)
    except errors.ClientError as exc:
        return exc


def check(result: Route | errors.ClientError) -> None:
    if isinstance(result, errors.ClientError):
        assert type(result) in (errors.InvalidRequestError, errors.ModelNotFoundError)
        assert 400 <= result.status < 500
        assert str(result)
        assert result.param is None or isinstance(result.param, str)
        return
    assert result.target.model in TIER_MODELS
    assert result.fallback is None or result.fallback.model != result.target.model
    if result.classification is not None:
        assert 0.0 <= result.classification.complexity <= 1.0
        assert result.classification.expected_tokens >= 1


endpoints = st.sampled_from(list(Endpoint))


@FUZZ
@given(endpoints, st.binary(max_size=512))
def test_arbitrary_bytes(endpoint: Endpoint, body: bytes) -> None:
    check(outcome(endpoint, body))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(endpoints, json_values)
def test_arbitrary_json(endpoint: Endpoint, value: Any) -> None:
    check(outcome(endpoint, json.dumps(value).encode()))


# Near-valid requests: at every level a valid shape three times in four, else any JSON value,
# so that examples reach deep into the structure before going wrong.
def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.integers(0, 3).flatmap(lambda roll: valid if roll else json_values)


texts = st.text(max_size=300) | st.sampled_from(
    [
        "What is the capital of France?",
        "SELECT name FROM users",
        "Think step by step and compare the trade-offs, then justify a plan.",
        "Solve for x: 3x + 5 = 20",
        "```python\ndef f(x):\n    return x\n```",
        "1. first\n2. second\n3. third",
        "",
    ]
)
models = mostly(st.sampled_from([POLICY, "auto", *SERVED]) | st.text(max_size=20))
parts = mostly(
    st.fixed_dictionaries({"type": st.just("text"), "text": mostly(texts)})
    | st.fixed_dictionaries({"type": mostly(st.sampled_from(["image_url", "input_audio"]))})
)
contents = mostly(texts | st.none() | st.lists(parts, max_size=3))
roles = mostly(st.sampled_from(["system", "user", "assistant", "tool"]))
messages = mostly(
    st.lists(mostly(st.fixed_dictionaries({"role": roles, "content": contents})), max_size=4)
)
token_ids = st.lists(st.integers(0, 200_000), min_size=1, max_size=20)
prompts = mostly(
    texts
    | st.lists(mostly(texts), min_size=1, max_size=3)
    | mostly(token_ids)
    | st.lists(mostly(token_ids), min_size=1, max_size=3)
)
caps = mostly(st.integers(-3, 1 << 40) | st.none())


def near_valid(endpoint: Endpoint) -> st.SearchStrategy[dict[str, Any]]:
    required = {"messages": messages} if endpoint is Endpoint.CHAT else {"prompt": prompts}
    return st.fixed_dictionaries(
        {},
        optional={
            **required,
            "model": models,
            "stream": mostly(st.booleans()),
            "max_tokens": caps,
            "max_completion_tokens": caps,
            "temperature": json_values,
        },
    )


def check_near_valid(endpoint: Endpoint, body: dict[str, Any]) -> None:
    result = outcome(endpoint, json.dumps(body).encode())
    check(result)
    if isinstance(result, Route) and result.classification is not None:
        parsed = request.parse(endpoint, json.dumps(body).encode())
        if parsed.max_tokens is not None:
            assert result.classification.expected_tokens <= parsed.max_tokens
        rewritten = json.loads(request.with_model(parsed, result.target.served_name))
        assert rewritten == {**body, "model": result.target.served_name}


@NEAR_VALID
@given(near_valid(Endpoint.CHAT))
def test_near_valid_chat_requests(body: dict[str, Any]) -> None:
    check_near_valid(Endpoint.CHAT, body)


@NEAR_VALID
@given(near_valid(Endpoint.COMPLETIONS))
def test_near_valid_completion_requests(body: dict[str, Any]) -> None:
    check_near_valid(Endpoint.COMPLETIONS, body)


valid_parts = st.fixed_dictionaries({"type": st.just("text"), "text": texts}) | st.just(
    {"type": "image_url", "image_url": {"url": "data:,"}}
)
valid_chats = st.fixed_dictionaries(
    {
        "model": st.sampled_from([POLICY, "auto", *SERVED]),
        "messages": st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.sampled_from(["system", "user", "assistant"]),
                    "content": texts | st.none() | st.lists(valid_parts, max_size=3),
                }
            ),
            min_size=1,
            max_size=4,
        ),
    },
    optional={"max_tokens": st.integers(1, 1 << 20), "stream": st.booleans()},
)


@FUZZ
@given(valid_chats)
def test_valid_requests_are_always_routed(body: dict[str, Any]) -> None:
    result = outcome(Endpoint.CHAT, json.dumps(body).encode())
    assert isinstance(result, Route), result
    check(result)
