"""The real ``specfleet-router`` process in front of real (small, scripted) aiohttp backends on
loopback: routing, streaming, fallback, reload, the 4xx answers, API keys and metrics, with real
sockets and the real proxy core."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from specfleet.api.capture import BatchKey
from specfleet_runtime.capture import sampling
from tests.gate.fakes import until, within_deadline
from tests.router.builders import classifier, config_data, content_hash, replace
from tests.server_process import run_server, run_server_process

ROUTER = Path(sys.executable).parent / "specfleet-router"
KEY = "sk-team-a-0123456789"
OTHER_KEY = "sk-team-b-9876543210"

FACTUAL = "What is the capital of France?"
REASONING = (
    "Think step by step. Compare the trade-offs of microservices versus a monolith for a team "
    "of twelve engineers, analyze the operational costs, and justify a recommendation."
)
SQL = "Write a SQL query that returns the top 5 customers by revenue."
CODE = "Write a Python function that parses ISO 8601 dates."
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@dataclass
class Backend:
    """A vLLM stand-in. Streams send one event, then wait for ``release`` if ``hold``."""

    name: str
    status: int = 200
    hold: bool = False
    hang: bool = False
    """Take the request and never answer (until the test ends)."""
    release: asyncio.Event = field(default_factory=asyncio.Event)
    received: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    words: tuple[str, ...] = ()
    """Streamed as chat deltas (one event each) before the end, when set."""

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append((body, dict(request.headers)))
        if self.hang:
            await self.release.wait()
        if self.status != 200:
            return web.json_response({"error": {"message": "overloaded"}}, status=self.status)
        model = json.loads(body)["model"]
        if not json.loads(body).get("stream"):
            return web.json_response({"model": model, "backend": self.name})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"data: {json.dumps({'model': model})}\n\n".encode())
        if self.hold:
            await self.release.wait()
        for word in self.words:
            delta = {"choices": [{"index": 0, "delta": {"content": word}}]}
            await response.write(f"data: {json.dumps(delta)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@contextlib.asynccontextmanager
async def serve(backend: Backend) -> AsyncIterator[web.AppRunner]:
    app = web.Application()
    app.router.add_post("/v1/completions", backend.generate)
    app.router.add_post("/v1/chat/completions", backend.generate)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner
    finally:
        backend.release.set()
        await runner.cleanup()


@contextlib.asynccontextmanager
async def run_router(*args: str) -> AsyncIterator[tuple[str, list[str]]]:
    """Start specfleet-router on a free port; yield its URL and its log lines so far."""
    async with run_server(ROUTER, "--port", "0", "--reload-interval", "0.05", *args) as running:
        yield running


@dataclass
class Harness:
    """The router process, the three backends behind it, and a client."""

    url: str
    log: list[str]
    client: aiohttp.ClientSession
    backends: dict[str, Backend]
    runners: dict[str, web.AppRunner]
    config_file: Path
    headers: dict[str, str] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)

    def write_config(
        self, *, down: tuple[str, ...] = (), urls: dict[str, str] | None = None, **changes: Any
    ) -> None:
        """The example configuration, pointing at the backends (or at ``urls``, by model), with
        ``down`` not ready."""
        data = config_data(**changes)
        for model, runner in self.runners.items():
            if model not in self.urls:  # remembered: a stopped backend has no address
                host, port = runner.addresses[0][:2]
                self.urls[model] = f"http://{host}:{port}"
            url = (urls or {}).get(model, self.urls[model])
            data["backends"][model] |= {"url": url, "ready": model not in down}
        self.config_file.write_text(json.dumps(data))

    async def post(
        self, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = self.headers if headers is None else headers
        return await self.client.post(f"{self.url}{path}", data=data, headers=headers)

    async def ask(self, text: str, **fields: Any) -> tuple[int, Any, bytes]:
        async with await self.post(CHAT, chat(text, **fields)) as response:
            return response.status, response.headers, await response.read()

    async def metrics(self) -> str:
        async with self.client.get(f"{self.url}/metrics") as response:
            return await response.text()

    async def ready_tiers(self) -> list[str]:
        async with self.client.get(f"{self.url}/health") as health:
            tiers: list[str] = (await health.json())["readyTiers"]
            return tiers

    async def until_ready_tiers(self, *expected: str) -> None:
        last = None
        try:
            async with asyncio.timeout(5):
                while (last := await self.ready_tiers()) != list(expected):
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise AssertionError(f"ready tiers still {last}, not {list(expected)}") from None


async def stop(runner: web.AppRunner) -> None:
    """The backend's server is gone: connections are refused."""
    for site in list(runner.sites):
        await site.stop()


@contextlib.asynccontextmanager
async def harness(tmp_path: Path, *flags: str, **config: Any) -> AsyncIterator[Harness]:
    stand_ins = {name: Backend(name) for name in ("small", "medium", "large")}
    async with contextlib.AsyncExitStack() as stack:
        runners = {
            name: await stack.enter_async_context(serve(backend))
            for name, backend in stand_ins.items()
        }
        client = await stack.enter_async_context(aiohttp.ClientSession())
        h = Harness("", [], client, stand_ins, runners, tmp_path / "config.json")
        h.write_config(**config)
        h.url, h.log = await stack.enter_async_context(
            run_router("--config", str(h.config_file), *flags)
        )
        yield h


def chat(text: str, model: str = "assistant", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **fields}


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series, 0 if it is absent (a counter never incremented)."""
    for line in text.splitlines():
        if not line.startswith((name + "{", name + " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def with_keys(tmp_path: Path) -> dict[str, str]:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"team-a": KEY, "team-b": OTHER_KEY}))
    return {"apiKeysFile": str(keys_file)}


def usage_metrics_are_right_and_keep_keys_out(text: str, log: list[str]) -> None:
    requests = "specfleet_router_requests_total"
    assert metric(text, requests, route="tier", tier="simple", key="team-a") == 1
    assert metric(text, requests, route="tier", tier="simple", key="team-b") == 1
    assert metric(text, requests, route="tier", tier="complex", status="200") == 1
    assert metric(text, requests, route="override", model="medium", status="200") == 1
    assert metric(text, requests, route="direct", model="medium", status="200") == 1
    # Routed requests are classified; the direct one is not.
    assert metric(text, "specfleet_router_classification_seconds_count") == 4
    assert metric(text, "specfleet_router_upstream_latency_seconds_count", tier="simple") == 2
    # team-a: simple 1 + complex 20 + medium 3 (override) + medium 3 (direct), against the
    # complex tier's 20 for each of the four.
    served = metric(text, "specfleet_router_cost_served_total", key="team-a")
    baseline = metric(text, "specfleet_router_cost_baseline_total", key="team-a")
    assert (served, baseline) == (27, 80)
    assert metric(text, "specfleet_router_tier_ready", tier="simple") == 1
    for secret in (KEY, OTHER_KEY):
        assert secret not in text
        assert not any(secret in line for line in log)


def test_streams_pass_through_unbuffered_and_every_response_names_its_route(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, **with_keys(tmp_path)) as h:
            h.headers = {"Authorization": f"Bearer {KEY}"}
            # The backend sends its second event only once the client holds the first.
            small = h.backends["small"]
            small.hold = True
            stream = await h.post(CHAT, chat(FACTUAL, stream=True))
            assert stream.status == 200
            assert stream.headers["X-Specfleet-Route"] == "tier"
            assert stream.headers["X-Specfleet-Tier"] == "simple"
            assert stream.headers["X-Specfleet-Model"] == "small"
            first = await within_deadline(stream.content.readany(), "the first event")
            assert first == b'data: {"model": "small"}\n\n'
            small.release.set()
            assert await stream.read() == b"data: [DONE]\n\n"
            body, headers = small.received[-1]
            assert json.loads(body) == chat(FACTUAL, model="small", stream=True)
            assert "Authorization" not in headers  # the router's key stays at the router

            status, headers, body = await h.ask(REASONING)
            assert (status, json.loads(body)) == (200, {"model": "large", "backend": "large"})
            assert headers["X-Specfleet-Tier"] == "complex"
            async with await h.post("/v1/completions", {"model": "auto", "prompt": SQL}) as sql:
                assert sql.status == 200
                assert sql.headers["X-Specfleet-Route"] == "override"
                assert sql.headers["X-Specfleet-Model"] == "medium"
                assert "X-Specfleet-Tier" not in sql.headers
                assert (await sql.json())["model"] == "med-8b"
            direct_body = b'{"model":"med-8b", "prompt": "x", "max_tokens": 1}'
            async with await h.post("/v1/completions", direct_body) as direct:
                assert direct.status == 200
                assert direct.headers["X-Specfleet-Route"] == "direct"
            assert h.backends["medium"].received[-1][0] == direct_body  # untouched

            async with h.client.get(f"{h.url}/v1/models", headers=h.headers) as models:
                ids = [card["id"] for card in (await models.json())["data"]]
            assert ids == ["assistant", "auto", "large", "med-8b", "small"]
            team_b = {"Authorization": f"Bearer {OTHER_KEY}"}
            async with await h.post("/v1/completions", {"prompt": FACTUAL}, team_b) as b:
                assert b.status == 200
            text = await h.metrics()
        # After the router stopped, so the log is complete.
        usage_metrics_are_right_and_keep_keys_out(text, h.log)

    asyncio.run(scenario())


def test_client_mistakes_get_an_openai_style_4xx(tmp_path: Path) -> None:
    async def scenario() -> None:
        flags = ("--max-body-bytes", "4096")
        async with harness(tmp_path, *flags, **with_keys(tmp_path)) as h:
            h.headers = {"Authorization": f"Bearer {KEY}"}
            get = h.client.get
            cases = [
                ("no key", await h.post(COMPLETIONS, b"{}", headers={}), 401, None),
                (
                    "wrong key",
                    await h.post(COMPLETIONS, b"{}", {"Authorization": "Bearer x"}),
                    401,
                    None,
                ),
                ("malformed", await h.post(COMPLETIONS, b'{"prompt": '), 400, None),
                ("no prompt", await h.post(COMPLETIONS, {"model": "auto"}), 400, "prompt"),
                ("no messages", await h.post(CHAT, {"model": "auto"}), 400, "messages"),
                ("unknown model", await h.post(CHAT, chat("x", "gpt-9")), 404, "model"),
                ("oversized", await h.post(COMPLETIONS, b"x" * 5000), 413, None),
                ("wrong method", await get(f"{h.url}{COMPLETIONS}"), 405, None),
                ("unknown path", await get(f"{h.url}/v1/engines"), 404, None),
            ]
            for what, response, status, param in cases:
                assert response.status == status, what
                error = (await response.json())["error"]
                assert error["message"] and error["type"] and error["code"], what
                assert error["param"] == param, what
                response.release()
            assert cases[0][1].headers["WWW-Authenticate"] == "Bearer"
            assert h.backends["small"].received == []
            text = await h.metrics()

        requests = "specfleet_router_requests_total"
        assert metric(text, requests, route="", status="401", key="") == 2
        assert metric(text, requests, route="", status="400", key="team-a") == 3
        assert metric(text, requests, route="", status="404", key="team-a") == 1
        assert metric(text, requests, route="", status="413", key="team-a") == 1

    asyncio.run(scenario())


def test_a_dead_or_failing_backend_falls_back_with_no_failed_request(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path) as h:
            for site in list(h.runners["small"].sites):  # the small model's server is gone:
                await site.stop()  # connections are refused
            answers = await asyncio.gather(*(h.ask(FACTUAL, stream=i % 2 == 0) for i in range(10)))
            for status, headers, body in answers:
                assert status == 200, body
                assert headers["X-Specfleet-Tier"] == "medium"
                assert headers["X-Specfleet-Fallback-From"] == "small"
            assert len(h.backends["medium"].received) == 10
            fallbacks = "specfleet_router_fallbacks_total"
            assert metric(await h.metrics(), fallbacks, from_model="small", to_model="medium") == 10

            # A backend answering 5xx before any byte is a failure too.
            h.backends["medium"].status = 503
            status, headers, body = await h.ask(CODE)
            assert status == 200, body
            assert headers["X-Specfleet-Tier"] == "complex"
            assert headers["X-Specfleet-Fallback-From"] == "medium"
            # The last tier has no tier above: its own answer reaches the client as it is.
            h.backends["large"].status = 503
            status, headers, body = await h.ask(REASONING)
            assert (status, json.loads(body)) == (503, {"error": {"message": "overloaded"}})
            assert headers["X-Specfleet-Tier"] == "complex"

    asyncio.run(scenario())


def test_the_configuration_reloads_without_a_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path) as h:
            assert (await h.ask(FACTUAL))[1]["X-Specfleet-Tier"] == "simple"

            # The operator marks the small model not ready: its tier is skipped.
            h.write_config(down=("small",))
            await h.until_ready_tiers("medium", "complex")
            status, headers, _ = await h.ask(FACTUAL)
            assert (status, headers["X-Specfleet-Tier"]) == (200, "medium")
            assert "X-Specfleet-Fallback-From" not in headers
            text = await h.metrics()
            assert metric(text, "specfleet_router_tier_ready", tier="simple") == 0
            assert metric(text, "specfleet_router_config_reloads_total") == 1

            # A broken file keeps the configuration in force.
            h.config_file.write_text("policy: [")
            await until(
                lambda: any("keeping the current configuration" in line for line in h.log),
                "the router to report the broken file",
            )
            assert (await h.ask(FACTUAL))[1]["X-Specfleet-Tier"] == "medium"

            # Fallback off: a failing backend's answer reaches the client as it is.
            h.write_config(fallback={"enabled": False})
            await h.until_ready_tiers("simple", "medium", "complex")
            h.backends["small"].status = 503
            status, headers, _ = await h.ask(FACTUAL)
            assert (status, headers["X-Specfleet-Tier"]) == (503, "simple")

            # Nothing ready at all: a clear 503 from the router itself, not a crash.
            h.write_config(down=("small", "medium", "large"))
            await h.until_ready_tiers()
            status, _, body = await h.ask(FACTUAL)
            assert (status, json.loads(body)["error"]["code"]) == (503, "no_ready_backend")
            assert metric(await h.metrics(), "specfleet_router_config_reloads_total") == 3

    asyncio.run(scenario())


def test_the_router_refuses_to_start_without_a_valid_configuration(tmp_path: Path) -> None:
    async def scenario() -> None:
        config_file = tmp_path / "config.json"
        config_file.write_text(json.dumps({"policy": "p", "tiers": []}))
        process = await asyncio.create_subprocess_exec(
            str(ROUTER), "--config", str(config_file), stderr=asyncio.subprocess.PIPE
        )
        _, err = await within_deadline(process.communicate(), "specfleet-router to exit")
        assert process.returncode == 1
        message = err.decode()
        assert "no valid configuration" in message
        assert "tiers: List should have at least 1 item" in message

    asyncio.run(scenario())


async def on_own_connection(h: Harness, path: str, body: Any = None) -> tuple[int, Any, bytes]:
    """A request on a connection of its own, so any worker may accept it."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as client:
        method = "GET" if body is None else "POST"
        async with client.request(method, f"{h.url}{path}", json=body) as response:
            return response.status, response.headers, await response.read()


def worker_pids(log: list[str]) -> list[int]:
    return [int(m.group(1)) for line in log if (m := WORKER_STARTED.search(line))]


WORKER_STARTED = re.compile(r"worker \d+ started \(pid (\d+)\)")


def test_workers_share_the_port_and_any_scrape_counts_them_all(tmp_path: Path) -> None:
    async def scrape(h: Harness) -> str:
        return (await on_own_connection(h, "/metrics"))[2].decode()

    async def scenario() -> list[int]:
        async with harness(tmp_path, "--workers", "2") as h:
            await until(lambda: len(worker_pids(h.log)) == 2, "two workers to start")
            pids = worker_pids(h.log)
            # Each worker serves five requests alone while the other is stopped.
            for paused in pids:
                os.kill(paused, signal.SIGSTOP)
                try:
                    for _ in range(5):
                        status, headers, body = await on_own_connection(h, CHAT, chat(FACTUAL))
                        assert (status, headers["X-Specfleet-Tier"]) == (200, "simple"), body
                finally:
                    os.kill(paused, signal.SIGCONT)
            requests = "specfleet_router_requests_total"
            for _ in range(6):  # whichever worker answers the scrape
                text = await scrape(h)
                assert metric(text, requests, tier="simple", status="200") == 10
                assert metric(text, "specfleet_router_tier_ready", tier="simple") == 1

            # Both workers follow the file; the reload counts once.
            h.write_config(down=("small",))
            for paused in pids:
                os.kill(paused, signal.SIGSTOP)
                try:
                    await until_ok(lambda: tier_of(h, FACTUAL), "medium")
                finally:
                    os.kill(paused, signal.SIGCONT)
            text = await scrape(h)
            assert metric(text, "specfleet_router_tier_ready", tier="simple") == 0
            assert metric(text, "specfleet_router_config_reloads_total") == 1
        return pids

    for pid in asyncio.run(scenario()):  # the workers stopped with the router
        assert not Path(f"/proc/{pid}").exists()


async def tier_of(h: Harness, text: str) -> str:
    status, headers, body = await on_own_connection(h, CHAT, chat(text))
    assert status == 200, body
    tier: str = headers["X-Specfleet-Tier"]
    return tier


async def until_ok(probe: Callable[[], Awaitable[str]], expected: str) -> None:
    last = None
    try:
        async with asyncio.timeout(5):
            while (last := await probe()) != expected:
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"still {last!r}, not {expected!r}") from None


async def two_workers(tmp_path: Path) -> tuple[asyncio.subprocess.Process, list[int]]:
    """A router of two workers, on its own (no harness), once both have started; the pids."""
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config_data()))
    process = await asyncio.create_subprocess_exec(
        *(str(ROUTER), "--config", str(config_file), "--port", "0", "--workers", "2"),
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    log: list[str] = []
    async with asyncio.timeout(30):
        while len(worker_pids(log)) < 2:
            log.append((await process.stderr.readline()).decode())
    return process, worker_pids(log)


def test_a_worker_that_dies_takes_the_router_down(tmp_path: Path) -> None:
    async def scenario() -> None:
        process, pids = await two_workers(tmp_path)
        assert process.stderr is not None
        os.kill(pids[1], signal.SIGKILL)
        err = await within_deadline(process.stderr.read(), "specfleet-router to exit")
        assert await process.wait() == 1
        assert f"worker {pids[1]} exited with status -9" in err.decode()

    asyncio.run(scenario())


def test_workers_stop_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    async def scenario() -> None:
        process, pids = await two_workers(tmp_path)
        process.kill()  # SIGKILL, at once: nothing is passed on, and the workers are starting
        await until(lambda: not any(alive(pid) for pid in pids), "the orphaned workers to stop")
        await within_deadline(process.wait(), "the killed router to be reaped")

    asyncio.run(scenario())


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, exited but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_router_refuses_workers_out_of_range(tmp_path: Path) -> None:
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config_data()))
    result = subprocess.run(
        [str(ROUTER), "--config", str(config_file), "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--workers must be 1..64, got 0" in result.stderr


GATE = Path(sys.executable).parent / "specfleet-gate"


def test_a_backend_that_never_answers_falls_back_after_the_first_byte_timeout(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, timeouts={"firstByteSeconds": 1}) as h:
            h.backends["small"].hang = True
            status, headers, body = await within_deadline(h.ask(FACTUAL), "the fallback")
            assert status == 200, body
            assert headers["X-Specfleet-Tier"] == "medium"
            assert headers["X-Specfleet-Fallback-From"] == "small"
            # The gate behind a backend is told to queue for less than the router waits.
            assert h.backends["small"].received[0][1]["X-Specfleet-Queue-Timeout"] == "0.5"

            # With no fallback left, the client hears of it as a 504, promptly.
            h.backends["large"].hang = True
            status, headers, body = await within_deadline(h.ask(REASONING), "the 504")
            error = json.loads(body)["error"]
            assert (status, error["code"], headers["Retry-After"]) == (504, "upstream_timeout", "1")
        # Read once the router has stopped: its log line may follow the answer.
        assert headers["X-Request-Id"] in "\n".join(h.log)

    asyncio.run(scenario())


def test_a_busy_gate_whose_fallback_is_down_tells_the_client_it_is_busy(tmp_path: Path) -> None:
    """The gate's 429 (queue full) and 503 (queue timeout) are one kind of answer: the router
    tries the fallback, and when that is down the client gets the gate's own answer."""

    async def busy_answer(h: Harness, gate_flags: tuple[str, ...]) -> tuple[int, Any, Any]:
        small = h.runners["small"].addresses[0][:2]
        async with run_server(
            GATE, "--port", "0", "--upstream", f"http://{small[0]}:{small[1]}", *gate_flags
        ) as (gate_url, _):
            h.write_config(urls={"small": gate_url}, timeouts={"firstByteSeconds": 3})
            await until_ok(lambda: queue_timeout_sent(h), "2")  # the file was reread
            # One stream holds the gate's only slot.
            h.backends["small"].hold = True
            held = await h.post(CHAT, chat(FACTUAL, stream=True))
            await within_deadline(held.content.readany(), "the held stream's first event")
            status, headers, body = await within_deadline(h.ask(FACTUAL), "the busy answer")
            h.backends["small"].release.set()
            await held.read()
            held.release()
            h.backends["small"].hold = False
            h.backends["small"].release.clear()
            return status, headers, json.loads(body)["error"]

    async def scenario() -> None:
        async with harness(tmp_path) as h:
            await stop(h.runners["medium"])  # the fallback of the simple tier is down
            status, headers, error = await busy_answer(h, ("--initial-limit", "1"))
            # The router asked the gate to queue for 2 s (its first-byte timeout less one), not
            # the gate's own 60 s; the gate's 503 came back as it was.
            assert (status, error["type"], error["code"]) == (
                503,
                "server_overloaded",
                "queue_timeout",
            )
            assert "no slot within 2 s" in error["message"]
            assert headers["Retry-After"] == "1"
            assert headers["X-Specfleet-Tier"] == "simple"
            assert headers["X-Request-Id"]

            status, headers, error = await busy_answer(
                h, ("--initial-limit", "1", "--max-queue", "0")
            )
            assert (status, error["code"], headers["Retry-After"]) == (429, "queue_full", "1")
        assert any("fallback medium failed too" in line for line in h.log)

    asyncio.run(scenario())


async def queue_timeout_sent(h: Harness) -> str:
    """The queue timeout the small model's backend is sent with a simple question ("" while
    the question finds no backend: the last gate has stopped, the file is not reread yet)."""
    status, _, _ = await h.ask(FACTUAL)
    return h.backends["small"].received[-1][1]["X-Specfleet-Queue-Timeout"] if status == 200 else ""


def test_every_answer_carries_the_request_id_which_reaches_the_backend(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path) as h:
            mine = {"X-Request-Id": "req-from-client-1"}
            async with await h.post(CHAT, chat(FACTUAL), mine) as answer:
                assert answer.headers["X-Request-Id"] == "req-from-client-1"
            assert sent_id(h) == "req-from-client-1"
            async with await h.post(CHAT, chat(FACTUAL), {}) as answer:
                made = answer.headers["X-Request-Id"]
            assert len(made) == 32 and sent_id(h) == made
            async with await h.post(CHAT, b"{", mine) as bad:
                assert (bad.status, bad.headers["X-Request-Id"]) == (400, "req-from-client-1")
            async with h.client.get(f"{h.url}/v1/models") as models:
                assert models.headers["X-Request-Id"]

            # A backend that fails: the fallback's warning names the request.
            h.backends["small"].status = 500
            async with await h.post(CHAT, chat(FACTUAL), {"X-Request-Id": "req-2"}) as answer:
                assert (answer.status, answer.headers["X-Request-Id"]) == (200, "req-2")
        fallback_lines = [line for line in h.log if "retrying once on medium" in line]
        assert fallback_lines and "request req-2:" in fallback_lines[0]
        assert any("request req-from-client-1:" in line and " 400 " in line for line in h.log)

    asyncio.run(scenario())


def sent_id(h: Harness) -> str:
    """The request ID the small model's backend last received (aiohttp's client spells the
    header X-Request-ID)."""
    received: str = CIMultiDict(h.backends["small"].received[-1][1])["X-Request-Id"]
    return received


def test_model_names_the_router_lists_and_accepts(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path) as h:
            # The InferenceModel's name (what X-Specfleet-Model says) reaches its backend,
            # which gets its served name.
            async with await h.post(COMPLETIONS, {"model": "medium", "prompt": "x"}) as answer:
                assert answer.status == 200
                assert answer.headers["X-Specfleet-Model"] == "medium"
                assert (await answer.json())["model"] == "med-8b"
            for name in ("assistant", "auto", "med-8b", "medium"):
                async with h.client.get(f"{h.url}/v1/models/{name}") as card:
                    assert (card.status, (await card.json())["id"]) == (200, name)
            async with h.client.get(f"{h.url}/v1/models/gpt-9") as missing:
                error = (await missing.json())["error"]
                assert (missing.status, error["code"]) == (404, "model_not_found")
                assert "'auto'" in error["message"]

    asyncio.run(scenario())


def test_the_routers_own_503s_say_when_to_retry(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, fallback={"enabled": False}) as h:
            await stop(h.runners["small"])
            status, headers, body = await h.ask(FACTUAL)
            error = json.loads(body)["error"]
            assert (status, error["code"], headers["Retry-After"]) == (
                503,
                "upstream_unavailable",
                "1",
            )
            h.write_config(down=("small", "medium", "large"), fallback={"enabled": False})
            await h.until_ready_tiers()
            status, headers, body = await h.ask(FACTUAL)
            error = json.loads(body)["error"]
            assert (status, error["code"], headers["Retry-After"]) == (503, "no_ready_backend", "5")

    asyncio.run(scenario())


def test_coded_and_broken_bodies_get_a_4xx_and_one_warning(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path) as h:
            plain = json.dumps(chat(FACTUAL)).encode()
            gz = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
            async with await h.post(CHAT, gzip.compress(plain), gz) as answer:
                assert answer.status == 200, await answer.text()
            body, headers = h.backends["small"].received[-1]
            assert json.loads(body) == chat(FACTUAL, model="small")
            assert "Content-Encoding" not in headers
            cases = [
                ("lying gzip", plain, gz, 400, "invalid_body"),
                ("cut gzip", gzip.compress(plain)[:-12], gz, 400, "invalid_body"),
                ("brotli", plain, {"Content-Encoding": "br"}, 415, "unsupported_content_encoding"),
                ("two codings", plain, {"Content-Encoding": "gzip, br"}, 415, None),
            ]
            for what, data, sent, status, code in cases:
                async with await h.post(CHAT, data, sent) as answer:
                    assert answer.status == status, what
                    error = (await answer.json())["error"]
                    assert error["type"] == "invalid_request_error", what
                    assert code is None or error["code"] == code, what
            # A chunked body cut short by a bad chunk.
            host, port = h.url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"mod\r\nzz\r\n'
            )
            # Refused before any handler runs, with the same JSON error body, and closed.
            raw = await within_deadline(reader.read(), "the raw")
            writer.close()
            head, _, body = raw.partition(b"\r\n\r\n")
            assert b" 400 " in head.split(b"\r\n")[0], raw
            assert b"application/json" in head, raw
            error = json.loads(body)["error"]
            assert error["code"] == "invalid_http_request", error
        refusals = [line for line in h.log if " 400 " in line or " 415 " in line]
        assert len(refusals) == 4, h.log
        assert all(" WARNING " in line for line in refusals)
        assert any("bad request refused" in line for line in h.log), h.log
        assert not any(" ERROR " in line or "Traceback" in line for line in h.log), h.log

    asyncio.run(scenario())


def captured(directory: Path) -> dict[str, dict[str, Any]]:
    """The records in a capture directory's batches, by request ID."""
    records = {}
    for path in directory.rglob("*.jsonl.gz"):
        assert BatchKey.parse(str(path)) is not None, path
        for line in gzip.decompress(path.read_bytes()).splitlines():
            record = json.loads(line)
            records[record["id"]] = record
    return records


def capture_config(directory: Path, rate: float = 1.0) -> dict[str, Any]:
    return {
        "source": {
            "kind": "RoutingPolicy",
            "namespace": "team-a",
            "name": "assistant",
            "component": "router",
        },
        "sampleRate": rate,
        "keep": "RequestsAndResponses",
        "store": {"directory": str(directory)},
        "flushRecords": 1,
    }


PLANTED_CARD = "4111 1111 1111 1111"
PLANTED_BEARER = "Bearer eyZ0123456789abcdefXYZ"


def test_captured_requests_are_redacted_routed_and_reassembled(tmp_path: Path) -> None:
    directory = tmp_path / "capture"

    async def scenario() -> Harness:
        async with harness(tmp_path, capture=capture_config(directory)) as h:
            h.backends["small"].words = ("Paris ", "is ", "the ", "capital.")
            text = (
                f"Mail jane@corp.example, card {PLANTED_CARD}, header "
                f"'Authorization: {PLANTED_BEARER}'. {FACTUAL}"
            )
            headers = {"X-Request-Id": "cap-plain", "Authorization": f"Bearer {KEY}"}
            async with await h.post(CHAT, chat(text, user="jane-42"), headers) as response:
                assert response.status == 200
            headers = {"X-Request-Id": "cap-stream"}
            async with await h.post(CHAT, chat(FACTUAL, stream=True), headers) as response:
                assert response.status == 200
                await response.read()
            async with await h.post(CHAT, chat(SQL), {"X-Request-Id": "cap-override"}) as response:
                assert response.status == 200
            headers = {"X-Request-Id": "cap-404"}
            async with await h.post(CHAT, chat(FACTUAL, model="nope"), headers) as response:
                assert response.status == 404
            # Capture turned off by a reload: the next request is not kept.
            h.write_config()
            await until(lambda: any("capture off" in line for line in h.log), "the reload")
            async with await h.post(CHAT, chat(FACTUAL), {"X-Request-Id": "cap-off"}) as response:
                assert response.status == 200
            return h

    h = asyncio.run(scenario())  # the router has stopped: what it held is written
    records = captured(directory)
    assert set(records) == {"cap-plain", "cap-stream", "cap-override", "cap-404"}
    raw = b"".join(gzip.decompress(p.read_bytes()) for p in directory.rglob("*.jsonl.gz"))
    for secret in (
        b"jane@corp.example",
        PLANTED_CARD.encode(),
        PLANTED_BEARER.encode(),
        KEY.encode(),
        b"jane-42",
    ):
        assert secret not in raw

    plain = records["cap-plain"]
    content = plain["request"]["body"]["messages"][0]["content"]
    assert content.startswith("Mail [email], card [card], header 'Authorization: [bearer]'.")
    assert plain["redactions"] == {"bearer": 1, "card": 1, "email": 1}
    assert plain["route"]["kind"] == "tier"
    assert (plain["route"]["tier"], plain["route"]["model"]) == ("simple", "small")
    assert plain["route"]["fallbackFrom"] is None
    assert plain["route"]["classifier"] == {"kind": "heuristic", "contentHash": None}
    assert plain["response"] == {
        "status": 200,
        "streamed": False,
        "cancelled": False,
        "body": {"model": "small", "backend": "small"},
    }
    assert plain["credential"] is not None and plain["caller"] is not None
    assert plain["source"]["component"] == "router"
    assert plain["latency"]["totalSeconds"] >= plain["latency"]["firstByteSeconds"] > 0

    stream = records["cap-stream"]
    assert stream["response"]["streamed"] is True
    message = stream["response"]["body"]["choices"][0]["message"]
    assert message["content"] == "Paris is the capital."
    assert stream["response"]["body"]["done"] is True

    override = records["cap-override"]["route"]
    assert (override["kind"], override["model"], override["categories"]) == (
        "override",
        "medium",
        ["sql"],
    )

    refused = records["cap-404"]
    assert refused["route"] is None
    assert refused["response"]["status"] == 404
    assert refused["response"]["body"]["error"]["code"] == "model_not_found"
    assert h.backends["small"].received, "the requests were served"


def test_a_partial_sample_keeps_the_ids_sampling_picks(tmp_path: Path) -> None:
    directory = tmp_path / "capture"
    ids = [f"sample-{n}" for n in range(40)]

    async def scenario() -> str:
        async with harness(tmp_path, capture=capture_config(directory, 0.5)) as h:
            for request_id in ids:
                headers = {"X-Request-Id": request_id}
                async with await h.post(CHAT, chat(FACTUAL), headers) as response:
                    assert response.status == 200
            return await h.metrics()

    text = asyncio.run(scenario())
    expected = {i for i in ids if sampling.sampled(i, 0.5)}
    assert 5 < len(expected) < 35, "a sample that tells keeping some from keeping all"
    assert set(captured(directory)) == expected
    assert metric(text, "specfleet_capture_records_dropped_total", reason="queue_full") == 0


def test_a_request_under_way_at_sigterm_is_answered_whole_then_its_record_written(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "capture"
    config_file = tmp_path / "config.json"
    # Nothing is written before the router stops (a batch waits for 1000 records or 10 s).
    capture = capture_config(directory) | {"flushRecords": 1000}

    async def scenario() -> bytes:
        small = Backend("small", hold=True, words=("Paris.",))
        async with serve(small) as runner, aiohttp.ClientSession() as client:
            host, port = runner.addresses[0][:2]
            data = config_data(capture=capture)
            for backend in data["backends"].values():
                backend["url"] = f"http://{host}:{port}"
            config_file.write_text(json.dumps(data))
            flags = ("--port", "0", "--config", str(config_file))
            async with run_server_process(ROUTER, *flags) as (url, log, process):
                headers = {"X-Request-Id": "under-way"}
                body = chat(FACTUAL, stream=True)
                async with client.post(f"{url}{CHAT}", json=body, headers=headers) as response:
                    await within_deadline(response.content.readany(), "the first event")
                    process.send_signal(signal.SIGTERM)
                    await until(lambda: any("stopping" in line for line in log), "the stop")
                    small.release.set()
                    return await within_deadline(response.read(), "the rest of the answer")

    rest = asyncio.run(scenario())
    assert rest.endswith(b"data: [DONE]\n\n")
    answer = captured(directory)["under-way"]["response"]
    assert (answer["status"], answer["cancelled"], answer["body"]["done"]) == (200, False, True)
    assert answer["body"]["choices"][0]["message"]["content"] == "Paris."


# -------------------------------------------------------------------------------------------
# A learned classifier named by the configuration.


async def in_force(h: Harness) -> dict[str, Any]:
    async with h.client.get(f"{h.url}/health") as health:
        classifier: dict[str, Any] = (await health.json())["classifier"]
        return classifier


async def until_in_force(h: Harness, kind: str, content_hash: str | None = None) -> None:
    expected = {"kind": kind, "contentHash": content_hash}
    last = None
    try:
        async with asyncio.timeout(5):
            while (last := await in_force(h)) != expected:
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"classifier in force still {last}, not {expected}") from None


def warned(log: list[str], file: Path) -> list[str]:
    return [line for line in log if "WARNING" in line and f"classifier {file}" in line]


def test_a_learned_classifier_routes_and_is_replaced_without_a_restart(tmp_path: Path) -> None:
    # Mounted as a ConfigMap is: a directory holding classifier.json, swapped whole.
    mounted = tmp_path / "classifier"
    file = mounted / "classifier.json"
    capital_up = classifier({"capital": 2, "customers": 0})
    capital_middle = classifier({"capital": 1})
    replace(file, capital_up)
    directory = tmp_path / "capture"
    learned_config = {"classifier": {"path": str(mounted)}, "capture": capture_config(directory)}

    async def scenario() -> str:
        async with harness(tmp_path, **learned_config) as h:
            assert await in_force(h) == {"kind": "learned", "contentHash": content_hash(capital_up)}
            # The heuristic would send the factual question to simple; the classifier says more.
            status, headers, _ = await h.ask(FACTUAL)
            assert (status, headers["X-Specfleet-Tier"]) == (200, "complex")
            assert headers["X-Specfleet-Classifier"] == f"learned {content_hash(capital_up)}"
            # The override matches SQL's category before the classifier (which says simple).
            status, headers, _ = await h.ask(SQL)
            assert (headers["X-Specfleet-Route"], headers["X-Specfleet-Model"]) == (
                "override",
                "medium",
            )
            async with await h.post(CHAT, chat(FACTUAL), {"X-Request-Id": "by-learned"}) as r:
                assert r.headers["X-Specfleet-Tier"] == "complex"
            text = await h.metrics()
            info = "specfleet_router_classifier_info"
            assert metric(text, info, kind="learned", content_hash=content_hash(capital_up)) == 1

            # A new artifact takes over at the next tick.
            replace(file, capital_middle)
            await until_in_force(h, "learned", content_hash(capital_middle))
            assert (await h.ask(FACTUAL))[1]["X-Specfleet-Tier"] == "medium"

            # A broken one is refused, once, and the last that fitted goes on routing.
            replace(file, capital_up[:100])
            await until(lambda: len(warned(h.log, file)) == 1, "the WARNING")
            assert (
                f"keeping the learned classifier {content_hash(capital_middle)}"
                in (warned(h.log, file)[0])
            )
            # Ticks go by (a reload is seen after one): still one WARNING, still routing.
            h.write_config(down=("small",), **learned_config)
            await h.until_ready_tiers("medium", "complex")
            assert len(warned(h.log, file)) == 1
            status, headers, _ = await h.ask(FACTUAL)
            assert (headers["X-Specfleet-Tier"], headers["X-Specfleet-Classifier"]) == (
                "medium",
                f"learned {content_hash(capital_middle)}",
            )
            failures = "specfleet_router_classifier_load_failures_total"
            assert metric(await h.metrics(), failures, reason="invalid") == 1

            # The configuration names no classifier any more: the heuristic routes.
            h.write_config(capture=capture_config(directory))
            await until_in_force(h, "heuristic")
            async with await h.post(CHAT, chat(FACTUAL), {"X-Request-Id": "by-heuristic"}) as r:
                assert (r.headers["X-Specfleet-Tier"], r.headers["X-Specfleet-Classifier"]) == (
                    "simple",
                    "heuristic",
                )
            return await h.metrics()

    text = asyncio.run(scenario())
    assert metric(text, "specfleet_router_classifier_info", kind="heuristic") == 1
    assert metric(text, "specfleet_router_classifier_info", kind="learned") == 0
    records = captured(directory)
    assert records["by-learned"]["route"]["classifier"] == {
        "kind": "learned",
        "contentHash": content_hash(capital_up),
    }
    assert records["by-heuristic"]["route"]["classifier"] == {
        "kind": "heuristic",
        "contentHash": None,
    }


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"schema": "specfleet.dev/router-classifier/v1", "features": "x"', "invalid"),
        (json.dumps(config_data()).encode(), "invalid"),  # another kind of file
        (classifier({"capital": 1}, tiers=("simple", "complex")), "tiers"),
        (None, "unreadable"),
    ],
)
def test_an_artifact_the_router_cannot_use_leaves_it_on_the_heuristic(
    tmp_path: Path, content: bytes | None, reason: str
) -> None:
    file = tmp_path / "artifact.json"
    if content is not None:
        replace(file, content)

    async def scenario() -> None:
        async with harness(tmp_path, classifier={"path": str(file)}) as h:
            assert await in_force(h) == {"kind": "heuristic", "contentHash": None}
            status, headers, _ = await h.ask(FACTUAL)
            assert (status, headers["X-Specfleet-Tier"]) == (200, "simple")
            assert headers["X-Specfleet-Classifier"] == "heuristic"
            # Ticks go by (a reload is seen after one): one WARNING all the same.
            h.write_config(down=("large",), classifier={"path": str(file)})
            await h.until_ready_tiers("simple", "medium")
            (line,) = warned(h.log, file)
            assert line.endswith("; keeping the heuristic"), line
            failures = "specfleet_router_classifier_load_failures_total"
            assert metric(await h.metrics(), failures, reason=reason) == 1
            # Once a good one is there, it routes.
            good = classifier({"capital": 2})
            replace(file, good)
            await until_in_force(h, "learned", content_hash(good))
            # Complex is down: its nearest ready neighbour below serves what it picks.
            status, headers, _ = await h.ask(FACTUAL)
            assert (headers["X-Specfleet-Tier"], headers["X-Specfleet-Classifier"]) == (
                "medium",
                f"learned {content_hash(good)}",
            )

    asyncio.run(scenario())
