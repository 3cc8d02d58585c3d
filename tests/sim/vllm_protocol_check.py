"""Judges OpenAI requests with vLLM's own request classes. Runs inside the vLLM virtualenv
(scripts/setup-vllm), never in specfleet's: tests/sim/test_protocol_corpus.py feeds it JSON on
stdin, `[{"id": ..., "endpoint": "chat" | "completions", "body": ...}]`, and reads one verdict
per case on stdout.

A request passes where vLLM's server would take it: its request model
(`vllm.entrypoints.openai.*.protocol`) validates the body, the `SamplingParams` built from it
verify, and the engine's check of the logprobs asked for passes against the default
`--max-logprobs` (20), run by vLLM's own method on a stand-in model configuration.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import vllm
from pydantic import ValidationError
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.exceptions import VLLMValidationError

CHAT_DEFAULT_MAX_TOKENS = 16
"""What a chat request without max_tokens gets (vLLM: what fits in the context; any positive
number judges the same)."""


class ModelConfig:
    """What `SamplingParams._validate_logprobs` reads of the served model."""

    max_logprobs = 20
    """vLLM's --max-logprobs default."""

    def get_vocab_size(self) -> int:
        return 32000


def judge(endpoint: str, body: Any) -> dict[str, Any]:
    try:
        if endpoint == "chat":
            chat = ChatCompletionRequest.model_validate(body)
            wanted = chat.max_completion_tokens
            if wanted is None:
                wanted = chat.max_tokens
            params = chat.to_sampling_params(
                CHAT_DEFAULT_MAX_TOKENS if wanted is None else wanted, {}
            )
        else:
            completion = CompletionRequest.model_validate(body)
            params = completion.to_sampling_params(completion.max_tokens or 0, {})
        params._validate_logprobs(ModelConfig())
    except (ValidationError, VLLMValidationError, ValueError) as exc:
        return {"accepted": False, "error": f"{type(exc).__name__}: {exc}"[:600]}
    except Exception as exc:
        return {"accepted": None, "error": f"{type(exc).__name__}: {exc}"[:600]}
    return {"accepted": True, "error": None}


def main() -> None:
    results = [
        {"id": case["id"], **judge(case["endpoint"], case["body"])} for case in json.load(sys.stdin)
    ]
    json.dump({"vllm": vllm.__version__, "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
