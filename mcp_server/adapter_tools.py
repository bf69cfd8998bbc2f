"""list_adapters, load_adapter, unload_adapter: runtime LoRA management for agents."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from engine import Engine, EngineError
from engine.adapter_registry import AdapterInfo
from mcp_server.schemas import (
    AdapterDetails,
    AdapterListing,
    BaseModelDetails,
    LoadAdapterResult,
    UnloadAdapterResult,
)

AdapterName = Annotated[
    str, Field(min_length=1, max_length=64, description="Adapter name: letters, digits, '.', '_' or '-'.")
]


def details(info: AdapterInfo) -> AdapterDetails:
    return AdapterDetails(
        name=info.name,
        path=info.path,
        file_size=info.file_size,
        rank=info.rank,
        alpha=info.alpha,
        target_modules=list(info.target_modules),
        architecture=info.architecture,
        loaded_at=datetime.fromtimestamp(info.loaded_at, UTC).isoformat(timespec="seconds"),
        requests_served=info.requests_served,
        requests_in_flight=info.requests_in_flight,
    )


def register(mcp: MCPServer, engine: Engine) -> None:
    @mcp.tool(
        title="List LoRA adapters",
        description="Show the base model, the loaded LoRA adapters (usable in llm_inference's `adapter` or "
        "`adapters`) with their metadata and usage, and the adapter files load_adapter can load.",
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False),
    )
    async def list_adapters() -> AdapterListing:
        info = engine.model_info
        assert info is not None
        return AdapterListing(
            base_model=BaseModelDetails(
                file=Path(info.path).name,
                description=info.description,
                architecture=info.architecture,
                parameters=info.parameters,
                size_bytes=info.size_bytes,
                context_per_request=info.context_per_sequence,
                max_sequences=info.max_sequences,
            ),
            adapters=[details(a) for a in await engine.list_adapters()],
            adapter_directories=[str(d) for d in engine.config.adapter_dirs],
            available_files=await engine.available_adapter_files(),
        )

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
            str, Field(min_length=1, max_length=1024, description="Adapter file inside an adapter directory.")
        ],
    ) -> LoadAdapterResult:
        try:
            info, new = await engine.load_adapter(name, path)
        except EngineError as exc:
            raise ToolError(str(exc)) from exc
        return LoadAdapterResult(adapter=details(info), newly_loaded=new)

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
