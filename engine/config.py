"""Engine configuration: one validated object, passed whole to each component."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.default_model import default_model_path


def default_adapter_dir() -> Path:
    """The project's `adapters/` folder, where the demo adapters ship."""
    return Path(__file__).resolve().parent.parent / "adapters"


def default_conversion_cache() -> Path:
    """$XDG_CACHE_HOME/loramux/converted-adapters (~/.cache/... by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "loramux" / "converted-adapters"


def _default_threads() -> int:
    # More threads than cores makes llama.cpp's spin-waiting threads fight each other.
    return max(1, min(os.cpu_count() or 1, 8))


class EngineConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model_path: Path = Field(default_factory=default_model_path, description="GGUF model file to serve.")
    context_per_sequence: int = Field(
        2048, ge=256, le=131072, description="KV cells each running request owns (prompt + generated tokens)."
    )
    max_sequences: int = Field(8, ge=1, le=256, description="Requests decoded together in one step.")
    batch_tokens: int = Field(
        256,
        ge=16,
        le=8192,
        description=(
            "Most prompt tokens one decode step carries; longer prompts are prefilled in chunks "
            "so running requests keep generating."
        ),
    )
    gpu_layers: int | None = Field(
        None,
        ge=0,
        le=10_000,
        description="Model layers to offload to the GPU; unset = all of them when llama.cpp was built with a GPU "
        "backend and sees a GPU, else 0 (CPU only).",
    )
    threads: int = Field(default_factory=_default_threads, ge=1, le=256, description="Most llama.cpp threads.")
    flash_attention: bool = Field(
        True,
        description="Use llama.cpp's flash attention on the CPU, with loramux's patch's batch-invariant kernel "
        "paths (without the patch it stays off: stock kernels make outputs depend on what shares a step). GPU "
        "builds always use llama.cpp's choice.",
    )
    adaptive_threads: bool = Field(
        True, description="Use fewer threads while other processes keep cores busy (engine/llama/cpp/cpu_share.py)."
    )
    mix_adapters: bool = Field(
        True,
        description="Serve requests with different adapter sets in the same decode steps (needs loramux's llama.cpp "
        "patch, which scripts/setup.sh applies); off, or without the patch, adapter sets take turns.",
    )
    greedy_steps_ms: float = Field(
        50.0,
        ge=0,
        le=1000,
        description="While every running request decodes greedily (plain argmax), llama.cpp runs decode steps "
        "back to back for up to this long without returning to Python (loramux's steps.patch): the same tokens, "
        "~2-3% faster on a small CPU model; text then reaches clients in bursts of up to this long. 0: one step "
        "per call.",
    )
    group_steps: int = Field(
        8,
        ge=1,
        le=1000,
        description="Decode steps an adapter set keeps the context before the next set's turn, when sets take turns.",
    )
    prefix_cache_cells: int | None = Field(
        None,
        ge=0,
        le=100_000_000,
        description="KV cells that finished requests' prompts may keep in free slots for later requests with the "
        "same start and adapter set; unset = half the context's cells, 0 = off.",
    )
    queue_depth: int = Field(64, ge=0, le=100_000, description="Requests that may wait for a free sequence.")
    request_timeout: float = Field(600.0, gt=0, description="Seconds a request may take, queue wait included.")
    adapter_dirs: tuple[Path, ...] = Field(
        default_factory=lambda: (default_adapter_dir(),),
        description="Directories agents may load LoRA adapters from; nothing outside them is ever opened.",
    )
    preload_adapters: tuple[tuple[str, Path], ...] = Field(
        (), description="(name, path) adapters loaded at start; operator-given, so any path is allowed."
    )
    chat_template: Path | None = Field(
        None, description="A Jinja chat template file to use instead of the one in the model's GGUF."
    )
    adapter_cache_dir: Path | None = Field(
        default_factory=default_conversion_cache,
        description="Where PEFT and mlx-lm folders' GGUF conversions are kept, by the source files' SHA-256; "
        "None = convert on every load.",
    )
    auto_load_adapters: bool = Field(
        True,
        description="A request naming an adapter that is not loaded loads NAME.gguf or the folder NAME/ from an "
        "adapter directory first (the request waits; others do not).",
    )
    watch_adapters: bool = Field(
        False,
        description="Poll resident adapters' files and folders; one that changes is loaded again as a new version.",
    )
    max_loaded_adapters: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Most adapters resident at once; loading another evicts the least recently used idle, "
        "unpinned one. None = no limit.",
    )
    adapter_memory_mb: float | None = Field(
        None,
        gt=0,
        le=10_000_000,
        description="Most megabytes of adapter weights resident at once (as loaded), evicting as "
        "max_loaded_adapters does. None = no limit.",
    )

    @field_validator("context_per_sequence")
    @classmethod
    def _whole_kv_pages(cls, n: int) -> int:
        # llama.cpp pads each sequence's KV cache to 256 cells; ask only for what will really be given.
        if n % 256:
            raise ValueError(
                f"must be a multiple of 256 (llama.cpp pads KV caches to 256 cells), e.g. {n + 256 - n % 256}"
            )
        return n

    @field_validator("model_path")
    @classmethod
    def _model_file_exists(cls, path: Path) -> Path:
        if not path.is_file():
            raise ValueError(f"model file not found: {path}")
        return path

    @field_validator("chat_template")
    @classmethod
    def _template_file_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"chat template file not found: {path}")
        return path

    @property
    def context_size(self) -> int:
        """Total KV cells: each sequence gets its own `context_per_sequence` (kv_unified=False)."""
        return self.context_per_sequence * self.max_sequences

    @property
    def prefix_cache_budget(self) -> int:
        if self.prefix_cache_cells is None:
            return self.context_size // 2
        return self.prefix_cache_cells

    @property
    def max_in_flight(self) -> int:
        return self.max_sequences + self.queue_depth
