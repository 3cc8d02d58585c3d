"""The streaming reverse-proxy core shared by the gate sidecar and the router.

Owns: forwarding one aiohttp server request to an upstream and streaming the answer back chunk by
chunk (Server-Sent Events arrive as they are produced, nothing is buffered); which headers cross
(hop-by-hop headers do not); the errors an upstream can cause, as one small exception tree; and
the OpenAI-style error body (``{"error": {"message", "type", "param", "code"}}``) that every
answer the data path makes itself uses.

The upstream is reached through a ``Transport`` (one method, ``send``), so unit tests pass a fake
and need no sockets; ``AiohttpTransport`` is the real one. Callers: ``specfleet_runtime.gate.app``
and, later, the router.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import yarl
from aiohttp import web
from multidict import CIMultiDict, MultiMapping

log = logging.getLogger(__name__)

# RFC 9110 section 7.6.1: these describe one connection and never cross a proxy. Host and
# Content-Length are set again for the upstream request by the client library.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED_TO_UPSTREAM = _HOP_BY_HOP | {"host", "content-length"}


class ProxyError(Exception):
    """The upstream could not answer; nothing has been sent to the client yet."""

    status = 502
    error_type = "upstream_error"
    code = "upstream_failed"

    def response(self) -> web.Response:
        return error_response(self.status, str(self), self.error_type, self.code)


class UpstreamUnavailableError(ProxyError):
    """No connection to the upstream (refused, unreachable, connect timeout): try again later."""

    status = 503
    code = "upstream_unavailable"


class UpstreamFailedError(ProxyError):
    """The upstream connection broke or its answer was not valid HTTP."""


def error_body(message: str, error_type: str, code: str) -> dict[str, dict[str, str | None]]:
    """An OpenAI-style error object, as OpenAI clients and vLLM's own errors shape it."""
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def error_response(
    status: int,
    message: str,
    error_type: str,
    code: str,
    *,
    retry_after: int | None = None,
) -> web.Response:
    """A JSON error answer made by the data path itself (never by the upstream)."""
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    return web.Response(
        status=status,
        text=json.dumps(error_body(message, error_type, code)),
        content_type="application/json",
        headers=headers,
    )


@dataclass(frozen=True)
class UpstreamRequest:
    """What is sent upstream: method, raw path and query as the client sent them, end-to-end
    headers, the whole body."""

    method: str
    target: str
    headers: CIMultiDict[str]
    body: bytes


class UpstreamResponse(Protocol):
    """An upstream answer whose body is read as it arrives."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> MultiMapping[str]: ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises ProxyError if the upstream breaks off."""
        ...

    async def aclose(self) -> None:
        """Release the upstream connection; before the body's end, this aborts the request."""
        ...


class Transport(Protocol):
    """Sends a request upstream; raises ProxyError if no answer starts."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse: ...


class Outcome(enum.Enum):
    """How a forwarded response ended, for the caller's metrics."""

    COMPLETE = "complete"
    CLIENT_DISCONNECTED = "client_disconnected"
    UPSTREAM_BROKE = "upstream_broke"


@dataclass(frozen=True)
class Forwarded:
    response: web.StreamResponse
    outcome: Outcome


def upstream_request(request: web.BaseRequest, body: bytes) -> UpstreamRequest:
    """The upstream request for a client request: same method, path, headers and body bytes."""
    return UpstreamRequest(
        method=request.method,
        target=request.raw_path,
        headers=_end_to_end(request.headers.items(), _NOT_FORWARDED_TO_UPSTREAM),
        body=body,
    )


async def forward(request: web.BaseRequest, body: bytes, transport: Transport) -> Forwarded:
    """Send ``request`` (whose body was read as ``body``) upstream and stream the answer back.

    Raises ProxyError when the upstream gives no answer; nothing has then been sent, so the
    caller may answer with ``exc.response()`` or try another upstream. Once the answer has
    started, an upstream failure aborts the client's connection so the client sees a truncated
    response rather than a clean end. A client that goes away stops the stream and the upstream
    request (closing the upstream connection is how vLLM learns to abort the sequence).
    """
    upstream = await transport.send(upstream_request(request, body))
    try:
        response = web.StreamResponse(
            status=upstream.status, headers=_end_to_end(upstream.headers.items(), _HOP_BY_HOP)
        )
        try:
            await response.prepare(request)
            async for chunk in upstream.chunks():
                await response.write(chunk)
            await response.write_eof()
        except ConnectionError:
            return Forwarded(response, Outcome.CLIENT_DISCONNECTED)
        except ProxyError as exc:
            log.warning(
                "upstream broke off %s %s mid-response: %s", request.method, request.path, exc
            )
            if request.transport is not None:
                request.transport.abort()
            return Forwarded(response, Outcome.UPSTREAM_BROKE)
        return Forwarded(response, Outcome.COMPLETE)
    finally:
        await upstream.aclose()


def _end_to_end(items: Iterable[tuple[str, str]], dropped: frozenset[str]) -> CIMultiDict[str]:
    items = list(items)
    # Headers named in Connection are hop-by-hop too (RFC 9110 section 7.6.1).
    dropped = dropped.union(
        token.strip().lower()
        for name, value in items
        if name.lower() == "connection"
        for token in value.split(",")
    )
    return CIMultiDict((name, value) for name, value in items if name.lower() not in dropped)


class _AiohttpResponse:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> MultiMapping[str]:
        return self._response.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except aiohttp.ClientError as exc:
            raise UpstreamFailedError(f"upstream connection broke: {exc}") from exc

    async def aclose(self) -> None:
        # close() drops the connection, release() keeps it for reuse once the body was read.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpTransport:
    """The real transport: one aiohttp session to one upstream base URL.

    The session must not decompress (the body crosses as the upstream sent it, with its
    Content-Encoding) and must not cap connections (the gate's admission does); ``session()``
    makes one so.
    """

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")

    @staticmethod
    def session(connect_timeout: float = 10.0) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            # Generations run for minutes: only connecting is bounded.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
            auto_decompress=False,
            # Add nothing the client did not send; the upstream sees the client's request.
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        # encoded=True: the path crosses byte for byte, as the client escaped it.
        url = yarl.URL(self._base_url + request.target, encoded=True)
        try:
            response = await self._session.request(
                request.method,
                url,
                headers=request.headers,
                data=request.body or None,
                allow_redirects=False,
            )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise UpstreamUnavailableError(
                f"cannot connect to upstream {self._base_url}: {exc}"
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamFailedError(f"upstream {self._base_url} failed: {exc}") from exc
        return _AiohttpResponse(response)
