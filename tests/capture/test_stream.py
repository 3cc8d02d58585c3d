"""SSE reassembly: chat deltas, tool calls, completions text, usage, cut streams."""

from __future__ import annotations

import json
from typing import Any

from specfleet_runtime.capture import stream


def sse(*events: Any, done: bool = True) -> bytes:
    text = "".join(f"data: {json.dumps(event)}\n\n" for event in events)
    return (text + ("data: [DONE]\n\n" if done else "")).encode()


def split_everywhere(body: bytes, size: int = 7) -> list[bytes]:
    """The body in small pieces, cut inside events, lines and multi-byte characters."""
    return [body[i : i + size] for i in range(0, len(body), size)]


def chat_chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> dict[str, Any]:
    return {
        "id": "chatcmpl-9",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "llama-3b",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }


def test_a_chat_stream_becomes_its_message_with_usage() -> None:
    body = sse(
        chat_chunk({"role": "assistant", "content": ""}),
        chat_chunk({"content": "Paris is "}),
        chat_chunk({"content": "the capital — of France."}),
        chat_chunk({}, finish="stop"),
        {
            "id": "chatcmpl-9",
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
        },
    )
    response = stream.reassemble(split_everywhere(body))
    assert response["object"] == "chat.completion"
    assert response["id"] == "chatcmpl-9"
    assert response["model"] == "llama-3b"
    assert response["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris is the capital — of France."},
            "finish_reason": "stop",
        }
    ]
    assert response["usage"]["completion_tokens"] == 7
    assert response["done"] is True


def test_tool_call_fragments_are_joined_by_index() -> None:
    body = sse(
        chat_chunk({"role": "assistant"}),
        chat_chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chat_chunk(
            {
                "tool_calls": [
                    {"index": 1, "id": "call_b", "function": {"name": "now", "arguments": "{}"}}
                ]
            }
        ),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
        chat_chunk({}, finish="tool_calls"),
    )
    (choice,) = stream.reassemble(split_everywhere(body, 5))["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert [call["id"] for call in calls] == ["call_a", "call_b"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    assert calls[0]["function"]["name"] == "get_weather"
    assert calls[1]["function"] == {"name": "now", "arguments": "{}"}


def test_a_completions_stream_becomes_text_per_choice() -> None:
    def chunk(index: int, text: str, finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "cmpl-3",
            "object": "text_completion",
            "model": "llama-8b",
            "choices": [{"index": index, "text": text, "finish_reason": finish}],
        }

    body = sse(
        chunk(0, "Once"),
        chunk(1, "In a"),
        chunk(0, " upon"),
        chunk(1, " galaxy", "length"),
        chunk(0, " a time", "stop"),
    )
    response = stream.reassemble(split_everywhere(body, 3))
    assert response["object"] == "text_completion"
    assert response["choices"] == [
        {"index": 0, "text": "Once upon a time", "finish_reason": "stop"},
        {"index": 1, "text": "In a galaxy", "finish_reason": "length"},
    ]
    assert "usage" not in response


def test_a_cut_stream_keeps_what_came_and_says_it_did_not_end() -> None:
    body = sse(chat_chunk({"content": "Half an"}), done=False) + b'data: {"id": "chat'
    response = stream.reassemble([body])
    assert response["choices"][0]["message"]["content"] == "Half an"
    assert response["done"] is False
    assert response["unreadable_events"] == 1


def test_an_error_event_is_kept() -> None:
    body = sse({"error": {"message": "engine died", "code": 500}})
    assert stream.reassemble([body])["error"] == {"message": "engine died", "code": 500}
