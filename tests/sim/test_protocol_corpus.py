"""The simulator accepts and refuses what vLLM does: one corpus of requests
(tests/sim/protocol_corpus.py, with the verdict for each), judged by the simulator's mirror of
vLLM's request models here, and by vLLM's own classes in the vLLM virtualenv
(tests/sim/vllm_protocol_check.py), which must agree with the corpus too.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from specfleet_runtime.sim import protocol
from tests.sim import protocol_corpus

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SPECFLEET_CACHE", Path.home() / ".cache" / "specfleet"))
VLLM_PYTHON = Path(
    os.environ.get("SPECFLEET_VLLM_PYTHON", CACHE / "vllm-0.32.0" / "bin" / "python")
)

CASES = [("chat", name, body, ok) for name, (body, ok) in protocol_corpus.CHAT.items()] + [
    ("completions", name, body, ok) for name, (body, ok) in protocol_corpus.COMPLETIONS.items()
]
IDS = [f"{endpoint}: {name}" for endpoint, name, _, _ in CASES]


def simulator_accepts(endpoint: str, body: Any) -> bool:
    try:
        if endpoint == "chat":
            # The request model's verdict: the server runs a tool call parser, which vLLM's
            # renderer asks of any tool_choice but none (see the test below).
            protocol.parse_chat(body, tool_call_parser="hermes", auto_tool_choice=True)
        else:
            protocol.parse_completion(body)
    except protocol.RequestError:
        return False
    return True


def test_the_corpus_covers_both_verdicts_on_both_endpoints() -> None:
    for endpoint in ("chat", "completions"):
        verdicts = [ok for e, _, _, ok in CASES if e == endpoint]
        assert verdicts.count(True) >= 10 and verdicts.count(False) >= 10, endpoint


@pytest.mark.parametrize(("endpoint", "name", "body", "accepted"), CASES, ids=IDS)
def test_the_simulator_gives_vllms_verdict(
    endpoint: str, name: str, body: Any, accepted: bool
) -> None:
    assert simulator_accepts(endpoint, json.loads(json.dumps(body))) is accepted


TOOL_PARSING = [
    # (tool_choice, parser, auto tool choice, accepted): vLLM's renderer's rule.
    (None, None, False, False),  # tools alone mean auto
    ("none", None, False, True),
    ("auto", None, False, False),
    ("auto", "hermes", False, True),
    ("auto", "hermes", True, True),
    ("required", None, False, False),
    ("required", "hermes", False, True),
    ({"type": "function", "function": {"name": "weather"}}, None, False, False),
    ({"type": "function", "function": {"name": "weather"}}, "hermes", False, True),
]


@pytest.mark.parametrize(("choice", "parser", "auto", "accepted"), TOOL_PARSING)
def test_a_tool_choice_needs_the_servers_tool_call_parser(
    choice: Any, parser: str | None, auto: bool, accepted: bool
) -> None:
    body = protocol_corpus.chat(tools=[protocol_corpus.TOOL])
    if choice is not None:
        body["tool_choice"] = choice
    try:
        protocol.parse_chat(body, tool_call_parser=parser, auto_tool_choice=auto)
    except protocol.RequestError as exc:
        assert not accepted
        assert "--tool-call-parser" in str(exc)
    else:
        assert accepted


@pytest.fixture(scope="module")
def vllm_verdicts() -> dict[str, Any]:
    if not VLLM_PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{VLLM_PYTHON} is missing: run scripts/setup-vllm")
        pytest.skip(f"vLLM is not installed at {VLLM_PYTHON}: run scripts/setup-vllm")
    cases = [
        {"id": case_id, "endpoint": endpoint, "body": body}
        for case_id, (endpoint, _, body, _) in zip(IDS, CASES, strict=True)
    ]
    run = subprocess.run(
        [str(VLLM_PYTHON), str(ROOT / "tests" / "sim" / "vllm_protocol_check.py")],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report: dict[str, Any] = json.loads(run.stdout)
    return {r["id"]: r for r in report["results"]}


@pytest.mark.parametrize(("endpoint", "name", "body", "accepted"), CASES, ids=IDS)
def test_vllm_gives_the_corpus_verdict(
    vllm_verdicts: dict[str, Any], endpoint: str, name: str, body: Any, accepted: bool
) -> None:
    verdict = vllm_verdicts[f"{endpoint}: {name}"]
    assert verdict["accepted"] is accepted, verdict["error"]
