"""A request cancelled over streamable HTTP gets no answer: its SSE response just ends.

The MCP spec says the receiver of `notifications/cancelled` SHOULD NOT respond. On stdio the SDK keeps
silent; on the 2025-era streamable HTTP wire it answers `-32800 Request cancelled`, because it ends a
POST's SSE stream only with a response (and stores that response for a resuming client's replay). The
TypeScript client then logs "unknown message ID" for every cancel. Without an event store nothing is
replayed, so here the request's stream is closed instead: what was queued for it is still sent, then
the response ends. A JSON-body response (no stream to end) and a server with an event store keep the
SDK's answer.
"""

from __future__ import annotations

from mcp.server import streamable_http_manager
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.types import RequestId


class QuietCancelTransport(StreamableHTTPServerTransport):
    async def _terminate_unanswered_request(self, request_id: RequestId) -> None:
        if self.is_json_response_enabled or self._event_store is not None:
            await super()._terminate_unanswered_request(request_id)
            return
        streams = self._request_streams.get(str(request_id))
        if streams is not None:
            streams[0].close()  # the SSE writer sends what is buffered, then ends the response


def install() -> None:
    """Make the SDK's session manager build its transports from QuietCancelTransport (it names the class
    at each new session, stateful or stateless, so replacing its module's name is enough)."""
    streamable_http_manager.StreamableHTTPServerTransport = QuietCancelTransport  # type: ignore[misc]
