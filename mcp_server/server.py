"""The MCP server over one engine: the inference and adapter tools, and a stats resource."""

from __future__ import annotations

import dataclasses
import json

from mcp.server.mcpserver import MCPServer

from engine import InferenceEngine
from mcp_server import adapter_tools, inference_tool

INSTRUCTIONS = """\
loramux serves a small local language model. Call llm_inference with a `prompt` (one user turn) or
`messages` (a whole chat). The model is small: keep tasks simple and specific. LoRA adapters change
its behaviour per call: list_adapters shows them, load_adapter and unload_adapter manage them at
runtime, and llm_inference's `adapter` selects one. Progress notifications carry the text as it grows."""


def build_server(engine: InferenceEngine, *, own_engine: bool = False) -> MCPServer:
    """The MCP server over `engine`. With own_engine, the server's lifespan starts and stops the engine
    (stdio); otherwise the hosting app does (HTTP, where one engine outlives session managers)."""
    mcp = MCPServer(
        name="loramux",
        title="loramux local LLM",
        instructions=INSTRUCTIONS,
        lifespan=(lambda _server: engine) if own_engine else None,
    )
    inference_tool.register(mcp, engine)
    adapter_tools.register(mcp, engine)

    @mcp.resource(
        "loramux://stats",
        name="engine_stats",
        title="Engine statistics",
        description="Running and waiting requests, decode steps, sequences per step, tokens generated.",
        mime_type="application/json",
    )
    def engine_stats() -> str:
        return json.dumps(dataclasses.asdict(engine.stats()))

    return mcp
