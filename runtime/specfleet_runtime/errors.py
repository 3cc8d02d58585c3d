"""Every answer the data path makes itself instead of forwarding: one exception tree, and the
OpenAI-style error body (``{"error": {"message", "type", "param", "code"}}``) they all use.

``DataPathError`` is the root. It carries what the body needs (the status, ``str(exc)`` as the
message, the type, the code and the offending parameter), and ``response()`` makes the answer.
Its two branches:

- ``specfleet_runtime.proxy.ProxyError``: the upstream could not answer before anything was
  sent (502; ``UpstreamUnavailableError``, 503, when no connection was made at all;
  ``UpstreamTimeoutError``, 504, when no response headers came in time). Raised by the proxy
  core, for the gate and the router alike.
- ``BodyError``: the client's request body cannot be read (400: a lying Content-Encoding, a
  truncated chunked body; 413: too large; 415: a Content-Encoding the data path does not
  decode). Raised by ``specfleet_runtime.proxy.read_body``, for the gate and the router alike.
- ``specfleet_runtime.router.errors.RouterError``: what the router answers itself, the 4xx
  ``ClientError``s (the request is wrong; sending it again will not help) and ``NoBackendError``
  (503: nothing ready to serve it).

An error whose ``retry_after`` is set is a "try again later": its answer carries Retry-After.

``error_response`` makes the same body for answers that are no exception (the gate's 429 and
503 when it sheds load or its upstream is unhealthy). Called by ``proxy``, ``gate.app`` and
``router``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

from aiohttp import web


class DataPathError(Exception):
    """A request the data path answers itself; ``str(exc)`` is the message the client gets."""

    status = 500
    error_type = "server_error"
    code = "internal_error"
    headers: ClassVar[Mapping[str, str]] = MappingProxyType({})
    """Headers the answer carries besides the body's."""
    retry_after: ClassVar[int | None] = None
    """Seconds after which sending the request again may succeed (the Retry-After header);
    None: not a matter of time."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

    def response(self) -> web.Response:
        response = error_response(
            self.status,
            str(self),
            self.error_type,
            self.code,
            param=self.param,
            retry_after=self.retry_after,
        )
        response.headers.update(self.headers)
        return response


def error_body(
    message: str, error_type: str, code: str, *, param: str | None = None
) -> dict[str, dict[str, str | None]]:
    """An OpenAI-style error object, as OpenAI clients and vLLM's own errors shape it."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    error_type: str,
    code: str,
    *,
    param: str | None = None,
    retry_after: int | None = None,
) -> web.Response:
    """A JSON error answer made by the data path itself (never by the upstream)."""
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    return web.Response(
        status=status,
        text=json.dumps(error_body(message, error_type, code, param=param)),
        content_type="application/json",
        headers=headers,
    )


class BodyError(DataPathError):
    """The request body cannot be read as sent (cut short, or its Content-Encoding lies)."""

    status = 400
    error_type = "invalid_request_error"
    code = "invalid_body"


class BodyTooLargeError(BodyError):
    status = 413
    code = "request_too_large"


class UnsupportedEncodingError(BodyError):
    """A Content-Encoding the data path does not decode."""

    status = 415
    code = "unsupported_content_encoding"
