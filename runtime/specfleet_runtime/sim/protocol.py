"""What the simulator accepts: vLLM's OpenAI request models, mirrored.

vLLM (the release pinned in pyproject's `vllm` extra) validates a request in three places, and a
client sees a 400 from any of them: the pydantic request model (field types in pydantic's lax
mode, unknown fields allowed, and the model's own `mode="before"` checks on the raw body), the
`SamplingParams` built from it, and the engine's check of the logprobs asked for against
`--max-logprobs` (default 20). This module mirrors all three for `/v1/chat/completions` and
`/v1/completions`, field by field and check by check, so the simulator refuses exactly what
vLLM refuses; tests/sim/test_protocol_corpus.py feeds one corpus of requests to this module and
to vLLM's own classes and requires the same verdict for each.

The simulator image does not ship vLLM, so nothing here imports it. Pure: no I/O. Called by
`specfleet_runtime.sim.server`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_STOP_STRINGS = 4
"""vLLM's VLLM_MAX_STOP_STRINGS default."""
MAX_N = 16384
"""vLLM's VLLM_MAX_N_SEQUENCES default."""
MAX_COMPLETION_PROMPTS = 1024
"""vLLM's VLLM_MAX_COMPLETION_PROMPTS default."""
MAX_LOGPROBS = 20
"""vLLM's `--max-logprobs` default: more top logprobs than this are refused."""
SAMPLING_EPS = 1e-5
"""Below this temperature vLLM samples greedily (and then allows only n=1)."""
DEFAULT_COMPLETION_MAX_TOKENS = 16
"""CompletionRequest's default `max_tokens`."""


class RequestError(Exception):
    """A request vLLM answers with 400; the message says what is wrong. Not a ValueError, so
    pydantic passes it through from a validator as it is."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


# ---------------------------------------------------------------------------------------------
# Shapes. `_Open` models allow unknown fields (vLLM's OpenAIBaseModel); `_Typed` ones ignore
# them (the TypedDicts vLLM validates messages against).


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Typed(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _FunctionCallParam(_Typed):
    name: str
    arguments: str


class _FunctionToolCallParam(_Typed):
    id: str
    type: Literal["function"]
    function: _FunctionCallParam


class _CustomCallParam(_Typed):
    name: str
    input: str


class _CustomToolCallParam(_Typed):
    id: str
    type: Literal["custom"]
    custom: _CustomCallParam


ToolCallParam = _FunctionToolCallParam | _CustomToolCallParam

ContentPart = str | dict[str, Any]
"""vLLM's content-part union ends in TypedDicts whose keys are all optional, so any JSON object
passes the request model (the prompt renderer reads it later)."""


class _FunctionDefinitionParam(_Typed):
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    strict: bool | None = None


class _FunctionToolParam(_Typed):
    type: Literal["function"]
    function: _FunctionDefinitionParam


class CustomMessage(_Typed):
    """vLLM's CustomChatCompletionMessageParam: any role; everything else optional."""

    role: str
    content: str | list[ContentPart] = ""
    name: str = ""
    tool_call_id: str | None = None
    tool_calls: list[ToolCallParam] | None = None
    reasoning: str | None = None
    tools: list[_FunctionToolParam] | None = None
    task: str | None = None


class _Audio(_Typed):
    id: str


class AssistantMessage(_Typed):
    """The OpenAI assistant message, whose content may be null (a turn of tool calls)."""

    role: Literal["assistant"]
    content: str | list[Any] | None = None
    """Parts unchecked, as for OpenAIMessage; tool calls are checked."""
    name: str = ""
    refusal: str | None = None
    audio: _Audio | None = None
    function_call: _FunctionCallParam | None = None
    tool_calls: list[_FunctionToolCallParam | _CustomToolCallParam] = Field(default_factory=list)


class OpenAIMessage(_Typed):
    """The OpenAI system, developer and user messages: their content parts are an iterable
    that vLLM's request model does not look into (its prompt renderer does, later)."""

    role: Literal["system", "developer", "user"]
    content: str | list[Any]
    name: str = ""


class ToolMessage(_Typed):
    role: Literal["tool"]
    content: str | list[Any]
    tool_call_id: str


class FunctionMessage(_Typed):
    role: Literal["function"]
    content: str | None
    name: str


Message = CustomMessage | OpenAIMessage | ToolMessage | AssistantMessage | FunctionMessage


class FunctionDefinition(_Open):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    defer_loading: bool | None = None


class Tool(_Open):
    type: Literal["function"] = "function"
    function: FunctionDefinition
    defer_loading: bool | None = None


class NamedFunction(_Open):
    name: str


class NamedToolChoice(_Open):
    function: NamedFunction
    type: Literal["function"] = "function"


class JsonSchemaFormat(_Open):
    name: str
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuralTagFormat(_Open):
    type: Literal["structural_tag"]
    format: Any


class StreamOptions(_Open):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


Stop = str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None
TopLogprobs = Annotated[int, BeforeValidator(lambda v: 0 if v is None else v)]
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


def _thinking_budget(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool | float) or not isinstance(value, int) or value < -1:
        raise ValueError("`thinking_token_budget` must be a non-negative integer or -1")
    return None if value == -1 else value


class _Sampling(_Open):
    """The fields the chat and completion requests share, with vLLM's types and defaults."""

    model: str | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = None
    response_format: ResponseFormat | StructuralTagFormat | None = None
    seed: Int64 | None = None
    stop: Stop = []
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    use_beam_search: bool = False
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    watermarking: bool | None = None
    length_penalty: float = 1.0
    stop_token_ids: list[int] | None = []
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    truncate_prompt_tokens: Annotated[int, Field(ge=-1, le=INT64_MAX)] | None = None
    truncation_side: Literal["left", "right"] | None = None
    prompt_logprobs: int | None = None
    logprob_token_ids: list[int] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] = Field(default_factory=list)
    structured_outputs: dict[str, Any] | None = None
    priority: Int64 = 0
    request_id: str = ""
    session_id: str | None = None
    return_tokens_as_token_ids: bool | None = None
    return_token_ids: bool | None = None
    routed_experts_prompt_start: Annotated[int, Field(ge=0)] = 0
    return_token_offsets: bool | None = False
    mm_payload: Literal["tensors", "none"] = "tensors"
    return_mm_kwargs: bool | None = None
    cache_salt: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    kv_transfer_params: dict[str, Any] | None = None
    ec_transfer_params: dict[str, Any] | None = None
    vllm_xargs: dict[str, str | int | float | list[str | int | float]] | None = None
    repetition_detection: dict[str, Any] | None = None
    thinking_token_budget: Annotated[int | None, BeforeValidator(_thinking_budget)] = None
    stream_interval: Annotated[int, Field(ge=1)] | None = None

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return self.include_usage and bool(
            self.stream_options and self.stream_options.continuous_usage_stats
        )

    @property
    def json_schema(self) -> dict[str, Any] | None:
        """The JSON schema the output must follow, {} for any JSON object, None for text."""
        rf = self.response_format
        if isinstance(rf, ResponseFormat) and rf.type == "json_object":
            return {}
        if isinstance(rf, ResponseFormat) and rf.type == "json_schema" and rf.json_schema:
            return rf.json_schema.json_schema or {}
        return None


class ChatRequest(_Sampling):
    """vLLM's ChatCompletionRequest."""

    messages: list[Message]
    logprobs: bool | None = False
    top_logprobs: TopLogprobs = 0
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = 1
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = "none"
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = (
        None
    )
    include_reasoning: bool = True
    parallel_tool_calls: bool | None = True
    echo: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    documents: list[dict[str, str]] | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    media_io_kwargs: dict[str, dict[str, Any]] | None = None
    mm_processor_kwargs: dict[str, Any] | None = None
    return_prompt_text: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _checks(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        _common_checks(data)
        _check_logprob_ints(data, ("prompt_logprobs", "top_logprobs"))
        if data.get("logprob_token_ids") and not data.get("logprobs"):
            raise RequestError("when using `logprob_token_ids`, `logprobs` must be set to true.")
        top = data.get("top_logprobs")
        if top is not None:
            if top < 0 and top != -1:
                raise RequestError("`top_logprobs` must be a positive value or -1.")
            if (top == -1 or top > 0) and not data.get("logprobs"):
                raise RequestError("when using `top_logprobs`, `logprobs` must be set to true.")
        structured = data.get("structured_outputs")
        choice = data.get("tool_choice", "none")
        if (
            isinstance(structured, dict)
            and _constraint_count(structured)
            and choice
            not in (
                "none",
                "auto",
                "required",
            )
        ):
            raise RequestError("You can only either use structured outputs or tools.")
        _check_tool_usage(data)
        if data.get("continue_final_message") and data.get("add_generation_prompt"):
            raise RequestError(
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
            )
        return data

    @property
    def max_output_tokens(self) -> int | None:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    @property
    def choices(self) -> int:
        return 1 if self.n is None else self.n

    @property
    def forced_tool(self) -> Tool | None:
        """The tool a `required` or named tool_choice makes the model call, else None."""
        if not self.tools:
            return None
        if self.tool_choice == "required":
            return self.tools[0]
        if isinstance(self.tool_choice, NamedToolChoice):
            name = self.tool_choice.function.name
            return next(t for t in self.tools if t.function.name == name)
        return None


class CompletionRequest(_Sampling):
    """vLLM's CompletionRequest."""

    prompt: (
        list[Annotated[int, Field(ge=0)]]
        | list[list[Annotated[int, Field(ge=0)]]]
        | str
        | (list[str])
        | None
    ) = None
    echo: bool | None = False
    logprobs: int | None = None
    max_tokens: int | None = DEFAULT_COMPLETION_MAX_TOKENS
    n: int = 1
    suffix: str | None = None
    prompt_embeds: bytes | list[bytes] | None = None
    add_special_tokens: bool = True

    @model_validator(mode="before")
    @classmethod
    def _checks(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if data.get("max_tokens") is None:
            data = {**data, "max_tokens": DEFAULT_COMPLETION_MAX_TOKENS}
        _common_checks(data)
        if data.get("logprob_token_ids") and data.get("logprobs") is None:
            raise RequestError("when using `logprob_token_ids`, `logprobs` must be set.")
        if data.get("use_beam_search") and data.get("echo") and data.get("logprobs") is not None:
            raise RequestError("`echo` with `logprobs` is not supported with beam search.")
        _check_logprob_ints(data, ("prompt_logprobs", "logprobs"))
        logprobs = data.get("logprobs")
        if logprobs is not None and logprobs < 0 and logprobs != -1:
            raise RequestError("`logprobs` must be a positive value or -1.", "logprobs")
        prompt, embeds = data.get("prompt"), data.get("prompt_embeds")
        if (prompt is None or prompt == "") and (embeds is None or embeds == []):
            raise RequestError(
                "Either prompt or prompt_embeds must be provided and non-empty.", "prompt"
            )
        if (
            isinstance(prompt, list)
            and prompt
            and not all(isinstance(p, int) for p in prompt)
            and len(prompt) > MAX_COMPLETION_PROMPTS
        ):
            raise RequestError(f"prompt list length {len(prompt)} exceeds the maximum", "prompt")
        return data

    @property
    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt in the request (a batch of prompts gives several)."""
        prompt = self.prompt
        if prompt is None:
            return []
        if isinstance(prompt, str):
            return [prompt]
        if all(isinstance(p, int) for p in prompt):
            return [[p for p in prompt if isinstance(p, int)]]
        return [p for p in prompt if isinstance(p, str | list)]

    @property
    def choices(self) -> int:
        return self.n


def _common_checks(data: dict[str, Any]) -> None:
    salt = data.get("cache_salt")
    if salt is not None and (
        not isinstance(salt, str) or not salt or len(salt) > 128 or set(salt) & set("@/\\\x00")
    ):
        raise RequestError("Parameter 'cache_salt' is not a valid salt.", "cache_salt")
    response_format = data.get("response_format")
    if (
        isinstance(response_format, dict)
        and response_format.get("type") == "json_schema"
        and response_format.get("json_schema") is None
    ):
        raise RequestError(
            "When response_format type is 'json_schema', the 'json_schema' field must be provided.",
            "response_format",
        )
    if data.get("stream_options") and not data.get("stream"):
        raise RequestError(
            "Stream options can only be defined when `stream=True`.", "stream_options"
        )
    if data.get("logprob_token_ids") and data.get("use_beam_search"):
        raise RequestError("`logprob_token_ids` is not supported with beam search.")
    structured = data.get("structured_outputs")
    if isinstance(structured, dict) and _constraint_count(structured) > 1:
        raise RequestError("You can only use one kind of constraints for structured outputs.")


def _check_logprob_ints(data: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        value = data.get(name)
        if value is not None and not isinstance(value, int | float):
            raise RequestError(f"`{name}` must be an integer.", name)
    prompt_logprobs = data.get("prompt_logprobs")
    if prompt_logprobs is not None:
        if data.get("stream") and (prompt_logprobs > 0 or prompt_logprobs == -1):
            raise RequestError("`prompt_logprobs` are not available when `stream=True`.")
        if prompt_logprobs < 0 and prompt_logprobs != -1:
            raise RequestError("`prompt_logprobs` must be a positive value or -1.")


def _constraint_count(structured: dict[str, Any]) -> int:
    return sum(structured.get(k) is not None for k in ("json", "regex", "choice"))


def _check_tool_usage(data: dict[str, Any]) -> None:
    """vLLM's check_tool_usage, which also makes `auto` the default when tools are given."""
    if data.get("tools") == []:
        raise RequestError("`tools` must not be an empty array.", "tools")
    if "tool_choice" not in data and data.get("tools"):
        data["tool_choice"] = "auto"
    choice = data.get("tool_choice")
    if choice is None or choice == "none":
        return
    if data.get("tools") is None:
        raise RequestError("When using `tool_choice`, `tools` must be set.", "tool_choice")
    if choice not in ("auto", "required") and not isinstance(choice, dict):
        raise RequestError(
            f'Invalid value for `tool_choice`: {choice}! Only named tools, "none", "auto" or '
            '"required" are supported.',
            "tool_choice",
        )
    if isinstance(choice, dict):
        function = choice.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise RequestError("`tool_choice` must name a function.", "tool_choice.function")
        name = function["name"]
        if not name:
            raise RequestError("`tool_choice` must name a function.", "tool_choice.function.name")
        tools = data["tools"]
        named = [
            t.get("function", {}).get("name")
            for t in (tools if isinstance(tools, list) else [])
            if isinstance(t, dict) and isinstance(t.get("function"), dict)
        ]
        if name not in named:
            raise RequestError(
                "The tool specified in `tool_choice` does not match any of the specified `tools`",
                "tool_choice",
            )


# ---------------------------------------------------------------------------------------------
# SamplingParams and the engine's checks.


def check_sampling(
    request: ChatRequest | CompletionRequest, max_tokens: int, *, speculative: bool
) -> None:
    """vLLM's SamplingParams checks, then the engine's (logprobs against --max-logprobs, and
    what speculative decoding cannot do)."""
    n = request.n if request.n is not None else 1
    if n < 1 or n > MAX_N:
        raise RequestError(f"n must be between 1 and {MAX_N}, got {n}.", "n")
    if not -2.0 <= (request.presence_penalty or 0.0) <= 2.0:
        raise RequestError("presence_penalty must be in [-2, 2].", "presence_penalty")
    if not -2.0 <= (request.frequency_penalty or 0.0) <= 2.0:
        raise RequestError("frequency_penalty must be in [-2, 2].", "frequency_penalty")
    repetition = 1.0 if request.repetition_penalty is None else request.repetition_penalty
    if not math.isfinite(repetition) or repetition <= 0.0:
        raise RequestError("repetition_penalty must be greater than zero.", "repetition_penalty")
    temperature = 1.0 if request.temperature is None else request.temperature
    if not math.isfinite(temperature) or not 0.0 <= temperature <= 2.0:
        raise RequestError(f"temperature must be in [0, 2], got {temperature}.", "temperature")
    top_p = 1.0 if request.top_p is None else request.top_p
    if not 0.0 < top_p <= 1.0:
        raise RequestError(f"top_p must be in (0, 1], got {top_p}.", "top_p")
    if request.top_k is not None and request.top_k < -1:
        raise RequestError("top_k must be 0 (disable), or at least 1.", "top_k")
    min_p = request.min_p or 0.0
    if not 0.0 <= min_p <= 1.0:
        raise RequestError(f"min_p must be in [0, 1], got {min_p}.", "min_p")
    if max_tokens < 1:
        raise RequestError(f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
    if request.min_tokens < 0 or request.min_tokens > max_tokens:
        raise RequestError("min_tokens must be between 0 and max_tokens.", "min_tokens")
    logprobs = _sample_logprobs(request)
    for name, value in (("logprobs", logprobs), ("prompt_logprobs", request.prompt_logprobs)):
        if value is not None and value != -1 and value < 0:
            raise RequestError(f"{name} must be non-negative or -1.", name)
        if value == -1 or (value is not None and value > MAX_LOGPROBS):
            raise RequestError(f"Requested {name} greater than max allowed: {MAX_LOGPROBS}", name)
    if any(not s for s in request.stop_strings):
        raise RequestError("stop cannot contain an empty string.", "stop")
    if any(not w for w in request.bad_words):
        raise RequestError("bad_words cannot contain an empty string.", "bad_words")
    for key in request.logit_bias or {}:
        try:
            int(key)
        except ValueError:
            raise RequestError(f"logit_bias key {key!r} is not a token id.", "logit_bias") from None
    if temperature < SAMPLING_EPS and n > 1:
        raise RequestError(f"n must be 1 when using greedy sampling, got {n}.", "n")
    if request.thinking_token_budget is not None:
        # vLLM refuses it unless the server runs a reasoning parser; the simulator runs none.
        raise RequestError(
            "thinking_token_budget is set but reasoning_config is not configured.",
            "thinking_token_budget",
        )
    if speculative and (min_p > SAMPLING_EPS or request.logit_bias):
        raise RequestError(
            "The min_p and logit_bias sampling parameters are not yet supported with "
            "speculative decoding."
        )


def _sample_logprobs(request: ChatRequest | CompletionRequest) -> int | None:
    if isinstance(request, ChatRequest):
        return request.top_logprobs if request.logprobs and not request.logprob_token_ids else None
    return None if request.logprob_token_ids else request.logprobs


# ---------------------------------------------------------------------------------------------
# Entry points.

_R = TypeVar("_R", bound=BaseModel)


def parse_chat(
    body: Any,
    *,
    speculative: bool = False,
    tool_call_parser: str | None = None,
    auto_tool_choice: bool = False,
) -> tuple[ChatRequest, int | None]:
    """The request and the max tokens it asks for (None: as many as fit); RequestError with
    vLLM's verdict and a message a person can act on. `tool_call_parser` and
    `auto_tool_choice` are the server's `--tool-call-parser` and `--enable-auto-tool-choice`."""
    request = _validate(ChatRequest, body)
    check_tool_parsing(request, tool_call_parser, auto_tool_choice)
    if not request.messages:
        # vLLM's request model lets it through; its prompt renderer does not.
        raise RequestError("messages must not be empty", "messages")
    wanted = request.max_output_tokens
    check_sampling(request, 1 if wanted is None else wanted, speculative=speculative)
    return request, wanted


def check_tool_parsing(request: ChatRequest, parser: str | None, auto: bool) -> None:
    """vLLM's renderer: a tool_choice other than none needs the server's tool call parser
    (and `auto`, which tools without a tool_choice mean, needs auto tool choice too)."""
    choice = request.tool_choice
    if parser is not None or choice is None or choice == "none":
        return
    if choice == "auto" and not auto:
        raise RequestError(
            '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be '
            "set",
            "tool_choice",
        )
    if choice != "auto":
        what = (
            f'function "{choice.function.name}"'
            if isinstance(choice, NamedToolChoice)
            else (f'"{choice}"')
        )
        raise RequestError(f"tool_choice={what} requires --tool-call-parser to be set")


def parse_completion(body: Any, *, speculative: bool = False) -> tuple[CompletionRequest, int]:
    request = _validate(CompletionRequest, body)
    max_tokens = request.max_tokens if request.max_tokens is not None else 16
    echo_only = bool(request.echo) and max_tokens == 0
    check_sampling(request, 1 if echo_only else max_tokens, speculative=speculative)
    return request, max_tokens


def _validate(model: type[_R], body: Any) -> _R:
    try:
        return model.model_validate(body)
    except RequestError:
        raise
    except ValidationError as exc:
        raise RequestError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors()[:3]:
        location = ".".join(str(part) for part in error["loc"])
        problems.append(f"{location}: {error['msg']}" if location else error["msg"])
    return "; ".join(problems)
