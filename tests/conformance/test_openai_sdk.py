"""The official `openai` SDK against the simulator, the gate in front of it, and the router in
front of a gate and a simulator, all real processes on loopback: every portable check of
tests/conformance/checks.py on each, then what only the data path does (busy answers and the
SDK's retries, a cancelled stream freeing its slot, errors the data path makes itself,
request ids)."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.conformance import checks
from tests.server_process import running_server
from tests.sim.process import running_sim
from tests.waiting import until

BIN = Path(sys.executable).parent
GATE = BIN / "specfleet-gate"
ROUTER = BIN / "specfleet-router"
SIM_FLAGS = (
    "--time-factor", "0.01",
    "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
    "--enable-request-id-headers",
)  # fmt: skip
"""Fast, with tool calling on as vLLM serves a model for agents, and answers carrying
X-Request-Id (the gate passes vLLM's answers through as they are)."""
POLICY = "assistant"


_CLIENTS: list[openai.OpenAI] = []


def client(url: str, **options: Any) -> openai.OpenAI:
    """An SDK client for `url`, closed when the test ends."""
    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=30, **options)
    _CLIENTS.append(sdk)
    return sdk


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


@contextlib.contextmanager
def gate(upstream: str, tmp: Path, *flags: str) -> Iterator[str]:
    with running_server(
        GATE, "--upstream", upstream, "--port", "0", *(flags or ("--initial-limit", "4")),
        log=tmp / "gate.log",
    ) as url:  # fmt: skip
        yield url


@contextlib.contextmanager
def router(backends: dict[str, str], tmp: Path) -> Iterator[str]:
    """A router whose policy sends simple requests to `small` and the rest to `large`."""
    config = {
        "policy": POLICY,
        "tiers": [
            {"name": "simple", "model": "small", "when": {"maxComplexity": 0.3}},
            {"name": "complex", "model": "large"},
        ],
        "backends": {name: {"url": url, "ready": True} for name, url in backends.items()},
    }
    path = tmp / "router.json"
    path.write_text(json.dumps(config))
    with running_server(
        ROUTER, "--config", str(path), "--port", "0", log=tmp / "router.log"
    ) as url:
        yield url


@pytest.fixture(scope="module", params=["sim", "gate", "router"])
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, str]]:
    """(kind, base URL, the model a client asks for)."""
    tmp = tmp_path_factory.mktemp(request.param)
    with contextlib.ExitStack() as stack:
        small = stack.enter_context(running_sim("--model", "small", *SIM_FLAGS))
        if request.param == "sim":
            yield "sim", small, "small"
            return
        gated = stack.enter_context(gate(small, tmp))
        if request.param == "gate":
            yield "gate", gated, "small"
            return
        large = stack.enter_context(running_sim("--model", "large", *SIM_FLAGS))
        yield "router", stack.enter_context(router({"small": gated, "large": large}, tmp)), POLICY


@pytest.mark.parametrize("name", list(checks.PORTABLE))
def test_the_sdk_gets_what_vllm_gives(target: tuple[str, str, str], name: str) -> None:
    _, url, model = target
    checks.PORTABLE[name](client(url, max_retries=0), model)


def test_the_simulators_stop_and_logprobs_line_up_with_its_text() -> None:
    with running_sim("--model", "m", *SIM_FLAGS) as url:
        sdk = client(url)
        response = sdk.chat.completions.create(
            model="m", messages=[checks.USER], max_tokens=30, logprobs=True, top_logprobs=3
        )
        text = response.choices[0].message.content or ""
        logprobs = response.choices[0].logprobs
        assert logprobs is not None and logprobs.content is not None
        assert "".join(e.token for e in logprobs.content) == text
        word = text.split()[5]
        stopped = sdk.chat.completions.create(
            model="m", messages=[checks.USER], max_tokens=30, stop=word, logprobs=True
        )
        choice = stopped.choices[0]
        assert choice.message.content == text[: text.find(word)]
        assert choice.logprobs is not None and choice.logprobs.content is not None
        # The stop word's own token is cut from the text (its leading space stays): its logprob
        # goes with it.
        assert choice.message.content == "".join(e.token for e in choice.logprobs.content) + " "
        assert stopped.usage is not None
        assert stopped.usage.completion_tokens == len(text[: text.find(word) + 1].split())


def test_without_a_tool_call_parser_tool_choices_are_refused_as_by_vllm() -> None:
    with running_sim("--model", "m", "--time-factor", "0.01") as url:
        sdk = client(url, max_retries=0)
        named = {"type": "function", "function": {"name": "weather"}}
        choices: list[Any] = ["auto", "required", named]
        for choice in choices:
            with pytest.raises(openai.BadRequestError, match="--tool-call-parser"):
                sdk.chat.completions.create(
                    model="m",
                    messages=[checks.USER],
                    tools=[checks.TOOL],
                    tool_choice=choice,
                )
        answer = sdk.chat.completions.create(
            model="m", messages=[checks.USER], tools=[checks.TOOL], tool_choice="none"
        )
        assert answer.choices[0].message.content


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"{re.escape(name)}(\{{.*\}})? ", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def hold_a_slot(sdk: openai.OpenAI, model: str) -> openai.Stream[ChatCompletionChunk]:
    """A stream that runs until closed, its first chunk read: it holds a gate slot."""
    stream = sdk.chat.completions.create(
        model=model, messages=[checks.USER], max_tokens=100_000, stream=True
    )
    next(iter(stream))
    return stream


def test_a_busy_gate_is_a_rate_limit_the_sdk_retries_after(tmp_path: Path) -> None:
    with (
        running_sim("--model", "m") as sim,
        gate(sim, tmp_path, "--initial-limit", "1", "--max-queue", "0") as url,
    ):
        held = hold_a_slot(client(url), "m")
        try:
            with pytest.raises(openai.RateLimitError) as refused:
                client(url, max_retries=0).completions.create(model="m", prompt="x", max_tokens=2)
            assert refused.value.response.headers["Retry-After"] == "1"
            assert metric(url, "specfleet_gate_rejections_total") == 1
        finally:
            held.close()
        # The slot is free once the gate has seen the client go; a retrying SDK gets in.
        until(lambda: metric(url, "specfleet_gate_requests_in_flight") == 0, "the slot")
        answer = client(url, max_retries=2).completions.create(model="m", prompt="x", max_tokens=2)
        assert answer.choices[0].text


def test_the_sdk_retries_a_busy_gate_until_the_slot_is_free(tmp_path: Path) -> None:
    with (
        running_sim("--model", "m") as sim,
        gate(sim, tmp_path, "--initial-limit", "1", "--max-queue", "0") as url,
    ):
        held = hold_a_slot(client(url), "m")

        # Freed once the gate has refused the first attempt: the SDK waits Retry-After, then
        # its retry is admitted.
        def release_after_a_refusal() -> None:
            until(lambda: metric(url, "specfleet_gate_rejections_total") >= 1, "a refusal")
            held.close()

        release = threading.Thread(target=release_after_a_refusal)
        release.start()
        try:
            answer = client(url, max_retries=3).completions.create(
                model="m", prompt="x", max_tokens=2
            )
        finally:
            release.join()
        assert answer.choices[0].text
        assert metric(url, "specfleet_gate_rejections_total") >= 1


def test_a_cancelled_stream_frees_its_slot(tmp_path: Path) -> None:
    with (
        running_sim("--model", "m") as sim,
        gate(sim, tmp_path, "--initial-limit", "1", "--max-queue", "0") as url,
    ):
        sdk = client(url, max_retries=0)
        for _ in range(3):  # each stream takes the only slot and gives it back when closed
            held = hold_a_slot(sdk, "m")
            assert metric(url, "specfleet_gate_requests_in_flight") == 1
            held.close()
            until(lambda: metric(url, "specfleet_gate_requests_in_flight") == 0, "the slot")
        assert sdk.completions.create(model="m", prompt="x", max_tokens=2).choices[0].text
        until(lambda: metric(sim, "vllm:num_requests_running") == 0, "the simulator to abort")


def test_errors_the_data_path_makes_itself_are_sdk_exceptions(tmp_path: Path) -> None:
    with running_sim("--model", "m", *SIM_FLAGS) as sim:
        pass  # its port is closed now: connections are refused
    with gate(sim, tmp_path) as url:
        with pytest.raises(openai.InternalServerError) as down:
            client(url, max_retries=0).completions.create(model="m", prompt="x")
        assert down.value.status_code == 503
    with router({"small": sim, "large": sim}, tmp_path) as url:
        sdk = client(url, max_retries=0)
        with pytest.raises(openai.APIStatusError) as failed:
            sdk.chat.completions.create(model=POLICY, messages=[checks.USER])
        assert failed.value.status_code in (502, 503)
        with pytest.raises(openai.NotFoundError):
            sdk.chat.completions.create(model="gpt-9", messages=[checks.USER])


def test_request_ids_round_trip(target: tuple[str, str, str]) -> None:
    _, url, model = target
    sdk = client(url, max_retries=0)
    chosen = sdk.chat.completions.create(
        model=model, messages=[checks.USER], max_tokens=2,
        extra_headers={"X-Request-Id": "conformance-42"},
    )  # fmt: skip
    assert chosen._request_id == "conformance-42"
    made = sdk.completions.create(model=model, prompt="x", max_tokens=2)
    assert made._request_id


def test_the_router_lists_auto_and_each_model(tmp_path: Path) -> None:
    with (
        running_sim("--model", "small", *SIM_FLAGS) as small,
        router({"small": small, "large": small}, tmp_path) as url,
    ):
        sdk = client(url, max_retries=0)
        ids = [card.id for card in sdk.models.list()]
        assert "auto" in ids and POLICY in ids
        for model in ids:
            assert sdk.models.retrieve(model).id == model
        with pytest.raises(openai.NotFoundError):
            sdk.models.retrieve("gpt-9")


def test_the_routers_own_busy_answers_say_when_to_retry(tmp_path: Path) -> None:
    with running_sim("--model", "m", *SIM_FLAGS) as sim:
        pass  # its port is closed now: connections are refused
    with router({"small": sim, "large": sim}, tmp_path) as url:
        with pytest.raises(openai.APIStatusError) as failed:
            client(url, max_retries=0).chat.completions.create(model=POLICY, messages=[checks.USER])
        assert failed.value.status_code == 503
        assert failed.value.response.headers.get("Retry-After")


def test_a_busy_gate_behind_the_router_is_a_rate_limit(tmp_path: Path) -> None:
    with (
        running_sim("--model", "small") as sim,
        gate(sim, tmp_path, "--initial-limit", "1", "--max-queue", "0") as gated,
        router({"small": gated, "large": gated}, tmp_path) as url,
    ):
        held = hold_a_slot(client(gated), "small")
        try:
            with pytest.raises(openai.RateLimitError) as refused:
                client(url, max_retries=0).chat.completions.create(
                    model=POLICY, messages=[checks.USER], max_tokens=2
                )
            assert refused.value.response.headers["Retry-After"]
        finally:
            held.close()
