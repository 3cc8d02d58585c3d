"""The real transport (``proxy.Http1Transport``) against a scripted upstream on loopback: how
responses are framed, what is sent, which connections are reused, and how failures surface."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from multidict import CIMultiDict

from specfleet_runtime import proxy
from tests.gate.fakes import until, within_deadline

FOLLOW_UP = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"


@dataclass
class Answer:
    raw: bytes
    close: bool = False  # hang up after writing it
    hold: bool = False  # after writing it, wait for the client to hang up


@dataclass
class RawUpstream:
    """An upstream that answers each request with the next scripted bytes, ``piece`` bytes per
    write; ``None`` in the script hangs up without answering."""

    script: list[Answer | None]
    piece: int = 0  # 0: the whole answer in one write
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    hangups: int = 0  # connections the client closed

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.hangups += 1
                    return
                length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
                body = await reader.readexactly(int(length.group(1))) if length else b""
                self.requests.append(head + body)
                answer = self.script.pop(0)
                if answer is None:
                    return
                size = self.piece or len(answer.raw) or 1
                for start in range(0, len(answer.raw), size):
                    writer.write(answer.raw[start : start + size])
                    await writer.drain()
                    await asyncio.sleep(0)  # let the transport read this piece on its own
                if answer.hold:
                    await reader.read()
                    self.hangups += 1
                    return
                if answer.close:
                    return
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serve(upstream: RawUpstream) -> AsyncIterator[str]:
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


def request(
    method: str = "POST", target: str = "/v1/completions", body: bytes = b"{}"
) -> proxy.UpstreamRequest:
    return proxy.UpstreamRequest(method, target, CIMultiDict({"X-Trace": "t"}), body)


async def exchange(
    transport: proxy.Http1Transport, sent: proxy.UpstreamRequest
) -> tuple[proxy.UpstreamResponse, bytes]:
    async def send_and_read() -> tuple[proxy.UpstreamResponse, bytes]:
        response = await transport.send(sent)
        body = b"".join([chunk async for chunk in response.chunks()])
        await response.aclose()
        return response, body

    return await within_deadline(send_and_read(), "the whole response")


FRAMINGS = [
    pytest.param(
        "POST",
        Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Model: m\r\n\r\nhello"),
        b"hello",
        True,
        id="content-length",
    ),
    pytest.param(
        "POST",
        Answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Model: m\r\n\r\n"
            b"5;name=value\r\nhello\r\nB\r\n, streaming\r\n0\r\nX-Trailer: t\r\n\r\n"
        ),
        b"hello, streaming",
        True,
        id="chunked-with-extension-and-trailer",
    ),
    pytest.param(
        "POST",
        Answer(b"HTTP/1.0 200 OK\r\nX-Model: m\r\n\r\nuntil the end", close=True),
        b"until the end",
        False,
        id="until-close",
    ),
    pytest.param(
        "POST",
        Answer(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nX-Model: m\r\nContent-Length: 2\r\n\r\nok"
        ),
        b"ok",
        True,
        id="interim-100-then-200",
    ),
    pytest.param(
        "HEAD",
        Answer(b"HTTP/1.1 200 OK\r\nX-Model: m\r\nContent-Length: 5\r\n\r\n"),
        b"",
        True,
        id="head-has-no-body",
    ),
    pytest.param(
        "POST",
        Answer(
            b"HTTP/1.1 200 OK\r\nX-Model: m\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        ),
        b"ok",
        False,
        id="connection-close",
    ),
]


@pytest.mark.parametrize("piece", [1, 7, 0])
@pytest.mark.parametrize(("method", "answer", "body", "reused"), FRAMINGS)
def test_responses_are_framed_as_rfc_9112_says_however_they_are_split(
    method: str, answer: Answer, body: bytes, reused: bool, piece: int
) -> None:
    async def scenario() -> None:
        upstream = RawUpstream([answer, Answer(FOLLOW_UP)], piece=piece)
        async with serve(upstream) as url:
            transport = proxy.Http1Transport(url)
            response, received = await exchange(transport, request(method))
            assert (response.status, response.headers["X-Model"], received) == (200, "m", body)
            # The next request reuses the connection only if this response left it clean.
            _, received = await exchange(transport, request())
            assert received == b"next"
            assert upstream.connections == (1 if reused else 2)
            transport.close()

    asyncio.run(scenario())


def test_the_request_crosses_as_sent_with_host_and_length_set_for_the_upstream() -> None:
    async def scenario() -> None:
        empty = b"HTTP/1.1 204 No Content\r\n\r\n"
        upstream = RawUpstream([Answer(empty), Answer(empty), Answer(empty)])
        async with serve(upstream) as url:
            transport = proxy.Http1Transport(url + "/prefix/")
            await exchange(transport, request("POST", "/v1/completions?a=%2F", b'{"prompt": '))
            await exchange(transport, request("GET", "/v1/models", b""))
            await exchange(transport, request("POST", "/v1/completions", b""))
            transport.close()
        host = url.removeprefix("http://")
        assert upstream.requests == [
            b"POST /prefix/v1/completions?a=%2F HTTP/1.1\r\n"
            + f"Host: {host}\r\nX-Trace: t\r\nContent-Length: 11\r\n\r\n".encode()
            + b'{"prompt": ',
            f"GET /prefix/v1/models HTTP/1.1\r\nHost: {host}\r\nX-Trace: t\r\n\r\n".encode(),
            b"POST /prefix/v1/completions HTTP/1.1\r\n"
            + f"Host: {host}\r\nX-Trace: t\r\nContent-Length: 0\r\n\r\n".encode(),
        ]

    asyncio.run(scenario())


def test_a_header_that_would_split_the_request_is_refused() -> None:
    async def scenario() -> None:
        transport = proxy.Http1Transport("http://127.0.0.1:9")
        smuggler = proxy.UpstreamRequest(
            "GET", "/", CIMultiDict({"X-A": "1\r\nGET /admin HTTP/1.1"}), b""
        )
        with pytest.raises(ValueError, match="CR or LF"):
            await transport.send(smuggler)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"HTTP/2 200 OK\r\n\r\n", id="not-http-1"),
        pytest.param(b"HTTP/1.1 2000 OK\r\n\r\n", id="bad-status"),
        pytest.param(b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", id="bare-lf"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", id="bad-length"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok", id="two-lengths"
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\n Folded: no\r\n\r\n", id="obsolete-line-folding"),
        pytest.param(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", id="unasked-upgrade"),
    ],
)
def test_an_invalid_head_is_an_upstream_failure(raw: bytes) -> None:
    async def scenario() -> None:
        async with serve(RawUpstream([Answer(raw, hold=True)])) as url:
            transport = proxy.Http1Transport(url)
            with pytest.raises(proxy.UpstreamFailedError, match="invalid HTTP response"):
                await within_deadline(transport.send(request()), "the failure")

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        pytest.param(
            Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", close=True),
            "closed the connection before the response ended",
            id="short-body",
        ),
        pytest.param(
            Answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nhalf\r\nzz\r\n"),
            "bad chunk size",
            id="bad-chunk-size",
        ),
    ],
)
def test_a_body_that_breaks_off_raises_after_what_arrived(answer: Answer, reason: str) -> None:
    async def scenario() -> None:
        async with serve(RawUpstream([answer])) as url:
            transport = proxy.Http1Transport(url)
            response = await within_deadline(transport.send(request()), "the response head")
            received = []
            with pytest.raises(proxy.UpstreamFailedError, match=reason):
                async for chunk in response.chunks():
                    received.append(chunk)
            assert b"".join(received) == b"half"
            await response.aclose()

    asyncio.run(scenario())


def test_closing_a_response_before_its_end_hangs_up_on_the_upstream() -> None:
    # This is how vLLM learns that the client left and aborts the generation.
    async def scenario() -> None:
        streaming = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n"
        upstream = RawUpstream([Answer(streaming, hold=True), Answer(FOLLOW_UP)])
        async with serve(upstream) as url:
            transport = proxy.Http1Transport(url)
            response = await within_deadline(transport.send(request()), "the response head")
            chunks = response.chunks()
            assert await within_deadline(anext(chunks), "the first chunk") == b"data: 1\n\n"
            await response.aclose()
            await until(lambda: upstream.hangups == 1, "the upstream to see the hang-up")
            _, received = await exchange(transport, request())
            assert (received, upstream.connections) == (b"next", 2)
            transport.close()

    asyncio.run(scenario())


def test_closing_a_response_twice_pools_its_connection_once() -> None:
    async def scenario() -> None:
        upstream = RawUpstream([Answer(FOLLOW_UP)] * 3)
        async with serve(upstream) as url:
            transport = proxy.Http1Transport(url)
            response, _ = await exchange(transport, request())
            await response.aclose()
            # Pooled twice, the connection would be handed to both of these at once.
            both = asyncio.gather(exchange(transport, request()), exchange(transport, request()))
            assert [body for _, body in await both] == [b"next", b"next"]
            assert upstream.connections == 2
            transport.close()

    asyncio.run(scenario())


def test_a_request_cancelled_before_the_answer_hangs_up_on_the_upstream() -> None:
    async def scenario() -> None:
        upstream = RawUpstream([Answer(b"", hold=True)])
        async with serve(upstream) as url:
            transport = proxy.Http1Transport(url)
            sending = asyncio.create_task(transport.send(request()))
            await until(lambda: len(upstream.requests) == 1, "the request upstream")
            sending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sending
            await until(lambda: upstream.hangups == 1, "the upstream to see the hang-up")

    asyncio.run(scenario())


@pytest.mark.parametrize(("method", "retried"), [("GET", True), ("POST", False)])
def test_a_pooled_connection_the_upstream_dropped_is_retried_only_for_idempotent_requests(
    method: str, retried: bool
) -> None:
    async def scenario() -> None:
        # The upstream keeps the first connection open, then drops the next request on it
        # unanswered, as a server closing an idle connection at that moment does.
        upstream = RawUpstream([Answer(FOLLOW_UP), None, Answer(FOLLOW_UP)])
        async with serve(upstream) as url:
            transport = proxy.Http1Transport(url)
            await exchange(transport, request())
            if retried:
                _, received = await exchange(transport, request(method, body=b""))
                assert received == b"next"
            else:
                with pytest.raises(proxy.UpstreamFailedError, match="closed the connection"):
                    await within_deadline(transport.send(request(method)), "the failure")
            assert upstream.connections == (2 if retried else 1)
            transport.close()

    asyncio.run(scenario())


def test_an_upstream_that_refuses_connections_is_unavailable() -> None:
    async def scenario() -> None:
        async with serve(RawUpstream([])) as url:
            pass  # the port is closed now
        transport = proxy.Http1Transport(url)
        with pytest.raises(proxy.UpstreamUnavailableError, match=re.escape(url)):
            await within_deadline(transport.send(request()), "the failure")

    asyncio.run(scenario())


def test_only_plain_http_upstreams_are_accepted() -> None:
    with pytest.raises(ValueError, match="http:// URL"):
        proxy.Http1Transport("https://vllm:8000")


def test_a_large_body_arrives_whole_through_a_slow_reader() -> None:
    # Past 64 KiB unread the transport stops reading from the upstream; it must start again.
    async def scenario() -> None:
        body = bytes(range(256)) * 4096  # 1 MiB
        answer = Answer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        async with serve(RawUpstream([answer])) as url:
            transport = proxy.Http1Transport(url)

            async def read_slowly() -> bytes:
                response = await transport.send(request())
                received = bytearray()
                async for chunk in response.chunks():
                    received += chunk
                    await asyncio.sleep(0.001)
                await response.aclose()
                return bytes(received)

            assert await within_deadline(read_slowly(), "the whole body") == body
            transport.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "partial_head",
    [
        pytest.param(b"", id="nothing"),
        # Bytes that wake the wait for the head without completing it: the deadline still holds.
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Le", id="half-a-head"),
    ],
)
def test_a_request_s_own_first_byte_timeout_bounds_the_wait_for_the_head(
    partial_head: bytes,
) -> None:
    async def scenario() -> None:
        upstream = RawUpstream([Answer(partial_head, hold=True)], piece=7)
        async with serve(upstream) as url:
            transport = proxy.Http1Transport(url)  # no timeout of its own
            timed = proxy.UpstreamRequest("POST", "/v1/completions", CIMultiDict(), b"{}", 0.3)
            with pytest.raises(proxy.UpstreamTimeoutError, match=re.escape("within 0.3 s")):
                await within_deadline(transport.send(timed), "the timeout")
            await until(lambda: upstream.hangups == 1, "the transport to hang up")

    asyncio.run(scenario())


def test_an_upstream_that_takes_the_request_and_never_answers_times_out_and_is_hung_up_on() -> None:
    async def scenario() -> None:
        upstream = RawUpstream([Answer(b"", hold=True)])
        async with serve(upstream) as url:
            transport = proxy.Http1Transport(url, first_byte_timeout=0.2)
            with pytest.raises(
                proxy.UpstreamTimeoutError, match=re.escape("no response headers within 0.2 s")
            ):
                await within_deadline(transport.send(request()), "the timeout")
            await until(lambda: upstream.hangups == 1, "the transport to hang up")
            assert proxy.UpstreamTimeoutError("x").response().headers["Retry-After"] == "1"

    asyncio.run(scenario())
