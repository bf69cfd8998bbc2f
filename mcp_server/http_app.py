"""One Starlette app for HTTP over one engine: MCP at /mcp (streamable HTTP, SSE responses), the
OpenAI-compatible API under /v1, Prometheus metrics at /metrics and GET /health.

The app owns the engine's lifetime. The engine starts in the background, so the port answers at once:
/health says 503 "starting" while the model loads (calls made meanwhile wait for it), 200 "ready"
once it serves, and 503 again when stopping or after an engine failure. MCP tool calls and OpenAI
requests go to the same engine, so they share decode steps, and are counted in the same metrics.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from engine import EngineState, InferenceEngine
from mcp_server.disconnects import DisconnectWatch
from mcp_server.http_security import guarded, transport_security
from mcp_server.metrics import ADAPTER_SET_LABEL_CAP, Metrics, refusal_outcome
from mcp_server.openai_api import openai_routes
from mcp_server.openai_api.error_bodies import OpenAIErrorBodies
from mcp_server.quiet_cancel import install as install_quiet_cancel
from mcp_server.tools.server import build_server

logger = logging.getLogger(__name__)

MCP_PATH = "/mcp"
METRICS_PATH = "/metrics"
GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})


def build_http_app(
    engine: InferenceEngine,
    *,
    host: str = "127.0.0.1",
    allowed_hosts: Sequence[str] = (),
    auth_token: str | None = None,
    on_engine_failure: Callable[[BaseException], None] | None = None,
    metrics_adapter_sets: int = ADAPTER_SET_LABEL_CAP,
    stateless: bool = False,
) -> ASGIApp:
    """The app, behind Host/Origin checks on every route, the optional token, and a body limit; every
    error under /v1, theirs included, is an OpenAI error object. `stateless`: no MCP sessions, so any
    of several front ends can answer any request (behind Ray Serve's proxy)."""
    install_quiet_cancel()
    metrics = Metrics(engine, adapter_set_cap=metrics_adapter_sets)
    mcp = build_server(engine, metrics=metrics)
    mcp_app = mcp.streamable_http_app(
        streamable_http_path=MCP_PATH,
        host=host,
        transport_security=transport_security(host, allowed_hosts),
        stateless_http=stateless,
    )

    async def health(_request: Request) -> JSONResponse:
        state = engine.state
        stats = engine.stats()
        info = engine.model_info
        return JSONResponse(
            {
                "status": state.value,
                "model": info.name if info else None,
                "backend": info.backend if info else None,
                "gpu_layers": info.gpu_layers if info else None,
                "mixed_adapter_sets": info.capabilities.mixed_adapter_sets if info else None,
                "capabilities": info.capabilities.model_dump() if info else None,
                "running": stats.running,
                "waiting": stats.waiting,
                "steps": stats.steps,
                "tokens_generated": stats.tokens_generated,
                "sequences_per_step": stats.sequences_per_step,
                "replicas": {"ready": stats.replicas_ready, "wanted": stats.replicas_wanted},
            },
            # ready: the engine serves, on at least one replica (Ray restarts a failed one meanwhile)
            status_code=200 if state is EngineState.READY and stats.replicas_ready > 0 else 503,
        )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        stop = anyio.Event()

        async def run_engine() -> None:
            try:
                async with engine:
                    await stop.wait()
            except Exception as exc:
                logger.error("the engine could not start: %s", exc)
                if on_engine_failure is not None:
                    on_engine_failure(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_engine)
            async with mcp.session_manager.run():
                yield
            stop.set()

    async def prometheus(_request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route(METRICS_PATH, prometheus, methods=["GET"]),
        *openai_routes(engine, metrics),
        *mcp_app.routes,
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app = DisconnectWatch(RefuseNewSessions(app, engine), MCP_PATH)

    def refused_by_framework(path: str, status: int) -> None:
        if path in GENERATION_PATHS:  # a generation request refused before its route (body limit, token, …)
            metrics.refused("openai", path, refusal_outcome(status))

    guarded_app = guarded(app, bind_host=host, allowed_hosts=allowed_hosts, token=auth_token)
    return OpenAIErrorBodies(guarded_app, on_rewrite=refused_by_framework)


class RefuseNewSessions:
    """While the server shuts down (or after the engine failed), a new MCP session gets 503 at once.

    A new session is a POST with neither a session id nor a protocol version header (an `initialize`).
    Everything else goes through: open sessions' cancellations and listings, and 2026-era clients, whose
    every request is a new exchange; their new calls get the engine's "shutting down" tool error."""

    def __init__(self, app: ASGIApp, engine: InferenceEngine) -> None:
        self.app = app
        self._engine = engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == MCP_PATH
            and self._engine.state in (EngineState.STOPPING, EngineState.STOPPED, EngineState.FAILED)
            and not any(name in (b"mcp-session-id", b"mcp-protocol-version") for name, _ in scope["headers"])
        ):
            reason = "failed" if self._engine.state is EngineState.FAILED else "is shutting down"
            response = JSONResponse(
                {"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": f"the server {reason}"}},
                status_code=503,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
