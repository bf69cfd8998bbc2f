"""OpenAI error objects (`{"error": {"message", "type", "param", "code"}}`) with the status OpenAI's
clients expect: they raise BadRequestError on 400, NotFoundError on 404, RateLimitError on 429 (and
retry it after `Retry-After`), InternalServerError on 5xx. Every one is bounded (message ≤ 480
characters, param ≤ 100), whatever input it quotes."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from engine import (
    AdapterInUse,
    AdapterVersionMismatch,
    ConstraintFailed,
    EngineBusy,
    EngineError,
    EngineStopped,
    InvalidRequest,
    OutputMismatch,
    RequestTimedOut,
    UnknownAdapter,
)
from engine.errors import bounded, listed
from engine.request import nesting_depth
from mcp_server.arguments import describe

BUSY_RETRY_AFTER_S = 2
MAX_PARAM_CHARS = 100
# A request body's JSON nesting: chat requests need 5 levels, a response_format's schema 3 more than its
# own (engine.request.MAX_SCHEMA_DEPTH); deeper bodies only exhaust the parser's recursion.
MAX_BODY_DEPTH = 80


class OpenAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        message = bounded(message)
        super().__init__(message)
        self.status = status
        param = bounded(param, MAX_PARAM_CHARS) if param is not None else None
        self.body = {"message": message, "type": type, "param": param, "code": code}
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.body}, status_code=self.status, headers=self.headers)

    def event(self) -> dict[str, Any]:
        """The error as a streamed event, for errors after the stream began (the client raises it)."""
        return {"error": self.body}


async def read_json(request: Request) -> Any:
    too_deep = OpenAIError(400, f"the request body nests arrays and objects more than {MAX_BODY_DEPTH} levels deep")
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise OpenAIError(400, "the request body is not valid JSON") from None
    except RecursionError:  # the parser recurses once per level and gives up near 1,000
        raise too_deep from None
    if nesting_depth(body, MAX_BODY_DEPTH) > MAX_BODY_DEPTH:
        raise too_deep
    return body


def invalid(exc: ValidationError) -> OpenAIError:
    """A 400 naming each wrong field, in the sentences the MCP tools use."""
    first = exc.errors(include_url=False)[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    if param is None:  # a rule between fields: its own message says which
        return OpenAIError(400, "invalid request: " + first["msg"].removeprefix("Value error, "))
    message = describe(exc).replace("invalid arguments: ", "invalid request: ", 1)
    return OpenAIError(
        400, message.replace("is not an argument of this tool", "is not a field of this request"), param=param
    )


def model_not_found(model: str, known: list[str]) -> OpenAIError:
    return OpenAIError(
        404,
        f"the model {bounded(model, 80)!r} does not exist; use the base model or a loaded adapter: {listed(known)} "
        "(GET /v1/models lists them)",
        param="model",
        code="model_not_found",
    )


def from_engine(exc: EngineError) -> OpenAIError:
    if isinstance(exc, UnknownAdapter):
        return OpenAIError(404, str(exc), code="adapter_not_found")
    if isinstance(exc, AdapterInUse):
        return OpenAIError(409, str(exc), code="adapter_in_use")
    if isinstance(exc, AdapterVersionMismatch):
        return OpenAIError(409, str(exc), code="adapter_version_mismatch")
    if isinstance(exc, OutputMismatch):
        return OpenAIError(400, str(exc), param="response_format", code="output_does_not_match_schema")
    if isinstance(exc, ConstraintFailed):
        return OpenAIError(400, str(exc), param="response_format", code="constraint_failed")
    if isinstance(exc, InvalidRequest):
        return OpenAIError(400, str(exc))
    if isinstance(exc, EngineBusy):
        return OpenAIError(
            429, str(exc), type="server_busy", code="server_busy", headers={"Retry-After": str(BUSY_RETRY_AFTER_S)}
        )
    if isinstance(exc, RequestTimedOut):
        return OpenAIError(504, str(exc), type="timeout", code="timeout")
    if isinstance(exc, EngineStopped):
        return OpenAIError(503, str(exc), type="unavailable", code="unavailable")
    return OpenAIError(500, str(exc), type="server_error", code="server_error")
