"""The real vLLM server (CPU build, tiny local models) behind the real ``specfleet-gate``.

Checks what the rest of specfleet assumes about vLLM: completions and chat, streaming and not,
pass through the gate and are counted by it; vLLM's /metrics has the speculative decoding
counters and latency histograms, with the simulator's families, types and label names; and the
acceptance rate follows the draft (an exact copy of the target is accepted almost always, a
noisy copy rarely), so later tests can drive the autoscaler with real acceptance rates.

Needs the vLLM virtualenv from ``scripts/setup-vllm`` (``make setup-e2e``). Without it the tests
skip, except under CI (env ``CI`` set), where they fail. Each vLLM start takes about a minute
on two cores; the module starts two.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e import vllm_models
from specfleet_runtime.sim import vllm_metrics

GATE = Path(sys.executable).parent / "specfleet-gate"
GENERATION = {"temperature": 0, "max_tokens": 48, "ignore_eos": True}


@pytest.fixture(scope="module")
def models(vllm_python: Path) -> vllm_models.Models:
    return vllm_models.build_models(vllm_python)


@contextlib.contextmanager
def gate(upstream: str, log: Path) -> Iterator[str]:
    """A real specfleet-gate in front of ``upstream``, limit 4 (below vLLM's 8)."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(GATE), "--upstream", upstream, "--port", "0", "--initial-limit", "4"],
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 30
        while not (match := re.search(r"listening on (http://\S+)", log.read_text())):
            assert process.poll() is None, f"specfleet-gate exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"specfleet-gate did not listen:\n{log.read_text()}"
            time.sleep(0.05)
        yield match.group(1)
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0, log.read_text()


def post(url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status, response.read()


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        text: str = response.read().decode()
        return text


def families(metrics_text: str) -> dict[str, tuple[str, set[str]]]:
    """Family name -> (type, label names) as a /metrics page exposes them."""
    found: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(metrics_text):
        labels = {name for sample in family.samples for name in sample.labels} - {"le"}
        found[family.name] = (family.type, labels)
    return found


def counter(metrics_text: str, name: str) -> float:
    """The sum of a counter's samples (over its label values)."""
    for family in text_string_to_metric_families(metrics_text):
        if family.name == name:
            return sum(s.value for s in family.samples if s.name == f"{name}_total")
    raise AssertionError(f"{name} is not on vLLM's /metrics")


def acceptance(metrics_text: str) -> float:
    drafted = counter(metrics_text, "vllm:spec_decode_num_draft_tokens")
    accepted = counter(metrics_text, "vllm:spec_decode_num_accepted_tokens")
    assert drafted > 0, "vLLM proposed no draft tokens"
    return accepted / drafted


def model_id(server: str) -> str:
    model: str = json.loads(get(f"{server}/v1/models"))["data"][0]["id"]
    return model


def test_vllm_behind_the_gate(
    vllm_python: Path, models: vllm_models.Models, tmp_path: Path
) -> None:
    with (
        vllm_models.serve(
            vllm_python, models.target, models.draft_noisy, tmp_path / "vllm.log"
        ) as vllm,
        gate(vllm.url, tmp_path / "gate.log") as url,
    ):
        assert get(f"{url}/health") == ""
        model = model_id(url)

        status, body = post(
            f"{url}/v1/completions", {"model": model, "prompt": "The batch"} | GENERATION
        )
        assert status == 200
        completion = json.loads(body)
        assert completion["usage"]["completion_tokens"] == GENERATION["max_tokens"]

        status, body = post(
            f"{url}/v1/chat/completions",
            {"model": model, "messages": [{"role": "user", "content": "Hi"}]} | GENERATION,
        )
        assert status == 200
        assert json.loads(body)["choices"][0]["message"]["role"] == "assistant"

        status, body = post(
            f"{url}/v1/completions",
            {"model": model, "prompt": "Speculative", "stream": True} | GENERATION,
        )
        assert status == 200
        events = [line for line in body.decode().splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert len(events) > 2

        gate_metrics = get(f"{url}/metrics")
        # Four responses (the model listing too), three of them generations through admission.
        assert 'specfleet_gate_responses_total{status_class="2xx"} 4.0' in gate_metrics
        assert "specfleet_gate_e2e_request_latency_seconds_count 3.0" in gate_metrics

        vllm_text = get(f"{vllm.url}/metrics")
        real = families(vllm_text)
        for name in (
            "vllm:spec_decode_num_drafts",
            "vllm:spec_decode_num_draft_tokens",
            "vllm:spec_decode_num_accepted_tokens",
            "vllm:spec_decode_num_accepted_tokens_per_pos",
        ):
            assert counter(vllm_text, name) >= 0
            assert real[name][0] == "counter"
        assert counter(vllm_text, "vllm:spec_decode_num_drafts") > 0
        for name in (
            "vllm:e2e_request_latency_seconds",
            "vllm:time_to_first_token_seconds",
            "vllm:inter_token_latency_seconds",
            "vllm:request_queue_time_seconds",
        ):
            assert real[name] == ("histogram", {"model_name", "engine"}), name
        assert counter(vllm_text, "vllm:request_success") == 3

        # What the simulator exports, real vLLM exports too, with the same type and labels.
        for family in (*vllm_metrics.ENGINE_FAMILIES, *vllm_metrics.SPEC_DECODE_FAMILIES):
            assert family.name in real, f"{family.name}: the simulator exports it, vLLM does not"
            assert real[family.name] == (family.kind, set(family.labels)), family.name

        # A noisy copy of the target proposes tokens the target mostly rejects.
        assert acceptance(vllm_text) < 0.5


def test_an_exact_copy_draft_is_accepted_almost_always(
    vllm_python: Path, models: vllm_models.Models, tmp_path: Path
) -> None:
    with vllm_models.serve(
        vllm_python, models.target, models.draft_exact, tmp_path / "vllm.log"
    ) as vllm:
        model = model_id(vllm.url)
        for prompt in ("The batch", "Speculative decoding", "SELECT"):
            status, _ = post(
                f"{vllm.url}/v1/completions", {"model": model, "prompt": prompt} | GENERATION
            )
            assert status == 200
        assert acceptance(get(f"{vllm.url}/metrics")) > 0.9
