"""The OpenAI-compatible API, served by the same app and engine as /mcp (see http_app.py)."""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route, Router

from engine import InferenceEngine
from mcp_server.metrics import Metrics
from mcp_server.openai_api.completions import Completions
from mcp_server.openai_api.models import Models


def openai_routes(engine: InferenceEngine, metrics: Metrics) -> list[BaseRoute]:
    """The routes under /v1, in a router of their own that never redirects: an API client sends a POST
    once, and a path that does not match is a 404 error object (error_bodies.py), not a 307."""
    completions = Completions(engine, metrics)
    models = Models(engine)
    routes = [
        Route("/completions", completions.completions, methods=["POST"]),
        Route("/chat/completions", completions.chat_completions, methods=["POST"]),
        Route("/models", models.models, methods=["GET"]),
        Route("/models/{model:path}", models.model, methods=["GET"]),
        Route("/adapters", models.list_adapters, methods=["GET"]),
        Route("/adapters", models.load_adapter, methods=["POST"]),
        Route("/adapters/{name}", models.unload_adapter, methods=["DELETE"]),
    ]
    return [Mount("/v1", app=Router(routes, redirect_slashes=False))]
