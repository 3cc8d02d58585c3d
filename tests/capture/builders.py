"""Capture configurations and exchanges for the capture tests."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from specfleet.api.capture import CaptureConfig
from specfleet_runtime.capture import Exchange


def config_data(directory: Path | None = None, **changes: Any) -> dict[str, Any]:
    """A CaptureConfig as the operator writes it (camelCase), keeping everything."""
    return {
        "source": {
            "kind": "RoutingPolicy",
            "namespace": "team-a",
            "name": "assistant",
            "component": "router",
        },
        "sampleRate": 1.0,
        "keep": "RequestsAndResponses",
        "store": {"directory": str(directory or "/nonexistent")},
        **changes,
    }


def config(directory: Path | None = None, **changes: Any) -> CaptureConfig:
    return CaptureConfig.model_validate(config_data(directory, **changes))


def chat_exchange(request_id: str = "req-1", **changes: Any) -> Exchange:
    """A non-streamed chat exchange."""
    body = {"model": "assistant", "messages": [{"role": "user", "content": "Hello there"}]}
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
    fields: dict[str, Any] = {
        "request_id": request_id,
        "time": 1_796_620_000.25,
        "path": "/v1/chat/completions",
        "body": json.dumps(body).encode(),
        "status": 200,
        "chunks": [json.dumps(answer).encode()],
        "first_byte_seconds": 0.5,
        "total_seconds": 0.75,
    }
    fields.update(changes)
    return Exchange(**fields)


def records(directory: Path) -> dict[str, dict[str, Any]]:
    """The records in a directory store's batches, by request ID."""
    found = {}
    for path in sorted(directory.rglob("*.jsonl.gz")):
        for line in gzip.decompress(path.read_bytes()).splitlines():
            record = json.loads(line)
            found[record["id"]] = record
    return found
