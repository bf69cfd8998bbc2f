"""What an engine tells about itself: its state, the model it serves, its adapters, its counters.

Plain values with no llama.cpp notions in them, so that any engine behind `InferenceEngine` (the local
llama.cpp one, or a remote serving engine) can fill them, and the MCP tools can publish them as they are.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EngineState(enum.StrEnum):
    STARTING = "starting"  # loading the model
    READY = "ready"
    STOPPING = "stopping"  # shutting down: no new requests
    STOPPED = "stopped"
    FAILED = "failed"  # the engine stopped after an internal error


class ModelInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str = Field(description="The served model (its file name).")
    sha256: str = Field("", description="SHA-256 of the model file (as the Hugging Face Hub lists it).")
    description: str
    architecture: str
    parameters: int
    size_bytes: int
    context_per_request: int = Field(description="Tokens one request may hold, prompt and answer together.")
    backend: str = Field("CPU", description='What runs the model: "CPU", or the GPU layers are offloaded to.')
    layers: int = Field(0, description="The model's layers, its output layer included (as llama.cpp counts).")
    gpu_layers: int = Field(0, description="Layers offloaded to the GPU (0 on CPU).")
    max_running_requests: int = Field(description="Requests generated together; more wait in a queue.")
    mixed_adapter_sets: bool = Field(
        False, description="Requests with different adapter sets share decode steps (else the sets take turns)."
    )


class AdapterInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    path: str = Field(description="The adapter file, inside an adapter directory.")
    file_size: int
    sha256: str = Field(description="SHA-256 of the adapter file's bytes, as loaded.")
    rank: int
    alpha: float = Field(allow_inf_nan=False, description="LoRA alpha; the effective scale is scale * alpha / rank.")
    target_modules: tuple[str, ...] = Field(description="Base-model modules it changes (attn_v, ffn_down, …).")
    architecture: str
    loaded_at: datetime = Field(description="When it was loaded (UTC).")
    requests_served: int
    requests_in_flight: int = Field(description="Queued or running requests using it; unloading waits for 0.")


class LoadedAdapter(BaseModel):
    adapter: AdapterInfo
    newly_loaded: bool = Field(description="False if this name was already loaded from this file.")


class AdapterListing(BaseModel):
    base_model: ModelInfo
    adapters: list[AdapterInfo] = Field(description="Loaded adapters, usable in llm_inference.")
    adapter_directories: list[str]
    available_files: list[str] = Field(description="Adapter files load_adapter accepts (paths in a directory).")


@dataclass(frozen=True)
class EngineStats:
    running: int = 0
    waiting: int = 0
    steps: int = 0
    tokens_generated: int = 0
    prompt_tokens: int = 0
    requests_finished: int = 0
    requests_cancelled: int = 0
    requests_failed: int = 0
    sequence_moves: int = 0  # running requests' state moved to keep groups contiguous
    adapter_switches: int = 0  # steps that changed the adapter set
    context_rebuilds: int = 0  # model contexts rebuilt after repeated faulty steps
    kv_cells_used: int = 0  # context cells held by running requests
    prefix_hits: int = 0  # admissions that reused a cached prompt prefix
    prefix_misses: int = 0
    prefix_tokens_saved: int = 0  # prompt tokens not prefilled thanks to hits
    prefix_cache_cells: int = 0  # cells of cached prefixes (in free slots)
    adapter_loads: int = 0
    adapter_unloads: int = 0
    adapter_names: tuple[str, ...] = ()  # the loaded adapters
    # sequences_per_step[n] = number of decode steps that carried n sequences
    sequences_per_step: dict[int, int] = field(default_factory=dict)
    # requests not generating yet: queued ones (request ids, first in line first) and those reading
    # their prompt (request id → (prompt tokens read, prompt tokens)); for RequestStatus
    queued: tuple[int, ...] = ()
    reading: dict[int, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestStatus:
    """Where a request stands before its text flows: what keep-alive progress messages say."""

    phase: Literal["preparing", "queued", "reading", "generating"]
    ahead: int = 0  # queued: requests before it in the queue
    read: int = 0  # reading: prompt tokens read so far
    prompt: int = 0  # reading: prompt tokens

    def describe(self) -> str:
        if self.phase == "queued":
            return f"queued, {self.ahead} ahead" if self.ahead else "queued, next in line"
        if self.phase == "reading":
            return f"reading the prompt, {100 * self.read // max(self.prompt, 1)}%"
        if self.phase == "preparing":
            return "preparing the prompt"
        return "generating"
