"""The tool's structured output, with OpenAI-style field names."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Message(BaseModel):
    role: Literal["system", "user", "assistant"] = Field(description="Who wrote the message.")
    content: str = Field(max_length=200_000, description="The message text.")


class AdapterSelection(BaseModel):
    name: str = Field(min_length=1, max_length=64, description="A loaded adapter's name.")
    scale: float = Field(1.0, ge=-4.0, le=4.0, description="Strength; 1.0 as trained, 0 disables it.")


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
    adapters: list[AdapterSelection] = Field(description="The adapter set the text was generated with.")
    usage: TokenUsage
    timings: InferenceTimings


class AdapterDetails(BaseModel):
    name: str
    path: str = Field(description="The adapter file, inside an adapter directory.")
    file_size: int
    rank: int
    alpha: float = Field(description="LoRA alpha; llama.cpp applies scale * alpha / rank.")
    target_modules: list[str] = Field(description="Base-model modules the adapter changes (attn_v, ffn_down, …).")
    architecture: str
    loaded_at: str = Field(description="When it was loaded (UTC, ISO 8601).")
    requests_served: int
    requests_in_flight: int = Field(description="Queued or running requests using it; unloading waits for 0.")


class BaseModelDetails(BaseModel):
    file: str
    description: str
    architecture: str
    parameters: int
    size_bytes: int
    context_per_request: int
    max_sequences: int


class AdapterListing(BaseModel):
    base_model: BaseModelDetails
    adapters: list[AdapterDetails] = Field(description="Loaded adapters, usable in llm_inference.")
    adapter_directories: list[str]
    available_files: list[str] = Field(description="Adapter files load_adapter accepts (paths in a directory).")


class LoadAdapterResult(BaseModel):
    adapter: AdapterDetails
    newly_loaded: bool = Field(description="False if this name was already loaded from this file.")


class UnloadAdapterResult(BaseModel):
    name: str
    unloaded: bool
    requests_served: int
