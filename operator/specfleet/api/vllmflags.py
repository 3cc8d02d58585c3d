"""The vLLM flags specfleet knows: the ones it renders, the spec field that sets each, and the
ones vLLM removed.

One table, two readers. `render.vllm` names every flag of the `vllm serve` command line from
here, and `api.inferencemodel` refuses `extraArgs` that repeat one of them (in Python and in
the CRD's CEL rule, both built from `SPEC_OWNED_FLAGS`) or that name a removed flag. A flag
rendered but missing here would let `extraArgs`, appended last, silently override the spec;
tests/test_vllm_flags.py renders a wide range of specs and fails on any such flag, and
tests/test_vllm_args.py checks with vLLM's own parser that every alias of a rendered flag is
listed. It lives under `api` because the API models need it and `render` imports `api`.
Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Flag:
    """One `vllm serve` flag that specfleet renders."""

    name: str
    """The flag as specfleet renders it, such as `--tensor-parallel-size`."""
    field: str
    """The spec field that sets it, such as `gpu.count`; empty: no field, specfleet decides."""
    aliases: tuple[str, ...] = ()
    """Other spellings vLLM's parser reads as the same setting (`-tp`, `--no-...`)."""

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


MODEL = Flag("--model", "model.name")
"""Rendered as `vllm serve`'s positional argument, which `--model` would override."""
REVISION = Flag("--revision", "model.revision")
SERVED_MODEL_NAME = Flag("--served-model-name", "servedModelName")
TENSOR_PARALLEL_SIZE = Flag("--tensor-parallel-size", "gpu.count", ("-tp",))
QUANTIZATION = Flag("--quantization", "quantization", ("-q",))
KV_CACHE_DTYPE = Flag("--kv-cache-dtype", "kvCacheDtype")
MAX_MODEL_LEN = Flag("--max-model-len", "maxModelLen")
MAX_NUM_SEQS = Flag("--max-num-seqs", "batching.max")
SPECULATIVE_CONFIG = Flag("--speculative-config", "draft", ("-sc",))
HOST = Flag("--host", "")
PORT = Flag("--port", "")
GPU_MEMORY_UTILIZATION = Flag("--gpu-memory-utilization", "", ("--device-memory-utilization",))
"""The planner sizes weights and KV cache within this share of GPU memory."""
ENABLE_PREFIX_CACHING = Flag("--enable-prefix-caching", "", ("--no-enable-prefix-caching",))

RENDERED = (
    MODEL,
    REVISION,
    SERVED_MODEL_NAME,
    TENSOR_PARALLEL_SIZE,
    QUANTIZATION,
    KV_CACHE_DTYPE,
    MAX_MODEL_LEN,
    MAX_NUM_SEQS,
    SPECULATIVE_CONFIG,
    HOST,
    PORT,
    GPU_MEMORY_UTILIZATION,
    ENABLE_PREFIX_CACHING,
)
"""Every setting `render.vllm.serve_args` renders: the model as the positional argument, the
rest as flags."""

SPEC_OWNED_FLAGS: dict[str, str] = {name: flag.field for flag in RENDERED for name in flag.names}
"""Every spelling of a rendered flag, and the field that sets it (empty: none, specfleet owns
it): `extraArgs` may not name any of them."""

REMOVED_FLAGS: dict[str, str] = {
    "--speculative-model": "draft.model",
    "--num-speculative-tokens": "draft.numSpeculativeTokens",
    "--use-v2-block-manager": "(nothing: it is always on)",
}
"""vLLM flags that no longer exist, and what replaced each."""


def flag_name(arg: str) -> str:
    """The flag of one command-line argument: `--max-num-seqs=8` and `--max-num-seqs` give
    `--max-num-seqs`."""
    return arg.split("=", 1)[0]


# How vLLM's parser reads a flag, beyond its exact spellings (all checked with vLLM 0.32's own
# parser in tests/test_vllm_args.py): argparse takes any unambiguous prefix of a long flag
# (`--gpu-memory-util`) and a value glued to a two-letter short one (`-qfp8`); vLLM's parser
# reads `_` as `-` in long flags (`--max_num_seqs`) and sets one key of a JSON flag with a dot
# (`--speculative-config.method`). `sets` and `CEL_SETS` say the same in Python and in CEL.


def _normal(arg: str) -> str:
    """A long flag as vLLM's parser reads it: no value, no JSON key, dashes for underscores."""
    return arg.split("=", maxsplit=1)[0].split(".", maxsplit=1)[0].replace("_", "-")


_CEL_NORMAL = "a.split('=')[0].split('.')[0].replace('_', '-')"


def sets(arg: str, flags: Iterable[str]) -> str | None:
    """Which of `flags` (exact spellings, such as `SPEC_OWNED_FLAGS`) an `extraArgs` entry
    sets as vLLM's parser reads it, if any."""
    if arg.startswith("--"):
        name = _normal(arg)
        return next((f for f in flags if f == name or (len(name) > 2 and f.startswith(name))), None)
    if arg.startswith("-") and len(arg) > 1:
        name = flag_name(arg)
        return next(
            (
                f
                for f in flags
                if not f.startswith("--") and (arg.startswith(f) or f.startswith(name))
            ),
            None,
        )
    return None


def cel_sets(flags: Iterable[str]) -> str:
    """`sets(a, flags) is not None` in CEL, for an `extraArgs` entry `a`."""
    listed = "[" + ", ".join(f"'{flag}'" for flag in flags) + "]"
    long = (
        f"a.startsWith('--') && {listed}.exists(f, f == {_CEL_NORMAL} || "
        f"(size({_CEL_NORMAL}) > 2 && f.startsWith({_CEL_NORMAL})))"
    )
    short = (
        f"!a.startsWith('--') && a.startsWith('-') && size(a) > 1 && {listed}.exists(f, "
        f"!f.startsWith('--') && (a.startsWith(f) || f.startsWith(a.split('=')[0])))"
    )
    return f"(({long}) || ({short}))"
