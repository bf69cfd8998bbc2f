"""The core's thread: a thin shell. Command queue in, event batches out, shutdown.

It owns the only reference to the core (and so to llama.cpp's context): nothing outside this thread
reads the core's state; a stats snapshot goes out with every event batch instead.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from engine.config import EngineConfig
from engine.errors import EngineStopped
from engine.info import EngineStats
from engine.llama.commands import (
    Command,
    EngineHalted,
    Event,
    EventBatch,
    RequestFailed,
    RequestFinished,
    RequestOutput,
    Shutdown,
)
from engine.llama.core import EngineCore
from engine.llama.runner import ModelRunner

logger = logging.getLogger(__name__)

RunnerFactory = Callable[[EngineConfig], ModelRunner]


class CoreThread:
    def __init__(self, config: EngineConfig, runner_factory: RunnerFactory, emit: Callable[[EventBatch], None]) -> None:
        self.config = config
        self._runner_factory = runner_factory
        self._emit = emit
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self.ready: Future[ModelRunner] = Future()  # the loaded runner, once (startup only)
        self._thread = threading.Thread(target=self._main, name="loramux-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, command: Command) -> None:
        self._commands.put(command)
        if self.ready.done() and self.ready.exception() is None:
            self.ready.result().interrupt()  # after the put: a loop of steps must not miss it

    def join(self) -> None:
        self._thread.join()

    def _main(self) -> None:
        try:
            runner = self._runner_factory(self.config)
        except BaseException as exc:
            self.ready.set_exception(exc)
            return
        core = EngineCore(runner, self.config)
        self.ready.set_result(runner)
        failed = False
        outbox = Outbox(self._emit)
        try:
            while self._handle_commands(core, block=not core.has_work):
                outbox.add(core.step(), core, final=not core.has_work)
            outbox.flush(core)
            core.fail_all(lambda: EngineStopped("the server is shutting down"))
        except BaseException:
            # A bug, not a bad request (those fail alone inside the core). Requests still open are failed
            # by the async side when it sees EngineHalted.
            logger.exception("the engine core crashed")
            failed = True
        finally:
            try:
                stats = core.stats()
            except BaseException:
                stats = EngineStats()
            self._emit(EventBatch([*core.take_events(), EngineHalted(failed)], stats))
            core.close()

    def _handle_commands(self, core: EngineCore, *, block: bool) -> bool:
        """Handle queued commands, waiting for the first one when idle. False once told to shut down."""
        try:
            command = self._commands.get(block=block)
        except queue.Empty:
            return True
        while True:
            if isinstance(command, Shutdown):
                return False
            core.handle(command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True


# Text deltas of requests that have already streamed some are held up to this long and handed over
# together: each hand-over wakes the event loop, which takes the GIL while this thread waits for it
# (~0.4 ms a step, measured: 6% of a lone stream's time on 2 cores). Everything else (a request's
# first text, ends, failures, command results) goes out at once.
COALESCE_S = 0.02


class Outbox:
    def __init__(self, emit: Callable[[EventBatch], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._emit = emit
        self._clock = clock
        self._held: list[Event] = []
        self._streaming: set[int] = set()  # requests whose first text has gone out
        self._last = 0.0

    def add(self, events: list[Event], core: EngineCore, *, final: bool) -> None:
        """Take a step's events; hand them over now unless they are only more text (see COALESCE_S).
        `final`: no step follows soon (the core has no work), so nothing may wait."""
        self._held += events
        urgent = final
        for event in events:
            if isinstance(event, RequestOutput):
                if event.request_id not in self._streaming:
                    self._streaming.add(event.request_id)
                    urgent = True
            else:
                urgent = True
                if isinstance(event, RequestFinished | RequestFailed):
                    self._streaming.discard(event.request_id)
        if urgent or self._clock() - self._last >= COALESCE_S:
            self.flush(core)

    def flush(self, core: EngineCore) -> None:
        if self._held:
            self._emit(EventBatch(self._held, core.stats()))
            self._held = []
            self._last = self._clock()
