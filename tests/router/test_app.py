"""The router's shell without sockets to backends: API keys failing closed and following the
configuration, backend connections let go when a backend leaves it, what is captured of a
request its client left or that a reload overlapped, and which worker counts classifier load
failures. The backends are a fake behind the proxy core's transport seam; the router app runs in
aiohttp's test server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict, MultiMapping

from specfleet.api import storelayout
from specfleet.api.capture import CaptureConfig
from specfleet.api.routerconfig import RouterConfig
from specfleet_runtime import capture as capturing
from specfleet_runtime import proxy
from specfleet_runtime.capture import writer
from specfleet_runtime.router import app
from tests import waiting
from tests.capture import builders as capture_builders
from tests.gate.fakes import DEADLINE, FakeTransport, hold, until, within_deadline
from tests.router.builders import backends, classifier, config, content_hash, replace

Client = TestClient[web.Request, web.Application]

BODY = json.dumps({"model": "auto", "prompt": "What is the capital of France?"}).encode()


class Answer:
    """A complete 200 answer from a fake backend."""

    status = 200

    @property
    def headers(self) -> MultiMapping[str]:
        return CIMultiDict({"Content-Type": "application/json"})

    async def chunks(self) -> AsyncIterator[bytes]:
        yield b'{"ok": true}'

    async def aclose(self) -> None:
        pass


class FakeBackend:
    def __init__(self, url: str) -> None:
        self.url = url
        self.requests: list[proxy.UpstreamRequest] = []
        self.closed = False

    async def send(self, request: proxy.UpstreamRequest) -> proxy.UpstreamResponse:
        self.requests.append(request)
        return Answer()

    def close(self) -> None:
        self.closed = True


def run(
    initial: RouterConfig,
    scenario: Callable[[app.Router, Client, dict[str, FakeBackend]], Awaitable[None]],
) -> None:
    fakes: dict[str, FakeBackend] = {}

    def transport_for(url: str) -> FakeBackend:
        fakes[url] = FakeBackend(url)
        return fakes[url]

    async def main() -> None:
        router = app.Router(initial, transport_for)
        async with TestClient(TestServer(app.make_app(router))) as client:
            await scenario(router, client, fakes)

    asyncio.run(main())


async def status(client: Client, key: str | None = None) -> int:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    async with client.post("/v1/completions", data=BODY, headers=headers) as response:
        await response.read()
        code: int = response.status
        return code


def test_keys_that_cannot_be_read_let_nobody_in_until_they_can(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"

    async def scenario(router: app.Router, client: Client, _: dict[str, FakeBackend]) -> None:
        assert await status(client) == 401
        assert await status(client, "sk-one") == 401
        keys_file.write_text('{"team": "sk-one"}')
        router.poll_keys()
        assert await status(client, "sk-one") == 200
        assert await status(client) == 401

        router.apply(config())  # the policy no longer names a Secret
        assert await status(client) == 200

    run(config(apiKeysFile=str(keys_file)), scenario)


def test_without_keys_the_clients_authorization_crosses_to_the_backend() -> None:
    async def scenario(_: app.Router, client: Client, fakes: dict[str, FakeBackend]) -> None:
        assert await status(client, "backend-token") == 200
        assert (
            fakes["http://small:80"].requests[0].headers["Authorization"] == "Bearer backend-token"
        )

    run(config(), scenario)


def test_a_backend_that_leaves_the_configuration_is_closed() -> None:
    async def scenario(router: app.Router, client: Client, fakes: dict[str, FakeBackend]) -> None:
        assert await status(client) == 200
        small = fakes["http://small:80"]
        router.apply(
            config(backends={**backends(), "small": {"url": "http://small-2:80", "ready": True}})
        )
        assert small.closed
        assert await status(client) == 200
        assert len(fakes["http://small-2:80"].requests) == 1
        router.close()
        assert fakes["http://small-2:80"].closed

    run(config(), scenario)


class HeldBackend(FakeTransport):
    """Every backend: a stream that sends what the test pushes, or, while ``hang``, no answer
    at all."""

    def __init__(self) -> None:
        super().__init__(hold)
        self.hang = False

    async def send(self, request: proxy.UpstreamRequest) -> proxy.UpstreamResponse:
        if self.hang:
            self.requests.append(request)
            await asyncio.Event().wait()
        return await super().send(request)

    def close(self) -> None:
        pass


@contextlib.asynccontextmanager
async def capturing_router(tmp_path: Path) -> AsyncIterator[tuple[HeldBackend, app.Router, Client]]:
    """A router capturing every request (a batch per record) under ``tmp_path``, in front of a
    held backend, and a client of it; the router is closed (its records written) on the way
    out."""
    backend = HeldBackend()
    captured = config(capture=capture_builders.config_data(tmp_path, flushRecords=1))
    router = app.Router(captured, lambda _url: backend, pod="router-0")
    try:
        async with TestClient(TestServer(app.make_app(router))) as client:
            yield backend, router, client
    finally:
        router.close()


def test_a_request_its_client_left_is_captured_as_cancelled(tmp_path: Path) -> None:
    chunk = b'data: {"choices": [{"index": 0, "delta": {"content": "Par"}}]}\n\n'
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "Hi"}]})

    async def scenario() -> None:
        async with capturing_router(tmp_path) as (backend, router, client):
            headers = {"X-Request-Id": "left-mid-stream"}
            response = await within_deadline(
                client.post("/v1/chat/completions", data=body, headers=headers), "the head"
            )
            backend.responses[0].push(chunk)
            await within_deadline(response.content.readany(), "the first chunk")
            response.close()
            await within_deadline(backend.responses[0].closed.wait(), "the upstream to close")
            # Gone before the backend answered.
            backend.hang = True
            headers = {"X-Request-Id": "left-waiting"}
            waiting = asyncio.create_task(
                client.post("/v1/chat/completions", data=body, headers=headers)
            )
            await until(lambda: len(backend.requests) == 2, "the second request upstream")
            waiting.cancel()
            written = "specfleet_capture_records_written_total"
            await until(
                lambda: router.metrics.registry.get_sample_value(written) == 2,
                "both records to be written",
            )
        kept = capture_builders.records(tmp_path)
        waited = kept["left-waiting"]["response"]
        assert waited == {"status": 499, "streamed": False, "cancelled": True, "body": None}
        assert kept["left-waiting"]["route"]["tier"] == "simple"
        mid_stream = kept["left-mid-stream"]["response"]
        assert (mid_stream["status"], mid_stream["streamed"], mid_stream["cancelled"]) == (
            200,
            True,
            True,
        )
        assert mid_stream["body"]["choices"][0]["message"]["content"] == "Par"

    asyncio.run(scenario())


def test_a_request_under_way_when_a_reload_turns_capture_off_is_counted_as_dropped(
    tmp_path: Path,
) -> None:
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "Hi"}]})

    async def scenario() -> None:
        async with capturing_router(tmp_path) as (backend, router, client):
            response = await within_deadline(
                client.post("/v1/chat/completions", data=body), "the head"
            )
            router.apply(config())  # capture off while the answer streams
            backend.responses[0].finish()
            await response.read()
            dropped = "specfleet_capture_records_dropped_total"
            await until(
                lambda: (
                    router.metrics.registry.get_sample_value(dropped, {"reason": "capture_off"})
                    == 1
                ),
                "the record to be counted as dropped",
            )
        assert capture_builders.records(tmp_path) == {}

    asyncio.run(scenario())


class HeldStore:
    """A capture store whose batches wait for ``release`` before they are kept."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.kept: list[str] = []

    def put(self, name: str, data: bytes) -> None:
        self.entered.set()
        assert self.release.wait(DEADLINE), "the test never released the store"
        self.kept.append(name)


def test_stopping_writes_what_a_capture_a_reload_replaced_still_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = HeldStore()

    def held(config: CaptureConfig, **given: Any) -> writer.Capture:  # on the thread, into `store`
        return writer.Capture(config, **{**given, "writer_process": False, "store": store})

    monkeypatch.setattr(capturing, "Capture", held)
    router = app.Router(
        config(capture=capture_builders.config_data(tmp_path, flushRecords=1)),
        FakeBackend,
        pod="router-0",
    )
    assert router.capture is not None
    router.capture.offer(capture_builders.chat_exchange("written-as-the-reload-came"))
    router.capture.offer(capture_builders.chat_exchange("waiting-as-the-reload-came"))
    assert store.entered.wait(DEADLINE)
    router.apply(config())  # capture off: the replaced capture's writer goes on
    # Stopping waits for that writer: not done while the store holds its batch...
    assert router.close(timeout=0) is False
    store.release.set()
    # ... and done once the store takes it, nothing lost.
    assert router.close() is True
    assert len(store.kept) == 2


@pytest.mark.parametrize(("first_worker", "counted"), [(True, 1.0), (False, 0.0)])
def test_every_worker_reads_the_classifier_and_the_first_alone_counts_its_failures(
    tmp_path: Path, first_worker: bool, counted: float
) -> None:
    path = tmp_path / "classifier.json"
    path.write_text("not an artifact")
    router = app.Router(
        config(classifier={"path": str(path)}), FakeBackend, counts_reloads=first_worker
    )
    assert router.chooser.kind == "heuristic"
    failures = "specfleet_router_classifier_load_failures_total"
    assert router.metrics.registry.get_sample_value(failures, {"reason": "invalid"}) == counted
    replace(path, classifier({"capital": 2}))
    router.poll_classifier()
    assert router.chooser.content_hash == content_hash(classifier({"capital": 2}))


def test_a_learning_policys_router_routes_with_what_the_store_puts_in_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def on_thread(config: CaptureConfig, **given: Any) -> writer.Capture:
        return writer.Capture(config, **{**given, "writer_process": False, "store": HeldStore()})

    monkeypatch.setattr(capturing, "Capture", on_thread)
    capture = capture_builders.config_data(tmp_path)
    router = app.Router(
        config(capture=capture, classifier={"inForce": {"pollSeconds": 1}}), FakeBackend
    )
    try:
        assert router.chooser.kind == "heuristic"
        router.poll_classifier()
        assert router.chooser.kind == "heuristic"  # nothing promoted yet
        artifact = classifier({"capital": 2})
        hashed = content_hash(artifact)
        root = tmp_path / "team-a" / "routingpolicy" / "assistant" / "learning"
        replace(root / "classifiers" / f"sha256-{hashed.removeprefix('sha256:')}.json", artifact)
        pointer = {"schema": storelayout.IN_FORCE_SCHEMA, "classifier": hashed}
        replace(root / "in-force.json", json.dumps(pointer).encode())

        def taken() -> bool:
            router.poll_classifier()  # the pointer is due once a second
            return router.chooser.content_hash == hashed

        waiting.until(taken, "the router to take the promoted classifier")
        # A reload with the same store and tiers keeps it; the heuristic again drops it.
        router.apply(config(capture=capture, classifier={"inForce": {"pollSeconds": 1}}))
        assert router.chooser.content_hash == hashed
        router.apply(config(capture=capture))
        assert router.chooser.kind == "heuristic"
    finally:
        router.close(timeout=0)
