"""Abort a call whose HTTP client has gone away.

On streamable HTTP a tool call runs in its MCP session, not in the POST that carries it, so a client
that closes the response stream without `notifications/cancelled` (killed, timed out, network gone)
would leave its generation running to max_tokens, in decode steps every other agent shares.
`DisconnectWatch` (ASGI middleware) gives each /mcp POST a `ClientLink`, marked gone when the server
reads `http.disconnect` for it (the SSE response listens for exactly that); `abandon_when_gone`, around
every tool call (server.py), cancels the call's work then. A cancelled or ended session (DELETE,
stdin closed) already cancels its calls through the SDK.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

SCOPE_KEY = "loramux.client_gone"


class ClientLink:
    """One HTTP request's client: gone once the server has read its disconnect; calls riding on that
    request register their cancel scopes here."""

    def __init__(self) -> None:
        self.gone = False
        self.scopes: set[anyio.CancelScope] = set()

    def disconnected(self) -> None:
        self.gone = True
        for scope in self.scopes:
            scope.cancel()


class DisconnectWatch:
    def __init__(self, app: ASGIApp, path: str) -> None:
        self.app = app
        self._path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self._path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        link = scope[SCOPE_KEY] = ClientLink()

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                link.disconnected()
            return message

        await self.app(scope, watched_receive, send)


@asynccontextmanager
async def abandon_when_gone(ctx: Context | None) -> AsyncIterator[None]:
    """Run the body; if the HTTP client that asked disconnects meanwhile, cancel it and raise ToolError
    (an answer nobody reads, which ends the call in the SDK like any other)."""
    request = ctx.request_context.request if ctx is not None else None
    link: ClientLink | None = getattr(request, "scope", {}).get(SCOPE_KEY)  # None on stdio
    if link is None:  # stdio, in-process, or a direct call: the SDK cancels on session end
        yield
        return
    with anyio.CancelScope() as scope:
        link.scopes.add(scope)
        if link.gone:
            scope.cancel()
        try:
            yield
        finally:
            link.scopes.discard(scope)
    if scope.cancelled_caught:
        logger.info("a client disconnected during its call: the request was aborted")
        raise ToolError("the client disconnected; the request was aborted")
