"""The engine's worker thread: the only code that touches the model backend.

Loop: take commands → schedule a step → decode it → sample each sequence → send text deltas and
results back. Between steps it handles adds, aborts and calls (adapter loads later), so none of
those ever races a decode.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from engine.adapter_files import AdapterDirectories
from engine.adapter_registry import AdapterRegistry
from engine.backend import Backend, ModelInfo
from engine.commands import AbortRequest, AddRequest, CallOnWorker, Command, EventBatch, Shutdown
from engine.config import EngineConfig
from engine.errors import EngineError, EngineFailure, EngineStopped, PromptTooLong, RequestTimedOut
from engine.prompt import PromptBuilder
from engine.result import TextDelta
from engine.scheduler import Scheduler, StepPlan
from engine.sequence import Sequence
from engine.stats import StepCounters

logger = logging.getLogger(__name__)

BackendFactory = Callable[[EngineConfig], Backend]

ALL_REQUESTS = 0  # event address meaning "every request still open"; real request ids start at 1


class Worker:
    def __init__(
        self, config: EngineConfig, backend_factory: BackendFactory, emit: Callable[[EventBatch], None]
    ) -> None:
        self.config = config
        self._backend_factory = backend_factory
        self._emit = emit
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._events: EventBatch = []
        self._sequences: dict[int, Sequence] = {}  # request id → live sequence
        self.scheduler = Scheduler(
            max_sequences=config.max_sequences, batch_tokens=config.batch_tokens, group_quantum=config.group_steps
        )
        self.counters = StepCounters(config.max_sequences)
        self.ready: Future[ModelInfo] = Future()
        self._thread = threading.Thread(target=self._main, name="loramux-engine", daemon=True)
        self.backend: Backend

    def start(self) -> None:
        self._thread.start()

    def submit(self, command: Command) -> None:
        self._commands.put(command)

    def join(self) -> None:
        self._thread.join()

    # -- thread body --------------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self.backend = self._backend_factory(self.config)
            self._prompts = PromptBuilder(self.backend)
            self.adapters = AdapterRegistry(
                self.backend,
                AdapterDirectories(self.config.adapter_dirs),
                base_architecture=self.backend.info.architecture,
                base_shapes=self.backend.tensor_shapes(),
            )
            for name, path in self.config.preload_adapters:
                self.adapters.load(name, str(path), trusted=True)
        except BaseException as exc:
            if hasattr(self, "backend"):
                self.backend.close()
            self.ready.set_exception(exc)
            return
        self.ready.set_result(self.backend.info)
        try:
            self._loop()
        except BaseException:
            logger.exception("engine worker crashed")
            self._fail_all(EngineFailure("the engine stopped after an internal error; see the server log"))
        finally:
            self._flush_events()
            # Requests added after the loop ended never became sequences: the engine fails them all.
            self._emit([(ALL_REQUESTS, EngineStopped("the engine has stopped"))])
            self._refuse_pending_calls()
            self.adapters.close()
            self.backend.close()

    def _loop(self) -> None:
        while True:
            if not self._take_commands(block=not self.scheduler.has_work):
                self._fail_all(EngineStopped("the server is shutting down"))
                return
            now = time.monotonic()
            self._expire(now)
            plan = self.scheduler.schedule(now)
            if plan is not None and plan.chunks:
                self._step(plan)
            self._flush_events()

    def _take_commands(self, *, block: bool) -> bool:
        """Handle queued commands; block for the first one when idle. False once told to shut down."""
        try:
            command = self._commands.get(block=block)
        except queue.Empty:
            return True
        while True:
            if isinstance(command, Shutdown):
                return False
            self._handle(command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True

    def _handle(self, command: Command) -> None:
        if isinstance(command, AddRequest):
            self._add(command)
        elif isinstance(command, AbortRequest):
            seq = self._sequences.get(command.request_id)
            if seq is not None:  # aborts are idempotent: a finished request is already gone
                seq.cancel(time.monotonic())
                self._finish(seq)
        elif isinstance(command, CallOnWorker):
            if command.future.set_running_or_notify_cancel():
                try:
                    command.future.set_result(command.fn(self))
                except BaseException as exc:
                    command.future.set_exception(exc)

    # -- requests -----------------------------------------------------------------------------------

    def _add(self, command: AddRequest) -> None:
        request = command.request
        try:
            tokens = self._prompts.tokens(request)
            limit = self.backend.context_per_sequence
            if len(tokens) >= limit:
                raise PromptTooLong(
                    f"the prompt is {len(tokens)} tokens but each request's context holds {limit} tokens, "
                    f"prompt and answer together: shorten the prompt below {limit - 1} tokens "
                    "(or start the server with a larger --context)"
                )
            self.adapters.acquire(request.adapters, request.adapter_key)  # last: nothing may fail after it
        except Exception as exc:
            if not isinstance(exc, EngineError):
                logger.exception("could not prepare request %d", command.request_id)
                exc = EngineFailure("the engine could not prepare this request")
            self._events.append((command.request_id, exc))
            self.counters.requests_failed += 1
            return
        seq = Sequence(
            request_id=command.request_id,
            prompt_tokens=tokens,
            sampling=request.sampling,
            adapter_key=request.adapter_key,
            sampler=self.backend.new_sampler(request.sampling),
            max_new_tokens=min(request.sampling.max_tokens, limit - len(tokens)),
            submitted_at=command.submitted_at,
            deadline=command.submitted_at + self.config.request_timeout,
        )
        self._sequences[seq.request_id] = seq
        self.scheduler.add(seq)

    def _step(self, plan: StepPlan) -> None:
        try:
            if self.adapters.apply(plan.adapter_key):
                self.counters.adapter_switches += 1
            to_sample = self.backend.run_step(plan)
        except EngineError as exc:
            logger.error("decode step failed: %s", exc)
            for chunk in plan.chunks:
                self._fail(chunk.seq, exc)
            return
        for chunk in plan.chunks:
            if chunk.seq.is_prefilling:
                chunk.seq.num_prefilled += len(chunk.tokens)
                self.counters.prompt_tokens += len(chunk.tokens)
        now = time.monotonic()
        for seq, row in to_sample:
            delta = seq.accept(seq.sampler.sample(row), self.backend, now)
            if delta:
                self._events.append((seq.request_id, TextDelta(delta, len(seq.completion_tokens))))
            if seq.finish_reason is not None:
                self._finish(seq)
        self.counters.steps += 1
        self.counters.sequence_moves += len(plan.moves)
        self.counters.tokens_generated += len(to_sample)
        self.counters.histogram[len(plan.chunks)] += 1

    def _finish(self, seq: Sequence) -> None:
        self._release(seq)
        self._events.append((seq.request_id, seq.result()))
        self.counters.requests_finished += 1

    def _fail(self, seq: Sequence, error: EngineError) -> None:
        self._release(seq)
        self._events.append((seq.request_id, error))
        self.counters.requests_failed += 1

    def _release(self, seq: Sequence) -> None:
        """Free the request's sequence slot, KV cells and sampler."""
        if seq.seq_id >= 0:
            self.backend.free_sequence(seq.seq_id)
        self.scheduler.remove(seq)
        self.adapters.release(seq.adapter_key)
        seq.sampler.close()
        del self._sequences[seq.request_id]

    def _expire(self, now: float) -> None:
        for seq in [s for s in self._sequences.values() if now > s.deadline]:
            self._fail(
                seq,
                RequestTimedOut(
                    f"the request exceeded the server's {self.config.request_timeout:g} s limit "
                    f"after {len(seq.completion_tokens)} tokens; ask for fewer max_tokens or retry when less busy"
                ),
            )

    def _refuse_pending_calls(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, CallOnWorker) and command.future.set_running_or_notify_cancel():
                command.future.set_exception(EngineStopped("the engine has stopped"))

    def _fail_all(self, error: EngineError) -> None:
        for seq in list(self._sequences.values()):
            self._fail(seq, error)

    def _flush_events(self) -> None:
        if self._events:
            events, self._events = self._events, []
            self._emit(events)
