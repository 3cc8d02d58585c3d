"""Every answer the router makes itself instead of forwarding: its branch of the data path's
one exception tree (``specfleet_runtime.errors``, which documents the whole tree).

``ClientError`` and its subclasses are the 4xx answers: the request is wrong and sending it
again will not help (a body that cannot be read at all is the proxy core's
``specfleet_runtime.errors.BodyError``). ``NoBackendError`` is the one 5xx the router makes
itself (nothing ready to serve; Retry-After 5), besides ``specfleet_runtime.proxy.ProxyError``
for a failed upstream. Raised by ``keys``, ``routing`` and ``app`` (which answers a body the
core's parser refuses, ``specfleet.routing.request.MalformedRequestError``, as
``InvalidRequestError``); turned into responses (``exc.response()``) by ``app``.
"""

from __future__ import annotations

from types import MappingProxyType

from specfleet.routing import request
from specfleet_runtime.errors import DataPathError


class RouterError(DataPathError):
    """A request the router answers itself; ``str(exc)`` is the message sent to the client."""


class ClientError(RouterError):
    """The request is at fault (4xx); the message says what to change."""

    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class InvalidRequestError(ClientError):
    """Not JSON, not an object, or a field of the wrong type or missing."""

    @classmethod
    def of(cls, refused: request.MalformedRequestError) -> InvalidRequestError:
        """The answer to a body the parser refused: its message, naming its parameter."""
        return cls(str(refused), param=refused.param)


class ModelNotFoundError(ClientError):
    status = 404
    code = "model_not_found"


class AuthenticationError(ClientError):
    """No API key, or not one of the configured keys. The message never repeats the key."""

    status = 401
    code = "invalid_api_key"
    headers = MappingProxyType({"WWW-Authenticate": "Bearer"})


class PathNotFoundError(ClientError):
    status = 404
    code = "not_found"


class MethodNotAllowedError(ClientError):
    status = 405
    code = "method_not_allowed"


class NoBackendError(RouterError):
    """No backend that could take the request is ready (all tiers down, or the model named
    directly is not ready); clients should retry later."""

    status = 503
    error_type = "server_error"
    code = "no_ready_backend"
    # Readiness changes over seconds (the configuration is reread every second).
    retry_after = 5
