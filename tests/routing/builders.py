"""Parsed requests for the routing core's tests (and the router's): a chat turn and a
completion, as the router would parse their bodies."""

from __future__ import annotations

import json
from typing import Any

from specfleet.routing import request

POLICY = "assistant"


def chat(text: str, model: str | None = POLICY, **fields: Any) -> request.ParsedRequest:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}], **fields}
    if model is not None:
        body["model"] = model
    return request.parse(request.Endpoint.CHAT, json.dumps(body).encode())


def completion(prompt: Any, model: str | None = POLICY, **fields: Any) -> request.ParsedRequest:
    body: dict[str, Any] = {"prompt": prompt, **fields}
    if model is not None:
        body["model"] = model
    return request.parse(request.Endpoint.COMPLETIONS, json.dumps(body).encode())
