"""``specfleet-router``: the router's command line and process lifecycle.

Parses flags, reads the configuration file (refusing to start without a valid one, as the gate
refuses without a limit), serves until SIGTERM or SIGINT, then stops accepting, lets aiohttp
finish what it can and closes the idle backend connections. Logs ``listening on
http://HOST:PORT`` once it accepts connections (with ``--port 0`` that is how a caller learns
the port). The operator renders these flags into the router Deployment; see
``specfleet_runtime.router.app`` for what the router does and ``config`` for the file.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from specfleet_runtime import proxy, serving
from specfleet_runtime.router import app, config

log = logging.getLogger("specfleet_runtime.router")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="specfleet-router",
        description="One OpenAI-compatible endpoint in front of several models: each request "
        "goes to the cheapest tier that can answer it.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        required=True,
        help="the configuration file (YAML or JSON; normally the mounted ConfigMap key), "
        "reread without a restart",
    )
    serving.add_arguments(parser)
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=app.DEFAULT_MAX_BODY_BYTES,
        help="larger request bodies get 413 (default %(default)s)",
    )
    parser.add_argument(
        "--reload-interval",
        type=float,
        default=config.POLL_INTERVAL,
        help="seconds between rereads of the configuration and API keys (default %(default)s)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=3.0,
        help="seconds to wait for a backend connection before falling back (default %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.max_body_bytes < 1:
        parser.error(f"--max-body-bytes must be positive, got {args.max_body_bytes}")
    if args.reload_interval <= 0:
        parser.error(f"--reload-interval must be positive, got {args.reload_interval}")
    if args.connect_timeout <= 0:
        parser.error(f"--connect-timeout must be positive, got {args.connect_timeout}")
    return args


async def serve(args: argparse.Namespace) -> None:
    config_file = config.ConfigFile(args.config)
    first = config_file.poll()
    if first is None:
        raise SystemExit(
            f"specfleet-router: no valid configuration in {args.config}: {config_file.error}"
        )
    router = app.Router(
        first,
        lambda url: proxy.Http1Transport(url, connect_timeout=args.connect_timeout),
        max_body_bytes=args.max_body_bytes,
    )
    try:
        await serving.serve_until_signal(
            app.make_app(router, config_file, args.reload_interval),
            args.host,
            args.port,
            prog="specfleet-router",
            log=log,
        )
    finally:
        router.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    serving.run(serve(args), args.log_level)
