"""The in-process llama.cpp backend: one core thread owns the model and its context; every decode step
serves every running request, whatever its adapter set.

    scheduling/  pure Python: the scheduler, sequences, step plans, prefix-cache bookkeeping, text streams
    cpp/         the llama.cpp side: the model runner, sampling, penalties, constraints, context adapters,
                 the vocabulary, loramux's patch, logs, devices, the CPU share
    adapters/    LoRA adapter files: confinement, the GGUF header, validation, loading, the registry
    engine.py    LlamaEngine, the async facade implementing engine.InferenceEngine
    core.py      EngineCore: commands between steps, one step at a time (core_thread.py runs it)

Importing a subpackage does not load llama.cpp; `LlamaEngine` does (it is imported on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.llama.engine import LlamaEngine, RequestStream

__all__ = ["LlamaEngine", "RequestStream"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from engine.llama import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
