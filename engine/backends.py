"""Which backend serves an `InferenceEngine`: chosen by name, imported only when opened.

The front ends call `open_engine` and never import a backend, so a process that holds no model (a
router in front of remote replicas) need not load llama.cpp at all.
"""

from __future__ import annotations

from typing import Literal

from engine.config import EngineConfig
from engine.interface import InferenceEngine

Backend = Literal["llama"]
BACKENDS: tuple[Backend, ...] = ("llama",)


def open_engine(config: EngineConfig, backend: Backend = "llama") -> InferenceEngine:
    """An engine for `config`, not yet started: `async with open_engine(config) as engine: …`."""
    if backend == "llama":
        from engine.llama import LlamaEngine  # loads llama.cpp

        return LlamaEngine(config)
    raise ValueError(f"unknown engine backend {backend!r}; known: {', '.join(BACKENDS)}")
