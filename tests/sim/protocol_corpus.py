"""Requests, valid and not, with the verdict vLLM gives each: `True` accepted, `False` 400.

tests/sim/test_protocol_corpus.py requires the simulator (`specfleet_runtime.sim.protocol`) to
give every verdict here, and, where the vLLM virtualenv exists, vLLM's own request classes
(tests/sim/vllm_protocol_check.py) to give the same one.
"""

from __future__ import annotations

from typing import Any

USER = {"role": "user", "content": "What is the weather in Paris?"}
CALL = {"id": "call-1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages or [USER]), **fields}


def completion(prompt: Any = "Once upon", **fields: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": prompt, **fields}


CHAT: dict[str, tuple[dict[str, Any], bool]] = {
    "plain": (chat(), True),
    "system and user": (chat({"role": "system", "content": "Be brief."}, USER), True),
    "developer role": (chat({"role": "developer", "content": "Be brief."}, USER), True),
    "custom role": (chat({"role": "narrator", "content": "Once"}, USER), True),
    "assistant tool call without content": (
        chat(
            USER,
            {"role": "assistant", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call-1", "content": "sunny"},
        ),
        True,
    ),
    "assistant tool call with null content": (
        chat(
            USER,
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call-1", "content": "sunny"},
        ),
        True,
    ),
    "tool call arguments as an object": (
        chat(
            USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {**CALL, "function": {"name": "weather", "arguments": {"city": "Paris"}}}
                ],
            },
        ),
        False,
    ),
    "tool call without id": (
        chat(
            USER,
            {
                "role": "assistant",
                "tool_calls": [{"type": "function", "function": CALL["function"]}],
            },
        ),
        False,
    ),
    "user content null": (chat({"role": "user", "content": None}), False),
    "user content number": (chat({"role": "user", "content": 5}), False),
    "role number": (chat({"role": 5, "content": "x"}), False),
    "no role": (chat({"content": "x"}), False),
    "message not an object": (chat("hello"), False),  # type: ignore[arg-type]
    "text parts": (chat({"role": "user", "content": [{"type": "text", "text": "hi"}]}), True),
    "image part": (chat({"role": "user", "content": [{"type": "text", "text": "x"}, IMAGE]}), True),
    "audio part": (
        chat(
            {
                "role": "user",
                "content": [
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
                ],
            }
        ),
        True,
    ),
    "string part": (chat({"role": "user", "content": ["hi"]}), True),
    # vLLM's model validates an OpenAI role's parts lazily (its renderer reads them later), a
    # custom role's at once; a tool message is an OpenAI one only with its tool_call_id.
    "user part a number": (chat({"role": "user", "content": [5]}), True),
    "custom role part a number": (chat({"role": "narrator", "content": [5]}), False),
    "tool part a number": (chat({"role": "tool", "tool_call_id": "a", "content": [5]}), True),
    "tool part a number without its id": (chat({"role": "tool", "content": [5]}), False),
    "no messages": ({"model": "m"}, False),
    "messages not a list": ({"model": "m", "messages": "hi"}, False),
    "unknown field": (chat(frobnicate=True), True),
    "model null": ({"messages": [USER], "model": None}, True),
    "temperature hot": (chat(temperature="hot"), False),
    "temperature as a numeric string": (chat(temperature="0.5"), True),
    "temperature 2": (chat(temperature=2), True),
    "temperature 2.5": (chat(temperature=2.5), False),
    "temperature negative": (chat(temperature=-0.1), False),
    "top_p 0": (chat(top_p=0), False),
    "top_p 1": (chat(top_p=1), True),
    "top_k -1": (chat(top_k=-1), True),
    "top_k -2": (chat(top_k=-2), False),
    "min_p 1.5": (chat(min_p=1.5), False),
    "presence_penalty 3": (chat(presence_penalty=3), False),
    "frequency_penalty -2": (chat(frequency_penalty=-2), True),
    "repetition_penalty 0": (chat(repetition_penalty=0), False),
    "n 3": (chat(n=3), True),
    "n 0": (chat(n=0), False),
    "n null": (chat(n=None), True),
    "n a string": (chat(n="three"), False),
    "n 2 greedy": (chat(n=2, temperature=0), False),
    "n 2.5": (chat(n=2.5), False),
    "logprobs": (chat(logprobs=True), True),
    "top_logprobs 5": (chat(logprobs=True, top_logprobs=5), True),
    "top_logprobs 20": (chat(logprobs=True, top_logprobs=20), True),
    "top_logprobs 21": (chat(logprobs=True, top_logprobs=21), False),
    "top_logprobs -1": (chat(logprobs=True, top_logprobs=-1), False),
    "top_logprobs without logprobs": (chat(top_logprobs=2), False),
    "top_logprobs 0 without logprobs": (chat(top_logprobs=0), True),
    "top_logprobs null": (chat(top_logprobs=None), True),
    "top_logprobs a string": (chat(logprobs=True, top_logprobs="2"), False),
    "top_logprobs -2": (chat(logprobs=True, top_logprobs=-2), False),
    "logprobs a number": (chat(logprobs=5), False),
    "stop string": (chat(stop="\n"), True),
    "stop list": (chat(stop=["a", "b"]), True),
    "stop five strings": (chat(stop=["a", "b", "c", "d", "e"]), False),
    "stop empty string": (chat(stop=""), False),
    "stop null": (chat(stop=None), True),
    "stop a number": (chat(stop=5), False),
    "stop_token_ids": (chat(stop_token_ids=[1, 2]), True),
    "max_tokens": (chat(max_tokens=5), True),
    "max_tokens 0": (chat(max_tokens=0), False),
    "max_tokens -1": (chat(max_tokens=-1), False),
    "max_tokens a string": (chat(max_tokens="ten"), False),
    "max_completion_tokens": (chat(max_completion_tokens=5), True),
    "max_completion_tokens over a bad max_tokens": (
        chat(max_completion_tokens=5, max_tokens=0),
        True,
    ),
    "max_completion_tokens 0": (chat(max_completion_tokens=0, max_tokens=5), False),
    "min_tokens over max_tokens": (chat(min_tokens=10, max_tokens=5), False),
    "seed": (chat(seed=7), True),
    "seed too big": (chat(seed=2**64), False),
    "stream": (chat(stream=True), True),
    "stream a string": (chat(stream="maybe"), False),
    "stream_options with stream": (chat(stream=True, stream_options={"include_usage": True}), True),
    "stream_options without stream": (chat(stream_options={"include_usage": True}), False),
    "stream_options include_usage a string": (
        chat(stream=True, stream_options={"include_usage": "often"}),
        False,
    ),
    "response_format text": (chat(response_format={"type": "text"}), True),
    "response_format json_object": (chat(response_format={"type": "json_object"}), True),
    "response_format json_schema": (
        chat(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "w", "schema": {"type": "object"}},
            }
        ),
        True,
    ),
    "response_format json_schema without a schema": (
        chat(response_format={"type": "json_schema"}),
        False,
    ),
    "response_format json_schema without a name": (
        chat(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
        False,
    ),
    "response_format yaml": (chat(response_format={"type": "yaml"}), False),
    "tools": (chat(tools=[TOOL]), True),
    "tools empty": (chat(tools=[]), False),
    "tool without a function": (chat(tools=[{"type": "function"}]), False),
    "tool of another type": (chat(tools=[{**TOOL, "type": "retrieval"}]), False),
    "tool_choice auto": (chat(tools=[TOOL], tool_choice="auto"), True),
    "tool_choice none": (chat(tools=[TOOL], tool_choice="none"), True),
    "tool_choice required": (chat(tools=[TOOL], tool_choice="required"), True),
    "tool_choice named": (
        chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "weather"}}),
        True,
    ),
    "tool_choice named unknown": (
        chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "other"}}),
        False,
    ),
    "tool_choice without tools": (chat(tool_choice="required"), False),
    "tool_choice none without tools": (chat(tool_choice="none"), True),
    "tool_choice sometimes": (chat(tools=[TOOL], tool_choice="sometimes"), False),
    "parallel_tool_calls": (chat(tools=[TOOL], parallel_tool_calls=False), True),
    "logit_bias": (chat(logit_bias={"5": 1.0}), True),
    "logit_bias key not a token": (chat(logit_bias={"five": 1.0}), False),
    "user": (chat(user="u-1"), True),
    "reasoning_effort": (chat(reasoning_effort="low"), True),
    "reasoning_effort extreme": (chat(reasoning_effort="extreme"), False),
    # vLLM looks at the raw body: add_generation_prompt defaults to true but is not "set".
    "continue_final_message alone": (chat(continue_final_message=True), True),
    "continue_final_message and add_generation_prompt": (
        chat(continue_final_message=True, add_generation_prompt=True),
        False,
    ),
    "echo null": (chat(echo=None), False),
    "cache_salt": (chat(cache_salt="salt-1"), True),
    "cache_salt with a slash": (chat(cache_salt="a/b"), False),
    "ignore_eos": (chat(ignore_eos=True), True),
    "body a list": ([USER], False),  # type: ignore[dict-item]
}

COMPLETIONS: dict[str, tuple[Any, bool]] = {
    "plain": (completion(), True),
    "token ids": (completion([1, 2, 3]), True),
    "negative token id": (completion([1, -2]), False),
    "batch of prompts": (completion(["a", "b"]), True),
    "batch of token lists": (completion([[1, 2], [3]]), True),
    "prompt empty": (completion(""), False),
    "prompt missing": ({"model": "m"}, False),
    "prompt a number": (completion(5), False),
    "unknown field": (completion(frobnicate=1), True),
    "max_tokens null": (completion(max_tokens=None), True),
    "max_tokens 0": (completion(max_tokens=0), False),
    "max_tokens 0 with echo": (completion(max_tokens=0, echo=True), True),
    "n 2": (completion(n=2), True),
    "n null": (completion(n=None), False),
    "n 0": (completion(n=0), False),
    "logprobs 0": (completion(logprobs=0), True),
    "logprobs 5": (completion(logprobs=5), True),
    "logprobs 21": (completion(logprobs=21), False),
    "logprobs -1": (completion(logprobs=-1), False),
    "logprobs true": (completion(logprobs=True), True),
    "logprobs a string": (completion(logprobs="5"), False),
    "echo": (completion(echo=True), True),
    "suffix": (completion(suffix="end"), True),
    "stop": (completion(stop=["\n\n"]), True),
    "stop five strings": (completion(stop=list("abcde")), False),
    "temperature hot": (completion(temperature="hot"), False),
    "stream_options without stream": (completion(stream_options={"include_usage": True}), False),
    "stream with usage": (completion(stream=True, stream_options={"include_usage": True}), True),
    "response_format json_object": (completion(response_format={"type": "json_object"}), True),
    "response_format json_schema without a schema": (
        completion(response_format={"type": "json_schema"}),
        False,
    ),
    "seed": (completion(seed=-1), True),
    "best_of": (completion(best_of=2), True),
    "body a string": ("hello", False),
}
