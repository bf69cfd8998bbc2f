"""Request bodies of the OpenAI-compatible routes, as OpenAI documents them, plus llama.cpp's sampling
extras (top_k, min_p, repeat_penalty, repeat_last_n, ignore_eos) and loramux's `adapters` mix.

Unknown fields are refused, as OpenAI refuses them ("Unrecognized request argument"), so a typo never
silently does nothing. Fields OpenAI has and loramux does not support are accepted only at their
"off" value (n=1, no logit_bias, …), and refused otherwise with a message naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from engine.request import (
    MAX_PROMPT_CHARS,
    MAX_TOOLS,
    MAX_TOP_LOGPROBS,
    TOOL_NAME_PATTERN,
    AdapterRef,
    NamedToolChoice,
    SamplingParams,
    ToolCall,
    ToolChoice,
    ToolFunction,
)

_sampling = SamplingParams.model_fields


def _like(name: str, **overrides: Any) -> Any:
    """An optional field with the bounds of SamplingParams' field `name` (None = the engine's default)."""
    field = _sampling[name]
    return Annotated[field.annotation | None, *field.metadata, Field(None, description=field.description, **overrides)]


def _off(value: Any, allowed: tuple[Any, ...], why: str) -> Any:
    """Accept an OpenAI field loramux does not support only at its "off" value."""
    if value not in allowed:
        raise ValueError(why)
    return value


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str = Field(max_length=MAX_PROMPT_CHARS)


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TOOL_NAME_PATTERN)
    arguments: str = Field(max_length=MAX_PROMPT_CHARS)


class MessageToolCall(BaseModel):
    """An assistant message's call, as OpenAI writes it (and sends it back in the next request)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None  # accepted and not shown to the model (as llama-server does)
    tool_calls: list[MessageToolCall] | None = Field(None, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(None, max_length=128)
    refusal: str | None = None  # the SDKs send an assistant message back as they got it

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    @property
    def calls(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments) for c in self.tool_calls or ()
        )


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str | None = Field(None, max_length=8192)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionSpec

    def as_engine_tool(self) -> ToolFunction:
        f = self.function
        return ToolFunction(name=f.name, description=f.description, parameters=f.parameters, strict=bool(f.strict))


class ChosenFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TOOL_NAME_PATTERN)


class ToolChoiceFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: ChosenFunction


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=64)
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    # true: refused unless every keyword can be enforced token by token; absent or false: what can be is,
    # and the finished output is checked against the whole schema
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None
    # llama-server's form, which older instructor releases send: {"type": "json_object", "schema": {...}}
    schema_: dict[str, Any] | None = Field(None, alias="schema")

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("`json_schema` is required with type json_schema, and only then")
        if self.schema_ is not None and self.type != "json_object":
            raise ValueError("`schema` goes with type json_object; with json_schema, give `json_schema.schema`")
        return self

    @property
    def output_schema(self) -> dict[str, Any] | None:
        if self.type == "json_object":
            return self.schema_ if self.schema_ is not None else {"type": "object"}
        return self.json_schema.schema_ if self.json_schema is not None else None


class _Common(BaseModel):
    """Fields both completions and chat completions take."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: _like("temperature")  # type: ignore[valid-type]
    top_p: _like("top_p")  # type: ignore[valid-type]
    stop: str | list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(None, max_length=16)
    seed: _like("seed")  # type: ignore[valid-type]
    frequency_penalty: _like("frequency_penalty")  # type: ignore[valid-type]
    presence_penalty: _like("presence_penalty")  # type: ignore[valid-type]
    n: int | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = Field(None, max_length=256)  # an end-user id for the caller's own records; ignored
    # llama.cpp's sampling extras, as llama-server and vLLM take them
    top_k: _like("top_k")  # type: ignore[valid-type]
    min_p: _like("min_p")  # type: ignore[valid-type]
    repeat_penalty: _like("repeat_penalty")  # type: ignore[valid-type]
    repeat_last_n: _like("repeat_last_n")  # type: ignore[valid-type]
    ignore_eos: bool | None = None
    json_schema: dict[str, Any] | None = None  # as llama-server takes it (chat: response_format)
    grammar: str | None = Field(None, min_length=1)
    # loramux: a mix of adapters with scales, like llm_inference's `adapters`
    adapters: list[AdapterRef] | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        return _off(n, (None, 1), "only n=1 is supported (one choice per request); send several requests instead")

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        return _off(value, (None, {}), "not supported; omit it")

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _Common:
        if self.stream_options is not None and not self.stream:
            raise ValueError("`stream_options` is only allowed when `stream` is true")
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def sampling_fields(self) -> dict[str, Any]:
        """The sampling settings given, by SamplingParams' names; the rest keep the engine's defaults."""
        names = (
            "temperature", "top_p", "seed", "frequency_penalty", "presence_penalty", "top_k", "min_p",
            "repeat_penalty", "repeat_last_n", "ignore_eos",
        )  # fmt: skip
        given = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        return given | {"stop": self.stops}


class CompletionRequest(_Common):
    prompt: str | list[str] = Field(description="Text to complete (a list of exactly one string is accepted).")
    # OpenAI's legacy default
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)  # alternatives per token
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("give one string (batches of prompts are not supported; send one request each)")
        return prompt

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, suffix: str | None) -> str | None:
        return _off(suffix, (None, ""), "insertion (fill-in-the-middle) is not supported")

    @field_validator("best_of")
    @classmethod
    def _best_of_one(cls, best_of: int | None) -> int | None:
        return _off(best_of, (None, 1), "only 1 is supported")

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def logprob_fields(self) -> dict[str, Any]:
        """The engine request's logprobs; `echo` with logprobs scores the prompt too (log-likelihoods)."""
        return {"logprobs": self.logprobs, "prompt_logprobs": self.echo and self.logprobs is not None}

    @property
    def output_schema(self) -> dict[str, Any] | None:
        return self.json_schema

    @property
    def output_schema_strict(self) -> bool:
        return False


class ChatCompletionRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["auto", "none", "required"] | ToolChoiceFunction | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("`top_logprobs` needs `logprobs: true`")
        return self

    def logprob_fields(self) -> dict[str, Any]:
        return {"logprobs": (self.top_logprobs or 0) if self.logprobs else None}

    @model_validator(mode="after")
    def _one_limit(self) -> ChatCompletionRequest:
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise ValueError("`max_tokens` and `max_completion_tokens` differ; give one of them")
        return self

    @property
    def output_schema(self) -> dict[str, Any] | None:
        if self.response_format is not None and self.response_format.output_schema is not None:
            return self.response_format.output_schema
        return self.json_schema

    @property
    def output_schema_strict(self) -> bool:
        """OpenAI's `json_schema.strict`; llama-server's forms (`json_schema`, json_object's `schema`) are not."""
        fmt = self.response_format
        return bool(fmt is not None and fmt.json_schema is not None and fmt.json_schema.strict)

    def tool_fields(self) -> dict[str, Any]:
        """The engine request's tools, tool_choice and parallel_tool_calls (OpenAI's defaults: auto, parallel)."""
        choice: ToolChoice = "auto"
        if isinstance(self.tool_choice, ToolChoiceFunction):
            choice = NamedToolChoice(name=self.tool_choice.function.name)
        elif self.tool_choice is not None:
            choice = self.tool_choice
        return {
            "tools": tuple(t.as_engine_tool() for t in self.tools or ()),
            "tool_choice": choice,
            "parallel_tool_calls": self.parallel_tool_calls is not False,
        }

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class AdapterLoad(BaseModel):
    """POST /v1/adapters: like the load_adapter tool."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    path: str = Field(
        min_length=1, max_length=1024, description="Adapter file or PEFT / mlx-lm folder inside an adapter directory."
    )
    pin: StrictBool = Field(False, description="Never evict it to make room for other adapters.")
    expect_sha256: str | None = Field(
        None, pattern="^[0-9a-fA-F]{64}$", description="Reload only if the resident version has this sha256."
    )
