"""`vllm` in the vllm-sim image: vLLM's own `serve` command line, served by the simulator.

The operator runs every model as `vllm serve MODEL --served-model-name ...`, the command line
`specfleet.render.vllm.serve_args` renders. The vllm-sim image stands in for vLLM's where no
GPU is (a local kubelet, CI): its `vllm` is this module, which reads that command line into a
`specfleet_runtime.sim.cli.Simulation` and serves it as `specfleet-sim` does, with vLLM's
endpoints and metrics timed by specfleet's performance model.

Strict on purpose: a stand-in that quietly accepted what vLLM refuses would let a rendering bug
(a removed flag such as `--speculative-model`, a misspelling) run green here and fail only on
a GPU cluster. So the parser knows exactly the flags `serve_args` renders, spelt as vLLM spells
them, with no abbreviations, and exits 2 naming anything else; that includes an InferenceModel's
`extraArgs`, which change what vLLM does in ways the simulator does not model.
tests/test_vllm_args.py checks the same command lines against vLLM's own parser.

What each flag becomes:
- MODEL: the architecture the performance model times (it must be in `specfleet.catalog`);
  `--served-model-name` (one name; default MODEL): the name clients send;
- `--tensor-parallel-size`, `--max-num-seqs`: as they are;
- `--quantization`: the 8-bit formats run as fp8 and the 4-bit ones (awq, gptq) at 16 bits,
  the precisions the planner's own estimate uses; absent, the weights are 16-bit, as in vLLM;
- `--speculative-config`: method `draft_model` simulates its `model` as the draft with
  `num_speculative_tokens` as K. The other methods (eagle, eagle3, mtp, ngram) have no draft
  model the catalog can time (an EAGLE head is not a catalog model; ngram and mtp have none),
  so they are checked and served without speculation; the stand-in says so on stderr;
- `--host`, `--port`: where it listens;
- `--kv-cache-dtype`, `--gpu-memory-utilization`, `--enable-prefix-caching`, `--max-model-len`,
  `--revision`: mean nothing to the simulator; their values are checked, then ignored.

What a vLLM command line cannot say comes from the environment: `SPECFLEET_SIM_GPU` (the GPU
product, default H100-80GB), `SPECFLEET_SIM_ACCEPTANCE_RATE` (default 0.7; POST
/admin/acceptance changes it while the server runs), `SPECFLEET_SIM_TIME_FACTOR` (multiplies
every simulated duration, default 1), `SPECFLEET_SIM_STARTUP_DELAY` (seconds before it
listens, as vLLM loads weights first; default 0) and `SPECFLEET_SIM_CAPABILITY` (0 to 1:
`specfleet-sim --capability`, the seam where simulated models answer questions well or poorly
and judge answers, `specfleet_runtime.sim.capability`; unset, simulated words as ever). An
InferenceModel's `env` sets them on its pods.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from specfleet import catalog, perf
from specfleet_runtime.sim import cli as sim_cli

PROG = "vllm"

QUANTIZATION: dict[str, sim_cli.Quantization] = {
    "fp8": "fp8",
    "fp8_per_tensor": "fp8",
    "modelopt": "fp8",
    "compressed-tensors": "fp8",
    "awq": "none",
    "gptq": "none",
}
"""vLLM's `--quantization` methods the stand-in knows, and the simulator's precision for each:
the one the planner's estimate uses (8-bit formats as fp8, 4-bit ones at 16 bits)."""

KV_CACHE_DTYPES = ("auto", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2")
"""`--kv-cache-dtype` values vLLM accepts that the stand-in checks for."""

SPECULATIVE_METHODS = ("draft_model", "eagle", "eagle3", "mtp", "ngram")
"""The speculation methods specfleet renders; only draft_model is simulated (see above)."""

METHODS_WITH_A_MODEL = ("draft_model", "eagle", "eagle3")
"""Methods vLLM runs only with a `model` in the speculative config."""

SPECULATIVE_KEYS: dict[str, type] = {
    "method": str,
    "num_speculative_tokens": int,
    "model": str,
    "revision": str,
    "draft_tensor_parallel_size": int,
    "num_speculative_tokens_per_batch_size": list,
}
"""The keys of `--speculative-config` specfleet renders, with their types."""

ENV_GPU = "SPECFLEET_SIM_GPU"
ENV_ACCEPTANCE_RATE = "SPECFLEET_SIM_ACCEPTANCE_RATE"
ENV_TIME_FACTOR = "SPECFLEET_SIM_TIME_FACTOR"
ENV_STARTUP_DELAY = "SPECFLEET_SIM_STARTUP_DELAY"
ENV_CAPABILITY = "SPECFLEET_SIM_CAPABILITY"


@dataclass(frozen=True)
class Command:
    """A `vllm serve` command line as the simulator runs it."""

    simulation: sim_cli.Simulation
    host: str
    port: int
    startup_delay: float
    notes: tuple[str, ...] = ()
    """What the command line asks for that the simulator does not simulate."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {text}")
    return value


def _speculative_config(text: str) -> dict[str, Any]:
    """The JSON object, with exactly the keys and types specfleet renders."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"is not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text}")
    unknown = sorted(set(config) - set(SPECULATIVE_KEYS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"has keys the stand-in does not know: {', '.join(unknown)} "
            f"(it knows {', '.join(SPECULATIVE_KEYS)})"
        )
    for key, kind in SPECULATIVE_KEYS.items():
        # bool is an int to isinstance; JSON true is not a token count.
        if key in config and (not isinstance(config[key], kind) or isinstance(config[key], bool)):
            raise argparse.ArgumentTypeError(f"{key} must be a {kind.__name__}: {config[key]!r}")
    method = config.get("method")
    if method not in SPECULATIVE_METHODS:
        raise argparse.ArgumentTypeError(
            f"method must be one of {', '.join(SPECULATIVE_METHODS)}, got {method!r}"
        )
    tokens = config.get("num_speculative_tokens")
    if tokens is None or not 1 <= tokens <= perf.MAX_SPECULATIVE_TOKENS:
        raise argparse.ArgumentTypeError(
            f"num_speculative_tokens must be 1 to {perf.MAX_SPECULATIVE_TOKENS}, got {tokens}"
        )
    schedule = config.get("num_speculative_tokens_per_batch_size")
    if schedule is not None:
        _check_schedule(schedule)
    if method in METHODS_WITH_A_MODEL and "model" not in config:
        raise argparse.ArgumentTypeError(f"method {method} needs a model")
    return config


def _check_schedule(schedule: list[Any]) -> None:
    """vLLM's rules for `num_speculative_tokens_per_batch_size`: (first, last, K) triples of
    whole numbers, positive ranges, K >= 0, sorted without overlap, the first from 1."""
    previous_end = 0
    if not schedule:
        raise argparse.ArgumentTypeError("num_speculative_tokens_per_batch_size must not be empty")
    for entry in schedule:
        if (
            not isinstance(entry, list)
            or len(entry) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in entry)
        ):
            raise argparse.ArgumentTypeError(
                "each num_speculative_tokens_per_batch_size entry must be "
                f"[first, last, K], got {entry!r}"
            )
        first, last, tokens = entry
        if first <= previous_end or first > last or tokens < 0:
            raise argparse.ArgumentTypeError(
                "num_speculative_tokens_per_batch_size ranges must be positive, sorted and "
                f"non-overlapping with K >= 0, got {entry!r}"
            )
        previous_end = last
    if schedule[0][0] != 1:
        raise argparse.ArgumentTypeError(
            "num_speculative_tokens_per_batch_size: the first range must start at 1"
        )


def parser() -> argparse.ArgumentParser:
    """`vllm` with its one `serve` subcommand, knowing exactly what specfleet renders."""
    root = argparse.ArgumentParser(
        prog=PROG,
        description="specfleet's stand-in for vLLM: `vllm serve` served by specfleet's "
        "simulator (no GPU, no weights). It knows only the flags specfleet renders.",
        allow_abbrev=False,
    )
    commands = root.add_subparsers(dest="subcommand", metavar="serve", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve a simulated model with vLLM's endpoints and metrics",
        description="Serve MODEL, simulated. GPU, acceptance rate, time factor and startup "
        f"delay come from {ENV_GPU}, {ENV_ACCEPTANCE_RATE}, {ENV_TIME_FACTOR} and "
        f"{ENV_STARTUP_DELAY}.",
        allow_abbrev=False,
    )
    serve.add_argument("model_tag", metavar="MODEL", help="a model id specfleet's catalog knows")
    serve.add_argument("--served-model-name", nargs="+", help="default: MODEL")
    serve.add_argument("--host", default="0.0.0.0", help="default: every interface")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--tensor-parallel-size", type=_positive_int, default=1)
    serve.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto")
    serve.add_argument("--max-num-seqs", type=_positive_int, default=256)
    serve.add_argument("--gpu-memory-utilization", type=_fraction, default=0.92)
    serve.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction)
    serve.add_argument("--quantization", choices=list(QUANTIZATION))
    serve.add_argument("--max-model-len", type=_positive_int)
    serve.add_argument("--revision")
    serve.add_argument("--speculative-config", type=_speculative_config, metavar="JSON")
    serve.add_argument("--tool-call-parser")
    serve.add_argument("--enable-auto-tool-choice", action="store_true")
    serve.add_argument("--enable-request-id-headers", action="store_true")
    return root


def _env_float(
    environ: Mapping[str, str], name: str, default: float, valid: Callable[[float], bool]
) -> float:
    text = environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}={text} is not a number") from None
    if not valid(value):
        raise ValueError(f"{name}={text} is out of range")
    return value


def _env_capability(environ: Mapping[str, str]) -> float | None:
    if not environ.get(ENV_CAPABILITY):
        return None
    return _env_float(environ, ENV_CAPABILITY, 0.0, lambda v: 0 <= v <= 1)


def _known_model(model_id: str, what: str) -> str:
    try:
        catalog.model(model_id)
    except ValueError as exc:
        raise ValueError(f"the simulator cannot time {what} {exc}") from exc
    return model_id


def command(args: argparse.Namespace, environ: Mapping[str, str]) -> Command:
    """The simulation a parsed `vllm serve` line asks for; ValueError naming what is wrong."""
    architecture = _known_model(args.model_tag, "MODEL")
    names = args.served_model_name or [args.model_tag]
    if len(names) > 1:
        raise ValueError(
            f"--served-model-name: the simulator serves one name, got {len(names)}: "
            + " ".join(names)
        )
    draft = None
    tokens = 5
    schedule: tuple[tuple[int, int, int], ...] = ()
    notes = []
    speculation = args.speculative_config
    if speculation is not None:
        method = speculation["method"]
        tokens = speculation["num_speculative_tokens"]
        draft_tp = speculation.get("draft_tensor_parallel_size", 1)
        if draft_tp not in (1, args.tensor_parallel_size):
            raise ValueError(
                "--speculative-config: draft_tensor_parallel_size must be 1 or "
                f"--tensor-parallel-size ({args.tensor_parallel_size}), got {draft_tp}"
            )
        schedule = tuple(
            (first, last, k)
            for first, last, k in speculation.get("num_speculative_tokens_per_batch_size", ())
        )
        if method == "draft_model":
            draft = _known_model(speculation["model"], "the --speculative-config model")
        else:
            notes.append(f"speculative method {method} is not simulated: served without a draft")
    gpu = environ.get(ENV_GPU) or sim_cli.DEFAULT_GPU
    if gpu not in catalog.GPUS:
        raise ValueError(f"{ENV_GPU}={gpu} is not one of {', '.join(sorted(catalog.GPUS))}")
    simulation = sim_cli.Simulation(
        architecture=architecture,
        served_model_name=names[0],
        gpu=gpu,
        tensor_parallel_size=args.tensor_parallel_size,
        quantization=QUANTIZATION[args.quantization] if args.quantization else "none",
        draft=draft,
        num_speculative_tokens=tokens,
        schedule=schedule,
        max_num_seqs=args.max_num_seqs,
        acceptance_rate=_env_float(
            environ, ENV_ACCEPTANCE_RATE, sim_cli.DEFAULT_ACCEPTANCE_RATE, lambda v: 0 <= v <= 1
        ),
        time_factor=_env_float(environ, ENV_TIME_FACTOR, 1.0, lambda v: v > 0),
        tool_call_parser=args.tool_call_parser,
        enable_auto_tool_choice=args.enable_auto_tool_choice,
        enable_request_id_headers=args.enable_request_id_headers,
        capability=_env_capability(environ),
    )
    startup_delay = _env_float(environ, ENV_STARTUP_DELAY, 0.0, lambda v: v >= 0)
    return Command(simulation, args.host, args.port, startup_delay, tuple(notes))


def parse(argv: Sequence[str], environ: Mapping[str, str]) -> Command:
    """The command `vllm ARGV` runs; exits 2 (argparse's usage error) naming what is wrong."""
    p = parser()
    args = p.parse_args(argv)
    try:
        return command(args, environ)
    except ValueError as exc:
        p.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    run = parse(sys.argv[1:] if argv is None else argv, os.environ)
    try:
        server = sim_cli.build(run.simulation)
    except ValueError as exc:
        parser().error(str(exc))
    for note in run.notes:
        print(f"{PROG} (specfleet simulator): {note}", file=sys.stderr, flush=True)
    asyncio.run(sim_cli.serve(server, run.host, run.port, run.startup_delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
