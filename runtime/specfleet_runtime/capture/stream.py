"""A streamed OpenAI response reassembled from its Server-Sent Events, pure.

``reassemble`` takes the chunks of a ``text/event-stream`` body as they passed through the proxy
(split anywhere, even inside an event or a UTF-8 character) and returns the response as a
non-streamed one would have been: for chat, each choice's ``message`` (role, content, reasoning
and tool calls, whose argument fragments are joined); for completions, each choice's ``text``;
each choice's ``finish_reason``; the ``usage`` of the chunk that carried it (the final one,
when the client asked ``stream_options.include_usage``); and an ``error`` event if the server
sent one. ``done`` says whether the stream ended with ``[DONE]`` (a cut stream did not).

Called by ``specfleet_runtime.capture.record`` where records are built, off the request path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


def events(chunks: Iterable[bytes]) -> list[str]:
    """The ``data`` of each event in an SSE body (multi-line data joined by newlines)."""
    text = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    found = []
    for block in text.split("\n\n"):
        data = [
            line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")
        ]
        if data:
            found.append("\n".join(data))
    return found


class _Choice:
    def __init__(self, index: int) -> None:
        self.index = index
        self.role: str | None = None
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.text: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.chat = False

    def add(self, choice: dict[str, Any]) -> None:
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        if isinstance(choice.get("text"), str):
            self.text.append(choice["text"])
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return
        self.chat = True
        if isinstance(delta.get("role"), str):
            self.role = delta["role"]
        if isinstance(delta.get("content"), str):
            self.content.append(delta["content"])
        for name in ("reasoning_content", "reasoning"):
            if isinstance(delta.get(name), str):
                self.reasoning.append(delta[name])
                break
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                self._add_call(call)

    def _add_call(self, call: dict[str, Any]) -> None:
        index = call.get("index", len(self.tool_calls))
        index = index if isinstance(index, int) else len(self.tool_calls)
        kept = self.tool_calls.setdefault(
            index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if isinstance(call.get("id"), str):
            kept["id"] = call["id"]
        if isinstance(call.get("type"), str):
            kept["type"] = call["type"]
        function = call.get("function")
        if isinstance(function, dict):
            if isinstance(function.get("name"), str):
                kept["function"]["name"] += function["name"]
            if isinstance(function.get("arguments"), str):
                kept["function"]["arguments"] += function["arguments"]

    def result(self) -> dict[str, Any]:
        if not self.chat:
            return {
                "index": self.index,
                "text": "".join(self.text),
                "finish_reason": self.finish_reason,
            }
        message: dict[str, Any] = {
            "role": self.role or "assistant",
            "content": "".join(self.content) if self.content else None,
        }
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return {"index": self.index, "message": message, "finish_reason": self.finish_reason}


def reassemble(chunks: Iterable[bytes]) -> dict[str, Any]:
    """The response a stream's chunks carried, as one object (see the module docstring)."""
    response: dict[str, Any] = {}
    choices: dict[int, _Choice] = {}
    done = False
    unreadable = 0
    for data in events(chunks):
        if data.strip() == "[DONE]":
            done = True
            continue
        try:
            event = json.loads(data)
        except ValueError:
            unreadable += 1
            continue
        if not isinstance(event, dict):
            unreadable += 1
            continue
        if "error" in event:
            response["error"] = event["error"]
            continue
        for name in ("id", "model", "created", "system_fingerprint"):
            if name in event and name not in response:
                response[name] = event[name]
        if event.get("usage"):
            response["usage"] = event["usage"]
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            index = index if isinstance(index, int) else 0
            choices.setdefault(index, _Choice(index)).add(choice)
    assembled = [choices[i].result() for i in sorted(choices)]
    chat = any(choice.chat for choice in choices.values())
    response["object"] = "chat.completion" if chat else "text_completion"
    response["choices"] = assembled
    response["done"] = done
    if unreadable:
        response["unreadable_events"] = unreadable
    return response
