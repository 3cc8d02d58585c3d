"""The simulator's HTTP face: vLLM's OpenAI-compatible endpoints, /health and /metrics, plus an
admin endpoint, in front of the pure engine (`specfleet_runtime.sim.engine`).

Owns the only clock and the only sleeps of the simulator: one task runs the engine step by
step, sleeping each step's duration, and hands each request's tokens to the handler that
waits for them. Called by `specfleet_runtime.sim.cli`; tests start that as a process.

Endpoints:
- `POST /v1/completions`, `POST /v1/chat/completions`: streaming (server-sent events ending
  in `data: [DONE]`, one event per engine step, as vLLM sends them) or not, with `usage`.
  Output is `max_tokens` tokens (default 16) of simulated text.
- `GET /v1/models`, `GET /health` (200; the server listens only once "loaded", as vLLM),
  `GET /metrics`.
- `GET /admin/acceptance` and `POST /admin/acceptance` with JSON `{"acceptanceRate": 0.5,
  "latencyFactor": 3}` (either key optional): read or change the behaviour at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from specfleet_runtime.sim.engine import (
    Behaviour,
    Emission,
    Request,
    SimulatedEngine,
    detokenize,
)
from specfleet_runtime.sim.exporter import Exporter

DEFAULT_MAX_TOKENS = 16
CHARACTERS_PER_TOKEN = 4
"""Prompt length in tokens is estimated from its characters, as for English text."""

log = logging.getLogger(__name__)


class BadRequestError(Exception):
    """A request the OpenAI API would refuse; the message is sent to the client."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class SimServer:
    """One simulated vLLM server: its engine, its metrics and its routes."""

    def __init__(
        self,
        engine: SimulatedEngine,
        exporter: Exporter,
        served_model_name: str,
        model_path: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.exporter = exporter
        self.served_model_name = served_model_name
        self.model_path = model_path
        self._clock = clock
        self._streams: dict[str, asyncio.Queue[Emission]] = {}
        self._work = asyncio.Event()
        self._ids = itertools.count()
        self._engine_task: asyncio.Task[None] | None = None
        exporter.record_state(engine)

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.post("/v1/completions", self._completions),
                web.post("/v1/chat/completions", self._chat_completions),
                web.get("/v1/models", self._models),
                web.get("/health", self._health),
                web.get("/metrics", self._metrics),
                web.get("/admin/acceptance", self._get_behaviour),
                web.post("/admin/acceptance", self._set_behaviour),
            ]
        )
        app.on_startup.append(self._start_engine)
        app.on_cleanup.append(self._stop_engine)
        return app

    # ---------------------------------------------------------------------------------------
    # The engine loop.

    async def _start_engine(self, _: web.Application) -> None:
        self._engine_task = asyncio.create_task(self._run_engine())
        self._engine_task.add_done_callback(_log_crash)

    async def _stop_engine(self, _: web.Application) -> None:
        if self._engine_task is not None:
            self._engine_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._engine_task

    async def _run_engine(self) -> None:
        while True:
            await self._work.wait()
            duration = self.engine.start_step(self._clock())
            self.exporter.record_state(self.engine)
            if duration is None:
                self._work.clear()
                continue
            await asyncio.sleep(duration)
            report = self.engine.finish_step(self._clock())
            self.exporter.record_step(report)
            self.exporter.record_state(self.engine)
            for emission in report.emissions:
                self._streams[emission.request_id].put_nowait(emission)

    async def _generate(
        self, prompt_tokens: int, max_tokens: int, text_seed: str
    ) -> AsyncGenerator[Emission]:
        """Submit a request and yield what each step gives it; aborts it if the caller stops
        early (the client went away)."""
        request_id = f"sim-{next(self._ids)}"
        queue: asyncio.Queue[Emission] = asyncio.Queue()
        self._streams[request_id] = queue
        self.engine.submit(Request(request_id, prompt_tokens, max_tokens, text_seed), self._clock())
        self.exporter.record_state(self.engine)
        self._work.set()
        finished = False
        try:
            while not finished:
                emission = await queue.get()
                finished = emission.finish_reason is not None
                yield emission
        finally:
            del self._streams[request_id]
            if not finished:
                self.engine.abort(request_id)
                self.exporter.record_state(self.engine)

    # ---------------------------------------------------------------------------------------
    # OpenAI endpoints.

    async def _completions(self, http: web.Request) -> web.StreamResponse:
        return await self._serve(http, chat=False)

    async def _chat_completions(self, http: web.Request) -> web.StreamResponse:
        return await self._serve(http, chat=True)

    async def _serve(self, http: web.Request, *, chat: bool) -> web.StreamResponse:
        try:
            body = await _json_object(http)
            model = body.get("model", self.served_model_name)
            if model != self.served_model_name:
                raise BadRequestError(f"The model `{model}` does not exist.", status=404)
            prompt, prompt_tokens = _chat_prompt(body) if chat else _completion_prompt(body)
            max_tokens = _max_tokens(body)
        except BadRequestError as exc:
            return _error(exc)
        response = _Response(self.served_model_name, chat=chat, prompt_tokens=prompt_tokens)
        emissions = self._generate(prompt_tokens, max_tokens, prompt)
        async with contextlib.aclosing(emissions):
            if not body.get("stream"):
                async for emission in emissions:
                    response.add(emission)
                return web.json_response(response.whole())
            stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await stream.prepare(http)
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            try:
                if chat:
                    await _send(stream, response.role_chunk())
                async for emission in emissions:
                    await _send(stream, response.chunk(emission))
                if include_usage:
                    await _send(stream, response.usage_chunk())
                await stream.write(b"data: [DONE]\n\n")
                await stream.write_eof()
            except ConnectionResetError:
                pass  # the client went away; leaving the loop aborts its request
            return stream

    async def _models(self, _: web.Request) -> web.Response:
        card = {
            "id": self.served_model_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": self.model_path,
            "parent": None,
            "max_model_len": self.engine.config.replica.target.max_context,
            "permission": [],
        }
        return web.json_response({"object": "list", "data": [card]})

    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=self.exporter.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    # ---------------------------------------------------------------------------------------
    # Admin.

    async def _get_behaviour(self, _: web.Request) -> web.Response:
        return web.json_response(self._behaviour_json())

    async def _set_behaviour(self, http: web.Request) -> web.Response:
        try:
            body = await _json_object(http)
            current = self.engine.behaviour
            self.engine.behaviour = Behaviour(
                acceptance_rate=_number(body, "acceptanceRate", current.acceptance_rate),
                latency_factor=_number(body, "latencyFactor", current.latency_factor),
            )
        except BadRequestError as exc:
            return _error(exc)
        except ValueError as exc:
            return _error(BadRequestError(str(exc)))
        log.info("behaviour changed: %s", self._behaviour_json())
        return web.json_response(self._behaviour_json())

    def _behaviour_json(self) -> dict[str, float]:
        behaviour = self.engine.behaviour
        return {
            "acceptanceRate": behaviour.acceptance_rate,
            "latencyFactor": behaviour.latency_factor,
        }


class _Response:
    """Builds one request's OpenAI response bodies, streamed or whole."""

    def __init__(self, model: str, *, chat: bool, prompt_tokens: int) -> None:
        self.model = model
        self.chat = chat
        self.prompt_tokens = prompt_tokens
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None

    def add(self, emission: Emission) -> None:
        self.token_ids.extend(emission.token_ids)
        self.finish_reason = emission.finish_reason

    def whole(self) -> dict[str, Any]:
        text = detokenize(tuple(self.token_ids))
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        choice |= {"logprobs": None, "finish_reason": self.finish_reason, "stop_reason": None}
        kind = "chat.completion" if self.chat else "text_completion"
        return self._envelope(kind, [choice]) | {"usage": self._usage()}

    def role_chunk(self) -> dict[str, Any]:
        """The first chunk of a chat stream: the role, no content yet."""
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None}  # fmt: skip
        return self._envelope("chat.completion.chunk", [choice])

    def chunk(self, emission: Emission) -> dict[str, Any]:
        self.add(emission)
        text = detokenize(emission.token_ids)
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["delta"] = {"content": text}
        else:
            choice["text"] = text
        choice |= {"logprobs": None, "finish_reason": emission.finish_reason, "stop_reason": None}
        return self._envelope("chat.completion.chunk" if self.chat else "text_completion", [choice])

    def usage_chunk(self) -> dict[str, Any]:
        """The last chunk when the client asked for `stream_options.include_usage`."""
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return self._envelope(kind, []) | {"usage": self._usage()}

    def _envelope(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def _usage(self) -> dict[str, int]:
        completion = len(self.token_ids)
        return {
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.prompt_tokens + completion,
            "completion_tokens": completion,
        }


async def _send(stream: web.StreamResponse, payload: dict[str, Any]) -> None:
    await stream.write(f"data: {json.dumps(payload)}\n\n".encode())


async def _json_object(http: web.Request) -> dict[str, Any]:
    try:
        body = await http.json()
    except ValueError as exc:
        raise BadRequestError(f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequestError("the body must be a JSON object")
    return body


def _completion_prompt(body: dict[str, Any]) -> tuple[str, int]:
    """The prompt's text (it seeds the output) and its length in tokens."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt, _estimate_tokens(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return " ".join(map(str, prompt)), len(prompt)
    raise BadRequestError("prompt must be a string or a list of token ids")


def _chat_prompt(body: dict[str, Any]) -> tuple[str, int]:
    """The messages' text (it seeds the output) and its length in tokens."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("messages must be a non-empty list")
    texts = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(str(part.get("text", "")) for part in content if isinstance(part, dict))
        else:
            raise BadRequestError("each message needs a content string or a list of parts")
    text = "\n".join(texts)
    return text, _estimate_tokens(text)


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // CHARACTERS_PER_TOKEN)


def _max_tokens(body: dict[str, Any]) -> int:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if value is None:
        return DEFAULT_MAX_TOKENS
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequestError(f"max_tokens must be a positive integer, got {value!r}")
    return value


def _number(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise BadRequestError(f"{key} must be a number, got {value!r}")
    return float(value)


def _error(exc: BadRequestError) -> web.Response:
    kind = "NotFoundError" if exc.status == 404 else "BadRequestError"
    error = {"message": str(exc), "type": kind, "param": None, "code": exc.status}
    return web.json_response({"error": error}, status=exc.status)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the engine loop stopped", exc_info=task.exception())
