"""The one engine interface the front ends (MCP tools, later an OpenAI-compatible API) depend on.

`LlamaEngine` implements it over an in-process llama.cpp model. Nothing here names llama.cpp, sequence
ids, KV cells or an engine's configuration, so a remote serving engine with its own scheduler can
implement it too, without any change to `mcp_server/`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Protocol, Self

from engine.info import (
    AdapterInfo,
    AdapterListing,
    EngineState,
    EngineStats,
    LoadedAdapter,
    ModelInfo,
    RequestStatus,
)
from engine.request import GenerateRequest
from engine.result import GenerationResult, TextDelta


class GenerationStream(Protocol):
    """`async with engine.generate(req) as stream: async for delta in stream: …`, then `stream.result`.

    Entering submits the request (errors about the request itself are raised there); iterating yields
    text deltas and raises an EngineError if the request fails; leaving early aborts it."""

    result: GenerationResult | None

    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
    def __aiter__(self) -> AsyncIterator[TextDelta]: ...
    def abort(self) -> None:
        """Stop generating; the stream then ends with finish_reason 'cancelled'. Idempotent."""
        ...

    def status(self) -> RequestStatus:
        """Where the request stands (queued, reading its prompt, generating): for keep-alive messages."""
        ...


class InferenceEngine(Protocol):
    """`async with engine:` starts it (calls made while it starts wait) and stops it on exit."""

    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
    @property
    def state(self) -> EngineState: ...
    @property
    def model_info(self) -> ModelInfo | None:
        """The served model; None until the engine is ready."""
        ...

    async def drain(self, grace_s: float) -> int:
        """Refuse new work; give open requests up to `grace_s` seconds, then end the rest with a
        "shutting down" error (returns how many). The engine stays up until `async with` exits."""
        ...

    def generate(self, request: GenerateRequest) -> GenerationStream: ...
    async def load_adapter(
        self, name: str, path: str, *, pin: bool = False, expect_sha256: str | None = None
    ) -> LoadedAdapter: ...
    async def unload_adapter(self, name: str) -> AdapterInfo: ...
    async def list_adapters(self) -> AdapterListing: ...
    def stats(self) -> EngineStats: ...
