"""``specfleet-gate``: the sidecar's command line and process lifecycle.

Parses flags, reads the first limit, serves on uvloop until SIGTERM or SIGINT, then stops
accepting, lets aiohttp finish what it can and closes the upstream connections. Logs
``listening on http://HOST:PORT`` once it accepts connections (with ``--port 0`` that is how a
caller learns the port). The operator renders these flags into the gate container; see
``specfleet_runtime.gate.app`` for what the gate does.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from specfleet_runtime import capture, proxy, serving
from specfleet_runtime.gate import admission, app, limit

log = logging.getLogger("specfleet_runtime.gate")

DEFAULT_FIRST_BYTE_TIMEOUT = 300.0
"""Long enough for a long answer that is not streamed: vLLM sends its headers with its end."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="specfleet-gate",
        description="Admit at most the current batch limit of concurrent requests to one vLLM "
        "server; queue the rest in order; stream responses through.",
    )
    parser.add_argument(
        "--upstream", required=True, help="the vLLM server's base URL, e.g. http://127.0.0.1:8000"
    )
    serving.add_arguments(parser)
    parser.add_argument(
        "--limit-file",
        type=Path,
        help="file holding the batch limit (an integer, or YAML/JSON with a 'limit' key), "
        "reread every 0.25 s; normally the mounted ConfigMap key",
    )
    parser.add_argument(
        "--initial-limit",
        type=int,
        help="batch limit to use until the limit file holds a valid one (or without a file)",
    )
    parser.add_argument(
        "--max-queue", type=int, default=1024, help="waiting requests beyond which new ones get 429"
    )
    parser.add_argument(
        "--queue-timeout",
        type=float,
        default=60.0,
        help="seconds a request may wait for a slot before it gets 503",
    )
    parser.add_argument(
        "--first-byte-timeout",
        type=float,
        default=DEFAULT_FIRST_BYTE_TIMEOUT,
        help="seconds an admitted request may wait for vLLM's response headers before it gets "
        "504 (a stream's come at once, a whole answer's with its end; 0: no limit; default "
        "%(default)s)",
    )
    parser.add_argument(
        "--retry-after", type=int, default=1, help="Retry-After seconds sent with 429 and 503"
    )
    parser.add_argument(
        "--capture-config",
        type=Path,
        help="file holding what to capture of the traffic and where to write it (YAML or "
        "JSON, specfleet.api.capture.CaptureConfig); the pod's name is POD_NAME, else the host "
        "name",
    )
    args = parser.parse_args(argv)
    if args.limit_file is None and args.initial_limit is None:
        parser.error("give --limit-file, --initial-limit, or both")
    if args.initial_limit is not None and args.initial_limit < 1:
        parser.error(f"--initial-limit must be at least 1, got {args.initial_limit}")
    if args.max_queue < 0:
        parser.error(f"--max-queue must be 0 or more, got {args.max_queue}")
    if args.queue_timeout <= 0:
        parser.error(f"--queue-timeout must be positive, got {args.queue_timeout}")
    if args.first_byte_timeout < 0:
        parser.error(f"--first-byte-timeout must be 0 or more, got {args.first_byte_timeout}")
    args.capture = None
    if args.capture_config is not None:
        try:
            args.capture = capture.load_config(args.capture_config)
        except ValueError as exc:
            parser.error(f"--capture-config: {exc}")
    return args


def first_limit(limit_file: limit.LimitFile | None, initial: int | None) -> int:
    """The limit to start with: the file's if it holds a valid one, else ``initial``."""
    from_file = limit_file.poll() if limit_file is not None else None
    if from_file is not None:
        return from_file
    if initial is None:
        raise SystemExit(
            "specfleet-gate: the limit file holds no valid limit (see the warning above) and "
            "there is no --initial-limit to fall back on"
        )
    return initial


async def serve(args: argparse.Namespace) -> None:
    limit_file = limit.LimitFile(args.limit_file) if args.limit_file is not None else None
    controller = admission.Admission(
        first_limit(limit_file, args.initial_limit),
        max_queue=args.max_queue,
        queue_timeout=args.queue_timeout,
    )
    try:
        transport = proxy.Http1Transport(
            args.upstream, first_byte_timeout=args.first_byte_timeout or None
        )
    except ValueError as exc:
        raise SystemExit(f"specfleet-gate: --upstream: {exc}") from None
    gate = None
    try:
        gate = app.Gate(controller, transport, retry_after=args.retry_after, capture=args.capture)
        source = app.LimitSource(limit_file) if limit_file is not None else None
        await serving.serve_until_signal(
            app.make_app(gate, source),
            args.host,
            args.port,
            prog="specfleet-gate",
            log=log,
            started=lambda: log.info(
                "upstream %s, batch limit %d, queue bound %d, queue timeout %g s,"
                " first-byte timeout %s",
                args.upstream,
                controller.limit,
                controller.max_queue,
                controller.queue_timeout,
                f"{args.first_byte_timeout:g} s" if args.first_byte_timeout else "none",
            ),
        )
    finally:
        transport.close()
        if gate is not None:
            await asyncio.to_thread(gate.close)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    serving.run(serve(args), args.log_level)
