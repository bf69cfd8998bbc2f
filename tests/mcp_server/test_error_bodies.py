"""OpenAIErrorBodies: every /v1 answer of status >= 400 leaves as an OpenAI error object, whatever made
it; other paths and OpenAI error objects pass untouched; what escapes the app still gets an answer."""

from __future__ import annotations

import json

import httpx2
import pytest
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse
from starlette.types import Receive, Scope, Send

from mcp_server.openai_api.error_bodies import OpenAIErrorBodies

pytestmark = pytest.mark.anyio


class PanicException(BaseException):  # named like pyo3's: a BaseException that passes `except Exception`
    pass


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    path = scope["path"]
    if path.endswith("/panic"):
        raise PanicException("a Rust panic")
    if path.endswith("/openai"):
        body = {"error": {"message": "mine", "type": "invalid_request_error", "param": None, "code": None}}
        response = JSONResponse(body, status_code=400)
    elif path.endswith("/moved"):  # as Starlette's router redirects a path to its slash twin
        response = RedirectResponse(path + "/", status_code=307)
    elif path.endswith("/allowed"):
        response = PlainTextResponse("Method Not Allowed", status_code=405, headers={"Allow": "POST"})
    else:
        response = PlainTextResponse("Not Found", status_code=404)
    await response(scope, receive, send)


async def fetch(path: str, method: str = "GET") -> httpx2.Response:
    transport = httpx2.ASGITransport(OpenAIErrorBodies(app), raise_app_exceptions=False)
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path)


async def test_framework_errors_under_v1_become_openai_objects() -> None:
    missing = await fetch("/v1/embeddings", "POST")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert "POST /v1/embeddings is not served here" in missing.json()["error"]["message"]
    wrong = await fetch("/v1/allowed")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["message"] == "GET is not allowed on /v1/allowed; use POST"
    assert int(wrong.headers["content-length"]) == len(wrong.content)


async def test_a_redirect_under_v1_is_a_404_object() -> None:
    moved = await fetch("/v1/moved", "DELETE")
    assert moved.status_code == 404 and "location" not in moved.headers
    assert "DELETE /v1/moved is not served here" in moved.json()["error"]["message"]
    elsewhere = await fetch("/mcp/moved", "POST")
    assert elsewhere.status_code == 307  # MCP clients follow it to /mcp


async def test_openai_objects_and_other_paths_pass_untouched() -> None:
    mine = await fetch("/v1/openai")
    assert mine.json()["error"]["message"] == "mine"
    elsewhere = await fetch("/mcp/missing")
    assert elsewhere.status_code == 404 and elsewhere.text == "Not Found"


async def test_what_escapes_the_app_still_gets_a_500_object() -> None:
    answer = await fetch("/v1/panic")
    assert answer.status_code == 500 and answer.json()["error"]["type"] == "server_error"
    assert len(json.dumps(answer.json())) < 1024
