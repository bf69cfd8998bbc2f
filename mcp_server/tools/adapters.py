"""list_adapters, load_adapter, unload_adapter: runtime LoRA management for agents."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field, Strict

from engine import AdapterListing, AdapterRef, EngineError, InferenceEngine, LoadedAdapter
from mcp_server.tools.schemas import UnloadAdapterResult

_name = AdapterRef.model_fields["name"]
AdapterName = Annotated[str, *_name.metadata, Field(description="Adapter name: letters, digits, '.', '_' or '-'.")]


def register(mcp: MCPServer, engine: InferenceEngine) -> None:
    @mcp.tool(
        title="List LoRA adapters",
        description="Show the base model, the loaded LoRA adapters (usable in llm_inference's `adapter` or "
        "`adapters`) with their metadata and usage, and the adapter files load_adapter can load.",
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False),
    )
    async def list_adapters() -> AdapterListing:
        try:
            return await engine.list_adapters()
        except EngineError as exc:
            raise ToolError(str(exc)) from exc

    @mcp.tool(
        title="Load a LoRA adapter",
        description="Load a LoRA adapter file under a name, without restarting; requests then select it by "
        "name. `path` is a file name or a path inside an adapter directory (list_adapters shows the files). "
        "Loading the same name and file again does nothing.",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        ),
    )
    async def load_adapter(
        name: AdapterName,
        path: Annotated[
            str,
            Strict(),
            Field(min_length=1, max_length=1024, description="Adapter file inside an adapter directory."),
        ],
    ) -> LoadedAdapter:
        try:
            return await engine.load_adapter(name, path)
        except EngineError as exc:
            raise ToolError(str(exc)) from exc

    @mcp.tool(
        title="Unload a LoRA adapter",
        description="Unload a LoRA adapter to free its memory. Refused while queued or running requests use "
        "it (list_adapters shows requests_in_flight); retry once they have finished.",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
        ),
    )
    async def unload_adapter(name: AdapterName) -> UnloadAdapterResult:
        try:
            info = await engine.unload_adapter(name)
        except EngineError as exc:
            raise ToolError(str(exc)) from exc
        return UnloadAdapterResult(name=info.name, unloaded=True, requests_served=info.requests_served)
