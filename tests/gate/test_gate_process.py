"""The real ``specfleet-gate`` process in front of a real (small, scripted) aiohttp upstream on
loopback: the whole path with real sockets, the real aiohttp transport and the limit file."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from specfleet.api.capture import BatchKey
from specfleet_runtime.capture import sampling
from tests.gate.fakes import until, within_deadline
from tests.server_process import run_server

GATE = Path(sys.executable).parent / "specfleet-gate"


@dataclass
class Upstream:
    """A vLLM stand-in whose streams wait for the test's go-ahead between chunks."""

    health_status: int = 200
    received: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    go_ahead: list[asyncio.Event] = field(default_factory=list)

    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(status=self.health_status)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append((body, dict(request.headers)))
        go = asyncio.Event()
        self.go_ahead.append(go)
        if not body.startswith(b'{"stream": true'):
            return web.Response(status=400, text="bad request body", content_type="text/plain")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: 1\n\n")
        await go.wait()
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """A chat answer: whole, or streamed as deltas with usage at the end."""
        body = json.loads(await request.read())
        usage = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "Call me at (415) 555-0132."}
            return web.json_response(
                {"choices": [{"index": 0, "message": message}], "usage": usage}
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in ("Bonjour", " à", " tous"):
            event = {"choices": [{"index": 0, "delta": {"content": word}}]}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}
        await response.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response


@contextlib.asynccontextmanager
async def serve_upstream(upstream: Upstream) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/health", upstream.health)
    app.router.add_post("/v1/completions", upstream.completions)
    app.router.add_post("/v1/chat/completions", upstream.chat)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        for go in upstream.go_ahead:
            go.set()
        await runner.cleanup()


@contextlib.asynccontextmanager
async def run_gate(*args: str) -> AsyncIterator[tuple[str, list[str]]]:
    """Start specfleet-gate on a free port; yield its URL and its log lines so far."""
    async with run_server(GATE, "--port", "0", *args) as running:
        yield running


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from the gate's /metrics"
    return float(match.group(1))


def test_the_gate_process_proxies_queues_and_reloads_its_limit(tmp_path: Path) -> None:
    async def scenario() -> None:
        limit_file = tmp_path / "limit"
        limit_file.write_text("1\n")
        upstream = Upstream()
        async with (
            serve_upstream(upstream) as upstream_url,
            run_gate("--upstream", upstream_url, "--limit-file", str(limit_file)) as (url, log),
            aiohttp.ClientSession() as client,
        ):
            assert (await client.get(f"{url}/health")).status == 200
            upstream.health_status = 503
            assert (await client.get(f"{url}/health")).status == 503
            upstream.health_status = 200

            async def scrape(name: str) -> float:
                async with client.get(f"{url}/metrics") as response:
                    return metric(await response.text(), name)

            # A stream passes chunk by chunk: the upstream sends its second chunk only once the
            # client holds the first.
            stream = b'{"stream": true, "prompt": "a"}'
            first = await client.post(f"{url}/v1/completions", data=stream)
            assert first.status == 200
            assert await within_deadline(first.content.readany(), "chunk 1") == b"data: 1\n\n"

            # Limit 1 is taken: the next request waits in the gate, not in the upstream.
            second = asyncio.create_task(client.post(f"{url}/v1/completions", data=stream))
            await until(lambda: not second.done() and len(upstream.received) == 1, "queueing")
            queued = 0.0
            for _ in range(500):
                queued = await scrape("specfleet_gate_requests_queued")
                if queued == 1:
                    break
            assert queued == 1

            limit_file.write_text("2\n")  # raised live: the waiter goes upstream
            await until(lambda: len(upstream.received) == 2, "the new limit to admit the waiter")
            second_response = await within_deadline(second, "the second response")
            for go in upstream.go_ahead:
                go.set()
            assert await first.read() == b"data: [DONE]\n\n"
            assert await second_response.read() == b"data: 1\n\ndata: [DONE]\n\n"
            first.release()
            second_response.release()
            assert await scrape("specfleet_gate_batch_limit") == 2

            # A malformed body crosses untouched, headers too, and vLLM's answer comes back.
            async with client.post(
                f"{url}/v1/completions",
                data=b'{"prompt": ',
                headers={"Content-Type": "application/json", "User-Agent": "probe/1"},
            ) as bad:
                assert bad.status == 400
                assert await bad.text() == "bad request body"
            body, headers = upstream.received[-1]
            assert body == b'{"prompt": '
            assert headers["Content-Type"] == "application/json"
            assert headers["User-Agent"] == "probe/1"

            assert await scrape('specfleet_gate_responses_total{status_class="2xx"}') == 2
            assert await scrape('specfleet_gate_responses_total{status_class="4xx"}') == 1
            assert await scrape("specfleet_gate_e2e_request_latency_seconds_count") == 3
        assert any("batch limit 1 -> 2" in line for line in log), log

    asyncio.run(scenario())


def test_an_upstream_that_is_down_gives_openai_style_503s(tmp_path: Path) -> None:
    async def scenario() -> None:
        upstream = Upstream()
        async with serve_upstream(upstream) as upstream_url:
            pass  # the port is now closed: connections are refused
        async with (
            run_gate("--upstream", upstream_url, "--initial-limit", "4") as (url, _log),
            aiohttp.ClientSession() as client,
        ):
            async with client.post(f"{url}/v1/completions", data=b"{}") as response:
                assert response.status == 503
                error = (await response.json())["error"]
            assert error["code"] == "upstream_unavailable"
            assert upstream_url in error["message"]
            async with client.get(f"{url}/health") as health:
                assert health.status == 503

    asyncio.run(scenario())


def test_the_gate_refuses_to_start_without_a_limit(tmp_path: Path) -> None:
    async def scenario() -> None:
        process = await asyncio.create_subprocess_exec(
            str(GATE),
            "--upstream",
            "http://127.0.0.1:9",
            "--limit-file",
            str(tmp_path / "missing"),
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await within_deadline(process.communicate(), "specfleet-gate to exit")
        assert process.returncode == 1
        message = err.decode()
        assert "cannot read limit file" in message
        assert "no --initial-limit to fall back on" in message

    asyncio.run(scenario())


def test_request_bodies_cross_decoded_and_bad_ones_get_a_4xx_and_one_warning(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        upstream = Upstream()
        stream = b'{"stream": true, "prompt": "a"}'
        async with (
            serve_upstream(upstream) as upstream_url,
            run_gate("--upstream", upstream_url, "--initial-limit", "1") as (url, log),
            aiohttp.ClientSession() as client,
        ):
            gz = {"Content-Encoding": "gzip", "X-Request-Id": "req-7"}
            async with client.post(
                f"{url}/v1/completions", data=gzip.compress(stream), headers=gz
            ) as ok:
                upstream.go_ahead[-1].set()
                assert (ok.status, await ok.read()) == (200, b"data: 1\n\ndata: [DONE]\n\n")
            body, headers = upstream.received[-1]
            assert body == stream
            assert "Content-Encoding" not in headers
            assert headers["X-Request-ID"] == "req-7"  # as aiohttp's client spells it
            cases = [
                (stream, gz, 400, "invalid_body"),
                (stream, {"Content-Encoding": "zstd"}, 415, "unsupported_content_encoding"),
            ]
            for data, sent, status, code in cases:
                async with client.post(f"{url}/v1/completions", data=data, headers=sent) as bad:
                    error = (await bad.json())["error"]
                    assert (bad.status, error["code"]) == (status, code)
            # A head aiohttp cannot parse is refused before any handler, in the same JSON.
            host, port = url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /v1/completions HTTP/1.1\r\nHost x\r\n\r\n")
            answer = await within_deadline(reader.read(), "the answer to a bad head")
            writer.close()
            head, _, body = answer.partition(b"\r\n\r\n")
            assert b" 400 " in head.split(b"\r\n")[0], answer
            assert json.loads(body)["error"]["code"] == "invalid_http_request", answer
            assert len(upstream.received) == 1

            # The router's bound on the queue wait: a second request waits 0.3 s, not 60 s.
            first = await client.post(f"{url}/v1/completions", data=stream)
            await within_deadline(first.content.readany(), "chunk 1")
            async with client.post(
                f"{url}/v1/completions",
                data=stream,
                headers={"X-Specfleet-Queue-Timeout": "0.3", "X-Request-Id": "req-8"},
            ) as busy:
                error = (await busy.json())["error"]
                assert (busy.status, error["code"]) == (503, "queue_timeout")
                assert "no slot within 0.3 s" in error["message"]
                assert busy.headers["X-Request-Id"] == "req-8"
            upstream.go_ahead[-1].set()
            await first.read()
            first.release()
        warnings = [line for line in log if " WARNING " in line]
        assert len(warnings) == 3, log
        assert not any(" ERROR " in line or "Traceback" in line for line in log), log

    asyncio.run(scenario())


def gate_capture(directory: Path, path: Path, rate: float) -> Path:
    config = {
        "source": {
            "kind": "InferenceModel",
            "namespace": "ml",
            "name": "llama-8b",
            "component": "gate",
        },
        "sampleRate": rate,
        "keep": "RequestsAndResponses",
        "store": {"directory": str(directory)},
    }
    path.write_text(json.dumps(config))
    return path


def captured(directory: Path) -> dict[str, dict[str, Any]]:
    records = {}
    for path in directory.rglob("*.jsonl.gz"):
        key = BatchKey.parse(str(path))
        assert key is not None and key.component == "gate" and key.pod == "llama-8b-0", path
        for line in gzip.decompress(path.read_bytes()).splitlines():
            record = json.loads(line)
            records[record["id"]] = record
    return records


def test_the_gate_captures_what_its_model_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "capture"
    config = gate_capture(directory, tmp_path / "capture.json", 1.0)
    card = "5500 0055 5555 5559"

    async def scenario() -> None:
        upstream = Upstream()
        async with (
            serve_upstream(upstream) as upstream_url,
            run_gate(
                "--upstream", upstream_url, "--initial-limit", "4", "--capture-config", str(config)
            ) as (url, _log),
            aiohttp.ClientSession() as client,
        ):
            chat = {"messages": [{"role": "user", "content": f"My card is {card}"}]}
            for request_id, stream in (("gate-whole", False), ("gate-stream", True)):
                async with client.post(
                    f"{url}/v1/chat/completions",
                    json={**chat, "stream": stream},
                    headers={"X-Request-Id": request_id, "api-key": "azure-key-123"},
                ) as response:
                    assert response.status == 200
                    await response.read()
            async with client.get(f"{url}/metrics") as response:
                assert "specfleet_capture_records_dropped_total" in await response.text()

    monkeypatch.setenv("POD_NAME", "llama-8b-0")  # names the gate in batch names
    asyncio.run(scenario())  # the gate has stopped: what it held is written
    records = captured(directory)
    assert set(records) == {"gate-whole", "gate-stream"}
    raw = b"".join(gzip.decompress(p.read_bytes()) for p in directory.rglob("*.jsonl.gz"))
    for secret in (card.encode(), b"azure-key-123", b"555-0132"):
        assert secret not in raw
    whole, stream = records["gate-whole"], records["gate-stream"]
    assert whole["route"] is None
    assert whole["response"]["body"]["choices"][0]["message"]["content"] == "Call me at [phone]."
    assert whole["tokens"] == {"prompt": 11, "completion": 3, "total": 14}
    assert whole["credential"] == stream["credential"] is not None
    assert stream["response"]["streamed"] is True
    (choice,) = stream["response"]["body"]["choices"]
    assert choice["message"]["content"] == "Bonjour à tous"
    assert choice["finish_reason"] == "stop"
    assert stream["tokens"] == {"prompt": 11, "completion": 3, "total": 14}
    assert stream["request"]["body"]["messages"][0]["content"] == "My card is [card]"


def test_the_gate_keeps_the_ids_sampling_picks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "capture"
    config = gate_capture(directory, tmp_path / "capture.json", 0.3)
    ids = [f"gate-{n}" for n in range(40)]

    async def scenario() -> None:
        upstream = Upstream()
        async with (
            serve_upstream(upstream) as upstream_url,
            run_gate(
                "--upstream", upstream_url, "--initial-limit", "4", "--capture-config", str(config)
            ) as (url, _log),
            aiohttp.ClientSession() as client,
        ):
            for request_id in ids:
                async with client.post(
                    f"{url}/v1/chat/completions",
                    json={"messages": [{"role": "user", "content": "hi"}]},
                    headers={"X-Request-Id": request_id},
                ) as response:
                    assert response.status == 200

    monkeypatch.setenv("POD_NAME", "llama-8b-0")
    asyncio.run(scenario())
    expected = {i for i in ids if sampling.sampled(i, 0.3)}
    assert 3 < len(expected) < 37
    assert set(captured(directory)) == expected


def test_the_gate_refuses_a_capture_config_it_cannot_read(tmp_path: Path) -> None:
    bad = tmp_path / "capture.json"
    bad.write_text(json.dumps({"sampleRate": 0.5}))
    result = subprocess.run(
        [
            str(GATE),
            "--upstream",
            "http://127.0.0.1:1",
            "--initial-limit",
            "1",
            "--capture-config",
            str(bad),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "--capture-config" in result.stderr and "source" in result.stderr
