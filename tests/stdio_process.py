"""Run `loramux` (stdio) as a subprocess the test owns, and talk to it with the SDK's `Client`.

The SDK's stdio_client owns the process it spawns; tests of signals and exit codes need the process
itself, so this transport speaks the same newline-delimited JSON-RPC over a process the test started.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import mcp_types
from mcp.shared.message import SessionMessage


async def start_stdio_server(*args: str) -> anyio.abc.Process:
    return await anyio.open_process([sys.executable, "-m", "mcp_server", *args])


@asynccontextmanager
async def process_transport(process: anyio.abc.Process) -> AsyncIterator[tuple]:
    """(read, write) streams over the process's stdout and stdin, for `Client(transport)`."""
    assert process.stdin is not None and process.stdout is not None
    stdin, stdout = process.stdin, process.stdout
    read_send, read_receive = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_send, write_receive = anyio.create_memory_object_stream[SessionMessage](0)

    async def read() -> None:
        async with read_send:
            buffer = b""
            try:
                async for chunk in stdout:
                    *lines, buffer = (buffer + chunk).split(b"\n")
                    for line in filter(None, lines):
                        await read_send.send(SessionMessage(mcp_types.jsonrpc_message_adapter.validate_json(line)))
            except anyio.ClosedResourceError:
                return  # the test closed the pipe (a killed client)

    async def write() -> None:
        async with write_receive:
            async for message in write_receive:
                data = message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                try:
                    await stdin.send(data.encode())
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        tg.start_soon(write)
        yield read_receive, write_send
        tg.cancel_scope.cancel()
