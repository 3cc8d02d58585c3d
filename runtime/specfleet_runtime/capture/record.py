"""One captured exchange, and the record it becomes, pure.

``Exchange`` is what the request path hands over, raw and uncopied: the body bytes it already
read, the chunks of the answer as they passed, the credential headers, timings and (for the
router) the route decision. ``Builder.line`` turns it into one line of a batch, on the writer
thread: the body parsed; the caller's ``user`` and the credentials replaced by keyed hashes
(HMAC-SHA256, 32 hex digits), so records of one caller can be grouped without naming it; a
stream reassembled (``specfleet_runtime.capture.stream``); every string of request and response
redacted (``specfleet_runtime.capture.redaction``); the response body dropped when the
configuration keeps requests only; the token counts from the response's ``usage``; then the size
cap: the longest strings of the bodies are cut until the record fits (``truncated: true``), and
a record that still does not fit is not kept (``None``).

The record (one JSON object per line; ``schema`` is ``specfleet.api.capture.RECORD_SCHEMA``)::

    {"schema", "id", "time" (ISO 8601, UTC),
     "source": {"kind", "namespace", "name", "component", "pod"},
     "request": {"path", "body"},
     "response": {"status", "streamed", "cancelled", "body"},
                                                     # body absent with keep: Requests
     "route": {"kind", "tier", "model", "complexity", "expectedTokens", "categories",
               "fallbackFrom",
               "classifier": {"kind", "contentHash"} | null} | null,
                                                     # the router's decision; null at the gate
     "tokens": {"prompt", "completion", "total"} | null,
     "latency": {"firstByteSeconds", "totalSeconds"},
     "caller": hash | null, "credential": hash | null,
     "redactions": {detector: count}, "truncated": bool}

``response.status`` is the status the client was answered with, or 499 when the client went
away before any answer started (nginx's "client closed request"; no answer with it was sent).
``response.cancelled`` is true when the client went away before the answer's end: the body is
then what had passed (none with 499), a stream's reassembled without its end. Records written
before ``cancelled`` was added lack it; read its absence as false.

Called by ``specfleet_runtime.capture.writer``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from specfleet.api.capture import RECORD_SCHEMA, CaptureConfig
from specfleet_runtime.capture import redaction, stream

HASH_HEX_DIGITS = 32
"""The length a keyed hash is kept at (128 bits: no collisions among callers in practice)."""
MIN_CUT_CHARS = 64
"""A string is never cut shorter than this; a record that fits only so is dropped."""
_MAX_CUTS = 64


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where the router sent a request and why."""

    kind: str
    """``tier``, ``override`` or ``direct``."""
    model: str
    """The InferenceModel that answered (the fallback's, when the fallback was taken)."""
    tier: str | None = None
    complexity: float | None = None
    expected_tokens: int | None = None
    categories: tuple[str, ...] = ()
    fallback_from: str | None = None
    """The InferenceModel that failed first, when the fallback was taken."""
    classifier: str | None = None
    """What was in force to pick a routed request's tier: ``heuristic`` or ``learned`` (an
    override's route was picked by the override); None for a direct request."""
    classifier_hash: str | None = None
    """The learned classifier's artifact's content hash; None for the heuristic."""


@dataclass(slots=True)
class Exchange:
    """One request and its answer as the request path saw them (references, not copies)."""

    request_id: str
    time: float
    """When the request arrived, in seconds since the epoch."""
    path: str
    body: bytes
    """The request body as read (decoded from its Content-Encoding)."""
    credentials: tuple[str, ...] = ()
    """The values of the credential headers (Authorization, api-key) the request carried."""
    status: int = 0
    chunks: list[bytes] = field(default_factory=list)
    """The response body as it passed, chunk by chunk."""
    streamed: bool = False
    """Whether the response was a Server-Sent Events stream."""
    cancelled: bool = False
    """Whether the client went away before the answer's end."""
    first_byte_seconds: float | None = None
    total_seconds: float | None = None
    route: RouteDecision | None = None


class Builder:
    """Turns exchanges into record lines for one configuration, pod and hash key."""

    def __init__(self, config: CaptureConfig, pod: str, hash_key: bytes) -> None:
        self.config = config
        self._source = {**config.source.model_dump(), "pod": pod}
        self._redactor = redaction.Redactor(config.patterns)
        self._hash_key = hash_key

    def keyed_hash(self, value: str) -> str:
        """The keyed hash that stands in for a credential or a caller's identity."""
        digest = hmac.new(self._hash_key, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return digest.hexdigest()[:HASH_HEX_DIGITS]

    def record(self, exchange: Exchange) -> dict[str, Any]:
        """The record of ``exchange``, before the size cap."""
        counts: Counter[str] = Counter()
        body = _parse(exchange.body)
        caller = None
        if isinstance(body, dict) and "user" in body:
            body = dict(body)
            user = body.pop("user")
            caller = self.keyed_hash(user if isinstance(user, str) else json.dumps(user))
        response: dict[str, Any] = {
            "status": exchange.status,
            "streamed": exchange.streamed,
            "cancelled": exchange.cancelled,
        }
        answer: Any = (
            stream.reassemble(exchange.chunks)
            if exchange.streamed
            else _parse(b"".join(exchange.chunks))
        )
        if self.config.keep == "RequestsAndResponses":
            response["body"] = self._redactor.redact(answer, counts)
        return {
            "schema": RECORD_SCHEMA,
            "id": exchange.request_id,
            "time": _iso(exchange.time),
            "source": self._source,
            "request": {"path": exchange.path, "body": self._redactor.redact(body, counts)},
            "response": response,
            "route": _route(exchange.route),
            "tokens": _tokens(answer),
            "latency": {
                "firstByteSeconds": exchange.first_byte_seconds,
                "totalSeconds": exchange.total_seconds,
            },
            "caller": caller,
            "credential": self._credential(exchange.credentials),
            "redactions": dict(sorted(counts.items())),
            "truncated": False,
        }

    def line(self, exchange: Exchange) -> bytes | None:
        """The record as one line of a batch, cut to ``max_record_bytes``; None when it does
        not fit even cut."""
        return fit(self.record(exchange), self.config.max_record_bytes)

    def _credential(self, credentials: tuple[str, ...]) -> str | None:
        for value in credentials:
            scheme, _, token = value.strip().partition(" ")
            secret = token.strip() if scheme.lower() == "bearer" and token else value.strip()
            if secret:
                return self.keyed_hash(secret)
        return None


def _iso(seconds: float) -> str:
    """A time as ISO 8601 in UTC, to the millisecond: ``2026-12-07T06:00:00.250Z``."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _parse(body: bytes) -> Any:
    """A body as JSON if it is JSON, else as text (so it is still redacted); None if empty."""
    if not body:
        return None
    text = body.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _route(route: RouteDecision | None) -> dict[str, Any] | None:
    if route is None:
        return None
    return {
        "kind": route.kind,
        "tier": route.tier,
        "model": route.model,
        "complexity": route.complexity,
        "expectedTokens": route.expected_tokens,
        "categories": list(route.categories),
        "fallbackFrom": route.fallback_from,
        "classifier": (
            None
            if route.classifier is None
            else {"kind": route.classifier, "contentHash": route.classifier_hash}
        ),
    }


def _tokens(answer: Any) -> dict[str, int] | None:
    usage = answer.get("usage") if isinstance(answer, dict) else None
    if not isinstance(usage, dict):
        return None
    counts = {
        name: usage[key]
        for name, key in (
            ("prompt", "prompt_tokens"),
            ("completion", "completion_tokens"),
            ("total", "total_tokens"),
        )
        if isinstance(usage.get(key), int)
    }
    return counts or None


def encode(record: dict[str, Any]) -> bytes:
    """One line of a batch."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def fit(record: dict[str, Any], max_bytes: int) -> bytes | None:
    """``record`` encoded, its longest body strings cut until it takes at most ``max_bytes``
    (then marked ``truncated``); None if it cannot be made to fit."""
    line = encode(record)
    cuts = 0
    while len(line) > max_bytes:
        if cuts == _MAX_CUTS:
            return None
        longest = _longest(record["request"], record["response"])
        if longest is None or len(longest[0][longest[1]]) <= MIN_CUT_CHARS:
            return None
        container, key = longest
        text: str = container[key]
        # Each character takes at least one byte, so cutting the excess in characters (and
        # room for the flag) frees at least as many bytes.
        excess = len(line) - max_bytes + len(',"truncated":true')
        container[key] = text[: max(MIN_CUT_CHARS, len(text) - excess)]
        record["truncated"] = True
        line = encode(record)
        cuts += 1
    return line


def _longest(*roots: Any) -> tuple[Any, Any] | None:
    """The container and key (or index) of the longest string under ``roots``."""
    best: tuple[Any, Any] | None = None
    best_length = -1
    stack: list[Any] = list(roots)
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(value, str):
                if len(value) > best_length:
                    best, best_length = (node, key), len(value)
            elif isinstance(value, (dict, list)):
                stack.append(value)
    return best
