"""What a caller asks of the engine: input (raw prompt or chat messages), sampling, adapter set.

These models are the one source of truth for arguments: their bounds and descriptions become the MCP
tool's input schema (mcp_server/tools/inference.py builds its parameters from these fields).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_PROMPT_CHARS = 200_000
MAX_MESSAGES = 512
MAX_ADAPTERS_PER_REQUEST = 8
MAX_STOP_STRINGS = 16
MAX_GRAMMAR_CHARS = 100_000
MAX_TOP_LOGPROBS = 20
# Real schemas nest a few dozen levels at most; deeper ones only exhaust recursion in the compilers.
MAX_SCHEMA_DEPTH = 64


def nesting_depth(value: Any, limit: int) -> int:
    """How deeply lists and dicts nest in `value` (a scalar is 0), counted without recursion; the count
    stops at `limit` + 1, so a hostile value costs no more than its size."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list | tuple) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth > limit:
            return depth
        stack.extend((child, depth + 1) for child in children)
    return deepest


MAX_TOOLS = 128
TOOL_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class ToolCall(BaseModel):
    """A function call the model made (OpenAI's `tool_calls[]`); `arguments` is JSON text."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=128, description="The call's id; a `tool` message answers it by this id.")
    name: str = Field(pattern=TOOL_NAME_PATTERN, description="The function called.")
    arguments: str = Field(max_length=MAX_PROMPT_CHARS, description="The arguments, as a JSON object's text.")

    @property
    def arguments_value(self) -> Any:
        """The arguments as JSON (a client may send back text that is not: then that text)."""
        try:
            return json.loads(self.arguments)
        except ValueError:
            return self.arguments


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    role: Literal["system", "user", "assistant", "tool"] = Field(description="Who wrote the message.")
    content: str = Field("", max_length=MAX_PROMPT_CHARS, description="The message text.")
    tool_calls: tuple[ToolCall, ...] = Field(
        (), max_length=MAX_TOOLS, strict=False, description="An assistant message's function calls (tool calling)."
    )
    tool_call_id: str | None = Field(
        None, max_length=128, description="A `tool` message: the id of the call whose result it carries."
    )

    @model_validator(mode="after")
    def _tool_fields_fit_the_role(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message needs the tool_call_id it answers, and only a tool message has one")
        return self


class ToolFunction(BaseModel):
    """A function the model may call (OpenAI's `tools[].function`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=TOOL_NAME_PATTERN, description="The function's name.")
    description: str | None = Field(None, max_length=8192, description="What it does, for the model.")
    parameters: dict[str, Any] | None = Field(
        None, description="A JSON Schema of its arguments (an object); the call's arguments are held to it."
    )
    strict: bool = Field(False, description="Refuse `parameters` unless every keyword can be enforced token by token.")


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=TOOL_NAME_PATTERN, description="The function the model must call.")


ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice


class AdapterRef(BaseModel):
    """One LoRA adapter of a request's adapter set, with the scale it is applied at."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=64, description="A loaded adapter's name (see list_adapters).")
    scale: float = Field(1.0, ge=-4.0, le=4.0, description="Strength; 1.0 as trained, 0 disables it.")


# A request's adapter set in canonical form: sorted (name, scale) pairs. Requests with equal keys can
# share a decode step; the empty key is the base model.
AdapterKey = tuple[tuple[str, float], ...]

StopString = Annotated[str, Field(min_length=1, max_length=200)]


class SamplingParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens: int = Field(
        256, ge=1, le=32768, description="Most tokens to generate (also capped by the context left)."
    )
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Randomness; 0 gives deterministic (greedy) output.")
    top_p: float = Field(
        0.95, gt=0.0, le=1.0, description="Nucleus sampling: keep the likeliest tokens up to this mass."
    )
    top_k: int = Field(40, ge=0, le=1000, description="Sample among the k likeliest tokens; 0 = off.")
    min_p: float = Field(0.05, ge=0.0, le=1.0, description="Drop tokens below this share of the likeliest one.")
    repeat_penalty: float = Field(1.1, ge=0.5, le=2.0, description="Penalty on recently used tokens; 1.0 = off.")
    repeat_last_n: int = Field(
        64, ge=0, le=4096, description="How many recent tokens the repeat, frequency and presence penalties look at."
    )
    frequency_penalty: float = Field(
        0.0, ge=-2.0, le=2.0, description="Subtract this times a token's count among recent tokens; 0 = off."
    )
    presence_penalty: float = Field(
        0.0, ge=-2.0, le=2.0, description="Subtract this from every token already among recent tokens; 0 = off."
    )
    seed: int | None = Field(None, ge=0, le=2**32 - 2, description="Fix for reproducible sampling; random if omitted.")
    stop: tuple[StopString, ...] = Field(
        (),
        max_length=MAX_STOP_STRINGS,
        description="Strings that end generation, matched across token boundaries; not included in the text.",
    )
    ignore_eos: bool = Field(
        False,
        description="Never sample the model's end-of-generation tokens, so the output runs to max_tokens "
        "(benchmarks; as llama-server's ignore_eos).",
    )


class GenerateRequest(BaseModel):
    """Exactly one of `prompt` (raw text, no chat template) or `messages` (rendered with the model's template)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str | None = Field(
        None, min_length=1, max_length=MAX_PROMPT_CHARS, description="Raw text to complete, without a chat template."
    )
    messages: tuple[ChatMessage, ...] | None = Field(
        None,
        min_length=1,
        max_length=MAX_MESSAGES,
        description="A whole conversation, oldest first; the model answers the last user turn.",
    )
    sampling: SamplingParams = SamplingParams()
    adapters: tuple[AdapterRef, ...] = Field(
        (),
        max_length=MAX_ADAPTERS_PER_REQUEST,
        description="LoRA adapters to apply, each with a scale; several mix. Empty for the base model.",
    )

    json_schema: dict[str, Any] | None = Field(
        None,
        description="A JSON Schema the output must satisfy: the text is valid JSON for it (unless cut by "
        "max_tokens), and the result carries the parsed value as `json`.",
    )
    json_schema_strict: bool = Field(
        False,
        description="True: refuse a schema unless every keyword of it can be enforced token by token (OpenAI's "
        "`strict`). False: enforce what can be, and check the finished output against the whole schema (an "
        "output that fails is an error naming the keyword).",
    )
    grammar: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_GRAMMAR_CHARS,
        description="A grammar the output must follow: GBNF (llama.cpp's format) or Lark.",
    )
    tools: tuple[ToolFunction, ...] = Field(
        (),
        max_length=MAX_TOOLS,
        description="Functions the model may call (with `messages`): a call's arguments are held to its parameters.",
    )
    tool_choice: ToolChoice = Field(
        "auto",
        description="auto: answer in text or call; none: answer in text; required: call at least one; "
        "a name: call that function.",
    )
    parallel_tool_calls: bool = Field(True, description="Allow more than one call in one answer.")
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="Return each generated token's log-probability and this many likeliest alternatives "
        "(0: the token's alone), from the distribution the token was drawn from: the model's (with the "
        "request's adapters) after penalties and json_schema / grammar, before temperature and top-k/p.",
    )
    batch_id: str | None = Field(
        None,
        max_length=64,
        description="Requests with the same batch_id are one caller's batch (llm_batch sets it): while other "
        "requests wait, a batch holds at most half of the sequence slots (its newest members wait again, "
        "resumed later with their output so far, exactly as if uninterrupted).",
    )
    prompt_logprobs: bool = Field(
        False,
        description="Return the log-probability of every prompt token after the first, given the ones before it "
        "(the model's own distribution, with `logprobs` alternatives; the whole prompt is read, no cached prefix).",
    )

    @field_validator("json_schema")
    @classmethod
    def _not_too_deep(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None and nesting_depth(schema, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
            raise ValueError(
                f"the schema nests more than {MAX_SCHEMA_DEPTH} levels deep; flatten it ($defs and $ref can help)"
            )
        return schema

    @model_validator(mode="after")
    def _one_input(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        if self.json_schema is not None and self.grammar is not None:
            raise ValueError("give json_schema or grammar, not both")
        if (self.json_schema is not None or self.grammar is not None) and self.sampling.ignore_eos:
            raise ValueError("ignore_eos cannot be combined with json_schema or grammar: the output ends where they do")
        if self.tools:
            if self.messages is None:
                raise ValueError("tools need `messages` (a conversation), not a raw prompt")
            if self.json_schema is not None or self.grammar is not None:
                raise ValueError("give tools or json_schema / grammar, not both: a call's arguments follow its schema")
            if len({t.name for t in self.tools}) != len(self.tools):
                raise ValueError("each tool's name must be unique")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.name not in {t.name for t in self.tools}:
            raise ValueError(f"tool_choice names {self.tool_choice.name!r}, which is not among the tools")
        if self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice 'required' needs tools")
        names = [a.name for a in self.adapters]
        if len(set(names)) != len(names):
            raise ValueError("each adapter may appear once in a request's adapter set")
        return self

    @property
    def calls_tools(self) -> bool:
        """Whether the answer may be a function call (tools given, and not tool_choice 'none')."""
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def adapter_key(self) -> AdapterKey:
        return tuple(sorted((a.name, a.scale) for a in self.adapters if a.scale != 0.0))
