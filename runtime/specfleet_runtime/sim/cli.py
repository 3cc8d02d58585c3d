"""`specfleet-sim`: run one simulated vLLM server.

Parses the flags into the engine's configuration (models and GPUs from `specfleet.catalog`),
waits out `--startup-delay` without listening (vLLM, too, refuses connections until its engine
is ready), then serves until SIGINT or SIGTERM. Once listening it prints one line,
`specfleet-sim: serving <model> on http://<host>:<port>`, so a caller that passed `--port 0`
learns the port.

`Simulation` is what a command line comes down to; `build` makes its server. The vLLM stand-in
(`specfleet_runtime.sim.vllm_cli`, the vllm-sim image's `vllm`) reads vLLM's own command line
into a `Simulation` and serves it with `build` and `serve`, as this command does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from specfleet import catalog, perf
from specfleet_runtime.sim.engine import Behaviour, EngineConfig, SimulatedEngine
from specfleet_runtime.sim.exporter import Exporter
from specfleet_runtime.sim.server import SimServer

DEFAULT_ARCHITECTURE = "meta-llama/Llama-3.1-8B-Instruct"
DEFAULT_GPU = "H100-80GB"
DEFAULT_ACCEPTANCE_RATE = 0.7
SHUTDOWN_GRACE_SECONDS = 2.0

Quantization = Literal["auto", "fp8", "none"]
"""Weight precision: fp8, none (16-bit), or auto (fp8 where the GPU runs it natively)."""


@dataclass(frozen=True)
class Simulation:
    """What one simulated server serves and how, in the catalog's terms."""

    architecture: str
    """A model id the catalog knows, for the performance model (the model path /v1/models
    reports)."""
    served_model_name: str
    """The name clients put in the OpenAI `model` field."""
    gpu: str = DEFAULT_GPU
    """A GPU product the catalog knows."""
    tensor_parallel_size: int = 1
    quantization: Quantization = "auto"
    draft: str | None = None
    """The speculative draft model, a model id the catalog knows; None: no speculation."""
    num_speculative_tokens: int = 5
    """K. Ignored without a draft."""
    schedule: tuple[tuple[int, int, int], ...] = ()
    """K per batch-size range (vLLM's `num_speculative_tokens_per_batch_size`); empty: K at
    every batch size."""
    max_num_seqs: int = 256
    acceptance_rate: float = DEFAULT_ACCEPTANCE_RATE
    """Accepted / draft tokens, as vLLM reports it; POST /admin/acceptance changes it live."""
    time_factor: float = 1.0
    """Multiplies every simulated duration."""
    seed: int = 0
    tool_call_parser: str | None = None
    """vLLM's --tool-call-parser: without one, a tool_choice other than none is refused."""
    enable_auto_tool_choice: bool = False
    """vLLM's --enable-auto-tool-choice: tools with tool_choice auto (their default)."""
    enable_request_id_headers: bool = False
    """vLLM's --enable-request-id-headers: answers carry X-Request-Id."""
    capability: float | None = None
    """How strong the simulated model is, in [0, 1]: free text is a good or poor answer to the
    question, and judge prompts get a verdict (`specfleet_runtime.sim.capability`). None:
    simulated words from the seed."""

    def __post_init__(self) -> None:
        if self.enable_auto_tool_choice and self.tool_call_parser is None:
            raise ValueError("--enable-auto-tool-choice requires --tool-call-parser")
        if self.capability is not None and not 0.0 <= self.capability <= 1.0:
            raise ValueError(f"--capability must be between 0 and 1, got {self.capability}")


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
    p.add_argument("--gpu", default=DEFAULT_GPU, choices=sorted(catalog.GPUS))
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
        default=DEFAULT_ACCEPTANCE_RATE,
        help="accepted / draft tokens, as vLLM reports it (default %(default)s)",
    )
    p.add_argument(
        "--time-factor",
        type=float,
        default=1.0,
        help="multiplies every simulated duration; 0.01 runs 100x faster (default 1)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--tool-call-parser",
        help="as vLLM's: without one, a tool_choice other than none is refused (any name)",
    )
    p.add_argument(
        "--enable-auto-tool-choice",
        action="store_true",
        help="as vLLM's: accept tools with tool_choice auto (needs --tool-call-parser)",
    )
    p.add_argument(
        "--enable-request-id-headers",
        action="store_true",
        help="as vLLM's: answers carry X-Request-Id (the request's, or a new one)",
    )
    p.add_argument(
        "--capability",
        type=float,
        help="stand in for a model of this strength, 0 to 1: it answers a question well when "
        "this is at least the question's difficulty, and judges a judge prompt's candidate "
        "answer (see specfleet_runtime.sim.capability); default: simulated words as ever",
    )
    p.add_argument("--startup-delay", type=float, default=0.0, help="seconds before listening")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    return p


def build_server(args: argparse.Namespace) -> SimServer:
    """The server the flags describe; ValueError with a message a person can act on."""
    return build(
        Simulation(
            architecture=args.architecture,
            served_model_name=args.model or args.architecture,
            gpu=args.gpu,
            tensor_parallel_size=args.tensor_parallel_size,
            quantization=args.quantization,
            draft=args.draft,
            num_speculative_tokens=args.num_speculative_tokens,
            max_num_seqs=args.max_num_seqs,
            acceptance_rate=args.acceptance_rate,
            time_factor=args.time_factor,
            seed=args.seed,
            tool_call_parser=args.tool_call_parser,
            enable_auto_tool_choice=args.enable_auto_tool_choice,
            enable_request_id_headers=args.enable_request_id_headers,
            capability=args.capability,
        )
    )


def build(simulation: Simulation) -> SimServer:
    """The server a `Simulation` describes; ValueError with a message a person can act on."""
    target = _architecture(simulation.architecture, "--architecture")
    draft = _architecture(simulation.draft, "--draft") if simulation.draft else None
    gpu = catalog.GPUS.get(simulation.gpu)
    if gpu is None:
        raise ValueError(f"GPU {simulation.gpu!r} is not one of {', '.join(sorted(catalog.GPUS))}")
    if simulation.quantization == "auto":
        weights: perf.Precision = "fp8" if gpu.fp8_native else "bf16"
    else:
        weights = "fp8" if simulation.quantization == "fp8" else "bf16"
    replica = perf.Replica(
        target,
        gpu,
        simulation.tensor_parallel_size,
        weights,
        draft,
        simulation.num_speculative_tokens,
    )
    config = EngineConfig(
        replica,
        simulation.max_num_seqs,
        simulation.time_factor,
        simulation.seed,
        simulation.schedule,
    )
    engine = SimulatedEngine(config, Behaviour(simulation.acceptance_rate))
    served = simulation.served_model_name
    return SimServer(
        engine,
        Exporter(served, replica.speculative_tokens),
        served,
        simulation.architecture,
        tool_call_parser=simulation.tool_call_parser,
        auto_tool_choice=simulation.enable_auto_tool_choice,
        request_id_headers=simulation.enable_request_id_headers,
        capability=simulation.capability,
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
