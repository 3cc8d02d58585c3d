"""`specfleet-sim`: run one simulated vLLM server.

Parses the flags into the engine's configuration (models and GPUs from `specfleet.catalog`),
waits out `--startup-delay` without listening (vLLM, too, refuses connections until its engine
is ready), then serves until SIGINT or SIGTERM. Once listening it prints one line,
`specfleet-sim: serving <model> on http://<host>:<port>`, so a caller that passed `--port 0`
learns the port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from specfleet import catalog, perf
from specfleet_runtime.sim.engine import Behaviour, Engine, EngineConfig
from specfleet_runtime.sim.exporter import Exporter
from specfleet_runtime.sim.server import SimServer

DEFAULT_ARCHITECTURE = "meta-llama/Llama-3.1-8B-Instruct"
SHUTDOWN_GRACE_SECONDS = 2.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="specfleet-sim",
        description="A simulated vLLM server: OpenAI endpoints, /health and vLLM's /metrics, "
        "timed by specfleet's performance model of the chosen GPUs.",
    )
    p.add_argument("--model", help="served model name (default: --architecture)")
    p.add_argument(
        "--architecture",
        default=DEFAULT_ARCHITECTURE,
        help="a model id the catalog knows, for the performance model (default %(default)s)",
    )
    p.add_argument("--draft", help="the speculative draft model, a model id the catalog knows")
    p.add_argument("--num-speculative-tokens", type=int, default=5, help="K (default %(default)s)")
    p.add_argument("--gpu", default="H100-80GB", choices=sorted(catalog.GPUS))
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument(
        "--quantization",
        default="auto",
        choices=["auto", "fp8", "none"],
        help="weight precision; auto: fp8 where the GPU runs it natively (default)",
    )
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument(
        "--acceptance-rate",
        type=float,
        default=0.7,
        help="accepted / draft tokens, as vLLM reports it (default %(default)s)",
    )
    p.add_argument(
        "--time-factor",
        type=float,
        default=1.0,
        help="multiplies every simulated duration; 0.01 runs 100x faster (default 1)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--startup-delay", type=float, default=0.0, help="seconds before listening")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    return p


def build_server(args: argparse.Namespace) -> SimServer:
    """The server the flags describe; ValueError with a message a person can act on."""
    target = _architecture(args.architecture, "--architecture")
    draft = _architecture(args.draft, "--draft") if args.draft else None
    gpu = catalog.GPUS[args.gpu]
    if args.quantization == "auto":
        weights: perf.Precision = "fp8" if gpu.fp8_native else "bf16"
    else:
        weights = "fp8" if args.quantization == "fp8" else "bf16"
    replica = perf.Replica(
        target, gpu, args.tensor_parallel_size, weights, draft, args.num_speculative_tokens
    )
    config = EngineConfig(replica, args.max_num_seqs, args.time_factor, args.seed)
    engine = Engine(config, Behaviour(args.acceptance_rate))
    served = args.model or args.architecture
    return SimServer(
        engine, Exporter(served, replica.speculative_tokens), served, args.architecture
    )


def _architecture(model_id: str, flag: str) -> catalog.ModelArchitecture:
    try:
        return catalog.model(model_id)
    except ValueError as exc:
        raise ValueError(f"{flag} {exc}") from exc


async def serve(server: SimServer, host: str, port: int, startup_delay: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if startup_delay > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), startup_delay)
    if stop.is_set():
        return
    # Cancelling the handler of a client that went away aborts its request, as vLLM does; on
    # shutdown, requests still running get a short grace period.
    runner = web.AppRunner(
        server.app(),
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        print(
            f"specfleet-sim: serving {server.served_model_name} on http://{host}:{bound[1]}",
            flush=True,
        )
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        server = build_server(args)
    except ValueError as exc:
        p.error(str(exc))
    asyncio.run(serve(server, args.host, args.port, args.startup_delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
