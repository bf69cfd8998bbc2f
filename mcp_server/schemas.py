"""The tool's structured output, with OpenAI-style field names."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Message(BaseModel):
    role: Literal["system", "user", "assistant"] = Field(description="Who wrote the message.")
    content: str = Field(max_length=200_000, description="The message text.")


class TokenUsage(BaseModel):
    prompt_tokens: int = Field(description="Tokens in the rendered prompt.")
    completion_tokens: int = Field(description="Tokens generated.")
    total_tokens: int


class InferenceTimings(BaseModel):
    queue_ms: float = Field(description="Time spent waiting for a free slot.")
    ttft_ms: float | None = Field(description="Time to first token.")
    total_ms: float
    tokens_per_second: float


class InferenceResult(BaseModel):
    text: str = Field(description="The generated text (stop strings are not included).")
    finish_reason: Literal["stop", "length", "cancelled"] = Field(
        description="stop: the model ended or hit a stop string; length: max_tokens or the context was reached."
    )
    model: str = Field(description="File name of the served model.")
    usage: TokenUsage
    timings: InferenceTimings
