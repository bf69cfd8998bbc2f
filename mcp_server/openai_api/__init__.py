"""The OpenAI-compatible API, served by the same app and engine as /mcp (see http_app.py)."""

from __future__ import annotations

from starlette.routing import Route

from engine import InferenceEngine
from mcp_server.metrics import Metrics
from mcp_server.openai_api.completions import Completions
from mcp_server.openai_api.models import Models


def openai_routes(engine: InferenceEngine, metrics: Metrics) -> list[Route]:
    completions = Completions(engine, metrics)
    models = Models(engine)
    return [
        Route("/v1/completions", completions.completions, methods=["POST"]),
        Route("/v1/chat/completions", completions.chat_completions, methods=["POST"]),
        Route("/v1/models", models.models, methods=["GET"]),
        Route("/v1/adapters", models.list_adapters, methods=["GET"]),
        Route("/v1/adapters", models.load_adapter, methods=["POST"]),
        Route("/v1/adapters/{name}", models.unload_adapter, methods=["DELETE"]),
    ]
