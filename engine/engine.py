"""The async face of the engine: submit requests, stream their text, abort them, read stats.

All llama.cpp work happens on the worker thread. This side only puts commands on its queue and
receives events through a blocking portal, one hop per decode step for all requests together.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
from anyio.from_thread import BlockingPortal
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.adapter_files import AdapterDirectories
from engine.adapter_registry import AdapterInfo
from engine.backend import ModelInfo
from engine.commands import AbortRequest, AddRequest, CallOnWorker, Event, EventBatch, Shutdown
from engine.config import EngineConfig
from engine.errors import EngineBusy, EngineError, EngineStopped
from engine.request import GenerateRequest
from engine.result import GenerationResult, TextDelta
from engine.stats import EngineStats
from engine.worker import ALL_REQUESTS, BackendFactory, Worker

T = TypeVar("T")


def _llama_backend(config: EngineConfig) -> Any:
    from engine.llama_runtime import LlamaRuntime  # imported lazily: fake-backend tests need no llama.cpp

    return LlamaRuntime(config)


class Engine:
    """`async with Engine(config) as engine:` loads the model on the worker thread and serves until exit."""

    def __init__(self, config: EngineConfig, backend_factory: BackendFactory = _llama_backend) -> None:
        self.config = config
        self._backend_factory = backend_factory
        self._ids = itertools.count(1)
        self._streams: dict[int, RequestStream] = {}  # requests the worker has not finished
        self._worker: Worker | None = None
        self._portal: BlockingPortal | None = None
        self._exit_stack: AsyncExitStack | None = None
        self.model_info: ModelInfo | None = None

    async def __aenter__(self) -> Self:
        worker = Worker(self.config, self._backend_factory, self._emit_from_worker)
        worker.start()
        # Load before opening the portal, so a load error surfaces as itself, not inside a task group.
        self.model_info = await anyio.to_thread.run_sync(worker.ready.result)
        async with AsyncExitStack() as stack:
            self._portal = await stack.enter_async_context(BlockingPortal())
            stack.push_async_callback(self._stop_worker, worker)
            self._worker = worker
            self._exit_stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._exit_stack is not None
        await self._exit_stack.aclose()

    async def _stop_worker(self, worker: Worker) -> None:
        self._worker = None
        worker.submit(Shutdown())
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(worker.join)

    # -- requests -------------------------------------------------------------------------------------

    def generate(self, request: GenerateRequest) -> RequestStream:
        """`async with engine.generate(req) as stream: async for delta in stream: …; stream.result`.

        Leaving the block before the result arrives aborts the request.
        """
        return RequestStream(self, request)

    async def complete(self, request: GenerateRequest) -> GenerationResult:
        async with self.generate(request) as stream:
            async for _ in stream:
                pass
        assert stream.result is not None
        return stream.result

    async def call_on_worker(self, fn: Callable[[Worker], T]) -> T:
        """Run `fn(worker)` on the worker thread between two decode steps."""
        worker = self._require_worker()
        future: Future[T] = Future()
        worker.submit(CallOnWorker(fn, future))
        return await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)

    def stats(self) -> EngineStats:
        worker = self._require_worker()
        return worker.counters.snapshot(running=len(worker.scheduler.running), waiting=len(worker.scheduler.waiting))

    async def sequence_positions(self) -> list[int]:
        """Highest KV position each sequence slot holds (-1 = empty): shows that finished requests free cells."""
        return await self.call_on_worker(
            lambda w: [w.backend.sequence_max_position(i) for i in range(self.config.max_sequences)]
        )

    # -- adapters (loads, unloads and lists run on the worker between decode steps) -------------------

    async def load_adapter(self, name: str, path: str) -> tuple[AdapterInfo, bool]:
        """Load the adapter file `path` (inside an adapter directory) as `name`; (info, newly loaded)."""
        return await self.call_on_worker(lambda w: w.adapters.load(name, path))

    async def unload_adapter(self, name: str) -> AdapterInfo:
        return await self.call_on_worker(lambda w: w.adapters.unload(name))

    async def list_adapters(self) -> list[AdapterInfo]:
        return await self.call_on_worker(lambda w: w.adapters.list())

    async def available_adapter_files(self) -> list[str]:
        # A directory walk needs no llama.cpp state: keep it off the worker, which would stall every stream.
        return await anyio.to_thread.run_sync(AdapterDirectories(self.config.adapter_dirs).available)

    def _submit(self, stream: RequestStream) -> None:
        worker = self._require_worker()
        if len(self._streams) >= self.config.max_in_flight:
            raise EngineBusy(
                f"the server is busy: {len(self._streams)} requests are running or queued, the limit is "
                f"{self.config.max_in_flight}; retry in a few seconds"
            )
        self._streams[stream.request_id] = stream
        worker.submit(AddRequest(stream.request_id, stream.request, time.monotonic()))

    def _abort(self, request_id: int) -> None:
        if self._worker is not None and request_id in self._streams:
            self._worker.submit(AbortRequest(request_id))

    def _require_worker(self) -> Worker:
        if self._worker is None:
            raise EngineStopped("the engine is not running")
        return self._worker

    def _emit_from_worker(self, events: EventBatch) -> None:
        """Called on the worker thread once per step: hand the events to the event loop without waiting."""
        if self._portal is None:
            return  # not serving yet: no request exists to receive events
        try:
            self._portal.start_task_soon(self._deliver, events)
        except RuntimeError:
            pass  # the portal is closed: the engine is shutting down and nobody is listening

    async def _deliver(self, events: EventBatch) -> None:
        for request_id, event in events:
            if request_id == ALL_REQUESTS:
                self._worker = None
                for stream in self._streams.values():
                    stream._push(event)
                self._streams.clear()
                continue
            stream = self._streams.get(request_id)
            if stream is None:
                continue
            if not isinstance(event, TextDelta):
                del self._streams[request_id]
            stream._push(event)


class RequestStream:
    """One request's stream of text deltas; `result` holds the GenerationResult once it has finished."""

    def __init__(self, engine: Engine, request: GenerateRequest) -> None:
        self.request = request
        self.request_id = next(engine._ids)
        self.result: GenerationResult | None = None
        self._engine = engine
        self._send: MemoryObjectSendStream[Event]
        self._receive: MemoryObjectReceiveStream[Event]
        self._done = False

    async def __aenter__(self) -> Self:
        self._send, self._receive = anyio.create_memory_object_stream[Event](math.inf)
        try:
            self._engine._submit(self)
        except BaseException:
            self._send.close()
            self._receive.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._done:
            self._engine._abort(self.request_id)
        self._receive.close()

    def __aiter__(self) -> AsyncIterator[TextDelta]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[TextDelta]:
        async for event in self._receive:
            if isinstance(event, TextDelta):
                yield event
            elif isinstance(event, GenerationResult):
                self.result = event
                return
            else:
                raise event

    def _push(self, event: Event) -> None:
        try:
            self._send.send_nowait(event)
        except anyio.BrokenResourceError:
            pass  # the consumer left; the request is finished or being aborted
        if not isinstance(event, TextDelta):
            self._done = True
            self._send.close()


__all__ = ["Engine", "EngineError", "RequestStream"]
