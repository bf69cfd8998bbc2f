"""MCP over stdin/stdout, with an end that loses no answer.

The SDK's own `run_stdio_async` reads stdin in an anyio worker thread that can neither be cancelled nor
left behind (it is not a daemon), so a server stopping while its client keeps stdin open would wait for
the client's next line. Here stdin is read by a daemon thread and `StdinLines.stop()` ends the stream
at once. Every request read is remembered until its answer has been handed to the stdout writer
(`AnswerLedger`), so a shutdown ends the session only once the answers of the calls it let finish (or
ended with a "shutting down" error) are out. stdout itself stays the SDK's: it is claimed and guarded
against stray writes as usual.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp.types import JSONRPCError, JSONRPCResponse

from engine import InferenceEngine
from mcp_server.shutdown import stop_on_signals
from mcp_server.tools.server import LoramuxServer

LINE_BUFFER = 16  # lines read ahead of the server; the reader thread waits beyond this
READ_SIZE = 1 << 16
ANSWER_WAIT_S = 5.0  # after the drain, how long the last answers may take to reach the stdout writer


async def serve_stdio(server: LoramuxServer, engine: InferenceEngine, grace_s: float) -> None:
    """Serve until the client closes stdin, or a signal's graceful shutdown has answered every call."""
    ledger = AnswerLedger()
    stdin = StdinLines(sys.stdin.fileno(), ledger)
    stdin.start()

    async def close() -> None:
        with anyio.move_on_after(ANSWER_WAIT_S):
            await ledger.wait_answered()
        stdin.stop()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_on_signals, engine, grace_s, close)
        async with stdio_server(stdin=stdin) as (read, write):  # type: ignore[arg-type]
            await server.serve_streams(read, LedgerWriteStream(write, ledger))
        tg.cancel_scope.cancel()


class AnswerLedger:
    """The JSON-RPC requests read from the client and not yet answered (or cancelled by it)."""

    def __init__(self) -> None:
        self._open: set[str] = set()
        self._empty = anyio.Event()
        self._empty.set()

    def read(self, line: str) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            return  # the SDK answers or drops it; nothing to wait for
        if not isinstance(message, dict) or not isinstance(message.get("method"), str):
            return
        if "id" in message:
            self._open.add(json.dumps(message["id"]))
            self._empty = anyio.Event() if self._empty.is_set() else self._empty
        elif message["method"] == "notifications/cancelled" and isinstance(message.get("params"), dict):
            self._settle(message["params"].get("requestId"))  # a cancelled request gets no answer

    def answered(self, message: Any) -> None:
        if isinstance(message, JSONRPCResponse | JSONRPCError) and message.id is not None:
            self._settle(message.id)

    def _settle(self, request_id: Any) -> None:
        self._open.discard(json.dumps(request_id))
        if not self._open:
            self._empty.set()

    async def wait_answered(self) -> None:
        await self._empty.wait()


class StdinLines:
    """stdin's lines as an async iterator for the SDK's stdio transport, until end of file or stop()."""

    def __init__(self, fd: int, ledger: AnswerLedger) -> None:
        self._fd = fd
        self._ledger = ledger
        self._send, self._receive = anyio.create_memory_object_stream[str](LINE_BUFFER)
        self._scope: anyio.CancelScope | None = None
        self._stopped = False

    def start(self) -> None:
        token = anyio.lowlevel.current_token()
        threading.Thread(target=self._read, args=(token,), name="loramux-stdin", daemon=True).start()

    def _read(self, token: anyio.lowlevel.EventLoopToken) -> None:
        # Raw reads of the descriptor: a daemon thread blocked inside sys.stdin's buffered reader would
        # hold its lock when the interpreter finalizes, which aborts the process (SIGABRT).
        try:
            for line in _lines(self._fd):
                anyio.from_thread.run(self._send.send, line, token=token)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, RuntimeError):
            return  # the server stopped reading, or its loop has ended
        try:
            anyio.from_thread.run_sync(self._send.close, token=token)  # end of file
        except RuntimeError:
            pass

    def stop(self) -> None:
        """Read no further line: the session ends as if the client had closed stdin."""
        self._stopped = True
        self._receive.close()
        if self._scope is not None:
            self._scope.cancel()

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        with anyio.CancelScope() as self._scope:
            if not self._stopped:
                try:
                    line = await self._receive.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    raise StopAsyncIteration from None
                self._ledger.read(line)
                return line
        raise StopAsyncIteration


def _lines(fd: int) -> Iterator[str]:
    partial: list[bytes] = []  # a long line arrives in many chunks: joined once, not re-copied per chunk
    while chunk := os.read(fd, READ_SIZE):
        *ends, rest = chunk.split(b"\n")
        for end in ends:
            yield b"".join([*partial, end, b"\n"]).decode("utf-8", errors="replace")
            partial.clear()
        if rest:
            partial.append(rest)
    if partial:
        yield b"".join(partial).decode("utf-8", errors="replace")


class LedgerWriteStream:
    """The transport's write stream, noting each answer in the ledger once the stdout writer has it."""

    def __init__(self, inner: Any, ledger: AnswerLedger) -> None:
        self._inner = inner
        self._ledger = ledger

    async def send(self, item: SessionMessage) -> None:
        await self._inner.send(item)
        self._ledger.answered(item.message)

    def close(self) -> None:
        self._inner.close()

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> LedgerWriteStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
