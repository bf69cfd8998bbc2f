"""Every error answer under /v1 is an OpenAI error object, whoever made it.

The routes answer their own errors as OpenAI error objects (errors.py); everything else that can answer
a /v1 request does not: Starlette's router (404 for an unknown path, 405 for a wrong method), the body
limit (413), the Host/Origin checks (421/403), the bearer token check (401, an RFC 6750 body) and
Starlette's last-resort 500. OpenAI's clients and the tools built on them parse `error.message`; a
plain-text body becomes an opaque error there. This middleware, outside all of them, rewrites any /v1
answer of status 400 or more whose body is not already an OpenAI error object, keeping the headers that
matter to clients (Allow, WWW-Authenticate, Retry-After). A redirect under /v1 (Starlette's router
redirects a path it does not serve to its slash twin, e.g. `DELETE /v1/adapters/..`) is a 404: no
/v1 route redirects, and OpenAI clients read a bodiless redirect as an opaque failure.
"""

from __future__ import annotations

import json
import logging
from asyncio import CancelledError
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.errors import bounded

logger = logging.getLogger(__name__)

PREFIX = "/v1"
MAX_KEPT_BODY = 64 * 1024  # of a framework's error body, read for its message (they are a few bytes)

# status → (type, code), as OpenAI's API names them where it has the case
_KINDS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "bad_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    421: ("invalid_request_error", "misdirected_request"),
}


def is_openai_error(body: bytes) -> bool:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict) and isinstance(value.get("error"), dict) and "message" in value["error"]


def _message(status: int, scope: Scope, headers: Headers, body: bytes) -> str:
    path = bounded(scope.get("path", ""), 80)
    method = scope.get("method", "")
    if status == 404:
        return (
            f"{method} {path} is not served here; the OpenAI API here is GET /v1/models, POST /v1/completions, "
            "POST /v1/chat/completions, and GET/POST /v1/adapters"
        )
    if status == 405:
        return f"{method} is not allowed on {path}; use {headers.get('allow', 'another method')}"
    if status == 413:
        return "the request body is too large: 4 MiB at most"
    if status >= 500:
        return "the server failed on this request (its log has the details); retry it"
    try:  # the framework's own words: plain text, or an RFC 6750 JSON body
        value: Any = json.loads(body)
        text = value.get("error_description") or value.get("error") or "" if isinstance(value, dict) else ""
    except (ValueError, RecursionError):
        text = body.decode("utf-8", "replace")
    return str(text).strip() or f"the request was refused ({status})"


class OpenAIErrorBodies:
    """ASGI middleware: /v1 answers of status ≥ 400 leave as OpenAI error objects."""

    def __init__(self, app: ASGIApp, on_rewrite: Callable[[str, int], None] | None = None) -> None:
        self.app = app
        self._on_rewrite = on_rewrite  # (path, status) of each answer rewritten: the framework refused it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        held: Message | None = None  # an error's start, held until its body says whether to rewrite it
        body = bytearray()
        started = False  # the app began an answer (sent or held)

        async def send_or_rewrite(message: Message) -> None:
            nonlocal held, started
            started = started or message["type"] == "http.response.start"
            if message["type"] == "http.response.start" and message["status"] >= 300:
                held = message if message["status"] >= 400 else {**message, "status": 404, "headers": []}
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            if len(body) < MAX_KEPT_BODY:
                body.extend(message.get("body", b"")[: MAX_KEPT_BODY - len(body)])
            if message.get("more_body", False):
                return
            start, held = held, None
            if is_openai_error(bytes(body)):
                await send(start)
                await send({"type": "http.response.body", "body": bytes(body)})
                return
            await self._rewrite(scope, start, bytes(body), send)

        try:
            await self.app(scope, receive, send_or_rewrite)
        except BaseException as exc:
            # What escapes the app with no answer sent (a BaseException such as a Rust panic passes
            # Starlette's handler, which catches Exception) still gets an OpenAI error object.
            if started or isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit | CancelledError):
                raise
            logger.exception("an OpenAI request failed with %s", type(exc).__name__)
            start = {"type": "http.response.start", "status": 500, "headers": []}
            await self._rewrite(scope, start, b"", send)

    async def _rewrite(self, scope: Scope, start: Message, body: bytes, send: Send) -> None:
        status = start["status"]
        if self._on_rewrite is not None:
            self._on_rewrite(scope.get("path", ""), status)
        headers = Headers(raw=start["headers"])
        fallback = ("server_error", "server_error") if status >= 500 else ("invalid_request_error", "error")
        kind, code = _KINDS.get(status, fallback)
        error = {"message": bounded(_message(status, scope, headers, body)), "type": kind, "param": None, "code": code}
        content = json.dumps({"error": error}).encode()
        out = MutableHeaders(raw=[(k, v) for k, v in start["headers"] if k.lower() != b"content-length"])
        out["content-type"] = "application/json"
        out["content-length"] = str(len(content))
        await send({"type": "http.response.start", "status": status, "headers": out.raw})
        await send({"type": "http.response.body", "body": content})
