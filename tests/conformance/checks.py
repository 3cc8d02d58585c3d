"""What an OpenAI client can rely on from a specfleet endpoint, checked with the official
`openai` SDK: each check takes a client and the model name to ask for and asserts what the
SDK gives back. The same checks run against the simulator, the gate and the router
(tests/conformance/test_openai_sdk.py) and against the real vLLM behind the gate
(e2e/test_vllm_conformance.py), so the simulator and vLLM answer to one standard.

Checks assume greedy decoding where they compare two answers (`temperature=0`), which the
simulator ignores (its text depends only on the prompt and the seed) and vLLM honours.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
from openai.types.chat import (
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
    ChatCompletionUserMessageParam,
)

USER: ChatCompletionUserMessageParam = {
    "role": "user",
    "content": "Tell me about speculative decoding.",
}
TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
CALL: Any = {"id": "call-1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}

Check = Callable[[openai.OpenAI, str], None]


def chat_whole(client: openai.OpenAI, model: str) -> None:
    response = client.chat.completions.create(
        model=model, messages=[USER], max_tokens=12, temperature=0
    )
    assert response.object == "chat.completion"
    (choice,) = response.choices
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("length", "stop")
    assert response.usage is not None
    assert response.usage.completion_tokens <= 12
    assert response.usage.total_tokens == (
        response.usage.prompt_tokens + response.usage.completion_tokens
    )


def completion_whole(client: openai.OpenAI, model: str) -> None:
    response = client.completions.create(
        model=model, prompt="The batch", max_tokens=8, temperature=0
    )
    assert response.object == "text_completion"
    (choice,) = response.choices
    assert choice.text
    assert response.usage is not None and response.usage.completion_tokens <= 8


def chat_stream_with_usage(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(
        model=model,
        messages=[USER],
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    *content, last = chunks
    assert last.choices == [] and last.usage is not None
    assert {c.id for c in chunks} == {chunks[0].id}
    text = "".join(c.choices[0].delta.content or "" for c in content if c.choices)
    reasons = [c.choices[0].finish_reason for c in content if c.choices]
    assert reasons[-1] in ("length", "stop") and set(reasons[:-1]) <= {None}
    assert last.usage.completion_tokens <= 10 and text


def completion_stream_with_usage(client: openai.OpenAI, model: str) -> None:
    stream = client.completions.create(
        model=model,
        prompt="The batch",
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert "".join(c.choices[0].text for c in chunks[:-1] if c.choices)


def chat_n_choices(client: openai.OpenAI, model: str) -> None:
    response = client.chat.completions.create(
        model=model, messages=[USER], max_tokens=6, n=3, temperature=1.0, seed=1
    )
    assert sorted(c.index for c in response.choices) == [0, 1, 2]
    assert all(c.message.content for c in response.choices)
    assert response.usage is not None and response.usage.completion_tokens <= 3 * 6


def chat_logprobs(client: openai.OpenAI, model: str) -> None:
    response = client.chat.completions.create(
        model=model, messages=[USER], max_tokens=5, logprobs=True, top_logprobs=2, temperature=0
    )
    logprobs = response.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    for entry in logprobs.content:
        assert isinstance(entry.token, str) and entry.logprob <= 0
        assert len(entry.top_logprobs) == 2
        assert all(top.logprob <= 0 for top in entry.top_logprobs)
    without = client.chat.completions.create(model=model, messages=[USER], max_tokens=3)
    assert without.choices[0].logprobs is None


def completion_logprobs(client: openai.OpenAI, model: str) -> None:
    response = client.completions.create(
        model=model, prompt="The batch", max_tokens=4, logprobs=2, temperature=0
    )
    logprobs = response.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs
    assert logprobs.top_logprobs is not None
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs)


def stop_string(client: openai.OpenAI, model: str) -> None:
    ask: Any = {"model": model, "messages": [USER], "max_tokens": 24, "temperature": 0}
    free = client.chat.completions.create(**ask)
    text = free.choices[0].message.content
    assert text and len(text) > 6
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    stopped = client.chat.completions.create(**ask, stop=[stop])
    (choice,) = stopped.choices
    assert choice.finish_reason == "stop"
    assert choice.message.content == text[: text.find(stop)]


def length_finish(client: openai.OpenAI, model: str) -> None:
    response = client.completions.create(
        model=model,
        prompt="The batch",
        max_tokens=3,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None and response.usage.completion_tokens == 3


def tool_turn_accepted(client: openai.OpenAI, model: str) -> None:
    # Every agent loop sends the assistant's tool call back with no content.
    messages: list[ChatCompletionMessageParam] = [
        USER,
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call-1", "content": "sunny, 21 C"},
    ]
    response = client.chat.completions.create(
        model=model,
        messages=messages,
        tools=[TOOL],
        max_tokens=5,
    )
    assert response.choices[0].message.role == "assistant"


def only_function_call(calls: object) -> ChatCompletionMessageFunctionToolCall:
    assert isinstance(calls, list) and len(calls) == 1, calls
    (call,) = calls
    assert isinstance(call, ChatCompletionMessageFunctionToolCall), call
    return call


def tool_choice_required(client: openai.OpenAI, model: str) -> None:
    response = client.chat.completions.create(
        model=model,
        messages=[USER],
        tools=[TOOL],
        tool_choice="required",
        max_tokens=200,
        temperature=0,
    )
    (choice,) = response.choices
    if choice.finish_reason == "length":
        # vLLM parses a required call only once its JSON is whole: a cut one gives none.
        assert (
            choice.message.tool_calls is None
            or only_function_call(choice.message.tool_calls).function.name == "weather"
        )
        return
    assert choice.finish_reason == "tool_calls"
    call = only_function_call(choice.message.tool_calls)
    assert call.function.name == "weather"
    assert "city" in json.loads(call.function.arguments)


def tool_choice_named(client: openai.OpenAI, model: str) -> None:
    response = client.chat.completions.create(
        model=model,
        messages=[USER],
        tools=[TOOL],
        tool_choice={"type": "function", "function": {"name": "weather"}},
        max_tokens=200,
        temperature=0,
    )
    (choice,) = response.choices
    call = only_function_call(choice.message.tool_calls)
    assert call.function.name == "weather"
    if choice.finish_reason != "length":
        assert choice.finish_reason == "stop"
        assert isinstance(json.loads(call.function.arguments), dict)


def response_format_json(client: openai.OpenAI, model: str) -> None:
    schema: Any = {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
        "required": ["answer", "confidence"],
    }
    response = client.chat.completions.create(
        model=model,
        messages=[USER],
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        max_tokens=200,
        temperature=0,
    )
    (choice,) = response.choices
    if choice.finish_reason != "length":
        document = json.loads(choice.message.content or "")
        assert set(document) == {"answer", "confidence"}


def bad_request(client: openai.OpenAI, model: str) -> None:
    for fields in ({"temperature": "hot"}, {"n": 0}, {"top_logprobs": 2}, {"stop": [""]}):
        try:
            client.chat.completions.create(
                model=model,
                messages=[USER],
                max_tokens=2,
                **fields,
            )
        except openai.BadRequestError as exc:
            assert exc.status_code == 400
            assert isinstance(exc.body, dict) and exc.body.get("message"), exc.body
        else:
            raise AssertionError(f"{fields} was accepted")


def unknown_model(client: openai.OpenAI, model: str) -> None:
    try:
        client.chat.completions.create(model=f"{model}-nonexistent", messages=[USER], max_tokens=2)
    except openai.NotFoundError as exc:
        assert exc.status_code == 404
    else:
        raise AssertionError("an unknown model was served")


def model_listed(client: openai.OpenAI, model: str) -> None:
    assert model in [card.id for card in client.models.list()]


PORTABLE: dict[str, Check] = {
    "chat": chat_whole,
    "completion": completion_whole,
    "chat stream with usage": chat_stream_with_usage,
    "completion stream with usage": completion_stream_with_usage,
    "n choices": chat_n_choices,
    "chat logprobs": chat_logprobs,
    "completion logprobs": completion_logprobs,
    "stop string": stop_string,
    "length finish": length_finish,
    "tool turn accepted": tool_turn_accepted,
    "tool_choice required": tool_choice_required,
    "tool_choice named": tool_choice_named,
    "response_format json_schema": response_format_json,
    "bad request": bad_request,
    "unknown model": unknown_model,
    "model listed": model_listed,
}
"""Checks every OpenAI-compatible endpoint specfleet serves passes, vLLM's own included."""
