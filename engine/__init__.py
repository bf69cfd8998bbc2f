"""loramux's engine interface: what the front ends (MCP tools, the OpenAI API) may know of an engine.

The protocol (`InferenceEngine`, `GenerationStream`), the request, result and info types, the errors,
the options any backend takes (`EngineConfig`) and `open_engine`, which imports the chosen backend
lazily. Importing this package loads no backend (and so no llama.cpp); the in-process llama.cpp backend
is `engine.llama` (`LlamaEngine`).
"""

from engine.backends import open_engine, serve_http_on_ray
from engine.config import EngineConfig
from engine.default_model import default_model_path
from engine.errors import (
    AdapterInUse,
    AdapterVersionMismatch,
    ConstraintFailed,
    EngineBusy,
    EngineError,
    EngineFailure,
    EngineStopped,
    InvalidRequest,
    NonFiniteOutput,
    OutputMismatch,
    PromptTooLong,
    RequestTimedOut,
    UnknownAdapter,
)
from engine.info import (
    AdapterInfo,
    AdapterListing,
    BackendMetric,
    Capabilities,
    EngineState,
    EngineStats,
    LoadedAdapter,
    ModelInfo,
    RequestStatus,
)
from engine.interface import GenerationStream, InferenceEngine
from engine.ray.options import RayOptions
from engine.request import (
    AdapterRef,
    ChatMessage,
    GenerateRequest,
    NamedToolChoice,
    SamplingParams,
    ToolCall,
    ToolFunction,
)
from engine.result import (
    FinishReason,
    GenerationResult,
    TextDelta,
    Timings,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
    Usage,
)

__all__ = [
    "AdapterInUse",
    "AdapterInfo",
    "AdapterListing",
    "AdapterRef",
    "AdapterVersionMismatch",
    "BackendMetric",
    "Capabilities",
    "ChatMessage",
    "ConstraintFailed",
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
    "LoadedAdapter",
    "ModelInfo",
    "NamedToolChoice",
    "NonFiniteOutput",
    "OutputMismatch",
    "PromptTooLong",
    "RayOptions",
    "RequestStatus",
    "RequestTimedOut",
    "SamplingParams",
    "TextDelta",
    "Timings",
    "TokenLogprob",
    "ToolCall",
    "ToolCallDelta",
    "ToolFunction",
    "TopLogprob",
    "UnknownAdapter",
    "Usage",
    "default_model_path",
    "open_engine",
    "serve_http_on_ray",
]
