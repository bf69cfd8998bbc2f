"""The core, its thread and the async facade on the fake runner: fast and deterministic."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from engine import (
    EngineBusy,
    EngineConfig,
    EngineFailure,
    EngineState,
    EngineStopped,
    GenerateRequest,
    RequestTimedOut,
    SamplingParams,
)
from engine.llama import LlamaEngine
from engine.llama.chat_template import ChatTemplate
from engine.llama.commands import AbortRequest, AddRequest, RequestFailed, RequestFinished, RequestOutput
from engine.llama.core import REBUILD_AFTER, EngineCore
from engine.llama.preparation import RequestPreparer
from tests.fake_runner import FakeRunner, FakeVocab

pytestmark = pytest.mark.anyio

# -- the synchronous core: no threads, no sleeps ----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_core(**overrides: object) -> tuple[EngineCore, FakeRunner, RequestPreparer, Clock]:
    reply = overrides.pop("reply", b"hello world")
    overrides.setdefault("prefix_cache_cells", 0)  # these tests count every cell; the cache's own set it
    config = EngineConfig(**overrides)  # type: ignore[arg-type]
    runner = FakeRunner(config, reply=reply)  # type: ignore[arg-type]
    clock = Clock()
    preparer = RequestPreparer(
        FakeVocab(),
        ChatTemplate(None, bos_token="</s>", eos_token="</s>"),
        context_per_request=config.context_per_sequence,
        timeout=config.request_timeout,
    )
    return EngineCore(runner, config, clock=clock), runner, preparer, clock


def add(core: EngineCore, preparer: RequestPreparer, rid: int, prompt: str, **sampling: object) -> None:
    request = GenerateRequest(prompt=prompt, sampling=SamplingParams(**sampling))  # type: ignore[arg-type]
    core.handle(AddRequest(preparer.prepare(rid, request, 0.0)))


def run_until_idle(core: EngineCore, limit: int = 1000) -> list:
    events = []
    for _ in range(limit):
        events += core.step()
        if not core.has_work:
            return events + core.take_events()
    raise AssertionError("the core did not finish its work")


def outcomes(events: list) -> dict[int, object]:
    return {e.request_id: e for e in events if isinstance(e, RequestFinished | RequestFailed)}


def test_core_steps_requests_to_completion_with_text_deltas() -> None:
    core, runner, preparer, _ = make_core()
    add(core, preparer, 1, "hi")
    add(core, preparer, 2, "there")
    events = run_until_idle(core)
    done = outcomes(events)
    assert {rid: e.result.text for rid, e in done.items()} == {1: "hello world", 2: "hello world"}  # type: ignore[union-attr]
    text = "".join(e.delta.text for e in events if isinstance(e, RequestOutput) and e.request_id == 1)
    assert text == "hello world"
    assert runner.kv == {} and runner.samplers == {}  # everything freed
    stats = core.stats()
    assert stats.requests_finished == 2 and stats.running == 0 and stats.prompt_tokens == len("hi") + len("there")
    assert stats.sequences_per_step[2] >= 10  # both shared every step


def test_a_sampler_failure_fails_its_request_alone() -> None:
    core, runner, preparer, _ = make_core()
    runner.failing_sampler = lambda sampling: sampling.seed == 13
    for rid in range(1, 6):
        add(core, preparer, rid, f"request {rid}", seed=13 if rid == 3 else None)
    done = outcomes(run_until_idle(core))
    assert isinstance(done[3], RequestFailed) and "sampler" in str(done[3].error)
    assert all(isinstance(done[r], RequestFinished) and done[r].result.text == "hello world" for r in (1, 2, 4, 5))  # type: ignore[union-attr]
    add(core, preparer, 6, "next")  # and the core serves the next request
    assert isinstance(outcomes(run_until_idle(core))[6], RequestFinished)


def test_a_sampler_that_cannot_be_built_refuses_only_its_request() -> None:
    core, runner, preparer, _ = make_core()
    runner.failing_sampler_at_start = lambda sampling: sampling.seed == 13
    add(core, preparer, 1, "good")
    add(core, preparer, 2, "bad", seed=13)
    done = outcomes(run_until_idle(core))
    assert isinstance(done[2], RequestFailed) and "could not start this request" in str(done[2].error)
    assert isinstance(done[1], RequestFinished)
    assert core.stats().requests_failed == 1


def core_with_a_pending_move() -> tuple[EngineCore, FakeRunner]:
    """Three running requests; the middle one aborted, so the next step moves seq id 2 into the hole at 1."""
    core, runner, preparer, _ = make_core(max_sequences=4)
    for rid in (1, 2, 3):
        add(core, preparer, rid, "abc", max_tokens=50, ignore_eos=True)
    core.step()  # prefill: seq ids 0, 1, 2
    core.handle(AbortRequest(2))
    return core, runner


def test_a_failed_decode_gives_each_request_its_own_error_and_keeps_the_moves() -> None:
    core, runner = core_with_a_pending_move()
    runner.fail_decodes = 1
    events = core.step()
    assert runner.moves == [(2, 1)]  # applied even though the decode failed
    failed = [e for e in events if isinstance(e, RequestFailed)]
    assert {e.request_id for e in failed} == {1, 3}
    assert failed[0].error is not failed[1].error
    assert runner.kv == {} and not core.has_work


def test_a_step_that_raises_fails_its_requests_and_the_core_serves_on() -> None:
    """A bug inside a step (not a reported decode failure) fails that step's requests, each with its
    own clear error; the queued request and later ones are served on the same context."""
    core, runner, preparer, _ = make_core(max_sequences=2)
    for rid in (1, 2, 3):
        add(core, preparer, rid, "abc")
    runner.raise_in_execute = 1
    done = outcomes(core.step())
    assert set(done) == {1, 2}
    assert all(isinstance(e, RequestFailed) and "internal error" in str(e.error) for e in done.values())
    assert done[1].error is not done[2].error  # type: ignore[union-attr]
    add(core, preparer, 4, "next")
    done = outcomes(run_until_idle(core))
    assert {rid: e.result.text for rid, e in done.items()} == {3: "hello world", 4: "hello world"}  # type: ignore[union-attr]
    assert runner.rebuilds == 0 and runner.kv == {} and runner.samplers == {}


def test_a_step_that_raises_before_its_moves_leaves_no_stale_cells() -> None:
    core, runner = core_with_a_pending_move()
    runner.raise_in_execute = 1
    done = outcomes(core.step())
    assert runner.moves == []  # the move never ran
    assert isinstance(done.pop(2), RequestFinished)  # the abort
    assert set(done) == {1, 3} and all(isinstance(e, RequestFailed) for e in done.values())
    assert runner.kv == {}  # seq id 2's old cells are gone too: the next request there starts clean


def test_faulty_steps_in_a_row_rebuild_the_context_then_serving_resumes() -> None:
    core, runner, preparer, _ = make_core(max_sequences=1)
    for rid in range(1, 5):
        add(core, preparer, rid, "abc")
    runner.raise_in_execute = REBUILD_AFTER
    failed = outcomes([e for _ in range(REBUILD_AFTER) for e in core.step()])
    # each faulty step failed its own request; the last one also failed the queued request 4 and
    # rebuilt the context
    assert set(failed) == {1, 2, 3, 4} and all(isinstance(e, RequestFailed) for e in failed.values())
    assert runner.rebuilds == 1 and core.stats().backend_value("context_rebuilds") == 1
    add(core, preparer, 5, "after")
    done = outcomes(run_until_idle(core))
    assert done[5].result.text == "hello world"  # type: ignore[union-attr]


def test_core_aborts_and_timeouts() -> None:
    core, runner, preparer, clock = make_core(request_timeout=5.0, reply=b"z" * 100)
    add(core, preparer, 1, "a")
    add(core, preparer, 2, "b")
    core.step()
    core.handle(AbortRequest(1))
    core.handle(AbortRequest(1))  # idempotent
    clock.now = 10.0
    done = outcomes(core.step())
    assert done[1].result.finish_reason == "cancelled"  # type: ignore[union-attr]
    assert isinstance(done[2], RequestFailed) and isinstance(done[2].error, RequestTimedOut)
    assert runner.kv == {} and core.stats().requests_cancelled == 1


# -- the async facade over the worker thread ----------------------------------------------------------------


def fake_engine(**overrides: object) -> tuple[LlamaEngine, list[FakeRunner]]:
    made: list[FakeRunner] = []
    step_seconds = overrides.pop("step_seconds", 0.0)
    reply = overrides.pop("reply", b"hello world")

    def factory(config: EngineConfig) -> FakeRunner:
        made.append(FakeRunner(config, reply=reply, step_seconds=step_seconds))  # type: ignore[arg-type]
        return made[-1]

    return LlamaEngine(EngineConfig(**overrides), runner_factory=factory), made  # type: ignore[arg-type]


async def test_stream_deltas_add_up_to_the_result() -> None:
    eng, _ = fake_engine()
    async with eng:
        async with eng.generate(GenerateRequest(prompt="hi")) as stream:
            deltas = [d.text async for d in stream]
        assert stream.result is not None
        assert "".join(deltas) == stream.result.text == "hello world"
        assert stream.result.finish_reason == "stop"
        assert stream.result.usage.prompt_tokens == 2


async def test_a_request_arriving_mid_generation_joins_the_next_step() -> None:
    eng, made = fake_engine(step_seconds=0.005, reply=b"x" * 60)
    async with eng:
        async with eng.generate(GenerateRequest(prompt="first")) as first:
            it = aiter(first)
            for _ in range(5):
                await anext(it)
            second = await eng.complete(GenerateRequest(prompt="second"))
            async for _ in it:
                pass
        assert second.finish_reason == "stop"
        steps = made[0].steps
        # the step carrying the second request's prompt also carries a decode token of the first
        joined = [s for s in steps if any(n == len("second") for _, n, _, _ in s)]
        assert joined and len(joined[0]) == 2
        # queuing it told the runner, so that a loop of several steps in llama.cpp returns for it
        assert made[0].interrupts >= 1


async def test_abort_frees_the_sequence_and_is_idempotent() -> None:
    eng, _ = fake_engine(step_seconds=0.002, reply=b"y" * 500)
    async with eng:
        async with eng.generate(GenerateRequest(prompt="abc")) as stream:
            async for _ in stream:
                break
        stream.abort()  # a second abort of a finished request is harmless
        await eng.complete(GenerateRequest(prompt="x", sampling=SamplingParams(max_tokens=1)))
        stats = eng.stats()
        assert stats.backend_value("kv_cells_used") == 0 and stats.running == 0 and stats.requests_cancelled == 1


async def test_past_the_queue_bound_calls_get_an_immediate_busy_error() -> None:
    eng, _ = fake_engine(max_sequences=1, queue_depth=1, step_seconds=0.01, reply=b"z" * 100)
    async with eng:
        async with eng.generate(GenerateRequest(prompt="a")), eng.generate(GenerateRequest(prompt="b")):
            with pytest.raises(EngineBusy, match="busy"):
                async with eng.generate(GenerateRequest(prompt="c")):
                    pass


async def test_a_request_past_its_timeout_fails_with_a_clear_error() -> None:
    eng, _ = fake_engine(request_timeout=0.05, step_seconds=0.01, reply=b"z" * 1000)
    async with eng:
        with pytest.raises(RequestTimedOut, match="limit"):
            await eng.complete(GenerateRequest(prompt="a"))
        assert eng.stats().running == 0


async def test_requests_in_flight_at_shutdown_fail_instead_of_hanging() -> None:
    eng, _ = fake_engine(step_seconds=0.01, reply=b"z" * 1000)
    errors: list[BaseException] = []

    async def call() -> None:
        try:
            await eng.complete(GenerateRequest(prompt="a"))
        except EngineStopped as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        async with eng:
            for _ in range(2):
                tg.start_soon(call)
            await anyio.sleep(0.05)
    assert len(errors) == 2 and errors[0] is not errors[1]
    assert eng.state is EngineState.STOPPED


async def test_a_crashed_core_fails_everything_open_and_later_calls_at_once() -> None:
    eng, made = fake_engine(step_seconds=0.005, reply=b"z" * 1000)
    async with eng:
        async with eng.generate(GenerateRequest(prompt="a")) as stream:
            it = aiter(stream)
            await anext(it)

            def crash(*_: object) -> None:
                raise RuntimeError("injected bug")

            # outside a step (a step's own faults are recovered from): the core cannot go on
            made[0].kv_cells_used = crash  # type: ignore[method-assign]
            with pytest.raises(EngineFailure, match="internal error"):
                async for _ in it:
                    pass
        assert eng.state is EngineState.FAILED
        with anyio.fail_after(2):  # nothing waits forever on a dead core
            with pytest.raises(EngineFailure):
                await eng.list_adapters()
            with pytest.raises(EngineFailure):
                await eng.complete(GenerateRequest(prompt="b"))
    assert made[0].closed


async def test_a_backend_that_fails_to_load_fails_engine_start() -> None:
    def broken(config: EngineConfig) -> FakeRunner:
        raise RuntimeError("no such model")

    eng = LlamaEngine(EngineConfig(), runner_factory=broken)
    with pytest.raises(RuntimeError, match="no such model"):
        async with eng:
            pass
    assert eng.state is EngineState.FAILED


async def test_calls_made_while_starting_wait_for_the_model() -> None:
    eng, _ = fake_engine()
    results = []
    finished = anyio.Event()

    async def serve() -> None:
        async with eng:
            await finished.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        await anyio.lowlevel.checkpoint()  # serve() is now loading the model in a thread
        assert eng.state is EngineState.STARTING and eng.model_info is None
        results.append(await eng.complete(GenerateRequest(prompt="early")))
        finished.set()
    assert results[0].text == "hello world"
    assert eng.state is EngineState.STOPPED


def test_an_adapter_command_that_breaks_fails_alone() -> None:
    from pathlib import Path

    from engine.llama.adapters.files import AdapterFileBytes
    from engine.llama.adapters.loading import CheckedAdapterFile
    from engine.llama.adapters.validation import AdapterFileInfo
    from engine.llama.commands import CommandFailed, LoadAdapter

    core, runner, preparer, _ = make_core()

    def broken_load(file: object) -> object:
        raise OSError("injected load failure")

    runner.load_adapter = broken_load  # type: ignore[method-assign]
    checked = CheckedAdapterFile(
        "x", AdapterFileBytes(Path("x.gguf"), b""), AdapterFileInfo("fake", 8, 16.0, (), 2), "0" * 64
    )
    core.handle(LoadAdapter(1, checked))
    add(core, preparer, 2, "still serving")
    events = run_until_idle(core)
    failed = [e for e in events if isinstance(e, CommandFailed)]
    assert len(failed) == 1 and "adapter operation" in str(failed[0].error)
    assert isinstance(outcomes(events)[2], RequestFinished)


def test_outbox_hands_over_first_text_and_ends_at_once_and_holds_later_text_briefly() -> None:
    from engine.info import EngineStats
    from engine.llama.core_thread import COALESCE_S, Outbox
    from engine.result import TextDelta

    class Core:
        def stats(self) -> EngineStats:
            return EngineStats()

    now = [100.0]
    batches: list[list] = []
    outbox = Outbox(lambda batch: batches.append(batch.events), clock=lambda: now[0])

    def step(*events: object, final: bool = False, dt: float = 0.005) -> None:
        now[0] += dt
        outbox.add(list(events), Core(), final=final)  # type: ignore[arg-type]

    step(RequestOutput(1, TextDelta("a", 1)))  # a request's first text: at once
    assert len(batches) == 1
    step(RequestOutput(1, TextDelta("b", 2)))  # more text: held
    step(RequestOutput(1, TextDelta("c", 3)))
    assert len(batches) == 1
    step(RequestOutput(2, TextDelta("x", 1)))  # another request's first text: at once, with what was held
    assert len(batches) == 2 and [e.delta.text for e in batches[1]] == ["b", "c", "x"]
    step(RequestOutput(1, TextDelta("d", 4)), dt=COALESCE_S + 0.001)  # held no longer than COALESCE_S
    assert len(batches) == 3
    step(RequestOutput(1, TextDelta("e", 5)))
    step(RequestFinished(1, None))  # type: ignore[arg-type]  # an end: at once
    assert len(batches) == 4 and len(batches[3]) == 2
    step(RequestOutput(2, TextDelta("y", 2)), final=True)  # the core has no more work: at once
    assert len(batches) == 5


def test_a_prompt_sharing_a_finished_requests_start_prefills_only_the_rest() -> None:
    core, runner, preparer, _ = make_core(max_sequences=2, prefix_cache_cells=4096)
    system = "You are a helpful assistant who answers briefly. " * 2  # FakeVocab: one token per byte
    add(core, preparer, 1, system + "First question?")
    run_until_idle(core)
    add(core, preparer, 2, system + "Second one?")
    run_until_idle(core)
    first_chunk = next(step for step in runner.steps if step[0][0] == 2)[0]
    assert first_chunk[2] == len(system)  # (request, n tokens, start position, samples): after the shared part
    stats = core.stats()
    assert (stats.prefix_hits, stats.prefix_tokens_saved) == (1, len(system))
    assert stats.prompt_tokens == len(system + "First question?") + len("Second one?")
    # cached cells are not "in use"
    assert stats.backend_value("kv_cells_used") == 0 and stats.backend_value("prefix_cache_cells") > 0


def test_no_prefix_hit_crosses_adapter_sets_or_falls_below_the_minimum() -> None:
    from pathlib import Path

    from engine import AdapterRef
    from engine.llama.adapters.files import AdapterFileBytes
    from engine.llama.adapters.loading import CheckedAdapterFile
    from engine.llama.adapters.validation import AdapterFileInfo
    from engine.llama.commands import LoadAdapter

    core, runner, preparer, _ = make_core(max_sequences=2, prefix_cache_cells=4096)
    core.handle(LoadAdapter(1, CheckedAdapterFile(
        "a", AdapterFileBytes(Path("a.gguf"), b""), AdapterFileInfo("fake", 8, 16.0, (), 2), "0" * 64
    )))  # fmt: skip
    system = "Shared instructions for every call, long enough. " * 2
    add(core, preparer, 1, system + "one")
    run_until_idle(core)
    request = GenerateRequest(prompt=system + "two", adapters=(AdapterRef(name="a"),))
    core.handle(AddRequest(preparer.prepare(2, request, 0.0)))
    run_until_idle(core)
    add(core, preparer, 3, "short")  # shares nothing
    run_until_idle(core)
    stats = core.stats()
    assert stats.prefix_hits == 0 and stats.prefix_misses == 3
    assert all(step[0][2] == 0 for step in runner.steps if step[0][0] in (2, 3) and step[0][1] > 1)
