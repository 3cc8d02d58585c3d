"""Serving an aiohttp application until SIGTERM or SIGINT, for the gate and the router: the
flags and the process start they share, and the serving itself.

Logs `listening on http://HOST:PORT` for each address once it listens (tests and the local
fleet wait for that line, and `--port 0` makes it the only way to learn the port), and turns a
port that cannot be bound into a one-line exit naming the program. A worker given a socket
that is already listening logs nothing of it: its supervisor did (`specfleet_runtime.workers`).

`SERVER_OPTIONS` is how both serve: handler cancellation on (a client that leaves stops its
request), no access log, request bodies left as the client coded them (`proxy.read_body` decodes
them and answers a bad coding with a 4xx), and a malformed request that aiohttp refuses before any
handler runs logged as one WARNING line instead of an ERROR with a traceback, so a client cannot
fill the logs with tracebacks. `Runner` serves with them and answers such a request (a bad request
line or header, a bad chunk in a body that came whole with its head) with the data path's own
OpenAI-style 400 body instead of aiohttp's plain text.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import uvloop
from aiohttp import http_exceptions, web, web_protocol

from specfleet_runtime import errors


class _ClientFaultLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger, with the requests a client got wrong (a malformed head or
    body framing, which aiohttp answers 400 itself) demoted to one WARNING line."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, (http_exceptions.HttpProcessingError, web.RequestPayloadError)):
            reason = " ".join(str(getattr(exc, "message", "") or exc).split())[:200]
            self.logger.warning("bad request refused: %s: %s", type(exc).__name__, reason)
            return
        self.logger.error(msg, *args, exc_info=exc_info, **kwargs)


SERVER_OPTIONS: dict[str, Any] = {
    "handler_cancellation": True,
    "access_log": None,
    "auto_decompress": False,
    "logger": _ClientFaultLogger(logging.getLogger("aiohttp.server"), {}),
}
"""How the gate and the router run their aiohttp application (see the module docstring); tests
pass them to aiohttp's test server too."""


class _ClientFaultHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, answering a request it refused before any handler ran (a
    4xx) with the OpenAI-style error body every other refusal on the data path has."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not 400 <= status < 500:
            return super().handle_error(request, status, exc, message)
        self.log_exception("Error handling request", exc_info=exc)
        reason = " ".join((message or "malformed request").split())[:200]
        response = errors.error_response(
            status,
            f"the request could not be read as HTTP: {reason}",
            "invalid_request_error",
            "invalid_http_request",
        )
        response.force_close()
        return response


class _ClientFaultServer(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _ClientFaultHandler(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """`web.AppRunner` with `SERVER_OPTIONS`, whose connections answer a request aiohttp
    refused before any handler ran with the data path's JSON error body."""

    def __init__(self, application: web.Application) -> None:
        super().__init__(application, **SERVER_OPTIONS)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _ClientFaultServer
        return server


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every server has: --host, --port and --log-level."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (0: any free)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")


def cannot_listen(prog: str, host: str, port: int, exc: OSError) -> SystemExit:
    """The one-line exit for a port that cannot be bound."""
    return SystemExit(f"{prog}: cannot listen on {host}:{port}: {exc}")


def configure_logging(log_level: str) -> None:
    """Log to stderr at `log_level`, with time, level and logger on every line."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run(main: Coroutine[Any, Any, None], log_level: str) -> None:
    """Log to stderr at `log_level` and run `main` on uvloop."""
    configure_logging(log_level)
    uvloop.run(main)


def run_alongside(
    application: web.Application, work: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    """Run `work()` as a task while `application` serves; it is cancelled when serving ends."""

    async def context(_app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(work())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    application.cleanup_ctx.append(context)


async def serve_until_signal(
    application: web.Application,
    host: str,
    port: int,
    *,
    prog: str,
    log: logging.Logger,
    started: Callable[[], None] = lambda: None,
    sock: socket.socket | None = None,
) -> None:
    """Serve `application` on host:port (or on the listening socket `sock`, which a worker
    shares with others: see `specfleet_runtime.workers`) until SIGTERM or SIGINT; `started`
    runs once it listens."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = Runner(application)
    await runner.setup()
    try:
        if sock is not None:
            await web.SockSite(runner, sock).start()
        else:
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()
            except OSError as exc:
                raise cannot_listen(prog, host, port, exc) from exc
            for address in runner.addresses:
                log.info("listening on http://%s:%d", *address[:2])
        started()
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
