"""The real `specfleet-sim` process on a loopback port, driven over HTTP: OpenAI responses
streamed and whole, SSE framing, /v1/models, /health, the admin endpoint, max-num-seqs, client
disconnects, and a /metrics that parses and carries every vLLM family."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from specfleet_runtime.sim import vllm_metrics
from tests.sim.process import running_sim

MODEL = "llama-70b"
FLAGS = (
    "--model", MODEL,
    "--architecture", "meta-llama/Llama-3.1-70B-Instruct",
    "--draft", "meta-llama/Llama-3.2-3B-Instruct",
    "--num-speculative-tokens", "4",
    "--tensor-parallel-size", "2",
    "--max-num-seqs", "2",
    "--seed", "3",
)  # fmt: skip


def test_the_simulator_speaks_vllms_http_api() -> None:
    with running_sim(*FLAGS) as url:
        asyncio.run(_exercise(url))


async def _exercise(url: str) -> None:
    async with aiohttp.ClientSession(url) as http:
        async with http.get("/health") as response:
            assert response.status == 200
        async with http.get("/v1/models") as response:
            models = await response.json()
        assert [m["id"] for m in models["data"]] == [MODEL]
        assert models["data"][0]["root"] == "meta-llama/Llama-3.1-70B-Instruct"

        await _whole_responses(http)
        await _streamed_completion(http)
        await _streamed_chat(http)
        await _refusals(http)
        await _admin(http)
        await _max_num_seqs_and_disconnects(url)
        await _metrics(http)


async def _whole_responses(http: aiohttp.ClientSession) -> None:
    request = {"model": MODEL, "prompt": "Tell me about rooflines.", "max_tokens": 25}
    async with http.post("/v1/completions", json=request) as response:
        assert response.status == 200
        body = await response.json()
    assert body["object"] == "text_completion"
    (choice,) = body["choices"]
    assert len(choice["text"].split()) == 25
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 25
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 25

    # The same prompt from the same seed gives the same text.
    async with http.post("/v1/completions", json=request) as response:
        assert (await response.json())["choices"][0]["text"] == choice["text"]

    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with http.post("/v1/chat/completions", json=chat) as response:
        body = await response.json()
    assert body["object"] == "chat.completion"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert len(message["content"].split()) == 16  # the default max_tokens


async def _sse_events(response: aiohttp.ClientResponse) -> list[str]:
    """The `data:` payloads of a server-sent event stream, checking its framing."""
    assert response.headers["Content-Type"].startswith("text/event-stream")
    raw = (await response.read()).decode()
    assert raw.endswith("data: [DONE]\n\n")
    events = raw.split("\n\n")
    assert events[-1] == ""
    payloads = []
    for event in events[:-1]:
        assert event.startswith("data: "), event
        payloads.append(event.removeprefix("data: "))
    assert payloads.count("[DONE]") == 1
    return payloads[:-1]


async def _streamed_completion(http: aiohttp.ClientSession) -> None:
    request = {
        "model": MODEL,
        "prompt": "Stream this.",
        "max_tokens": 40,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with http.post("/v1/completions", json=request) as response:
        chunks = [json.loads(p) for p in await _sse_events(response)]
    *content, usage = chunks
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 40
    texts = [c["choices"][0]["text"] for c in content]
    assert len("".join(texts).split()) == 40
    # With speculation a step delivers several tokens at once, so there are fewer chunks.
    assert 1 < len(content) < 40
    reasons = [c["choices"][0]["finish_reason"] for c in content]
    assert reasons[-1] == "length" and set(reasons[:-1]) == {None}
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}


async def _streamed_chat(http: aiohttp.ClientSession) -> None:
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Stream a chat."}],
        "max_tokens": 12,
        "stream": True,
    }
    async with http.post("/v1/chat/completions", json=request) as response:
        chunks = [json.loads(p) for p in await _sse_events(response)]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert len(text.split()) == 12
    assert "usage" not in chunks[-1]


async def _refusals(http: aiohttp.ClientSession) -> None:
    async with http.post("/v1/completions", json={"model": "other", "prompt": "x"}) as response:
        assert response.status == 404
        assert "other" in (await response.json())["error"]["message"]
    async with http.post("/v1/completions", json={"prompt": "x", "max_tokens": 0}) as response:
        assert response.status == 400
    async with http.post("/v1/chat/completions", json={"messages": []}) as response:
        assert response.status == 400


async def _admin(http: aiohttp.ClientSession) -> None:
    async with http.get("/admin/acceptance") as response:
        assert await response.json() == {"acceptanceRate": 0.7, "latencyFactor": 1.0}
    async with http.post("/admin/acceptance", json={"acceptanceRate": 0.25}) as response:
        assert await response.json() == {"acceptanceRate": 0.25, "latencyFactor": 1.0}
    async with http.post("/admin/acceptance", json={"latencyFactor": 2}) as response:
        assert await response.json() == {"acceptanceRate": 0.25, "latencyFactor": 2.0}
    async with http.post("/admin/acceptance", json={"acceptanceRate": 2}) as response:
        assert response.status == 400
        assert "acceptanceRate" in (await response.json())["error"]["message"]
    async with http.get("/admin/acceptance") as response:
        assert await response.json() == {"acceptanceRate": 0.25, "latencyFactor": 2.0}
    async with http.post("/admin/acceptance", json={"latencyFactor": 1}) as response:
        assert response.status == 200


async def _scheduler_gauges(http: aiohttp.ClientSession) -> tuple[float, float]:
    async with http.get("/metrics") as response:
        text = await response.text()
    values = {
        family.name: family.samples[0].value
        for family in text_string_to_metric_families(text)
        if family.name in ("vllm:num_requests_running", "vllm:num_requests_waiting")
    }
    return values["vllm:num_requests_running"], values["vllm:num_requests_waiting"]


async def _poll_gauges(http: aiohttp.ClientSession, want: tuple[float, float]) -> None:
    deadline = time.monotonic() + 20
    seen = await _scheduler_gauges(http)
    while seen != want:
        assert time.monotonic() < deadline, f"running, waiting = {seen}, want {want}"
        await asyncio.sleep(0.05)
        seen = await _scheduler_gauges(http)


async def _max_num_seqs_and_disconnects(url: str) -> None:
    # Six long requests against --max-num-seqs 2: two run, four wait. Then the clients go
    # away, and the server drops all six.
    async with aiohttp.ClientSession(url) as watcher:
        clients = aiohttp.ClientSession(url)
        request = {"model": MODEL, "prompt": "long", "max_tokens": 100_000}
        pending = [asyncio.create_task(_post(clients, request)) for _ in range(6)]
        await _poll_gauges(watcher, (2, 4))
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await clients.close()
        await _poll_gauges(watcher, (0, 0))


async def _post(http: aiohttp.ClientSession, request: dict[str, Any]) -> None:
    async with http.post("/v1/completions", json=request) as response:
        await response.read()


async def _metrics(http: aiohttp.ClientSession) -> None:
    async with http.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for definition in vllm_metrics.ENGINE_FAMILIES + vllm_metrics.SPEC_DECODE_FAMILIES:
        assert families[definition.name].type == definition.kind, definition.name
    success = families["vllm:request_success"].samples
    finished = sum(s.value for s in success if s.name.endswith("_total"))
    assert finished == 5  # three whole and two streamed above; the six aborted do not count
    drafts = families["vllm:spec_decode_num_draft_tokens"].samples
    assert sum(s.value for s in drafts if s.name.endswith("_total")) > 0
