"""The tools' structured outputs (OpenAI-style field names); inputs and parts reuse the engine's types."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from engine import AdapterRef, Timings, Usage


class InferenceResult(BaseModel):
    text: str = Field(description="The generated text (stop strings are not included).")
    finish_reason: Literal["stop", "length", "cancelled"] = Field(
        description="stop: the model ended or hit a stop string; length: max_tokens or the context was reached."
    )
    model: str = Field(description="File name of the served model.")
    adapters: list[AdapterRef] = Field(description="The adapter set the text was generated with.")
    usage: Usage
    timings: Timings


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
