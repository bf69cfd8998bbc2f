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

from engine.request import GenerateRequest


class EngineState(enum.StrEnum):
    STARTING = "starting"  # loading the model
    READY = "ready"
    STOPPING = "stopping"  # shutting down: no new requests
    STOPPED = "stopped"
    FAILED = "failed"  # the engine stopped after an internal error


class Capabilities(BaseModel):
    """What a backend can do: the front ends check requests against it and tell agents."""

    model_config = ConfigDict(frozen=True)

    adapters: bool = Field(True, description="LoRA adapters can be loaded and applied per request.")
    max_adapters_per_request: int = Field(8, description="Adapters one request may mix, each at its own scale.")
    mixed_adapter_sets: bool = Field(
        False, description="Requests with different adapter sets share decode steps (else the sets take turns)."
    )
    batch_invariant: bool = Field(
        False, description="A request's output is the same alone and batched with any others (greedy text is exact)."
    )
    constrained_output: bool = Field(False, description="Output can be constrained to a JSON Schema or a grammar.")
    prefix_cache: bool = Field(False, description="Repeated prompt prefixes are read once per adapter set.")

    def problem_with(self, request: GenerateRequest) -> str | None:
        """Why this engine cannot serve `request` as asked (the front ends refuse it with this), or None."""
        if request.adapters and not self.adapters:
            return "this engine serves no LoRA adapters: drop `adapters`"
        if len(request.adapters) > self.max_adapters_per_request:
            return f"this engine mixes at most {self.max_adapters_per_request} adapters per request"
        if (request.json_schema is not None or request.grammar is not None) and not self.constrained_output:
            return "this engine cannot constrain output: drop `json_schema` and `grammar`"
        return None


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
    layers: int = Field(0, description="The model's layers, its output layer included.")
    gpu_layers: int = Field(0, description="Layers offloaded to the GPU (0 on CPU).")
    max_running_requests: int = Field(description="Requests generated together; more wait in a queue.")
    capabilities: Capabilities = Field(Capabilities(), description="What this engine can do.")


class AdapterInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    path: str = Field(description="The adapter file or folder, inside an adapter directory.")
    file_size: int = Field(description="Bytes of the GGUF given to llama.cpp (a folder's: its conversion).")
    sha256: str = Field(description="SHA-256 of the GGUF bytes given to llama.cpp.")
    source_format: Literal["gguf", "peft", "mlx-lm"] = Field(
        "gguf", description="What was loaded: a GGUF file, or a PEFT / mlx-lm folder converted on load."
    )
    source_sha256: dict[str, str] = Field(
        default_factory=dict, description="A folder's source files by name → SHA-256 (empty for a GGUF file)."
    )
    rank: int
    alpha: float = Field(allow_inf_nan=False, description="LoRA alpha; the effective scale is scale * alpha / rank.")
    target_modules: tuple[str, ...] = Field(description="Base-model modules it changes (attn_v, ffn_down, …).")
    architecture: str
    loaded_at: datetime = Field(description="When it was loaded (UTC).")
    last_used_at: datetime | None = Field(None, description="When a request last started using it (UTC).")
    pinned: bool = Field(False, description="Never evicted to make room (load_adapter pin=true, or preloaded).")
    warnings: tuple[str, ...] = Field((), description="What its load noticed but allowed (e.g. another base model).")
    version: int = Field(1, description="1, then one more each time the name is loaded with other content.")
    requests_served: int
    requests_in_flight: int = Field(description="Queued or running requests using it; unloading waits for 0.")
    replicas: tuple[str, ...] = Field((), description="The engine replicas holding it now (Ray backend; else empty).")


class LoadedAdapter(BaseModel):
    adapter: AdapterInfo
    newly_loaded: bool = Field(description="False if this name was already loaded with these bytes.")
    replaced_sha256: str | None = Field(
        None, description="The version this load replaced: requests already running finish on it."
    )
    evicted: list[str] = Field(
        default_factory=list, description="Idle adapters unloaded to stay within the residency budget."
    )


class AdapterListing(BaseModel):
    base_model: ModelInfo
    adapters: list[AdapterInfo] = Field(description="Resident adapters, usable in llm_inference.")
    adapter_directories: list[str]
    available_files: list[str] = Field(
        description="Adapter files and folders (shown with a trailing '/') in the adapter directories."
    )
    available_files_truncated: bool = Field(
        False, description="More are on disk than are listed; a call naming one still loads it on first use."
    )
    auto_load: bool = Field(
        False, description="Whether naming an adapter that is not resident loads it from the adapter directories."
    )
    max_loaded_adapters: int | None = Field(None, description="Most adapters resident at once (None: no limit).")
    adapter_memory_mb: float | None = Field(None, description="Most MB of adapter weights resident (None: no limit).")


@dataclass(frozen=True)
class BackendMetric:
    """A number only some backends have, exported as `loramux_<name>` (a counter's name gets `_total`)."""

    name: str
    help: str
    kind: Literal["gauge", "counter"]
    value: float


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
    prefix_hits: int = 0  # admissions that reused a cached prompt prefix
    prefix_misses: int = 0
    prefix_tokens_saved: int = 0  # prompt tokens not prefilled thanks to hits
    adapter_loads: int = 0
    adapter_unloads: int = 0
    adapters_loaded: int = 0
    adapter_evictions: int = 0  # idle adapters unloaded to stay within the residency budget
    adapter_first_use_loads: int = 0  # adapters loaded because a request named them
    adapter_first_use_wait_seconds: float = 0.0  # what those requests waited for their loads, in all
    adapter_reloads: int = 0  # loads that replaced a resident adapter with a new version
    # sequences_per_step[n] = number of decode steps that carried n sequences
    sequences_per_step: dict[int, int] = field(default_factory=dict)
    # what only this backend counts (llama: KV cells, sequence moves, …), published as they are
    backend: tuple[BackendMetric, ...] = ()
    # the adapters running and queued requests use, and the most that may be resident (None: no limit):
    # what an inference gateway routes by (vllm:lora_requests_info)
    running_adapters: tuple[str, ...] = ()
    waiting_adapters: tuple[str, ...] = ()
    max_adapters: int | None = None
    # engine processes serving, and wanted (1 and 1 in one process; Ray: its replicas), and each one's stats
    replicas_ready: int = 1
    replicas_wanted: int = 1
    by_replica: dict[str, EngineStats] = field(default_factory=dict)

    def backend_value(self, name: str) -> float:
        """The value of the backend metric `name` (KeyError if this backend has none)."""
        for metric in self.backend:
            if metric.name == name:
                return metric.value
        raise KeyError(name)


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
