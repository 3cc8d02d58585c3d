"""A body the routing core's parser refuses is the router's 400 ``invalid_request``: the same
message, the same parameter, the same bytes on the wire."""

from __future__ import annotations

import pytest

from specfleet.routing import request
from specfleet_runtime.router import errors

CHAT = request.Endpoint.CHAT
COMPLETIONS = request.Endpoint.COMPLETIONS


def refusal(endpoint: request.Endpoint, body: bytes) -> errors.InvalidRequestError:
    with pytest.raises(request.MalformedRequestError) as refused:
        request.parse(endpoint, body)
    return errors.InvalidRequestError.of(refused.value)


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        (CHAT, b"", None),
        (CHAT, b'{"messages": [', None),
        (CHAT, b'{"messages": [{"content": "hi"}]}', "messages[0].role"),
        (COMPLETIONS, b'{"prompt": "a", "max_tokens": 0}', "max_tokens"),
    ],
)
def test_a_refused_body_is_a_400_naming_its_parameter(
    endpoint: request.Endpoint, body: bytes, param: str | None
) -> None:
    error = refusal(endpoint, body)
    assert (error.status, error.error_type, error.code) == (
        400,
        "invalid_request_error",
        "invalid_request",
    )
    assert error.param == param
    assert str(error)


def test_the_answer_is_the_routers_own_error_body() -> None:
    response = refusal(COMPLETIONS, b'{"model": "m"}').response()
    assert response.status == 400
    assert response.content_type == "application/json"
    assert response.text == (
        '{"error": {"message": "prompt is missing: send a string, strings or token ids", '
        '"type": "invalid_request_error", "param": "prompt", "code": "invalid_request"}}'
    )
