"""GET /v1/models (the base model and each loaded adapter, as vLLM lists LoRA modules) and the adapter
routes GET/POST /v1/adapters, DELETE /v1/adapters/{name}: the MCP adapter tools over HTTP, with the
same directory confinement and validation (both call the same engine methods)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from engine import AdapterListing, EngineError, InferenceEngine
from mcp_server.openai_api.errors import OpenAIError, from_engine, invalid, model_not_found, read_json
from mcp_server.openai_api.schemas import AdapterLoad

OWNER = "loramux"


class Models:
    def __init__(self, engine: InferenceEngine) -> None:
        self._engine = engine

    async def models(self, _request: Request) -> JSONResponse:
        try:
            listing = await self._listing()
        except OpenAIError as exc:
            return exc.response()
        return JSONResponse({"object": "list", "data": _models(listing)})

    async def model(self, request: Request) -> JSONResponse:
        """GET /v1/models/{model}: one entry of the list, as OpenAI's `models.retrieve` reads it."""
        try:
            listing = await self._listing()
        except OpenAIError as exc:
            return exc.response()
        wanted = request.path_params["model"]
        models = _models(listing)
        for entry in models:
            if wanted in (entry["id"], entry["id"].removesuffix(".gguf")):
                return JSONResponse(entry)
        return model_not_found(wanted, [m["id"] for m in models]).response()

    async def list_adapters(self, _request: Request) -> JSONResponse:
        try:
            listing = await self._listing()
        except OpenAIError as exc:
            return exc.response()
        return JSONResponse(listing.model_dump(mode="json"))

    async def load_adapter(self, request: Request) -> JSONResponse:
        try:
            try:
                load = AdapterLoad.model_validate(await read_json(request))
            except ValidationError as exc:
                raise invalid(exc) from None
            try:
                loaded = await self._engine.load_adapter(
                    load.name, load.path, pin=load.pin, expect_sha256=load.expect_sha256
                )
            except EngineError as exc:
                raise from_engine(exc) from None
        except OpenAIError as exc:
            return exc.response()
        return JSONResponse(loaded.model_dump(mode="json"), status_code=201 if loaded.newly_loaded else 200)

    async def unload_adapter(self, request: Request) -> JSONResponse:
        try:
            info = await self._engine.unload_adapter(request.path_params["name"])
        except EngineError as exc:
            return from_engine(exc).response()
        return JSONResponse({"name": info.name, "unloaded": True, "requests_served": info.requests_served})

    async def _listing(self) -> AdapterListing:
        try:
            return await self._engine.list_adapters()
        except EngineError as exc:
            raise from_engine(exc) from None


def _models(listing: AdapterListing) -> list[dict[str, Any]]:
    """The base model, then each loaded adapter (as vLLM lists LoRA modules)."""
    base = listing.base_model
    created = int(min((a.loaded_at.timestamp() for a in listing.adapters), default=0))
    data = [_model(base.name, created, root=base.name, parent=None)]
    data += [
        _model(a.name, int(a.loaded_at.timestamp()), root=Path(a.path).name, parent=base.name) for a in listing.adapters
    ]
    return data


def _model(id: str, created: int, *, root: str, parent: str | None) -> dict[str, Any]:
    return {"id": id, "object": "model", "created": created, "owned_by": OWNER, "root": root, "parent": parent}
