"""The async face of the local llama.cpp engine (implements `InferenceEngine`).

Per request: prepare it here, off the decode thread (template, tokens: preparation.py) → AddRequest to the
core's thread → the core's event batches come back to the event loop, one hop per decode step for all
requests together (`call_soon_threadsafe`: the core's thread never waits for the loop) → each request's
own stream. Adapter loads are checked here too (file system,
validation) and only handed to llama.cpp by the core.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.config import EngineConfig
from engine.errors import (
    EngineBusy,
    EngineError,
    EngineFailure,
    EngineStopped,
    InvalidRequest,
    OutputMismatch,
)
from engine.info import (
    AdapterInfo,
    AdapterListing,
    EngineState,
    EngineStats,
    LoadedAdapter,
    ModelInfo,
    RequestStatus,
)
from engine.interface import GenerationStream
from engine.llama.adapters.files import AdapterDirectories
from engine.llama.adapters.loading import AdapterFileChecker
from engine.llama.adapters.registry import unknown_adapter
from engine.llama.adapters.residency import AdapterResidency
from engine.llama.adapters.watching import WATCH_INTERVAL_S, AdapterSource, signature
from engine.llama.chat_template import ChatTemplate
from engine.llama.commands import (
    AbortRequest,
    AdapterCommand,
    AddRequest,
    CommandDone,
    CommandFailed,
    EngineHalted,
    EventBatch,
    ListAdapters,
    LoadAdapter,
    RequestFailed,
    RequestFinished,
    RequestOutput,
    RequestStatusChanged,
    Shutdown,
    UnloadAdapter,
)
from engine.llama.core_thread import CoreThread, RunnerFactory
from engine.llama.cpp.constraints import ConstraintCompiler
from engine.llama.preparation import RequestPreparer
from engine.llama.runner import ModelRunner
from engine.llama.scheduling.prepared import PreparedRequest
from engine.request import GenerateRequest
from engine.result import GenerationResult, TextDelta
from engine.schema_check import checked_output
from engine.tool_output import AnswerReader, ToolAnswerReader, ToolCallStream
from engine.tool_prompt import mentions_tools

logger = logging.getLogger(__name__)

R = TypeVar("R")
ADAPTER_READ_TIMEOUT_S = 30.0
LISTED_FILES = 200  # adapter files and folders list_adapters shows (the directories may hold thousands)
StreamEvent = TextDelta | GenerationResult | EngineError


def _llama_runner(config: EngineConfig) -> ModelRunner:
    from engine.llama.cpp.runner import LlamaRunner  # imported lazily: fake-runner tests need no llama.cpp

    return LlamaRunner(config)


@dataclass
class _Pending:
    """An adapter command awaiting its answer."""

    done: anyio.Event
    result: Any = None
    error: EngineError | None = None

    def resolve(self, result: Any = None, error: EngineError | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


# name -> the adapter file or folder to load it from (None: no such adapter)
AdapterLocator = Callable[[str], Awaitable[str | None]]


class LlamaEngine:
    """`async with LlamaEngine(config) as engine:` loads the model on the core's thread and serves until exit."""

    def __init__(
        self,
        config: EngineConfig,
        runner_factory: RunnerFactory = _llama_runner,
        *,
        adapter_locator: AdapterLocator | None = None,
    ) -> None:
        self.config = config
        self._runner_factory = runner_factory
        # where a name a request uses is loaded from: NAME.gguf or NAME/ in the adapter directories, unless
        # the caller knows better (a Ray replica asks the cluster's catalogue first)
        self._locate_adapter = adapter_locator or self.find_adapter
        self._state = EngineState.STOPPED
        self._started: anyio.Event | None = None  # set once start() has succeeded or failed
        self._ids = itertools.count(1)
        self._streams: dict[int, RequestStream] = {}  # requests not yet finished, preparing ones included
        self._pending: dict[int, _Pending] = {}
        mb = config.adapter_memory_mb
        # resident adapters as the core last answered, each request's reservations, and the budget
        self._residency = AdapterResidency(config.max_loaded_adapters, None if mb is None else int(mb * 1e6))
        self._load_lock = anyio.Lock()  # one budget decision and load at a time
        self._first_uses: dict[str, anyio.Event] = {}  # first-use loads under way, by name
        self._adapter_counts = {"evictions": 0, "first_use_loads": 0, "first_use_wait_s": 0.0, "reloads": 0}
        self._sources: dict[str, AdapterSource] = {}  # where each resident adapter came from (--watch-adapters)
        self._watcher: asyncio.Task[None] | None = None
        self._stats = EngineStats()
        self._model_info: ModelInfo | None = None
        self._core: CoreThread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started_core: CoreThread | None = None  # the thread to stop and join, even after it halted
        self._directories = AdapterDirectories(config.adapter_dirs)
        self._idle: anyio.Event | None = None  # set by drain(), fired when no request is open

    # -- lifetime -----------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Load the model and preload adapters. Calls made meanwhile wait for it."""
        self._state = EngineState.STARTING
        self._started = anyio.Event()
        try:
            await self._start()
        except BaseException:
            self._state = EngineState.FAILED
            self._started.set()
            await self._stop_core()
            raise
        if self._state is EngineState.STARTING:  # not if drain() began meanwhile
            self._state = EngineState.READY
        self._started.set()

    async def _start(self) -> None:
        # asyncio only (as uvicorn and the MCP SDK's servers run): anyio has no public non-blocking hand-off
        # from a thread, and BlockingPortal.start_task_soon waits for the loop on every call.
        self._loop = asyncio.get_running_loop()
        core = CoreThread(self.config, self._runner_factory, self._emit_from_core)
        core.start()
        runner = await anyio.to_thread.run_sync(core.ready.result)
        self._core = self._started_core = core
        self._model_info = info = runner.info
        if info.gpu_layers:
            logger.info("model %s: %d/%d layers on %s", info.name, info.gpu_layers, info.layers, info.backend)
        else:
            logger.info("model %s on the CPU (%d threads at most)", info.name, self.config.threads)
        if info.capabilities.mixed_adapter_sets:
            logger.info("requests with different adapter sets share decode steps")
        self._preparer, self._checker = await anyio.to_thread.run_sync(self._read_only_helpers, runner)
        for name, path in self.config.preload_adapters:  # the operator's: pinned, never evicted
            await self._load_adapter(name, str(path), trusted=True, pin=True)
        if self.config.watch_adapters:
            self._watcher = self._loop.create_task(self._watch_adapters())

    def _read_only_helpers(self, runner: ModelRunner) -> tuple[RequestPreparer, AdapterFileChecker]:
        """What the async side needs of the model: its vocabulary (read-only), template and tensor shapes."""
        vocab = runner.vocab
        source = self.config.chat_template.read_text() if self.config.chat_template else None
        template = ChatTemplate.for_vocab(vocab, source)
        pointer = getattr(vocab, "pointer", None)  # a llama.cpp vocabulary (not the tests' fake one)
        preparer = RequestPreparer(
            vocab,
            template,
            context_per_request=runner.info.context_per_request,
            timeout=self.config.request_timeout,
            constraints=ConstraintCompiler(pointer) if pointer is not None else None,
        )
        checker = AdapterFileChecker(self._directories, runner.adapter_base(), self.config.adapter_cache_dir)
        return preparer, checker

    async def drain(self, grace_s: float) -> int:
        """Stop taking requests and adapter commands; let the open requests run for up to `grace_s`
        seconds, then end the rest with a "shutting down" error. Returns how many were ended so.

        The engine keeps running (stop() ends it), so the front ends can still deliver the answers."""
        if self._state in (EngineState.READY, EngineState.STARTING):
            self._state = EngineState.STOPPING
        if self._idle is None:
            self._idle = anyio.Event()
        if not self._streams:
            self._idle.set()
        with anyio.move_on_after(grace_s):
            await self._idle.wait()  # a second drain(0) that ends the rest wakes this one too
        streams, self._streams = self._streams, {}
        self._idle.set()
        if streams:
            logger.info("%d requests did not finish in time: ending them with a shutting-down error", len(streams))
        for stream in streams.values():
            if self._core is not None:
                self._core.submit(AbortRequest(stream.request_id))  # frees its sequence before the next step
            stream._push(EngineStopped(f"the server is shutting down: the request did not finish within {grace_s:g} s"))
        return len(streams)

    async def stop(self) -> None:
        if self._state in (EngineState.READY, EngineState.STARTING):
            self._state = EngineState.STOPPING
        if self._watcher is not None:
            self._watcher.cancel()
        await self._stop_core()
        if self._state is not EngineState.FAILED:
            self._state = EngineState.STOPPED

    async def _stop_core(self) -> None:
        core, self._started_core = self._started_core, None
        if core is None:
            return
        core.submit(Shutdown())
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(core.join)
            # The core's last batch (failed requests, EngineHalted) was queued on the loop before join
            # returned; callbacks run in order, so it has been delivered once this task resumes.

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def model_info(self) -> ModelInfo | None:
        return self._model_info

    def stats(self) -> EngineStats:
        """The counters as of the last decode step (the adapter residency's: as of now)."""
        counts = self._adapter_counts
        return dataclasses.replace(
            self._stats,
            adapter_evictions=int(counts["evictions"]),
            adapter_first_use_loads=int(counts["first_use_loads"]),
            adapter_first_use_wait_seconds=counts["first_use_wait_s"],
            adapter_reloads=int(counts["reloads"]),
            max_adapters=self.config.max_loaded_adapters,
        )

    async def _ready_core(self) -> CoreThread:
        if self._state is EngineState.STARTING and self._started is not None:
            await self._started.wait()
        if self._state is not EngineState.READY or self._core is None:
            raise self._stopped_error()
        return self._core

    def _stopped_error(self) -> EngineError:
        if self._state is EngineState.FAILED:
            return EngineFailure("the engine stopped after an internal error; see the server log")
        if self._state is EngineState.STOPPING:
            return EngineStopped("the server is shutting down and takes no new requests")
        return EngineStopped("the engine is not running")

    # -- requests -----------------------------------------------------------------------------------------

    def generate(self, request: GenerateRequest) -> GenerationStream:
        """`async with engine.generate(req) as stream: async for delta in stream: …; stream.result`.

        Leaving the block before the result arrives aborts the request. Tools go into the conversation
        in the model's own format or the generic one (preparation.py: tool_plan), and the answer is read
        back as calls.
        """
        stream = RequestStream(self, request)
        if request.calls_tools:  # the answer's format is known once the model's template is
            return ToolCallStream(stream, request.tools, reader=lambda: stream.tool_reader())
        return stream

    async def complete(self, request: GenerateRequest) -> GenerationResult:
        async with self.generate(request) as stream:
            async for _ in stream:
                pass
        assert stream.result is not None
        return stream.result

    async def _submit(self, stream: RequestStream) -> None:
        await self._ready_core()
        names = [ref.name for ref in stream.request.adapters]
        if not self.config.auto_load_adapters:
            for name in names:  # the core checks again at admission (an unload may be under way)
                if name not in self._residency:
                    raise unknown_adapter(name, self._residency.names())
        if len(self._streams) >= self.config.max_in_flight:
            raise EngineBusy(
                f"the server is busy: {len(self._streams)} requests are running or queued, the limit is "
                f"{self.config.max_in_flight}; retry in a few seconds"
            )
        submitted_at = time.monotonic()
        self._streams[stream.request_id] = stream  # from now until _forget its adapters are in use
        try:
            for name in names:
                if name not in self._residency:
                    await self._load_on_first_use(name)
            self._residency.touch(names)
            # Off the decode thread: a long prompt's template and tokenization must not stall other streams.
            prepared = await anyio.to_thread.run_sync(self._prepare, stream, submitted_at, abandon_on_cancel=True)
        except BaseException:
            self._forget(stream.request_id)
            raise
        if self._core is None or stream.request_id not in self._streams:
            raise self._stopped_error()  # the engine halted while this request was being prepared
        self._core.submit(AddRequest(prepared))

    def _prepare(self, stream: RequestStream, submitted_at: float) -> PreparedRequest:
        """In a worker thread: the request's tools put in the model's format (the stream runs that request
        and reads its answer with that format's reader), then its tokens."""
        if mentions_tools(stream.request):
            stream.request, stream.tool_reader = self._preparer.tool_plan(stream.request)
        return self._preparer.prepare(stream.request_id, stream.request, submitted_at)

    def _abort(self, request_id: int) -> None:
        if self._core is not None and request_id in self._streams:
            self._core.submit(AbortRequest(request_id))

    # -- adapters -----------------------------------------------------------------------------------------

    async def load_adapter(
        self, name: str, path: str, *, pin: bool = False, expect_sha256: str | None = None
    ) -> LoadedAdapter:
        """Load the adapter file or folder `path` (inside an adapter directory) as `name`; other content
        under a loaded name is a new version (`expect_sha256`: only if the resident one is that)."""
        await self._ready_core()
        return await self._load_adapter(name, path, pin=pin, expect_sha256=expect_sha256)

    async def _load_on_first_use(self, name: str) -> None:
        """Load the adapter a request names from NAME.gguf or the folder NAME/, once however many requests
        wait for it; the waiting requests' callers wait, nobody else does."""
        started = time.monotonic()
        while name not in self._residency:
            under_way = self._first_uses.get(name)
            if under_way is not None:
                await under_way.wait()  # another request's load of it: then look again (it may have failed)
                continue
            self._first_uses[name] = done = anyio.Event()  # before any await: one load however many ask
            try:
                path = await self._locate_adapter(name)
                if path is None:
                    raise unknown_adapter(name, self._residency.names(), searched=True)
                await self._load_adapter(name, path)
            finally:
                del self._first_uses[name]
                done.set()
            self._adapter_counts["first_use_loads"] += 1
            self._adapter_counts["first_use_wait_s"] += time.monotonic() - started

    def resident_adapters(self) -> list[str]:
        """The adapters loaded now, as the core last answered (no call to it)."""
        return self._residency.names()

    async def find_adapter(self, name: str) -> str | None:
        """Where NAME.gguf or the folder NAME/ is in the adapter directories (None: nowhere)."""
        return await anyio.to_thread.run_sync(self._directories.find, name)

    async def _load_adapter(
        self, name: str, path: str, *, trusted: bool = False, pin: bool = False, expect_sha256: str | None = None
    ) -> LoadedAdapter:
        # Find, open, convert and validate in a thread; the core only hands the bytes to llama.cpp.
        try:
            with anyio.fail_after(ADAPTER_READ_TIMEOUT_S):
                checked = await anyio.to_thread.run_sync(
                    lambda: self._checker.check(name, path, trusted=trusted), abandon_on_cancel=True
                )
        except TimeoutError:
            raise InvalidRequest(
                f"reading the adapter file took longer than {ADAPTER_READ_TIMEOUT_S:g} s (a slow or stalled "
                "file system?); copy it to a local adapter directory and retry"
            ) from None
        async with self._load_lock:
            in_use = {ref.name for s in self._streams.values() for ref in s.request.adapters}
            evicted = [] if name in self._residency else self._residency.make_room(checked.file.size, in_use)
            for victim in evicted:
                try:
                    await self._call(UnloadAdapter(next(self._ids), victim))
                except EngineError:  # the core's guard refused (it should not): learn what is resident again
                    logger.exception("evicting adapter %s failed", victim)
                    await self._call(ListAdapters(next(self._ids)))
                    raise
                self._adapter_counts["evictions"] += 1
                logger.info("adapter %s evicted (least recently used) to make room for %s", victim, name)
            loaded = await self._call(LoadAdapter(next(self._ids), checked, pin, expect_sha256))
        if self.config.watch_adapters:
            self._sources[name] = AdapterSource(path, trusted, checked.file.path, checked.signature)
        if loaded.replaced_sha256 is not None:
            self._adapter_counts["reloads"] += 1
            logger.info("adapter %s is now version %d (%s)", name, loaded.adapter.version, checked.sha256[:16])
        return loaded.model_copy(update={"evicted": evicted})

    async def _watch_adapters(self) -> None:
        """--watch-adapters: a resident adapter whose file or folder changed is loaded again, as a new version."""
        while True:
            await anyio.sleep(WATCH_INTERVAL_S)
            for name, source in list(self._sources.items()):
                if name not in self._residency:
                    self._sources.pop(name, None)
                    continue
                now = await anyio.to_thread.run_sync(signature, source.real)
                if now == source.signature or not now:
                    continue
                source.signature = now  # one try per change: a half-written file is retried at its next write
                try:
                    await self._load_adapter(name, source.requested, trusted=source.trusted)
                except EngineError as exc:
                    logger.warning("adapter %s changed on disk but was not reloaded: %s", name, exc)
                except Exception:  # a bug must not end the watching
                    logger.exception("reloading adapter %s failed", name)

    async def unload_adapter(self, name: str) -> AdapterInfo:
        await self._ready_core()
        return await self._call(UnloadAdapter(next(self._ids), name))

    async def list_adapters(self) -> AdapterListing:
        await self._ready_core()
        assert self._model_info is not None
        loaded = await self._call(ListAdapters(next(self._ids)))
        # A directory walk needs no model state: it runs in a thread, never on the decode thread.
        available = await anyio.to_thread.run_sync(self._directories.available, LISTED_FILES + 1)
        return AdapterListing(
            base_model=self._model_info,
            adapters=loaded,
            adapter_directories=[str(d) for d in self._directories.roots],
            available_files=available[:LISTED_FILES],
            available_files_truncated=len(available) > LISTED_FILES,
            auto_load=self.config.auto_load_adapters,
            max_loaded_adapters=self.config.max_loaded_adapters,
            adapter_memory_mb=self.config.adapter_memory_mb,
        )

    async def _call(self, command: AdapterCommand[R]) -> R:
        pending = _Pending(anyio.Event())
        if self._core is None:
            pending.resolve(error=self._stopped_error())
        else:
            self._pending[command.command_id] = pending
            self._core.submit(command)  # type: ignore[arg-type]
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result

    # -- events from the core's thread --------------------------------------------------------------------

    def _emit_from_core(self, batch: EventBatch) -> None:
        """Called on the core's thread once per step: queue the batch on the event loop, without waiting."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._deliver, batch)
        except RuntimeError:
            pass  # the loop is closed: nobody is listening any more

    def _deliver(self, batch: EventBatch) -> None:
        self._stats = batch.stats
        for event in batch.events:
            if isinstance(event, RequestOutput):
                stream = self._streams.get(event.request_id)
                if stream is not None:
                    stream._push(event.delta)
            elif isinstance(event, RequestStatusChanged):
                stream = self._streams.get(event.request_id)
                if stream is not None:
                    stream._status = event.status
            elif isinstance(event, RequestFinished | RequestFailed):
                stream = self._forget(event.request_id)
                if stream is not None:
                    stream._push(event.result if isinstance(event, RequestFinished) else event.error)
            elif isinstance(event, CommandDone | CommandFailed):
                if isinstance(event, CommandDone):
                    self._follow_adapters(event.result)
                pending = self._pending.pop(event.command_id, None)
                if pending is not None:
                    if isinstance(event, CommandDone):
                        pending.resolve(result=event.result)
                    else:
                        pending.resolve(error=event.error)
            elif isinstance(event, EngineHalted):
                self._halt(failed=event.failed)

    def _follow_adapters(self, result: object) -> None:
        """Keep the resident adapters from the core's answers (whoever awaited them): a request naming
        another adapter is loaded first or refused when it is submitted, not after its stream has begun."""
        if isinstance(result, LoadedAdapter):
            self._residency.loaded(result.adapter)
        elif isinstance(result, AdapterInfo):  # an unload's answer
            self._residency.unloaded(result.name)
        elif isinstance(result, list):  # a listing: the whole set
            self._residency.listed(result)

    def _forget(self, request_id: int) -> RequestStream | None:
        stream = self._streams.pop(request_id, None)
        if self._idle is not None and not self._streams:
            self._idle.set()
        return stream

    def _halt(self, *, failed: bool) -> None:
        """The core's thread has ended: fail every open request and command, each with its own error."""
        self._core = None
        if failed:
            self._state = EngineState.FAILED
        streams, self._streams = self._streams, {}
        if self._idle is not None:
            self._idle.set()
        for stream in streams.values():
            stream._push(self._stopped_error())
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.resolve(error=self._stopped_error())


GENERATING = RequestStatus("generating")


class RequestStream:
    """One request's stream of text deltas; `result` holds the GenerationResult once it has finished."""

    def __init__(self, engine: LlamaEngine, request: GenerateRequest) -> None:
        self.request = request
        self.request_id = next(engine._ids)
        self.result: GenerationResult | None = None
        self._engine = engine
        self._send: MemoryObjectSendStream[StreamEvent]
        self._receive: MemoryObjectReceiveStream[StreamEvent]
        self._done = False
        self._status = RequestStatus("preparing")  # the core sends each change (RequestStatusChanged)
        self.tool_reader: Callable[[], AnswerReader] = ToolAnswerReader  # set by preparation for tool calls

    def status(self) -> RequestStatus:
        """Preparing, queued (with how many ahead), reading its prompt (how far), or generating."""
        return self._status

    async def __aenter__(self) -> Self:
        self._send, self._receive = anyio.create_memory_object_stream[StreamEvent](math.inf)
        try:
            await self._engine._submit(self)
        except BaseException:
            self._send.close()
            self._receive.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()
        self._receive.close()

    def abort(self) -> None:
        if not self._done:
            self._engine._abort(self.request_id)

    def __aiter__(self) -> AsyncIterator[TextDelta]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[TextDelta]:
        async for event in self._receive:
            if isinstance(event, TextDelta):
                self._status = GENERATING
                yield event
            elif isinstance(event, GenerationResult):
                if self.request.json_schema is not None and event.finish_reason == "stop":
                    await self._check_output(event.text)
                self.result = event
                return
            else:
                raise event

    async def _check_output(self, text: str) -> None:
        """The finished output against the whole schema, in a worker thread (a schema's regexes run there)."""
        assert self.request.json_schema is not None
        if (problem := await checked_output(self.request.json_schema, text)) is not None:
            raise OutputMismatch(problem)

    def _push(self, event: StreamEvent) -> None:
        try:
            self._send.send_nowait(event)
        except anyio.BrokenResourceError:
            pass  # the consumer left; the request is finished or being aborted
        if not isinstance(event, TextDelta):
            self._done = True
            self._send.close()


__all__ = ["LlamaEngine", "RequestStream"]
