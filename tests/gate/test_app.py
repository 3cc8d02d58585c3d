"""The gate's HTTP behaviour over a fake upstream (the proxy's transport seam): rejections and
their bodies, streaming, disconnects, live limit changes from the file, /health and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from specfleet_runtime import proxy
from specfleet_runtime.gate.admission import Admission
from specfleet_runtime.gate.app import Gate, LimitSource, make_app
from specfleet_runtime.gate.limit import LimitFile
from tests.capture import builders as capture_builders
from tests.gate.fakes import (
    FakeTransport,
    ScriptedResponse,
    echo,
    hold,
    until,
    within_deadline,
)

Client = TestClient[web.Request, web.Application]
COMPLETION = json.dumps({"model": "m", "prompt": "hi", "stream": True}).encode()
GATE_SOURCE = {"kind": "InferenceModel", "namespace": "ml", "name": "m", "component": "gate"}


def make_gate(
    transport: FakeTransport, *, limit: int = 1, max_queue: int = 10, queue_timeout: float = 60
) -> Gate:
    admission = Admission(limit, max_queue=max_queue, queue_timeout=queue_timeout)
    return Gate(admission, transport, retry_after=7)


@contextlib.asynccontextmanager
async def serve(gate: Gate, source: LimitSource | None = None) -> AsyncIterator[Client]:
    # TestServer runs the app with handler cancellation on, as specfleet-gate does.
    async with TestClient(TestServer(make_app(gate, source))) as client:
        yield client


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def sample(gate: Gate, name: str, **labels: str) -> float:
    value = gate.metrics.registry.get_sample_value(name, labels)
    assert value is not None, f"{name}{labels} is not exported"
    return value


def post(client: Client, body: bytes = COMPLETION) -> asyncio.Task[aiohttp.ClientResponse]:
    return asyncio.create_task(client.post("/v1/completions", data=body))


async def fill(
    client: Client, transport: FakeTransport, in_flight: int
) -> list[asyncio.Task[aiohttp.ClientResponse]]:
    """Start ``in_flight`` held requests and wait until the upstream has all of them."""
    tasks = [post(client) for _ in range(in_flight)]
    await until(lambda: len(transport.responses) == in_flight, f"{in_flight} requests upstream")
    return tasks


async def until_in_flight(gate: Gate, count: int) -> None:
    await until(lambda: gate.admission.in_flight == count, f"{count} requests in flight")


async def drain(tasks: list[asyncio.Task[aiohttp.ClientResponse]]) -> None:
    for response in await within_deadline(asyncio.gather(*tasks), "responses"):
        await response.read()
        response.release()


def test_a_full_queue_answers_429_with_retry_after_and_an_openai_error() -> None:
    async def scenario() -> None:
        transport = FakeTransport(hold)
        gate = make_gate(transport, limit=1, max_queue=0)
        async with serve(gate) as client:
            held = await fill(client, transport, 1)
            refused = await client.post("/v1/completions", data=COMPLETION)
            assert refused.status == 429
            assert refused.headers["Retry-After"] == "7"
            error = (await refused.json())["error"]
            assert error["code"] == "queue_full"
            assert error["type"] == "server_overloaded"
            assert "already wait" in error["message"]
            transport.responses[0].finish()
            await drain(held)
        assert sample(gate, "specfleet_gate_rejections_total", reason="queue_full") == 1
        assert sample(gate, "specfleet_gate_responses_total", status_class="4xx") == 1
        assert sample(gate, "specfleet_gate_responses_total", status_class="2xx") == 1
        assert len(transport.requests) == 1

    run(scenario)


def test_a_request_past_the_queue_deadline_gets_503() -> None:
    async def scenario() -> None:
        transport = FakeTransport(hold)
        gate = make_gate(transport, limit=1, queue_timeout=0.01)
        async with serve(gate) as client:
            held = await fill(client, transport, 1)
            late = await client.post("/v1/completions", data=COMPLETION)
            assert late.status == 503
            assert late.headers["Retry-After"] == "7"
            assert (await late.json())["error"]["code"] == "queue_timeout"
            assert gate.admission.queued == 0
            transport.responses[0].finish()
            await drain(held)
        assert sample(gate, "specfleet_gate_rejections_total", reason="queue_timeout") == 1

    run(scenario)


def test_chunks_reach_the_client_as_the_upstream_sends_them() -> None:
    async def scenario() -> None:
        transport = FakeTransport(hold)
        gate = make_gate(transport)
        async with serve(gate) as client:
            pending = post(client)
            await until(lambda: len(transport.responses) == 1, "the request upstream")
            upstream = transport.responses[0]
            response = await within_deadline(pending, "the response headers")
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/event-stream"
            assert response.headers["X-Upstream"] == "fake"
            upstream.push(b"data: one\n\n")
            # The second chunk is only sent once the client holds the first: a buffering gate
            # would never deliver it and the deadline would fail the test.
            first = await within_deadline(response.content.readany(), "the first chunk")
            assert first == b"data: one\n\n"
            upstream.push(b"data: [DONE]\n\n")
            upstream.finish()
            assert await within_deadline(response.read(), "the rest") == b"data: [DONE]\n\n"
            response.release()
        assert upstream.closed.is_set()
        assert gate.admission.in_flight == 0

    run(scenario)


def test_a_streams_first_chunk_times_its_first_token_from_arrival_a_whole_answer_not() -> None:
    def respond(request: proxy.UpstreamRequest) -> ScriptedResponse:
        return hold(request) if b'"stream": true' in request.body else echo(request)

    async def scenario() -> None:
        transport = FakeTransport(respond)
        gate = make_gate(transport, limit=1)
        count, total = (
            f"specfleet_gate_{name}"
            for name in ("time_to_first_token_seconds_count", "time_to_first_token_seconds_sum")
        )
        waited = "specfleet_gate_queue_wait_seconds_sum"
        async with serve(gate) as client:
            first, second = post(client), post(client)
            await until(lambda: gate.admission.queued == 1, "the second request queued")
            response = await within_deadline(first, "the response headers")
            assert sample(gate, count) == 0  # the headers are not a token
            transport.responses[0].push(b"data: one\n\n")
            await within_deadline(response.content.readany(), "the first chunk")
            assert sample(gate, count) == 1
            before, waited_before = sample(gate, total), sample(gate, waited)
            transport.responses[0].finish()
            await response.read()
            response.release()
            await until(lambda: len(transport.responses) == 2, "the second request upstream")
            transport.responses[1].push(b"data: one\n\n")
            transport.responses[1].finish()
            await drain([second])
            # The second waited behind the first: its first token counts that wait.
            assert sample(gate, total) - before >= sample(gate, waited) - waited_before > 0
            whole = await client.post("/v1/completions", data=b'{"prompt": "hi"}')
            assert await whole.read() == b'echo:{"prompt": "hi"}'
        assert sample(gate, count) == 2

    run(scenario)


def test_malformed_json_reaches_the_upstream_untouched() -> None:
    def bad_request(_request: proxy.UpstreamRequest) -> ScriptedResponse:
        response = ScriptedResponse(400, {"Content-Type": "application/json"})
        response.push(b'{"error": {"message": "invalid JSON"}}')
        response.finish()
        return response

    async def scenario() -> None:
        transport = FakeTransport(bad_request)
        gate = make_gate(transport)
        body = b'{"model": "m", "prompt": '
        async with serve(gate) as client:
            response = await client.post(
                "/v1/completions?trace=a,b",
                data=body,
                headers={"Content-Type": "application/json", "Authorization": "Bearer t"},
            )
            assert response.status == 400
            assert await response.read() == b'{"error": {"message": "invalid JSON"}}'
        [sent] = transport.requests
        assert (sent.method, sent.target, sent.body) == ("POST", "/v1/completions?trace=a,b", body)
        assert sent.headers["Content-Type"] == "application/json"
        assert sent.headers["Authorization"] == "Bearer t"
        assert "Host" not in sent.headers
        assert sample(gate, "specfleet_gate_responses_total", status_class="4xx") == 1

    run(scenario)


def test_a_client_that_leaves_the_queue_frees_its_place() -> None:
    async def scenario() -> None:
        transport = FakeTransport(hold)
        gate = make_gate(transport, limit=1)
        async with serve(gate) as client:
            held = await fill(client, transport, 1)
            leaver = post(client)
            await until(lambda: gate.admission.queued == 1, "the second request to queue")
            leaver.cancel()
            await until(lambda: gate.admission.queued == 0, "the queue to empty")
            transport.responses[0].finish()
            await drain(held)
            await until(lambda: gate.admission.in_flight == 0, "the slot to free")
        assert len(transport.requests) == 1  # the leaver never reached the upstream
        assert sample(gate, "specfleet_gate_client_disconnects_total", stage="queued") == 1

    run(scenario)


def test_a_client_that_leaves_mid_stream_frees_its_slot_and_the_upstream() -> None:
    async def scenario() -> None:
        transport = FakeTransport(hold)
        gate = make_gate(transport, limit=1)
        async with serve(gate) as client:
            response = await within_deadline(post(client), "the response headers")
            upstream = transport.responses[0]
            upstream.push(b"data: one\n\n")
            await within_deadline(response.content.readany(), "the first chunk")
            response.close()
            await within_deadline(upstream.closed.wait(), "the upstream to be closed")
            await until(lambda: gate.admission.in_flight == 0, "the slot to free")
            # The freed slot serves the next request.
            nxt = await within_deadline(post(client), "the next request")
            transport.responses[1].finish()
            await nxt.read()
            nxt.release()
        assert sample(gate, "specfleet_gate_client_disconnects_total", stage="responding") == 1

    run(scenario)


def test_a_request_its_client_left_is_captured_as_cancelled(tmp_path: Path) -> None:
    chunk = b'data: {"choices": [{"index": 0, "text": "Par"}]}\n\n'

    async def scenario() -> None:
        transport = FakeTransport(hold)
        admission = Admission(1, max_queue=10, queue_timeout=60)
        capture = capture_builders.config(tmp_path, source=GATE_SOURCE, flushRecords=1)
        gate = Gate(admission, transport, capture=capture, pod="gate-0")
        async with serve(gate) as client:
            headers = {"X-Request-Id": "left-mid-stream"}
            response = await within_deadline(
                client.post("/v1/completions", data=COMPLETION, headers=headers), "the head"
            )
            transport.responses[0].push(chunk)
            await within_deadline(response.content.readany(), "the first chunk")
            # Queued behind it, then gone before any answer started.
            headers = {"X-Request-Id": "left-queued"}
            leaver = asyncio.create_task(
                client.post("/v1/completions", data=COMPLETION, headers=headers)
            )
            await until(lambda: gate.admission.queued == 1, "the second request to queue")
            leaver.cancel()
            await until(lambda: gate.admission.queued == 0, "the queue to empty")
            response.close()
            written = "specfleet_capture_records_written_total"
            await until(
                lambda: gate.metrics.registry.get_sample_value(written) == 2,
                "both records to be written",
            )
        gate.close()
        kept = capture_builders.records(tmp_path)
        queued = kept["left-queued"]["response"]
        assert queued == {"status": 499, "streamed": False, "cancelled": True, "body": None}
        mid_stream = kept["left-mid-stream"]["response"]
        assert (mid_stream["status"], mid_stream["streamed"], mid_stream["cancelled"]) == (
            200,
            True,
            True,
        )
        assert mid_stream["body"]["choices"][0]["text"] == "Par"
        assert mid_stream["body"]["done"] is False

    run(scenario)


def test_the_limit_file_raises_and_lowers_the_limit_live(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "limit"
        path.write_text("1")
        limit_file = LimitFile(path)
        assert limit_file.poll() == 1  # as specfleet-gate reads it at start
        transport = FakeTransport(hold)
        gate = make_gate(transport, limit=1)
        async with serve(gate, LimitSource(limit_file)) as client:
            tasks = [post(client) for _ in range(3)]
            await until(lambda: gate.admission.queued == 2, "two requests to queue")
            assert len(transport.responses) == 1

            path.write_text("3")  # raise: both waiters go upstream at once
            await until(lambda: len(transport.responses) == 3, "the waiters to be admitted")
            assert sample(gate, "specfleet_gate_batch_limit") == 3

            path.write_text('{"limit": 1}')  # lower: nobody is cut off, nobody new gets in
            await until(lambda: gate.admission.limit == 1, "the lower limit")
            tasks.append(post(client))
            await until(lambda: gate.admission.queued == 1, "a new request to queue")
            for still_in_flight, upstream in [
                (2, transport.responses[0]),
                (1, transport.responses[1]),
            ]:
                upstream.finish()
                await until_in_flight(gate, still_in_flight)
                assert gate.admission.queued == 1
                assert len(transport.responses) == 3
            transport.responses[2].finish()
            await until(lambda: len(transport.responses) == 4, "the waiter to be admitted")
            transport.responses[3].finish()
            await drain(tasks)
        assert sample(gate, "specfleet_gate_limit_updates_total") == 2
        assert sample(gate, "specfleet_gate_responses_total", status_class="2xx") == 4

    run(scenario)


@pytest.mark.parametrize(
    ("health_status", "error", "expected"),
    [
        (200, None, 200),
        (503, None, 503),
        (500, None, 503),
        (200, proxy.UpstreamUnavailableError("cannot connect"), 503),
    ],
)
def test_health_mirrors_the_upstream(
    health_status: int, error: proxy.ProxyError | None, expected: int
) -> None:
    async def scenario() -> None:
        gate = make_gate(FakeTransport(health_status=health_status, error=error))
        async with serve(gate) as client:
            response = await client.get("/health")
            assert response.status == expected
            if expected != 200:
                assert (await response.json())["error"]["code"] == "upstream_unhealthy"

    run(scenario)


def test_an_unreachable_upstream_gives_503_and_frees_the_slot() -> None:
    async def scenario() -> None:
        transport = FakeTransport(error=proxy.UpstreamUnavailableError("connection refused"))
        gate = make_gate(transport)
        async with serve(gate) as client:
            response = await client.post("/v1/completions", data=COMPLETION)
            assert response.status == 503
            error = (await response.json())["error"]
            assert (error["code"], error["message"]) == (
                "upstream_unavailable",
                "connection refused",
            )
        assert gate.admission.in_flight == 0
        assert sample(gate, "specfleet_gate_responses_total", status_class="5xx") == 1

    run(scenario)


def test_reads_pass_without_admission_while_generations_queue() -> None:
    async def scenario() -> None:
        transport = FakeTransport(hold)
        gate = make_gate(transport, limit=1)
        async with serve(gate) as client:
            held = await fill(client, transport, 1)
            models = post(client)
            await until(lambda: gate.admission.queued == 1, "a generation to queue")
            listing = asyncio.create_task(client.get("/v1/models"))
            await until(lambda: len(transport.responses) == 2, "the read to go upstream")
            transport.responses[1].finish()
            assert (await within_deadline(listing, "the listing")).status == 200
            transport.responses[0].finish()
            await until(lambda: len(transport.responses) == 3, "the queued generation")
            transport.responses[2].finish()
            await drain([*held, models, listing])

    run(scenario)


def test_metrics_are_the_gates_own() -> None:
    async def scenario() -> None:
        transport = FakeTransport()
        gate = make_gate(transport, limit=5)
        async with serve(gate) as client:
            await (await client.post("/v1/completions", data=COMPLETION)).read()
            response = await client.get("/metrics")
            text = await response.text()
        assert response.content_type == "text/plain"
        assert "specfleet_gate_batch_limit 5.0" in text
        assert "specfleet_gate_e2e_request_latency_seconds_count 1.0" in text
        assert "specfleet_gate_queue_wait_seconds_count 1.0" in text
        assert "specfleet_gate_requests_in_flight 0.0" in text
        assert "specfleet_gate_requests_queued 0.0" in text
        assert transport.requests[0].target == "/v1/completions"  # /metrics was not proxied

    run(scenario)


def test_an_upstream_that_breaks_mid_stream_cuts_the_client_off_instead_of_ending_cleanly() -> None:
    async def scenario() -> None:
        transport = FakeTransport(hold)
        gate = make_gate(transport)
        async with serve(gate) as client:
            response = await within_deadline(post(client), "the response headers")
            upstream = transport.responses[0]
            upstream.push(b"data: one\n\n")
            await within_deadline(response.content.readany(), "the first chunk")
            upstream.fail(proxy.UpstreamFailedError("connection reset"))
            with pytest.raises(aiohttp.ClientPayloadError):
                await within_deadline(response.read(), "the truncated end")
            response.release()
            await until(lambda: gate.admission.in_flight == 0, "the slot to free")
        assert upstream.closed.is_set()

    run(scenario)
