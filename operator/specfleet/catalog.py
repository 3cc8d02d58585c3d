"""What specfleet knows about GPUs and model families, as plain data.

The planner sizes memory from it, and the performance model (shared by the planner, the
simulator and the benchmarks) takes bandwidth and throughput from it, so a simulated H100
behaves like an H100 in shape. Numbers are vendor datasheet values (dense tensor throughput,
no sparsity) and each model's published configuration; GPU memory is what NVIDIA GPU Feature
Discovery reports in `nvidia.com/gpu.memory`.

Pure data and lookups: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIB = 1 << 20
GIB = 1 << 30
TERA = 1e12


@dataclass(frozen=True)
class GPU:
    """One GPU product."""

    product: str
    """The name InferenceModel's gpu.product uses."""
    memory_bytes: int
    """Device memory."""
    bandwidth: float
    """Memory bandwidth, bytes per second."""
    bf16_flops: float
    """Dense BF16 tensor throughput, FLOP/s."""
    fp8_flops: float | None
    """Dense FP8 tensor throughput, FLOP/s; None where the GPU has no FP8 tensor cores."""
    compute_capability: tuple[int, int]
    """CUDA compute capability."""

    @property
    def fp8_native(self) -> bool:
        """FP8 W8A8 runs on Ada and Hopper (8.9+); older GPUs fall back to weight-only FP8,
        which saves memory but not compute, so specfleet does not choose it by default."""
        return self.compute_capability >= (8, 9) and self.fp8_flops is not None


GPUS: dict[str, GPU] = {
    gpu.product: gpu
    for gpu in (
        GPU("H100-80GB", 81559 * MIB, 3.35 * TERA, 989 * TERA, 1979 * TERA, (9, 0)),
        GPU("H200-141GB", 143771 * MIB, 4.8 * TERA, 989 * TERA, 1979 * TERA, (9, 0)),
        GPU("A100-80GB", 81920 * MIB, 2.039 * TERA, 312 * TERA, None, (8, 0)),
        GPU("A100-40GB", 40960 * MIB, 1.555 * TERA, 312 * TERA, None, (8, 0)),
        GPU("L40S", 46068 * MIB, 0.864 * TERA, 362 * TERA, 733 * TERA, (8, 9)),
        GPU("L4", 23034 * MIB, 0.3 * TERA, 121 * TERA, 242.5 * TERA, (8, 9)),
    )
}
"""Every GPU specfleet plans for, by product name."""


@dataclass(frozen=True)
class ModelArchitecture:
    """What sizing and the performance model need to know about a model."""

    name: str
    """A readable name of the family member, such as `Llama 3.1 70B`."""
    parameters: float
    """All parameters (weights in memory)."""
    layers: int
    hidden_size: int
    attention_heads: int
    kv_heads: int
    """Key/value heads (fewer than attention heads with grouped-query attention)."""
    head_dim: int
    vocab_size: int
    max_context: int
    """The longest context the model is configured for."""
    active_parameters: float | None = None
    """Parameters used per token, for mixture-of-experts models; None means all."""

    @property
    def parameters_per_token(self) -> float:
        return self.active_parameters or self.parameters

    def kv_bytes_per_token(self, dtype_bytes: float) -> float:
        """Key and value vectors of every layer for one token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


def _arch(
    name: str,
    parameters: float,
    layers: int,
    hidden: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    vocab: int,
    context: int,
    active: float | None = None,
) -> ModelArchitecture:
    return ModelArchitecture(
        name,
        parameters * 1e9,
        layers,
        hidden,
        heads,
        kv_heads,
        head_dim,
        vocab,
        context,
        active * 1e9 if active else None,
    )


LLAMA_VOCAB = 128256
QWEN_SMALL_VOCAB = 151936
QWEN_VOCAB = 152064

# (pattern on the lowercased model name without its organisation, architecture). The first
# match wins, so more specific patterns come first.
_FAMILIES: tuple[tuple[str, ModelArchitecture], ...] = (
    (r"llama-3\.2-1b", _arch("Llama 3.2 1B", 1.236, 16, 2048, 32, 8, 64, LLAMA_VOCAB, 131072)),
    (r"llama-3\.2-3b", _arch("Llama 3.2 3B", 3.213, 28, 3072, 24, 8, 128, LLAMA_VOCAB, 131072)),
    (r"llama-3(\.1)?-8b", _arch("Llama 3.1 8B", 8.03, 32, 4096, 32, 8, 128, LLAMA_VOCAB, 131072)),
    (
        r"llama-3(\.[13])?-70b",
        _arch("Llama 3.1 70B", 70.55, 80, 8192, 64, 8, 128, LLAMA_VOCAB, 131072),
    ),
    (
        r"llama-3\.1-405b",
        _arch("Llama 3.1 405B", 405.85, 126, 16384, 128, 8, 128, LLAMA_VOCAB, 131072),
    ),
    (r"qwen2\.5-0\.5b", _arch("Qwen2.5 0.5B", 0.494, 24, 896, 14, 2, 64, QWEN_SMALL_VOCAB, 32768)),
    (
        r"qwen2\.5-1\.5b",
        _arch("Qwen2.5 1.5B", 1.544, 28, 1536, 12, 2, 128, QWEN_SMALL_VOCAB, 32768),
    ),
    (r"qwen2\.5-3b", _arch("Qwen2.5 3B", 3.086, 36, 2048, 16, 2, 128, QWEN_SMALL_VOCAB, 32768)),
    (r"qwen2\.5-7b", _arch("Qwen2.5 7B", 7.616, 28, 3584, 28, 4, 128, QWEN_VOCAB, 32768)),
    (r"qwen2\.5-14b", _arch("Qwen2.5 14B", 14.77, 48, 5120, 40, 8, 128, QWEN_VOCAB, 32768)),
    (r"qwen2\.5-32b", _arch("Qwen2.5 32B", 32.76, 64, 5120, 40, 8, 128, QWEN_VOCAB, 32768)),
    (r"qwen2\.5-72b", _arch("Qwen2.5 72B", 72.71, 80, 8192, 64, 8, 128, QWEN_VOCAB, 32768)),
    (
        r"qwen3-30b-a3b",
        _arch("Qwen3 30B-A3B", 30.5, 48, 2048, 32, 4, 128, QWEN_SMALL_VOCAB, 40960, active=3.3),
    ),
    (
        r"qwen3-235b-a22b",
        _arch("Qwen3 235B-A22B", 235, 94, 4096, 64, 4, 128, QWEN_SMALL_VOCAB, 40960, active=22),
    ),
    (r"qwen3-0\.6b", _arch("Qwen3 0.6B", 0.596, 28, 1024, 16, 8, 128, QWEN_SMALL_VOCAB, 40960)),
    (r"qwen3-1\.7b", _arch("Qwen3 1.7B", 1.72, 28, 2048, 16, 8, 128, QWEN_SMALL_VOCAB, 40960)),
    (r"qwen3-4b", _arch("Qwen3 4B", 4.02, 36, 2560, 32, 8, 128, QWEN_SMALL_VOCAB, 40960)),
    (r"qwen3-8b", _arch("Qwen3 8B", 8.19, 36, 4096, 32, 8, 128, QWEN_SMALL_VOCAB, 40960)),
    (r"qwen3-14b", _arch("Qwen3 14B", 14.8, 40, 5120, 40, 8, 128, QWEN_SMALL_VOCAB, 40960)),
    (r"qwen3-32b", _arch("Qwen3 32B", 32.8, 64, 5120, 64, 8, 128, QWEN_SMALL_VOCAB, 40960)),
    (
        r"mistral-7b.*v0\.3",
        _arch("Mistral 7B v0.3", 7.248, 32, 4096, 32, 8, 128, 32768, 32768),
    ),
    (r"mistral-7b", _arch("Mistral 7B", 7.242, 32, 4096, 32, 8, 128, 32000, 32768)),
    (
        r"mixtral-8x7b",
        _arch("Mixtral 8x7B", 46.7, 32, 4096, 32, 8, 128, 32000, 32768, active=12.9),
    ),
    (
        r"mixtral-8x22b",
        _arch("Mixtral 8x22B", 140.6, 56, 6144, 48, 8, 128, 32768, 65536, active=39.1),
    ),
)


def find_model(name: str) -> ModelArchitecture | None:
    """The architecture of a model id such as `meta-llama/Llama-3.1-70B-Instruct`, or None
    when the catalog does not know it. Case, organisation, a `Meta-` prefix and suffixes such
    as `-Instruct` or `-FP8` do not matter."""
    base = name.rstrip("/").rsplit("/", 1)[-1].lower().removeprefix("meta-")
    for pattern, architecture in _FAMILIES:
        if re.match(pattern + r"(?![.0-9])", base):
            return architecture
    return None


def model(name: str) -> ModelArchitecture:
    """Like `find_model`, for a name that must be known; raises ValueError naming it."""
    found = find_model(name)
    if found is None:
        raise ValueError(
            f"{name}: not in specfleet's model catalog (Llama 3.x, Qwen2.5, Qwen3, Mistral 7B "
            "and Mixtral, for example meta-llama/Llama-3.1-70B-Instruct)"
        )
    return found
