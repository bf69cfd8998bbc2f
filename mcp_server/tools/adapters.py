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
        description="Show the base model, the resident LoRA adapters (usable in llm_inference's `adapter` or "
        "`adapters`) with their metadata, usage, pin and last use, the adapter files and folders on disk that "
        "load_adapter can load (and that llm_inference loads on first use when auto_load is on), and the "
        "residency budget.",
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False),
    )
    async def list_adapters() -> AdapterListing:
        try:
            return await engine.list_adapters()
        except EngineError as exc:
            raise ToolError(str(exc)) from exc

    @mcp.tool(
        title="Load a LoRA adapter",
        description="Load a LoRA adapter under a name, without restarting; requests then select it by name. "
        "`path` is a GGUF file, or a PEFT folder (adapter_config.json + adapter_model.safetensors: Hugging Face "
        "PEFT, Unsloth, axolotl) or an mlx-lm folder (adapter_config.json + adapters.safetensors), converted on "
        "load; a file name or a path inside an adapter directory (list_adapters shows them). `pin` keeps it "
        "resident when the residency budget evicts idle adapters. Loading the same name and content again "
        "does nothing (but may pin it); other content under a loaded name is a new version: later calls get "
        "it, running calls finish on the old one. `expect_sha256` makes that a compare-and-swap: refused unless "
        "the resident version has this sha256 (list_adapters shows it).",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        ),
    )
    async def load_adapter(
        name: AdapterName,
        path: Annotated[
            str,
            Strict(),
            Field(min_length=1, max_length=1024, description="Adapter file or folder inside an adapter directory."),
        ],
        pin: Annotated[bool, Strict(), Field(description="Never evict it to make room for other adapters.")] = False,
        expect_sha256: Annotated[
            str | None,
            Strict(),
            Field(
                pattern="^[0-9a-fA-F]{64}$",
                description="Reload only if the resident version of `name` has this sha256 (compare-and-swap).",
            ),
        ] = None,
    ) -> LoadedAdapter:
        try:
            return await engine.load_adapter(name, path, pin=pin, expect_sha256=expect_sha256)
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
