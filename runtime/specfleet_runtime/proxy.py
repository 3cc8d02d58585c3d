"""The streaming reverse-proxy core shared by the gate sidecar and the router.

Owns: reading a client's request body (``read_body``: decoded from its Content-Encoding, bounded,
a bad one refused with a 4xx ``errors.BodyError``); forwarding one aiohttp server request to an
upstream and streaming the answer back chunk by chunk (Server-Sent Events arrive as they are
produced, nothing is buffered); which headers cross (hop-by-hop headers do not, nor the client's
Content-Encoding, since the body crosses decoded); and the errors an upstream can cause,
``ProxyError`` and its subclasses, a branch of the data path's one exception tree
(``specfleet_runtime.errors``).

The servers run with aiohttp's own request decompression off (``serving.SERVER_OPTIONS``), so a
body arrives as the client sent it and ``read_body`` alone decides what to do with its coding.

The upstream is reached through a ``Transport`` (one method, ``send``), so unit tests pass a fake
and need no sockets; ``Http1Transport``, a small HTTP/1.1 client with a keep-alive pool, is the
real one. Callers: ``specfleet_runtime.gate.app`` and ``specfleet_runtime.router.app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import os
import re
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, cast

import yarl
from aiohttp import http_exceptions, web
from multidict import CIMultiDict, MultiMapping

from specfleet_runtime import errors

log = logging.getLogger(__name__)

# RFC 9110 section 7.6.1: these describe one connection and never cross a proxy. Host and
# Content-Length are set again for the upstream request by the transport.
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
# The body goes upstream as read_body decoded it.
_NOT_FORWARDED_TO_UPSTREAM = _HOP_BY_HOP | {"host", "content-length", "content-encoding"}

HEADER_REQUEST_ID = "X-Request-Id"
"""A request's ID: the client's, or one the router makes; it crosses to the upstream, comes back
on the answer and names the request in log lines."""
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    """A request ID no other process makes: this process's random 64 bits and a count (a
    fraction of a UUID4's cost, which reads the system's random source each time)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


HEADER_QUEUE_TIMEOUT = "X-Specfleet-Queue-Timeout"
"""Seconds a gate may keep the request queued, at most: the router sends it under its own
first-byte timeout, so that a busy gate answers (503 queue_timeout) before the router gives up
on it as a dead backend."""

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
"""Room for a long-context prompt or a few images as base64, decoded; beyond it, 413."""

# Content-Encodings of a request body that read_body decodes (zlib's 32 + 15: a gzip or zlib
# header, whichever it finds).
_DECODED = frozenset({"gzip", "x-gzip", "deflate"})
_ZLIB_OR_GZIP = 32 + zlib.MAX_WBITS


class ProxyError(errors.DataPathError):
    """The upstream could not answer; nothing has been sent to the client yet."""

    status = 502
    error_type = "upstream_error"
    code = "upstream_failed"


class UpstreamUnavailableError(ProxyError):
    """No connection to the upstream (refused, unreachable, connect timeout): try again later."""

    status = 503
    code = "upstream_unavailable"
    retry_after = 1


class UpstreamTimeoutError(ProxyError):
    """The upstream took the request but sent no response headers in time."""

    status = 504
    code = "upstream_timeout"
    retry_after = 1


class UpstreamFailedError(ProxyError):
    """The upstream connection broke or its answer was not valid HTTP."""


@dataclass(frozen=True)
class UpstreamRequest:
    """What is sent upstream: method, raw path and query as the client sent them, end-to-end
    headers, the whole body."""

    method: str
    target: str
    headers: CIMultiDict[str]
    body: bytes
    first_byte_timeout: float | None = None
    """Seconds from sending for the response headers to come, if not the transport's own."""


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
    """Sends a request upstream; raises ProxyError if no answer starts. ``forward`` makes a
    request for each send, so a transport that wraps another may change its headers."""

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


async def read_body(request: web.BaseRequest, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> bytes:
    """The request's body, decoded from its Content-Encoding (none, gzip or deflate), at most
    ``max_bytes`` once decoded. Raises ``errors.BodyError`` (400) for a body cut short or not
    in its stated coding, ``BodyTooLargeError`` (413), ``UnsupportedEncodingError`` (415)."""
    codings = (
        [
            token.strip().lower()
            for value in request.headers.getall("Content-Encoding")
            for token in value.split(",")
            if token.strip() and token.strip().lower() != "identity"
        ]
        if "Content-Encoding" in request.headers
        else []
    )
    if len(codings) > 1 or (codings and codings[0] not in _DECODED):
        raise errors.UnsupportedEncodingError(
            f"Content-Encoding {', '.join(codings)[:100]!r} is not supported; send the body "
            "uncompressed, or compressed with gzip or deflate"
        )
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(max_bytes) from None
    except (web.RequestPayloadError, http_exceptions.HttpProcessingError) as exc:
        # The body's framing broke (a chunked body cut short, a bad chunk size line).
        reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        raise errors.BodyError(f"the request body could not be read: {reason}") from None
    if not codings:
        return raw
    decoder = zlib.decompressobj(_ZLIB_OR_GZIP)
    try:
        body = decoder.decompress(raw, max_bytes + 1)
    except zlib.error as exc:
        raise errors.BodyError(
            f"the request body is not valid {codings[0]} as its Content-Encoding says: {exc}"
        ) from None
    if len(body) > max_bytes:
        raise _too_large(max_bytes)
    if not decoder.eof or decoder.unused_data:
        raise errors.BodyError(
            f"the request body is not valid {codings[0]} as its Content-Encoding says: "
            + ("it ends early" if not decoder.eof else "bytes follow its end")
        )
    return body


def _too_large(max_bytes: int) -> errors.BodyTooLargeError:
    return errors.BodyTooLargeError(
        f"the request body is larger than the limit of {max_bytes} bytes"
    )


def upstream_request(request: web.BaseRequest, body: bytes) -> UpstreamRequest:
    """The upstream request for a client request: same method, path, headers and body bytes."""
    return UpstreamRequest(
        method=request.method,
        target=request.raw_path,
        headers=_end_to_end(request.headers.items(), _NOT_FORWARDED_TO_UPSTREAM),
        body=body,
    )


async def forward(
    request: web.BaseRequest,
    body: bytes,
    transport: Transport,
    first_chunk: Callable[[UpstreamResponse], None] | None = None,
) -> Forwarded:
    """Send ``request`` (whose body was read as ``body``) upstream and stream the answer back.
    ``first_chunk``, if given, is called with the upstream answer when the first chunk of its
    body arrives, before it is passed on (the gate times a stream's first token by it).

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
                if first_chunk is not None:
                    first_chunk(upstream)
                    first_chunk = None
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


class Http1Transport:
    """The real transport: HTTP/1.1 to one upstream over a pool of keep-alive connections.

    Written on asyncio's protocols rather than on aiohttp's client because it sits on every
    request's path: aiohttp's client session (request and response objects, timers, cookie jar,
    stream reader) takes about twice the CPU per short request that this does (85 against 45 us
    with uvloop), and that time adds to every request's first byte. Plain ``http://`` only: the
    upstream is the vLLM server beside the gate.

    The pool is unbounded (the gate's admission bounds concurrency) and keeps a connection for
    reuse once its response was read to the end; the upstream may close idle ones whenever it
    likes. Connecting has a timeout, and so, when ``first_byte_timeout`` is set, has the wait for
    the response headers (``UpstreamTimeoutError``); a body that has started may take as long
    as it takes: generations stream for minutes.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 10.0,
        first_byte_timeout: float | None = None,
    ) -> None:
        url = yarl.URL(base_url)
        if url.scheme != "http" or not url.host:
            raise ValueError(f"upstream must be an http:// URL, got {base_url!r}")
        self._base_url = base_url.rstrip("/")
        self._host = url.host
        self._port = url.port or 80
        self._host_header = (
            f"[{url.host}]:{self._port}" if ":" in url.host else f"{url.host}:{self._port}"
        )
        self._prefix = url.raw_path.rstrip("/")
        self._connect_timeout = connect_timeout
        self._first_byte_timeout = first_byte_timeout
        self._idle: list[_Connection] = []

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send ``request``; the response once its headers are in. Raises UpstreamTimeoutError
        when they do not come within the request's (else the transport's) first-byte timeout
        from now, connecting included."""
        timeout = request.first_byte_timeout or self._first_byte_timeout
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        message = self._message(request)
        connection = self._idle.pop() if self._idle else await self._connect()
        retry = connection.reused and request.method in _IDEMPOTENT_METHODS
        while True:
            response = connection.exchange(message, head_request=request.method == "HEAD")
            try:
                await response.wait_head(deadline)
            except TimeoutError:
                connection.close()  # the upstream must learn that nobody waits any more
                raise UpstreamTimeoutError(
                    f"upstream {self._base_url} sent no response headers within {timeout:g} s"
                ) from None
            except UpstreamFailedError:
                # A reused connection that the upstream closed as the request went out: the
                # request was not seen, so an idempotent one is sent again once, as aiohttp does.
                if retry and not response.received:
                    retry = False
                    connection = await self._connect()
                    continue
                raise
            except BaseException:
                connection.close()  # cancelled: the upstream must learn that nobody waits
                raise
            return response

    def close(self) -> None:
        """Close the idle connections (those in use close when their responses end)."""
        for connection in list(self._idle):
            connection.close()
        self._idle.clear()

    def _message(self, request: UpstreamRequest) -> bytes:
        lines = [f"{request.method} {self._prefix}{request.target} HTTP/1.1\r\n"]
        lines.append(f"Host: {self._host_header}\r\n")
        lines.extend(f"{name}: {value}\r\n" for name, value in request.headers.items())
        body = request.body
        if body or request.method not in _BODYLESS_METHODS:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        head = "".join(lines)
        # Line breaks only where this method put them: a CR or LF inside a header would let it
        # smuggle a second request (header values from aiohttp's parser never hold one).
        if head.count("\n") != len(lines) or head.count("\r") != len(lines):
            raise ValueError("a request line or header holds a CR or LF")
        return head.encode("utf-8", "surrogateescape") + body

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self._idle), self._host, self._port
                )
        except TimeoutError:
            raise UpstreamUnavailableError(
                f"cannot connect to upstream {self._base_url}: no connection within"
                f" {self._connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise UpstreamUnavailableError(
                f"cannot connect to upstream {self._base_url}: {exc.strerror or exc}"
            ) from exc
        return connection


# Methods whose bodyless requests carry no Content-Length (the others get "0"), as aiohttp does.
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# RFC 9110 section 9.2.2.
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_MAX_HEAD = 64 * 1024  # bytes of status line and headers
_MAX_LINE = 8 * 1024  # bytes of a chunk-size or trailer line
# While more than this waits for a slow client, stop reading from the upstream.
_PAUSE_READING = 64 * 1024
# RFC 9112 section 7.1: chunk-size [ chunk-ext ].
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n]*)?")


class _Connection(asyncio.Protocol):
    """One connection to the upstream, carrying one exchange at a time."""

    def __init__(self, idle: list[_Connection]) -> None:
        self._idle = idle
        self._transport: asyncio.Transport | None = None
        self._response: _Http1Response | None = None
        self.reused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP connection's transport (uvloop's is not a subclass of asyncio.Transport).
        self._transport = cast(asyncio.Transport, transport)

    def exchange(self, message: bytes, *, head_request: bool) -> _Http1Response:
        """Send one request; the response is read into the returned object."""
        assert self._transport is not None and self._response is None
        response = self._response = _Http1Response(self, self._transport, head_request)
        self._transport.write(message)
        return response

    def release(self, response: _Http1Response) -> None:
        """The exchange is over: keep the connection for the next one if it can carry one."""
        self._response = None
        if response.reusable() and self._transport is not None and not self._transport.is_closing():
            self.reused = True
            self._idle.append(self)
        else:
            self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._response is not None:
            self._response.feed(data)
        else:  # an answer to nothing: the connection cannot be trusted with another request
            self.close()

    def eof_received(self) -> bool | None:
        if self._response is not None:
            self._response.feed_eof()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        with contextlib.suppress(ValueError):
            self._idle.remove(self)
        self._transport = None
        if self._response is not None:
            self._response.connection_lost(exc)


class _Body(enum.Enum):
    """Where the reader is in a response (RFC 9112 sections 6 and 7.1)."""

    HEAD = enum.auto()  # status line and headers
    LENGTH = enum.auto()  # Content-Length bytes
    UNTIL_CLOSE = enum.auto()  # everything until the upstream closes
    CHUNK_SIZE = enum.auto()
    CHUNK_DATA = enum.auto()
    CHUNK_END = enum.auto()  # the CRLF after a chunk's data
    TRAILERS = enum.auto()
    DONE = enum.auto()


class _InvalidResponseError(Exception):
    pass


class _Http1Response:
    """One upstream response: its head once parsed, then its body as it arrives."""

    def __init__(
        self, connection: _Connection, transport: asyncio.Transport, head_request: bool
    ) -> None:
        self._connection = connection
        self._transport = transport
        self._head_request = head_request
        self.status = 0
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.received = False  # whether any byte of the answer arrived
        self._keep_alive = False
        self._state = _Body.HEAD
        self._buffer = b""  # an incomplete head or chunk line
        self._remaining = 0  # bytes left in the body (LENGTH) or chunk (CHUNK_DATA)
        self._pieces: list[bytes] = []  # body bytes not yet taken by chunks()
        self._pending = 0
        self._paused = False
        self._error: ProxyError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._head_waiter: asyncio.Future[None] | None = None
        self._head_late = False  # the deadline for the head passed
        self._released = False

    async def wait_head(self, deadline: float | None = None) -> None:
        """Return once the status and headers are in; raise UpstreamFailedError if they never
        come, TimeoutError if they have not by ``deadline`` (the event loop's clock). One timer
        handle, not ``asyncio.timeout``: this is on every request's path."""
        if self._state is not _Body.HEAD:
            return
        loop = asyncio.get_running_loop()
        timer = None if deadline is None else loop.call_at(deadline, self._head_timed_out)
        try:
            while self._state is _Body.HEAD:
                if self._error is not None:
                    raise self._error
                if self._head_late:
                    raise TimeoutError
                self._head_waiter = loop.create_future()
                await self._head_waiter
        finally:
            if timer is not None:
                timer.cancel()

    def _head_timed_out(self) -> None:
        self._head_late = True
        self._wake()

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._pieces:
                pieces = self._pieces
                chunk = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                pieces.clear()
                self._pending = 0
                if self._paused:
                    self._paused = False
                    self._transport.resume_reading()
                yield chunk
            elif self._error is not None:
                raise self._error
            elif self._state is _Body.DONE:
                return
            else:
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter

    async def aclose(self) -> None:
        if not self._released:  # twice would put the connection in the pool twice
            self._released = True
            self._connection.release(self)

    def reusable(self) -> bool:
        return self._state is _Body.DONE and self._keep_alive and self._error is None

    def feed(self, data: bytes) -> None:
        self.received = True
        try:
            if self._state is _Body.HEAD:
                data = self._feed_head(data)
            if data:
                self._feed_body(data)
        except _InvalidResponseError as exc:
            self._fail(f"invalid HTTP response: {exc}")
            self._transport.close()
            return
        if self._pending > _PAUSE_READING and not self._paused:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def feed_eof(self) -> None:
        if self._state is _Body.UNTIL_CLOSE:
            self._state = _Body.DONE
            self._wake()
        elif self._state is not _Body.DONE:
            self._fail("closed the connection before the response ended")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state is not _Body.DONE:
            self._fail(f"connection lost: {exc}" if exc else "closed the connection")

    def _fail(self, reason: str) -> None:
        if self._error is None and self._state is not _Body.DONE:
            self._error = UpstreamFailedError(f"upstream {reason}")
        self._wake()

    def _wake(self) -> None:
        for waiter in (self._head_waiter, self._waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _feed_head(self, data: bytes) -> bytes:
        """Take the head from the buffered bytes; return the bytes after it."""
        buffer = self._buffer + data if self._buffer else data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEAD:
                    raise _InvalidResponseError(f"head longer than {_MAX_HEAD} bytes")
                self._buffer = buffer
                return b""
            version, status, headers = _parse_head(buffer[:end])
            buffer = buffer[end + 4 :]
            if status == 101:
                raise _InvalidResponseError("101 Switching Protocols to a request without Upgrade")
            if status >= 200:
                break
            # 1xx (100 Continue, 103 Early Hints): interim, the real answer follows.
        self._buffer = b""
        self.status, self.headers = status, headers
        connection = {token.strip().lower() for token in _all(headers, "Connection")}
        self._keep_alive = version == b"HTTP/1.1" and "close" not in connection
        codings = [token.strip().lower() for token in _all(headers, "Transfer-Encoding")]
        lengths = set(headers.getall("Content-Length", ()))
        if self._head_request or status in (204, 304):
            self._state = _Body.DONE
        elif codings:
            if codings[-1] != "chunked":
                self._state = _Body.UNTIL_CLOSE
                self._keep_alive = False
            else:
                self._state = _Body.CHUNK_SIZE
                if lengths:  # RFC 9112 section 6.3: close after a message with both
                    self._keep_alive = False
        elif lengths:
            length = lengths.pop()
            if lengths or not (length.isascii() and length.isdigit()):
                raise _InvalidResponseError(f"bad Content-Length {headers['Content-Length']!r}")
            self._remaining = int(length)
            self._state = _Body.LENGTH if self._remaining else _Body.DONE
        else:
            self._state = _Body.UNTIL_CLOSE
            self._keep_alive = False
        return buffer

    def _feed_body(self, data: bytes) -> None:
        state = self._state
        if state is _Body.LENGTH:
            if len(data) < self._remaining:
                self._remaining -= len(data)
                self._push(data)
                return
            self._push(data[: self._remaining])
            self._state = _Body.DONE
            if len(data) > self._remaining:
                self._keep_alive = False  # more than announced: the connection is confused
        elif state is _Body.UNTIL_CLOSE:
            self._push(data)
        elif state is _Body.DONE:
            self._keep_alive = False
        else:
            self._feed_chunked(self._buffer + data if self._buffer else data)

    def _feed_chunked(self, buffer: bytes) -> None:
        position, end = 0, len(buffer)
        while position < end:
            state = self._state
            if state is _Body.CHUNK_DATA:
                stop = min(end, position + self._remaining)
                self._push(buffer[position:stop])
                self._remaining -= stop - position
                position = stop
                if not self._remaining:
                    self._state = _Body.CHUNK_END
            elif state is _Body.DONE:
                self._keep_alive = False  # bytes after the end
                break
            else:
                line_end = buffer.find(b"\r\n", position)
                if line_end < 0:
                    if end - position > _MAX_LINE:
                        raise _InvalidResponseError(f"chunk line longer than {_MAX_LINE} bytes")
                    break
                line = buffer[position:line_end]
                position = line_end + 2
                if state is _Body.CHUNK_END:
                    if line:
                        raise _InvalidResponseError("chunk data longer than its size")
                    self._state = _Body.CHUNK_SIZE
                elif state is _Body.CHUNK_SIZE:
                    match = _CHUNK_SIZE.fullmatch(line)
                    if match is None:
                        raise _InvalidResponseError(f"bad chunk size line {line[:40]!r}")
                    self._remaining = int(match.group(1), 16)
                    self._state = _Body.CHUNK_DATA if self._remaining else _Body.TRAILERS
                elif not line:  # TRAILERS: an empty line ends them (and the response)
                    self._state = _Body.DONE
        self._buffer = buffer[position:] if self._state is not _Body.DONE else b""

    def _push(self, piece: bytes) -> None:
        self._pieces.append(piece)
        self._pending += len(piece)


def _parse_head(head: bytes) -> tuple[bytes, int, CIMultiDict[str]]:
    """The HTTP version, status code and headers of a response head (without the blank line)."""
    # Lines end in CRLF only; a lone CR or LF could hide a header from one reader and not another.
    breaks = head.count(b"\r\n")
    if head.count(b"\r") != breaks or head.count(b"\n") != breaks:
        raise _InvalidResponseError("a bare CR or LF in the head")
    status_line, *lines = head.split(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    code = rest[:3]
    if (
        version not in (b"HTTP/1.1", b"HTTP/1.0")
        or not (code.isdigit() and len(code) == 3)
        or rest[3:4] not in (b"", b" ")
    ):
        raise _InvalidResponseError(f"bad status line {status_line[:60]!r}")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name[0] in b" \t" or name[-1] in b" \t":
            raise _InvalidResponseError(f"bad header line {line[:60]!r}")
        headers.add(
            name.decode("utf-8", "surrogateescape"),
            value.strip(b" \t").decode("utf-8", "surrogateescape"),
        )
    return version, int(code), headers


def _all(headers: CIMultiDict[str], name: str) -> list[str]:
    """Every comma-separated element of every ``name`` header."""
    return [token for value in headers.getall(name, ()) for token in value.split(",")]
