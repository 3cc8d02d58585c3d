"""Parses `vllm serve` command lines with vLLM's own parser. Runs inside the vLLM virtualenv
(scripts/setup-vllm), never in specfleet's: tests/test_vllm_args.py feeds it JSON on stdin,
`[{"id": ..., "args": [...]}]`, and reads one result per case on stdout.

The parser is built the way the `vllm` command builds its `serve` subcommand, so a flag vLLM
does not know fails here exactly as it would in a pod. Values argparse leaves unchecked
(`--quantization`, `--kv-cache-dtype`) are checked against vLLM's own lists, and a speculation
schedule (`num_speculative_tokens_per_batch_size`) is turned into the lookup table vLLM's
scheduler builds from it at start, by vLLM's own function, which applies its rules.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import typing
from typing import Any

import vllm
from vllm.config.cache import CacheDType
from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.v1.spec_decode.dynamic.utils import build_dynamic_sd_schedule_lookup

PARSED_FIELDS = (
    "model_tag",
    "served_model_name",
    "tensor_parallel_size",
    "max_num_seqs",
    "max_model_len",
    "quantization",
    "kv_cache_dtype",
    "gpu_memory_utilization",
    "enable_prefix_caching",
    "speculative_config",
    "revision",
)


def serve_parser() -> tuple[argparse.ArgumentParser, Any]:
    """The `vllm serve` parser and its validation function, wherever this release keeps them."""
    root = FlexibleArgumentParser(prog="vllm")
    subparsers = root.add_subparsers(dest="subcommand")
    try:
        from vllm.entrypoints.cli.serve import ServeSubcommand  # noqa: PLC0415

        command = ServeSubcommand()
        command.subparser_init(subparsers)
        return root, command.validate
    except ImportError:
        for module in ("vllm.entrypoints.common.cli_args", "vllm.entrypoints.launchers.cli_args"):
            with contextlib.suppress(ImportError):
                cli_args = __import__(module, fromlist=["make_arg_parser"])
                cli_args.make_arg_parser(subparsers.add_parser("serve"))
                return root, cli_args.validate_parsed_serve_args
    raise SystemExit(f"vLLM {vllm.__version__}: no serve argument parser found")


def check(parser: argparse.ArgumentParser, validate: Any, args: list[str]) -> dict[str, Any]:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parsed = parser.parse_args(["serve", *args])
            validate(parsed)
    except SystemExit as exc:
        return {"error": f"argparse exited {exc.code}: {stderr.getvalue().strip()[-500:]}"}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    problems = []
    if parsed.quantization is not None and parsed.quantization not in QUANTIZATION_METHODS:
        problems.append(f"--quantization {parsed.quantization} is not one of vLLM's methods")
    if parsed.kv_cache_dtype not in typing.get_args(CacheDType):
        problems.append(f"--kv-cache-dtype {parsed.kv_cache_dtype} is not one of vLLM's dtypes")
    lookup = None
    speculation = parsed.speculative_config or {}
    schedule = speculation.get("num_speculative_tokens_per_batch_size")
    if schedule is not None:
        # What vLLM's scheduler builds at start from the schedule: its rules, its table.
        try:
            lookup = build_dynamic_sd_schedule_lookup(
                schedule, parsed.max_num_seqs, speculation["num_speculative_tokens"]
            )
        except ValueError as exc:
            problems.append(f"num_speculative_tokens_per_batch_size: {exc}")
    values = {name: getattr(parsed, name, None) for name in PARSED_FIELDS}
    return {
        "error": "; ".join(problems) or None,
        "parsed": json.loads(json.dumps(values, default=str)),
        "lookup": lookup,
    }


def spellings(root: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Every option of `vllm serve`, with every spelling of the setting it sets (`-tp` and
    `--tensor-parallel-size`, `--enable-prefix-caching` and its `--no-` form)."""
    (commands,) = [a for a in root._actions if isinstance(a, argparse._SubParsersAction)]
    serve = commands.choices["serve"]
    return {name: list(a.option_strings) for a in serve._actions for name in a.option_strings}


def main() -> None:
    parser, validate = serve_parser()
    results = [
        {"id": case["id"], **check(parser, validate, case["args"])} for case in json.load(sys.stdin)
    ]
    report = {"vllm": vllm.__version__, "results": results, "spellings": spellings(parser)}
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
