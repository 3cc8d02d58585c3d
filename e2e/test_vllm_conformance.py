"""The OpenAI conformance checks (tests/conformance/checks.py) against the real vLLM (CPU build,
the tiny local models of e2e/vllm_models.py) behind the real ``specfleet-gate``: the standard
the simulator is held to in tests/conformance/test_openai_sdk.py, met by vLLM itself.

Needs the vLLM virtualenv (``scripts/setup-vllm``) but no cluster: vLLM and the gate run as
processes on loopback, started as e2e/test_vllm.py starts them. One vLLM start (about a
minute on two cores) serves every check.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from e2e import vllm_models
from tests.conformance import checks
from tests.server_process import running_server

GATE = Path(sys.executable).parent / "specfleet-gate"
TOOL_CALLING = ("--enable-auto-tool-choice", "--tool-call-parser", "pythonic")
"""As vLLM serves a model for agents (the simulator in tests/conformance runs the same way)."""


@pytest.fixture(scope="module")
def behind_the_gate(
    vllm_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """(the gate's URL, the model vLLM serves)."""
    models = vllm_models.build_models(vllm_python)
    tmp = tmp_path_factory.mktemp("vllm-conformance")
    with (
        vllm_models.serve(
            vllm_python, models.target, models.draft_small, tmp / "vllm.log", TOOL_CALLING
        ) as vllm,
        running_server(
            GATE, "--upstream", vllm.url, "--port", "0", "--initial-limit", "4",
            log=tmp / "gate.log",
        ) as url,
    ):  # fmt: skip
        with urllib.request.urlopen(f"{vllm.url}/v1/models", timeout=30) as response:
            model: str = json.load(response)["data"][0]["id"]
        yield url, model


@pytest.mark.parametrize("name", list(checks.PORTABLE))
def test_vllm_behind_the_gate_gives_what_the_simulator_gives(
    behind_the_gate: tuple[str, str], name: str
) -> None:
    url, model = behind_the_gate
    with openai.OpenAI(
        base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120
    ) as client:
        checks.PORTABLE[name](client, model)
