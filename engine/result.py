"""What the engine gives back: streamed text deltas, then one result with usage and timings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from engine.request import SamplingParams, ToolCall

FinishReason = Literal["stop", "length", "cancelled", "tool_calls"]


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Tokens in the rendered prompt.")
    completion_tokens: int = Field(description="Tokens generated.")
    total_tokens: int


class Timings(BaseModel):
    queue_ms: float = Field(description="Time waiting for a free sequence.")
    ttft_ms: float | None = Field(description="Time to first token, from submission; None if none was generated.")
    total_ms: float = Field(description="Submission to finish.")
    tokens_per_second: float = Field(description="Completion tokens per second after admission (prefill included).")


class AdapterUse(BaseModel):
    name: str
    sha256: str = Field(description="SHA-256 of the adapter GGUF the request ran with (a folder's: its conversion).")
    scale: float
    source_sha256: dict[str, str] | None = Field(
        None, description="For a PEFT / mlx-lm folder: its source files by name → SHA-256."
    )


class Receipt(BaseModel):
    """What produced a result, enough to replay it: the same model file and adapter files (by hash),
    the same scales and sampling, the same seed give the same text (outputs do not depend on what
    else shared the decode steps)."""

    model: str = Field(description="The model file's name.")
    model_sha256: str
    adapters: list[AdapterUse] = Field(description="The adapter set, as applied.")
    seed: int = Field(description="The sampling seed used (chosen at random when the call gave none).")
    sampling: SamplingParams = Field(description="The sampling settings in force, the seed included.")


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str  # its text (bytes that are not whole UTF-8 characters as U+FFFD; `bytes` has them)
    id: int
    bytes: tuple[int, ...]
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A token's log-probability under the model's distribution at its position (after the request's
    adapters; before penalties, constraints and the sampling chain), with the likeliest alternatives."""

    token: str
    id: int
    bytes: tuple[int, ...]
    logprob: float | None  # None for the prompt's first token: nothing comes before it
    top: tuple[TopLogprob, ...] = ()


class GenerationResult(BaseModel):
    text: str = Field(description="The generated text (stop strings are not included).")
    finish_reason: FinishReason = Field(
        description="stop: the model ended or hit a stop string; length: max_tokens or the context was reached; "
        "tool_calls: the answer is function calls; cancelled: the request was aborted."
    )
    usage: Usage
    timings: Timings
    receipt: Receipt
    tool_calls: list[ToolCall] | None = Field(None, description="The function calls the model made (tool calling).")
    logprobs: list[TokenLogprob] | None = Field(None, description="Each generated token's log-probability.")
    prompt_logprobs: list[TokenLogprob] | None = Field(
        None, description="Each prompt token with its log-probability given the tokens before it (None for the first)."
    )


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New text of one request; `completion_tokens` counts all tokens generated so far; `at`: when the
    step that produced it ended (time.monotonic), for inter-token latency as the engine made them
    (deltas may reach a caller a few at a time)."""

    text: str
    completion_tokens: int
    at: float = 0.0
    tool_calls: tuple[ToolCallDelta, ...] = ()  # tool calling: parts of calls, as OpenAI streams them
    logprobs: tuple[TokenLogprob, ...] = ()  # the tokens this delta's step produced, when asked for
    prompt_logprobs: tuple[TokenLogprob, ...] = ()  # on a request's first delta, when asked for


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """Part of call `index`: its id and name come first (with arguments ""), then its arguments' text in pieces."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None
