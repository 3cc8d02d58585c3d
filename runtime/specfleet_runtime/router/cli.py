"""``specfleet-router``: the router's command line and process lifecycle.

Parses flags, reads the configuration file (refusing to start without a valid one, as the gate
refuses without a limit), serves until SIGTERM or SIGINT, then stops accepting, lets aiohttp
finish what it can, closes the idle backend connections and writes what capture holds. Logs
``listening on http://HOST:PORT`` once it accepts connections (with ``--port 0`` that is how a
caller learns the port). With ``--workers N`` it listens, then runs N such routers on the socket
(``specfleet_runtime.workers``). The operator renders these flags into the router Deployment; see
``specfleet_runtime.router.app`` for what the router does and ``specfleet.api.routerconfig`` for
the file.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

from specfleet.api import routerconfig
from specfleet_runtime import proxy, serving, workers
from specfleet_runtime.router import app, config

log = logging.getLogger("specfleet_runtime.router")

MAX_WORKERS = 64
MODULE = "specfleet_runtime.router.cli"


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
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes serving the port together, each about one core's worth of requests "
        "(default %(default)s; see specfleet_runtime.workers)",
    )
    # Set by the supervisor for each worker it starts (specfleet_runtime.workers).
    parser.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.max_body_bytes < 1:
        parser.error(f"--max-body-bytes must be positive, got {args.max_body_bytes}")
    if args.reload_interval <= 0:
        parser.error(f"--reload-interval must be positive, got {args.reload_interval}")
    if args.connect_timeout <= 0:
        parser.error(f"--connect-timeout must be positive, got {args.connect_timeout}")
    if not 1 <= args.workers <= MAX_WORKERS:
        parser.error(f"--workers must be 1..{MAX_WORKERS}, got {args.workers}")
    return args


def first_config(path: Path) -> tuple[config.ConfigFile, routerconfig.RouterConfig]:
    config_file = config.ConfigFile(path)
    first = config_file.poll()
    if first is None:
        raise SystemExit(f"specfleet-router: no valid configuration in {path}: {config_file.error}")
    return config_file, first


async def serve(args: argparse.Namespace) -> None:
    config_file, first = first_config(args.config)
    router = app.Router(
        first,
        lambda url: proxy.Http1Transport(url, connect_timeout=args.connect_timeout),
        max_body_bytes=args.max_body_bytes,
        counts_reloads=args.worker_index == 0,
        # A worker of several numbers its captured batches apart from the others'.
        capture_seq=(args.worker_index, MAX_WORKERS) if args.listen_fd is not None else (0, 1),
    )
    application = app.make_app(router, config_file, args.reload_interval)
    listener = None
    if args.listen_fd is not None:
        listener = socket.socket(fileno=args.listen_fd)
        serving.run_alongside(application, lambda: workers.stop_without_supervisor(log))
    try:
        await serving.serve_until_signal(
            application,
            args.host,
            args.port,
            prog="specfleet-router",
            log=log,
            sock=listener,
        )
    finally:
        # Serving has ended: aiohttp let the requests under way finish (or cancelled them)
        # before serve_until_signal returned, so waiting here for capture's last batches
        # holds up no answer.
        router.close()


def supervise(args: argparse.Namespace, argv: list[str]) -> int:
    """Listen, then run `--workers` routers on the socket (specfleet_runtime.workers)."""
    first_config(args.config)  # refuse before any worker starts, as a single router does
    try:
        listener = workers.listen(args.host, args.port)
    except OSError as exc:
        raise serving.cannot_listen("specfleet-router", args.host, args.port, exc) from exc
    host, port = listener.getsockname()[:2]
    log.info("listening on http://%s:%d with %d workers", host, port, args.workers)
    worker_argv = [*workers.python_command(MODULE), *argv, "--workers", "1"]
    return workers.supervise(listener, worker_argv, args.workers, log)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.workers > 1:
        serving.configure_logging(args.log_level)
        sys.exit(supervise(args, argv))
    serving.run(serve(args), args.log_level)


if __name__ == "__main__":
    main()
