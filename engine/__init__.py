"""loramux's inference engine: one resident llama.cpp model, continuously batched requests. Knows nothing of MCP.

Front ends depend on `InferenceEngine` (interface.py); `LlamaEngine` (alias `Engine`) implements it.
"""

from engine.config import EngineConfig
from engine.default_model import default_model_path
from engine.engine import Engine, LlamaEngine, RequestStream
from engine.errors import (
    AdapterInUse,
    ConstraintFailed,
    EngineBusy,
    EngineError,
    EngineFailure,
    EngineStopped,
    InvalidRequest,
    NonFiniteOutput,
    PromptTooLong,
    RequestTimedOut,
    UnknownAdapter,
)
from engine.info import (
    AdapterInfo,
    AdapterListing,
    EngineState,
    EngineStats,
    LoadedAdapter,
    ModelInfo,
    RequestStatus,
)
from engine.interface import GenerationStream, InferenceEngine
from engine.request import AdapterRef, ChatMessage, GenerateRequest, SamplingParams
from engine.result import FinishReason, GenerationResult, TextDelta, Timings, Usage

__all__ = [
    "AdapterInUse",
    "AdapterInfo",
    "AdapterListing",
    "AdapterRef",
    "ChatMessage",
    "ConstraintFailed",
    "Engine",
    "EngineBusy",
    "EngineConfig",
    "EngineError",
    "EngineFailure",
    "EngineState",
    "EngineStats",
    "EngineStopped",
    "FinishReason",
    "GenerateRequest",
    "GenerationResult",
    "GenerationStream",
    "InferenceEngine",
    "InvalidRequest",
    "LlamaEngine",
    "LoadedAdapter",
    "ModelInfo",
    "NonFiniteOutput",
    "PromptTooLong",
    "RequestStatus",
    "RequestStream",
    "RequestTimedOut",
    "SamplingParams",
    "TextDelta",
    "Timings",
    "UnknownAdapter",
    "Usage",
    "default_model_path",
]
