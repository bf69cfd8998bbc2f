"""The MCP server over one engine: the inference and adapter tools, and a stats resource."""

from __future__ import annotations

import copy
import dataclasses
import json
from importlib.metadata import version
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, Tool
from pydantic import ValidationError

from engine import Capabilities, InferenceEngine
from engine.errors import bounded
from mcp_server.arguments import describe, unknown_arguments
from mcp_server.disconnects import abandon_when_gone
from mcp_server.metrics import Metrics
from mcp_server.tools import adapters, batch, inference
from mcp_server.tools.inference import RefusedCall

INSTRUCTIONS = """\
loramux serves a small local language model. Call llm_inference with a `prompt` (one user turn) or
`messages` (a whole chat); for many independent inputs, one llm_batch call with all of them is much
faster than one call each. The model is small: keep tasks simple and specific. LoRA adapters change
its behaviour per call: list_adapters shows them, load_adapter and unload_adapter manage them at
runtime, and llm_inference's `adapter` selects one. Progress notifications carry the text as it grows."""


class LoramuxServer(MCPServer):
    """MCPServer whose tools refuse unknown argument names, explain invalid ones in plain sentences, and
    stop working for an HTTP caller that disconnected."""

    def __init__(self, *args: Any, engine: InferenceEngine, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._engine = engine
        self._metrics = metrics
        self._argument_names: dict[str, list[str]] = {}  # tool → its arguments, from the published schema

    async def list_tools(self) -> list[Tool]:
        """The tools, their schemas fitted to what the engine can do once it is ready (its Capabilities):
        how many adapters a call may mix, and whether output can be constrained."""
        tools = await super().list_tools()
        info = self._engine.model_info
        if info is None:
            return tools
        return [fitted(tool, info.capabilities) if tool.name == "llm_inference" else tool for tool in tools]

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context | None = None
    ) -> CallToolResult | Any:
        if not self._argument_names:
            self._argument_names = {t.name: list(t.input_schema.get("properties", {})) for t in await self.list_tools()}
        valid = self._argument_names.get(name)
        if valid is not None and (problem := unknown_arguments(arguments, valid)):
            self._refused(name)
            raise ToolError(problem)
        try:
            async with abandon_when_gone(context):  # every tool: a caller that went away stops its work
                return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            # refused before the engine: by the tool itself, or by the SDK's argument validation
            if isinstance(exc, RefusedCall) or isinstance(exc.__cause__, RefusedCall | ValidationError):
                self._refused(name)
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(describe(exc.__cause__)) from exc.__cause__
            raise ToolError(bounded(str(exc))) from exc.__cause__  # whatever input a message quotes

    def _refused(self, tool: str) -> None:
        if tool in (inference.TOOL_NAME, batch.TOOL_NAME):  # generation calls are what loramux_requests counts
            self._metrics.refused("mcp", tool, "invalid")

    def drop_prompts(self) -> None:
        """Serve (and so advertise) no prompts capability: MCPServer registers prompts/list and
        prompts/get whether or not it has prompts, and capabilities follow the registered handlers."""
        handlers = self._lowlevel_server._request_handlers
        for method in ("prompts/list", "prompts/get"):
            handlers.pop(method, None)

    async def serve_streams(self, read: Any, write: Any) -> None:
        """Serve one connection over a transport's streams (what run_stdio_async does with its own)."""
        lowlevel = self._lowlevel_server
        await lowlevel.run(read, write, lowlevel.create_initialization_options())


def fitted(tool: Tool, capabilities: Capabilities) -> Tool:
    """llm_inference's input schema as this engine serves it."""
    schema = copy.deepcopy(tool.input_schema)
    properties = schema.get("properties", {})
    for option in properties.get("adapters", {}).get("anyOf", []):
        if option.get("type") == "array":
            option["maxItems"] = capabilities.max_adapters_per_request if capabilities.adapters else 0
    unavailable = [] if capabilities.adapters else ["adapters", "adapter"]
    unavailable += [] if capabilities.constrained_output else ["json_schema", "grammar"]
    for name in unavailable:
        if name in properties:
            properties[name]["description"] = "Not available on this server's engine. " + properties[name].get(
                "description", ""
            )
    return tool.model_copy(update={"input_schema": schema})


def build_server(engine: InferenceEngine, *, own_engine: bool = False, metrics: Metrics | None = None) -> MCPServer:
    """The MCP server over `engine`. With own_engine, the server's lifespan starts and stops the engine
    (stdio); otherwise the hosting app does (HTTP, where one engine outlives session managers). Calls are
    counted in `metrics` (the HTTP app's, published at /metrics; on stdio nobody reads them)."""
    metrics = metrics or Metrics(engine)
    mcp = LoramuxServer(
        engine=engine,
        metrics=metrics,
        name="loramux",
        title="loramux local LLM",
        version=version("loramux"),
        instructions=INSTRUCTIONS,
        lifespan=(lambda _server: engine) if own_engine else None,
    )
    mcp.drop_prompts()
    inference.register(mcp, engine, metrics)
    batch.register(mcp, engine, metrics)
    adapters.register(mcp, engine)

    @mcp.resource(
        "loramux://stats",
        name="engine_stats",
        title="Engine statistics",
        description="Running and waiting requests, decode steps, sequences per step, tokens generated.",
        mime_type="application/json",
    )
    def engine_stats() -> str:
        stats = engine.stats()
        # the backend's own numbers as a map (name → value); their descriptions are on /metrics
        return json.dumps(dataclasses.asdict(stats) | {"backend": {m.name: m.value for m in stats.backend}})

    return mcp
