"""Parsing an OpenAI request body, once, into what routing reads.

``parse`` takes the raw bytes of a ``/v1/completions`` or ``/v1/chat/completions`` body and
returns a ``ParsedRequest`` or raises ``MalformedRequestError`` naming the parameter at fault;
nothing else escapes, whatever the bytes (the router's fuzz tests hold it to that). It checks
only what routing reads: a JSON object; ``model`` a string if present; ``stream`` a boolean;
``max_tokens`` (chat: ``max_completion_tokens`` first) a positive integer; a ``prompt`` (a
string, strings, token ids or lists of token ids) or ``messages`` (objects with a string
``role`` and ``content`` that is a string, null or a list of parts, text parts with a string
``text``). Everything else is the backend's to judge, and crosses untouched.

What a request is judged by comes from here alone, so that a request scored offline (a captured
body, for training or evaluation) is read exactly as the router reads it live: ``text`` (the
prompt or last user message), ``prompt_chars``, ``prompt_token_ids``, ``max_tokens`` and
``model``.

``with_model`` writes the body sent to a routed request's backend: the client's object with
``model`` set to the backend's served name.

Pure. Called by ``specfleet_runtime.router.app``, which answers a ``MalformedRequestError`` as
its 400 ``invalid_request``; ``specfleet.routing.heuristic`` and ``specfleet.routing.choice``
read its output.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn


class MalformedRequestError(ValueError):
    """A body routing cannot read; ``str(exc)`` says what to change, ``param`` names the
    parameter at fault as OpenAI errors do (``messages[0].role``), None for the body as a
    whole."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class Endpoint(enum.Enum):
    """The OpenAI endpoints the router routes, by path."""

    COMPLETIONS = "/v1/completions"
    CHAT = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """What routing needs from one request body."""

    endpoint: Endpoint
    model: str | None
    """``model`` as the client sent it; None when absent (routed, as vLLM serves its only model
    when none is named)."""
    text: str
    """What cues and override patterns are read from: the prompt (a batch's prompts joined by
    newlines), or the last user message."""
    prompt_chars: int
    """Characters of text in the whole prompt or conversation, system prompt included."""
    prompt_token_ids: int
    """Prompt tokens given as token ids rather than text."""
    max_tokens: int | None
    """The client's cap on output tokens, if any."""
    stream: bool
    payload: Mapping[str, Any]
    """The decoded body, for ``with_model``."""


def parse(endpoint: Endpoint, body: bytes) -> ParsedRequest:
    """The request in ``body``; raises MalformedRequestError (see the module docstring)."""
    payload = _decode(body)
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        _invalid("model must be a string: a served model's name, or the policy's", "model")
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        _invalid("stream must be true or false", "stream")
    if endpoint is Endpoint.CHAT:
        text, chars = _messages(payload.get("messages"))
        token_ids = 0
        # OpenAI's newer name wins where both are sent.
        cap_field = (
            "max_completion_tokens"
            if payload.get("max_completion_tokens") is not None
            else "max_tokens"
        )
    else:
        text, chars, token_ids = _prompt(payload.get("prompt"))
        cap_field = "max_tokens"
    return ParsedRequest(
        endpoint=endpoint,
        model=model,
        text=text,
        prompt_chars=chars,
        prompt_token_ids=token_ids,
        max_tokens=_max_tokens(payload.get(cap_field), cap_field),
        stream=bool(stream),
        payload=payload,
    )


def with_model(request: ParsedRequest, model: str) -> bytes:
    """The request's body with ``model`` replaced (or added)."""
    # ASCII escapes keep lone surrogates (valid in JSON text, not in UTF-8) encodable.
    return json.dumps({**request.payload, "model": model}).encode("ascii")


def _invalid(message: str, param: str | None = None) -> NoReturn:
    raise MalformedRequestError(message, param)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _decode(body: bytes) -> dict[str, Any]:
    if not body.strip():
        _invalid("the request body is empty; send a JSON object")
    try:
        # NaN, Infinity and numbers beyond a double are not JSON, and would not survive being
        # written again for the backend.
        payload = json.loads(body, parse_float=_finite_float, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        # UnicodeDecodeError and JSONDecodeError are ValueErrors; RecursionError is deep nesting.
        _invalid(f"the request body is not valid JSON: {_first_line(exc)}")
    if not isinstance(payload, dict):
        _invalid(f"the request body must be a JSON object, not {_json_type(payload)}")
    return payload


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or ["nested too deeply"])[0][:200]


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _is_int(value: object) -> bool:
    # bool is an int subclass; true is not a token id.
    return isinstance(value, int) and not isinstance(value, bool)


def _prompt(prompt: object) -> tuple[str, int, int]:
    """(text, characters, token ids) of a completions prompt."""
    if prompt is None:
        _invalid("prompt is missing: send a string, strings or token ids", "prompt")
    if isinstance(prompt, str):
        return prompt, len(prompt), 0
    if not isinstance(prompt, list) or not prompt:
        _invalid("prompt must be a string, or a non-empty array of strings or token ids", "prompt")
    if all(isinstance(p, str) for p in prompt):
        text = "\n".join(prompt)
        return text, len(text), 0
    if all(_is_int(p) for p in prompt):
        return "", 0, len(prompt)
    if all(isinstance(p, list) and all(_is_int(t) for t in p) for p in prompt):
        return "", 0, sum(len(p) for p in prompt)
    _invalid(
        "prompt must be a string, or an array of strings, of token ids, or of token-id arrays",
        "prompt",
    )


def _messages(messages: object) -> tuple[str, int]:
    """(text of the last user message, characters of all messages) of a chat request."""
    if messages is None:
        _invalid("messages is missing: send an array of {role, content} objects", "messages")
    if not isinstance(messages, list) or not messages:
        _invalid("messages must be a non-empty array of {role, content} objects", "messages")
    chars = 0
    last_user: str | None = None
    last = ""
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            _invalid(f"messages[{i}] must be an object with role and content", f"messages[{i}]")
        if not isinstance(message.get("role"), str):
            _invalid(f"messages[{i}].role must be a string", f"messages[{i}].role")
        last = _content_text(message.get("content"), i)
        chars += len(last)
        if message["role"] == "user":
            last_user = last
    return (last if last_user is None else last_user), chars


def _content_text(content: object, i: int) -> str:
    if content is None:
        return ""  # an assistant turn that only called tools
    if isinstance(content, str):
        return content
    param = f"messages[{i}].content"
    if not isinstance(content, list):
        _invalid(f"{param} must be a string, an array of parts or null", param)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            _invalid(f"{param}[{j}] must be an object with a type", f"{param}[{j}]")
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                _invalid(f"{param}[{j}].text must be a string", f"{param}[{j}].text")
            texts.append(part["text"])
    return "\n".join(texts)


def _max_tokens(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        _invalid(f"{name} must be a positive integer", name)
    return value
