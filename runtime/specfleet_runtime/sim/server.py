"""The simulator's HTTP face: vLLM's OpenAI-compatible endpoints, /health and /metrics, plus an
admin endpoint, in front of the pure engine (`specfleet_runtime.sim.engine`).

Owns the only clock and the only sleeps of the simulator: one task runs the engine step by
step, sleeping each step's duration, and hands each request's tokens to the handler that
waits for them. Called by `specfleet_runtime.sim.cli`; tests start that as a process.

Endpoints:
- `POST /v1/completions`, `POST /v1/chat/completions`: accepted or refused (400) exactly as
  vLLM's request models and sampling checks decide (`specfleet_runtime.sim.protocol`), then
  streamed (server-sent events ending in `data: [DONE]`, one event per engine step, as vLLM
  sends them) or not, in vLLM's response shapes (`specfleet_runtime.sim.output` says what each
  choice says): `n` choices (and one set per prompt of a batch), each a sequence of its own in
  the engine; logprobs and top logprobs when asked; `stop` strings and `stop_token_ids`
  honoured (finish_reason `stop`, `stop_reason` the string or id), `length` when `max_tokens`
  ran out; a `required` or named `tool_choice` answered with a tool call whose arguments
  follow the tool's parameters (finish_reason `tool_calls` for `required`, `stop` for a named
  one, as vLLM); `response_format` json_object / json_schema answered with JSON; `usage`, and
  in a stream with `stream_options.include_usage` (every chunk with
  `continuous_usage_stats`). Output is `max_tokens` tokens (default 16, for chat too, where
  vLLM would fill the context) of simulated text; with a capability (`--capability`), free
  text is instead a short good or poor answer to the question, or a judge's verdict
  (`specfleet_runtime.sim.capability`).
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
import random
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from specfleet_runtime.sim import capability as capability_
from specfleet_runtime.sim import output, protocol
from specfleet_runtime.sim.engine import Behaviour, Emission, Request, SimulatedEngine
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
        *,
        tool_call_parser: str | None = None,
        auto_tool_choice: bool = False,
        request_id_headers: bool = False,
        capability: float | None = None,
    ) -> None:
        """`tool_call_parser` and `auto_tool_choice` are vLLM's `--tool-call-parser` and
        `--enable-auto-tool-choice`: without a parser, vLLM refuses any tool_choice but none.
        `capability` (in [0, 1]) makes free text a good or poor answer, and judge prompts get
        a verdict (`specfleet_runtime.sim.capability`); None: simulated words, as ever."""
        self.engine = engine
        self.capability = capability
        self.tool_call_parser = tool_call_parser
        self.auto_tool_choice = auto_tool_choice
        self.request_id_headers = request_id_headers
        """vLLM's --enable-request-id-headers: every answer carries X-Request-Id, the
        request's own or a new one."""
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
        app = web.Application(middlewares=[_request_id] if self.request_id_headers else [])
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

    def _finish_early(self, request_id: str) -> None:
        finished = self.engine.finish_early(request_id, self._clock(), "stop")
        if finished is not None:
            self.exporter.record_finished(finished)
        self.exporter.record_state(self.engine)

    async def _run_choices(
        self, work: list[tuple[output.Choice, int, int, str]]
    ) -> AsyncGenerator[output.Choice]:
        """Run each choice's sequence (prompt tokens, max tokens, text seed) in the engine at
        once, as vLLM runs a request's n sequences; yield a choice whenever it gained tokens."""
        events: asyncio.Queue[output.Choice | BaseException] = asyncio.Queue()

        async def feed(choice: output.Choice, prompt_tokens: int, limit: int, seed: str) -> None:
            try:
                emissions = self._generate(prompt_tokens, limit, seed)
                async with contextlib.aclosing(emissions):
                    async for emission in emissions:
                        choice.add(emission.token_ids, emission.finish_reason)
                        if choice.finish_reason is not None and emission.finish_reason is None:
                            self._finish_early(emission.request_id)
                        events.put_nowait(choice)
                        if choice.finish_reason is not None:
                            return
            except Exception as exc:  # handed to the consumer, which raises it
                events.put_nowait(exc)

        tasks = [asyncio.create_task(feed(*item)) for item in work]
        try:
            remaining = len(tasks)
            while remaining:
                event = await events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if event.finish_reason is not None:
                    remaining -= 1
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---------------------------------------------------------------------------------------
    # OpenAI endpoints.

    async def _completions(self, http: web.Request) -> web.StreamResponse:
        return await self._serve(http, chat=False)

    async def _chat_completions(self, http: web.Request) -> web.StreamResponse:
        return await self._serve(http, chat=True)

    async def _serve(self, http: web.Request, *, chat: bool) -> web.StreamResponse:
        speculative = self.engine.config.replica.speculative_tokens > 0
        request: protocol.ChatRequest | protocol.CompletionRequest
        try:
            body = await _json_object(http)
            if chat:
                request, wanted = protocol.parse_chat(
                    body,
                    speculative=speculative,
                    tool_call_parser=self.tool_call_parser,
                    auto_tool_choice=self.auto_tool_choice,
                )
                max_tokens = DEFAULT_MAX_TOKENS if wanted is None else wanted
            else:
                request, max_tokens = protocol.parse_completion(body, speculative=speculative)
            if request.model is not None and request.model != self.served_model_name:
                raise BadRequestError(f"The model `{request.model}` does not exist.", status=404)
        except protocol.RequestError as exc:
            return _error(BadRequestError(str(exc)), param=exc.param)
        except BadRequestError as exc:
            return _error(exc)
        plan = _plan(request, max_tokens, self.capability)
        response = _Response(self.served_model_name, request, plan)
        choices = self._run_choices(plan.work)
        async with contextlib.aclosing(choices):
            if not request.stream:
                async for _ in choices:
                    pass
                return web.json_response(response.whole())
            stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            if "request_id" in http:
                stream.headers["X-Request-Id"] = http["request_id"]
            await stream.prepare(http)
            try:
                for opening in response.opening_chunks():
                    await _send(stream, opening)
                async for choice in choices:
                    if (chunk := response.chunk(choice)) is not None:
                        await _send(stream, chunk)
                if request.include_usage:
                    await _send(stream, response.usage_chunk())
                await stream.write(b"data: [DONE]\n\n")
                await stream.write_eof()
            except ConnectionResetError:
                pass  # the client went away; leaving the loop aborts its sequences
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


@dataclass
class _Plan:
    """What a request runs: its choices, each with its sequence for the engine."""

    work: list[tuple[output.Choice, int, int, str]]
    """(choice, prompt tokens, max tokens, text seed) per choice."""
    prompt_tokens: int
    """Over all the request's prompts."""
    echo: dict[int, str]
    """Per choice index, the prompt text it starts with (completions with `echo`)."""
    tool: protocol.Tool | None
    """The tool every choice calls (a `required` or named tool_choice)."""


def _plan(
    request: protocol.ChatRequest | protocol.CompletionRequest,
    max_tokens: int,
    capability: float | None = None,
) -> _Plan:
    prompts: list[tuple[str, int]]
    questions: list[str]
    tool = None
    if isinstance(request, protocol.ChatRequest):
        prompts = [_chat_prompt(request)]
        questions = [_chat_question(request)]
        tool = request.forced_tool
        top = request.top_logprobs if request.logprobs else None
    else:
        prompts = [_completion_prompt(p) for p in request.prompts]
        questions = [text for text, _ in prompts]
        top = request.logprobs
    schema = request.json_schema
    if tool is not None:
        schema = tool.function.parameters or {}
    work = []
    echo = {}
    for p, (text, tokens) in enumerate(prompts):
        for i in range(request.choices):
            index = p * request.choices + i
            seed = text if i == 0 else f"{text}\x00{i}"
            if request.seed is not None:
                seed = f"{request.seed}:{seed}"
            rng = random.Random(f"{seed}:choice")
            pieces = None
            if schema is not None:
                pieces = output.split_pieces(output.json_text(schema, rng))
            elif capability is not None:
                pieces = capability_.pieces(capability_.reply(capability, questions[p]))
            choice = output.Choice(
                index=index,
                stop=tuple(request.stop_strings),
                stop_token_ids=frozenset(request.stop_token_ids or ()),
                include_stop=request.include_stop_str_in_output,
                pieces=pieces,
                logprobs=top,
                rng=rng,
            )
            limit = max_tokens if pieces is None else max(1, min(max_tokens, len(pieces)))
            work.append((choice, tokens, limit, seed))
            if isinstance(request, protocol.CompletionRequest) and request.echo:
                echo[index] = text
    return _Plan(work, sum(tokens for _, tokens in prompts), echo, tool)


class _Response:
    """Builds one request's OpenAI response bodies, streamed or whole, in vLLM's shapes."""

    def __init__(
        self, model: str, request: protocol.ChatRequest | protocol.CompletionRequest, plan: _Plan
    ) -> None:
        self.model = model
        self.request = request
        self.chat = isinstance(request, protocol.ChatRequest)
        self.plan = plan
        self.choices = [choice for choice, *_ in plan.work]
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.tool_call_ids = {c.index: f"chatcmpl-tool-{uuid.uuid4().hex}" for c in self.choices}
        self._opened: set[int] = set()
        self._offsets = dict.fromkeys(self.tool_call_ids, 0)

    # Whole responses.

    def whole(self) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        choices = [self._whole_choice(c) for c in sorted(self.choices, key=lambda c: c.index)]
        return self._envelope(kind, choices) | {"usage": self._usage()}

    def _whole_choice(self, choice: output.Choice) -> dict[str, Any]:
        text, entries = choice.take()
        body: dict[str, Any] = {"index": choice.index}
        if self.chat:
            body["message"] = self._message(choice, text)
            body["logprobs"] = self._chat_logprobs(entries)
        else:
            prefix = self.plan.echo.get(choice.index, "")
            body["text"] = prefix + text
            body["logprobs"] = self._completion_logprobs(choice, entries, len(prefix))
        reason = self._finish_reason(choice)
        return body | {"finish_reason": reason, "stop_reason": choice.stop_reason}

    def _message(self, choice: output.Choice, text: str) -> dict[str, Any]:
        if self.plan.tool is None:
            return {"role": "assistant", "content": text, "refusal": None, "tool_calls": []}
        call = {
            "id": self.tool_call_ids[choice.index],
            "type": "function",
            "function": {"name": self.plan.tool.function.name, "arguments": text},
        }
        return {"role": "assistant", "content": "", "refusal": None, "tool_calls": [call]}

    # Streams.

    def opening_chunks(self) -> list[dict[str, Any]]:
        """A chat stream opens with the role of each choice, no content yet."""
        if not self.chat:
            return []
        return [
            self._envelope(
                "chat.completion.chunk",
                [
                    {
                        "index": c.index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
            )
            for c in sorted(self.choices, key=lambda c: c.index)
        ]

    def chunk(self, choice: output.Choice) -> dict[str, Any] | None:
        """The chunk for what `choice` gained; None when it has nothing to send yet."""
        text, entries = choice.take()
        reason = self._finish_reason(choice)
        if not text and reason is None:
            return None
        body: dict[str, Any] = {"index": choice.index}
        if self.chat:
            body["delta"] = self._delta(choice, text)
            body["logprobs"] = self._chat_logprobs(entries)
        else:
            prefix = ""
            if choice.index in self.plan.echo and choice.index not in self._opened:
                prefix = self.plan.echo[choice.index]
            self._opened.add(choice.index)
            body["text"] = prefix + text
            body["logprobs"] = self._completion_logprobs(
                choice, entries, self._offsets[choice.index] + len(prefix)
            )
            self._offsets[choice.index] += len(prefix) + len(text)
        body |= {"finish_reason": reason, "stop_reason": choice.stop_reason}
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        chunk = self._envelope(kind, [body])
        if self.request.continuous_usage:
            chunk["usage"] = self._usage()
        return chunk

    def _delta(self, choice: output.Choice, text: str) -> dict[str, Any]:
        if self.plan.tool is None:
            return {"content": text}
        call: dict[str, Any] = {"index": 0, "function": {"arguments": text}}
        if choice.index not in self._opened:
            self._opened.add(choice.index)
            call |= {"id": self.tool_call_ids[choice.index], "type": "function"}
            call["function"] = {"name": self.plan.tool.function.name, "arguments": text}
        return {"tool_calls": [call]}

    def usage_chunk(self) -> dict[str, Any]:
        """The last chunk when the client asked for `stream_options.include_usage`."""
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return self._envelope(kind, []) | {"usage": self._usage()}

    # Parts.

    def _finish_reason(self, choice: output.Choice) -> str | None:
        reason = choice.finish_reason
        required = isinstance(self.request, protocol.ChatRequest) and (
            self.request.tool_choice == "required"
        )
        if reason == "stop" and required:
            return "tool_calls"  # vLLM: "tool_calls" for a required call, "stop" for a named one
        return reason

    def _chat_logprobs(self, entries: list[output.TokenLogprob]) -> dict[str, Any] | None:
        request = self.request
        if not isinstance(request, protocol.ChatRequest) or not request.logprobs:
            return None
        top = request.top_logprobs
        return {
            "content": [
                _logprob_json(e.token, e.logprob)
                | {"top_logprobs": [_logprob_json(t, v) for t, v in e.top[:top]]}
                for e in entries
            ]
        }

    def _completion_logprobs(
        self, choice: output.Choice, entries: list[output.TokenLogprob], offset: int
    ) -> dict[str, Any] | None:
        if choice.logprobs is None:
            return None
        offsets = []
        for entry in entries:
            offsets.append(offset)
            offset += len(entry.token)
        return {
            "text_offset": offsets,
            "token_logprobs": [e.logprob for e in entries],
            "tokens": [e.token for e in entries],
            "top_logprobs": [dict(e.top[: max(1, choice.logprobs)]) for e in entries],
        }

    def _envelope(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def _usage(self) -> dict[str, int]:
        completion = sum(c.tokens for c in self.choices)
        return {
            "prompt_tokens": self.plan.prompt_tokens,
            "total_tokens": self.plan.prompt_tokens + completion,
            "completion_tokens": completion,
        }


def _logprob_json(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


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


def _completion_prompt(prompt: str | list[int]) -> tuple[str, int]:
    """A prompt's text (it seeds the output) and its length in tokens."""
    if isinstance(prompt, str):
        return prompt, _estimate_tokens(prompt)
    return " ".join(map(str, prompt)), max(1, len(prompt))


def _chat_prompt(request: protocol.ChatRequest) -> tuple[str, int]:
    """The messages' text (it seeds the output) and its length in tokens: text parts count,
    other parts (images, audio) do not."""
    texts: list[str] = []
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, str):
                    texts.append(part)
                elif isinstance(part, dict):
                    texts.append(str(part.get("text", "")))
        for call in getattr(message, "tool_calls", None) or ():
            if isinstance(call, protocol._FunctionToolCallParam):
                texts.append(call.function.arguments)
    text = "\n".join(texts)
    return text, _estimate_tokens(text)


def _chat_question(request: protocol.ChatRequest) -> str:
    """What a chat asks: its last user message (else its last message), text parts joined by
    newlines, as `specfleet.routing.request` reads it."""
    last_user: str | None = None
    last = ""
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            last = content
        elif isinstance(content, list):
            last = "\n".join(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, dict) and part.get("type") == "text"
            )
        else:
            last = ""
        if getattr(message, "role", None) == "user":
            last_user = last
    return last if last_user is None else last_user


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // CHARACTERS_PER_TOKEN)


def _number(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise BadRequestError(f"{key} must be a number, got {value!r}")
    return float(value)


def _error(exc: BadRequestError, param: str | None = None) -> web.Response:
    kind = "NotFoundError" if exc.status == 404 else "BadRequestError"
    error = {"message": str(exc), "type": kind, "param": param, "code": exc.status}
    return web.json_response({"error": error}, status=exc.status)


@web.middleware
async def _request_id(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """vLLM's XRequestIdMiddleware: the answer carries the request's X-Request-Id, or a new
    one. Set before a stream's headers go out, so streams carry it too."""
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    request["request_id"] = request_id
    response = await handler(request)
    if not response.prepared:
        response.headers["X-Request-Id"] = request_id
    return response


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the engine loop stopped", exc_info=task.exception())
