"""The shared proxy core's pure parts: which headers cross, and the error body's shape."""

from __future__ import annotations

import json

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from specfleet_runtime import errors, proxy
from specfleet_runtime.router import errors as router_errors


def test_hop_by_hop_headers_and_those_named_in_connection_stay_behind() -> None:
    request = make_mocked_request(
        "POST",
        "/v1/chat/completions?a=1",
        headers=CIMultiDict(
            [
                ("Host", "gate:8080"),
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Transfer-Encoding", "chunked"),
                ("Content-Length", "2"),
                ("Authorization", "Bearer t"),
                ("X-Trace", "a"),
                ("X-Trace", "b"),
            ]
        ),
    )
    sent = proxy.upstream_request(request, b"{}")
    assert (sent.method, sent.target, sent.body) == ("POST", "/v1/chat/completions?a=1", b"{}")
    assert list(sent.headers.items()) == [
        ("Authorization", "Bearer t"),
        ("X-Trace", "a"),
        ("X-Trace", "b"),
    ]


def test_errors_have_the_openai_shape() -> None:
    response = errors.error_response(429, "busy", "server_overloaded", "queue_full", retry_after=2)
    assert response.status == 429
    assert response.headers["Retry-After"] == "2"
    assert response.content_type == "application/json"
    assert response.text is not None
    assert json.loads(response.text) == {
        "error": {
            "message": "busy",
            "type": "server_overloaded",
            "param": None,
            "code": "queue_full",
        }
    }
    assert proxy.UpstreamUnavailableError("x").response().status == 503
    assert proxy.UpstreamFailedError("x").response().status == 502


def test_the_proxy_and_the_router_answer_from_one_exception_tree() -> None:
    """Both branches derive from one root, whose ``response()`` makes every answer."""
    assert issubclass(proxy.ProxyError, errors.DataPathError)
    assert issubclass(router_errors.RouterError, errors.DataPathError)
    refused = router_errors.AuthenticationError("no key", param="authorization").response()
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert refused.text is not None
    assert json.loads(refused.text)["error"] == {
        "message": "no key",
        "type": "invalid_request_error",
        "param": "authorization",
        "code": "invalid_api_key",
    }
    assert "WWW-Authenticate" not in router_errors.NoBackendError("down").response().headers
