"""One Starlette app for HTTP: MCP at /mcp (streamable HTTP, SSE responses) and GET /health.

The app owns the engine's lifetime in its lifespan, so later endpoints (an OpenAI-compatible API,
/metrics) are more routes on the same app over the same engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from engine import Engine

MCP_PATH = "/mcp"


def build_http_app(engine: Engine, mcp: MCPServer, *, host: str = "127.0.0.1") -> Starlette:
    mcp_app = mcp.streamable_http_app(streamable_http_path=MCP_PATH, host=host)

    async def health(_request: Request) -> JSONResponse:
        stats = engine.stats()
        info = engine.model_info
        return JSONResponse(
            {
                "status": "ok",
                "model": info.path if info else None,
                "running": stats.running,
                "waiting": stats.waiting,
                "steps": stats.steps,
                "tokens_generated": stats.tokens_generated,
                "sequences_per_step": stats.sequences_per_step,
            }
        )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with engine, mcp.session_manager.run():
            yield

    return Starlette(routes=[Route("/health", health, methods=["GET"]), *mcp_app.routes], lifespan=lifespan)
