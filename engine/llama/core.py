"""The engine core: synchronous, no threads. Commands between steps; `step()` runs one decode step.

    step() = scheduler.schedule() → runner.execute(plan) → scheduler.update_from_output(plan, output)
             = the events the core publishes (text deltas, finished and failed requests)

Unit tests drive it directly; the core's thread (core_thread.py) is a thin shell around it. Admission is
all-or-nothing: a request is checked (adapters) and given its sampler before it is registered, so a
request that cannot start fails alone; so does one whose sampler or decode step fails later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from engine.config import EngineConfig
from engine.errors import EngineError, EngineFailure, RequestTimedOut
from engine.info import BackendMetric, EngineStats, RequestStatus
from engine.llama.adapters.registry import AdapterRegistry
from engine.llama.commands import (
    AbortRequest,
    AdapterCommand,
    AddRequest,
    Command,
    CommandDone,
    CommandFailed,
    Event,
    ListAdapters,
    LoadAdapter,
    RequestFailed,
    RequestFinished,
    RequestOutput,
    RequestStatusChanged,
    UnloadAdapter,
)
from engine.llama.runner import ModelRunner
from engine.llama.scheduling.scheduler import Scheduler
from engine.llama.scheduling.sequence import SeqStatus, Sequence
from engine.llama.scheduling.step import StepOutput, StepPlan

logger = logging.getLogger(__name__)

REBUILD_AFTER = 3  # faulty steps in a row before the context is rebuilt


def _internal_error() -> EngineFailure:
    return EngineFailure("an internal error ended this request (the server log has the details); retry it")


class EngineCore:
    def __init__(self, runner: ModelRunner, config: EngineConfig, *, clock: Callable[[], float] = time.monotonic):
        self.runner = runner
        self.config = config
        self.scheduler = Scheduler(
            runner.vocab,
            runner.info,
            max_sequences=config.max_sequences,
            batch_tokens=config.batch_tokens,
            group_quantum=config.group_steps,
            prefix_cache_cells=config.prefix_cache_budget,
            mixed_adapters=runner.info.capabilities.mixed_adapter_sets,
        )
        self.adapters = AdapterRegistry(runner)
        self._clock = clock
        self._sequences: dict[int, Sequence] = {}  # request id → live sequence
        self._events: list[Event] = []
        self._faulty_steps = 0  # consecutive steps that raised
        self._counts = dict.fromkeys(
            (
                "steps",
                "requests_finished",
                "requests_cancelled",
                "requests_failed",
                "adapter_loads",
                "adapter_unloads",
            ),
            0,
        )
        # this backend's own counters: published in EngineStats.backend
        self._llama_counts = dict.fromkeys(("sequence_moves", "adapter_set_switches", "context_rebuilds"), 0)
        self._histogram = [0] * (config.max_sequences + 1)
        self._places: dict[int, tuple[str, int, int]] = {}  # request id → its last published place

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    # -- commands (between steps) -----------------------------------------------------------------------

    def handle(self, command: Command) -> None:
        if isinstance(command, AddRequest):
            self._add(command)
        elif isinstance(command, AbortRequest):
            seq = self._sequences.get(command.request_id)
            if seq is not None:  # aborts are idempotent: a finished request is already gone
                seq.cancel(self._clock())
                self.scheduler.remove(seq)
                self._end(seq, RequestFinished(seq.request_id, seq.result(self.runner.info)), "requests_cancelled")
        elif isinstance(command, AdapterCommand):
            try:
                result = self._adapter_command(command)
            except Exception as exc:  # one bad command fails alone, never the core
                if not isinstance(exc, EngineError):
                    logger.exception("adapter command %r failed", type(command).__name__)
                    exc = EngineFailure("the engine could not do this adapter operation (see the server log)")
                self._events.append(CommandFailed(command.command_id, exc))
            else:
                self._events.append(CommandDone(command.command_id, result))

    def _add(self, command: AddRequest) -> None:
        prepared = command.prepared
        try:
            self.adapters.check(prepared.adapters)
            self.runner.add_sequence(prepared.request_id, prepared.sampling, prepared.constraint, prepared.logprobs)
        except Exception as exc:
            if not isinstance(exc, EngineError):
                logger.exception("could not start request %d", prepared.request_id)
                exc = EngineFailure("the engine could not start this request (see the server log); retry it")
            self._events.append(RequestFailed(prepared.request_id, exc))
            self._counts["requests_failed"] += 1
            return
        key = prepared.adapter_key
        hold = self.adapters.acquire(key)  # cannot fail: checked above
        seq = Sequence.from_prepared(prepared)
        seq.adapter_hold = hold
        seq.adapter_key = self.adapters.weights_key(hold, key)  # by version: what grouping and prefix reuse compare
        seq.adapters_used = self.adapters.fingerprints(hold, key)
        seq.adapter_handles = self.adapters.handles(hold, key)  # valid while held
        self._sequences[seq.request_id] = seq
        self.scheduler.add(seq)

    def _adapter_command(self, command: AdapterCommand) -> object:
        if isinstance(command, LoadAdapter):
            loaded = self.adapters.load(command.checked, pin=command.pin, expect_sha256=command.expect_sha256)
            self._counts["adapter_loads"] += loaded.newly_loaded
            return loaded
        if isinstance(command, UnloadAdapter):
            unloaded = self.adapters.unload(command.name)
            self._counts["adapter_unloads"] += 1
            return unloaded
        if isinstance(command, ListAdapters):
            return self.adapters.list()
        raise TypeError(f"unknown adapter command {command!r}")

    # -- one step -----------------------------------------------------------------------------------------

    def step(self) -> list[Event]:
        """Run one decode step if there is work; return every event since the last call."""
        now = self._clock()
        self._expire(now)
        plan = self.scheduler.schedule(now)
        if plan is not None:
            try:
                output = self.runner.execute(plan)
                events = self.scheduler.update_from_output(plan, output, self._clock())
            except Exception:
                # A bug, not a bad request (the runner reports those in output.failed): fail this step's
                # requests, keep serving the others.
                logger.exception("a decode step failed unexpectedly")
                self._recover(plan)
            else:
                self._faulty_steps = 0
                self._publish(plan, output, events)
        self._publish_places()
        return self.take_events()

    def _publish_places(self) -> None:
        """A RequestStatusChanged for each request whose place changed: queued (how many ahead), reading
        its prompt (how far), then generating. Only queued and reading requests are looked at."""
        places: dict[int, tuple[str, int, int]] = {}
        for ahead, seq in enumerate(self.scheduler.waiting):
            places[seq.request_id] = ("queued", ahead, 0)
        for seq in self.scheduler.running.values():
            if seq.is_prefilling:
                places[seq.request_id] = ("reading", seq.num_prefilled, len(seq.prefill_tokens))
        previous, self._places = self._places, places
        for request_id, place in places.items():
            if previous.get(request_id) != place:
                phase, a, b = place
                if phase == "queued":
                    status = RequestStatus("queued", ahead=a)
                else:
                    status = RequestStatus("reading", read=a, prompt=b)
                self._events.append(RequestStatusChanged(request_id, status))
        for request_id in previous.keys() - places.keys():
            if request_id in self._sequences:  # still running: past its prompt
                self._events.append(RequestStatusChanged(request_id, RequestStatus("generating")))

    def _recover(self, plan: StepPlan) -> None:
        """Fail the requests the faulty step touched (its chunks, and sequences it moved: their cells
        may not be where the scheduler thinks). After REBUILD_AFTER faulty steps in a row the context
        itself is suspect: every request fails and the runner rebuilds it."""
        moved = {dst for _, dst in plan.moves}
        touched = {c.seq.request_id for c in plan.chunks}
        touched |= {s.request_id for s in self._sequences.values() if s.seq_id in moved}
        for request_id in touched:
            if (seq := self._sequences.get(request_id)) is not None:
                self.scheduler.remove(seq)
                self._end(seq, RequestFailed(request_id, _internal_error()), "requests_failed")
        # A move's source id is free now; if the move never ran, its old cells are still there for the
        # next request given that id.
        running = {s.seq_id for s in self._sequences.values() if s.status is SeqStatus.RUNNING}
        for src, _ in plan.moves:
            if src not in running:
                self.runner.remove_sequence(None, src)
        # Admissions in this plan may not have had their slot cleared or their cached prefix copied.
        for reuse in plan.reuses:
            seq = self.scheduler.running.get(reuse.slot)
            if seq is not None:
                self.scheduler.remove(seq)
                self._end(seq, RequestFailed(seq.request_id, _internal_error()), "requests_failed")
        self.scheduler.prefix_cache.clear()  # what the slots hold is no longer certain
        self._faulty_steps += 1
        if self._faulty_steps >= REBUILD_AFTER:
            logger.error("%d decode steps failed in a row: rebuilding the model context", self._faulty_steps)
            self.fail_all(_internal_error)
            self.runner.rebuild_context()
            self._faulty_steps = 0
            self._llama_counts["context_rebuilds"] += 1

    def _publish(self, plan: StepPlan, output: StepOutput, events: list[Event]) -> None:
        """Count the step, and publish its events; a request that ended first frees what it holds."""
        self._llama_counts["sequence_moves"] += len(plan.moves)
        if not plan.chunks:
            return
        counts = self._counts
        counts["steps"] += output.steps
        self._llama_counts["adapter_set_switches"] += output.adapter_switched
        self._histogram[len(plan.chunks)] += output.steps
        for event in events:
            if isinstance(event, RequestOutput):
                self._events.append(event)
            else:
                ended = "requests_finished" if isinstance(event, RequestFinished) else "requests_failed"
                self._end(self._sequences[event.request_id], event, ended)

    def _expire(self, now: float) -> None:
        for seq in [s for s in self._sequences.values() if now > s.deadline]:
            self.scheduler.remove(seq)
            error = RequestTimedOut(
                f"the request exceeded the server's {self.config.request_timeout:g} s limit "
                f"after {len(seq.completion_tokens)} tokens; ask for fewer max_tokens or retry when less busy"
            )
            self._end(seq, RequestFailed(seq.request_id, error), "requests_failed")

    def fail_all(self, make_error: Callable[[], EngineError]) -> None:
        """End every request with its own error (shutdown)."""
        for seq in list(self._sequences.values()):
            self.scheduler.remove(seq)
            self._end(seq, RequestFailed(seq.request_id, make_error()), "requests_failed")

    def _end(self, seq: Sequence, event: Event, counter: str) -> None:
        """Free the request's slot state (sampler; context cells unless the prefix cache keeps them) and
        adapter holds; report how it ended. The scheduler has already let go of it."""
        slot = seq.seq_id if seq.status is SeqStatus.RUNNING else None
        if slot is not None and counter != "requests_failed":
            # prompt (and answer but its last token, which was never decoded) stay for a later request
            if self.scheduler.prefix_cache.keep(slot, seq.adapter_key, seq.held_tokens()):
                slot = None
        self.runner.remove_sequence(seq.request_id, slot)
        self.adapters.release(seq.adapter_hold)
        del self._sequences[seq.request_id]
        self._events.append(event)
        self._counts[counter] += 1

    # -- outputs ------------------------------------------------------------------------------------------

    def take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def stats(self) -> EngineStats:
        info = self.runner.info
        llama = self._llama_counts
        return EngineStats(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            prefix_hits=self.scheduler.prefix_cache.hits,
            prefix_misses=self.scheduler.prefix_cache.misses,
            prefix_tokens_saved=self.scheduler.prefix_cache.tokens_saved,
            prompt_tokens=self.scheduler.prompt_tokens_read,
            tokens_generated=self.scheduler.tokens_generated,
            adapters_loaded=len(self.adapters.names()),
            sequences_per_step={n: c for n, c in enumerate(self._histogram) if c},
            running_adapters=_adapters_of(self.scheduler.running.values()),
            waiting_adapters=_adapters_of(self.scheduler.waiting),
            backend=(
                BackendMetric(
                    "kv_cells_used",
                    "KV cache cells held by running requests.",
                    "gauge",
                    self.runner.kv_cells_used(self.scheduler.running.keys()),
                ),
                BackendMetric(
                    "kv_cells_total",
                    "KV cache cells of the context.",
                    "gauge",
                    info.context_per_request * info.max_running_requests,
                ),
                BackendMetric(
                    "prefix_cache_cells",
                    "KV cells holding cached prompt prefixes.",
                    "gauge",
                    self.scheduler.prefix_cache.cells,
                ),
                BackendMetric(
                    "adapter_set_switches",
                    "Decode steps that changed the context's adapter set.",
                    "counter",
                    llama["adapter_set_switches"],
                ),
                BackendMetric(
                    "sequence_moves",
                    "Running requests' KV moved to keep the sequence ids of each step contiguous.",
                    "counter",
                    llama["sequence_moves"],
                ),
                BackendMetric(
                    "sequence_preemptions",
                    "Batch members that gave their slot to requests from outside the batch (resumed later).",
                    "counter",
                    self.scheduler.preemptions,
                ),
                BackendMetric(
                    "context_rebuilds",
                    "Model contexts rebuilt after repeated faulty steps.",
                    "counter",
                    llama["context_rebuilds"],
                ),
            ),
            **self._counts,
        )

    def close(self) -> None:
        self.adapters.close()
        self.runner.close()


def _adapters_of(sequences: Iterable[Sequence]) -> tuple[str, ...]:
    return tuple(sorted({name for seq in sequences for name, _ in seq.adapter_key}))
