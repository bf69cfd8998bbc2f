"""loramux's inference engine: one resident llama.cpp model, continuously batched requests. Knows nothing of MCP."""

from engine.backend import ModelInfo
from engine.config import EngineConfig
from engine.default_model import default_model_path
from engine.engine import Engine, RequestStream
from engine.errors import (
    EngineBusy,
    EngineError,
    EngineFailure,
    EngineStopped,
    InvalidRequest,
    PromptTooLong,
    RequestTimedOut,
)
from engine.request import AdapterRef, ChatMessage, GenerateRequest, SamplingParams
from engine.result import FinishReason, GenerationResult, TextDelta, Timings, Usage
from engine.stats import EngineStats

__all__ = [
    "AdapterRef",
    "ChatMessage",
    "Engine",
    "EngineBusy",
    "EngineConfig",
    "EngineError",
    "EngineFailure",
    "EngineStats",
    "EngineStopped",
    "FinishReason",
    "GenerateRequest",
    "GenerationResult",
    "InvalidRequest",
    "ModelInfo",
    "PromptTooLong",
    "RequestStream",
    "RequestTimedOut",
    "SamplingParams",
    "TextDelta",
    "Timings",
    "Usage",
    "default_model_path",
]
