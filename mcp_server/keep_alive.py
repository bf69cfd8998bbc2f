"""Calls that never go silent: while a request has no text yet (queued, reading a long prompt), say
what is happening at least every KEEP_ALIVE_S. The MCP tool sends progress notifications, the OpenAI
routes SSE comments; clients (Claude's give up after ~60 s of silence) and proxies count both."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio

from engine import GenerationStream, RequestStatus

KEEP_ALIVE_S = 5.0


async def keep_alive(
    stream: GenerationStream, last_sent: Callable[[], float], beat: Callable[[RequestStatus], Awaitable[None]]
) -> None:
    """Until the stream's text flows, call `beat` with its status whenever nothing was sent (per
    `last_sent`, a time.monotonic value) for KEEP_ALIVE_S. Run it beside the stream; cancel it after."""
    while True:
        await anyio.sleep(max(0.0, last_sent() + KEEP_ALIVE_S - time.monotonic()))
        status = stream.status()
        if status.phase == "generating":
            return
        if time.monotonic() - last_sent() >= KEEP_ALIVE_S:
            await beat(status)
