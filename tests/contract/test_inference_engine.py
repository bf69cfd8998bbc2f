"""The contract every backend of `engine.InferenceEngine` passes, written against the interface alone.

Parametrized by backend: `llama` (the in-process llama.cpp backend on the real model), `fake` (the same
backend over the byte-level fake runner, tests/fake_runner.py: fast, its text meaningless) and `ray` (one
llama replica on a local Ray Serve, called across the hop). A new backend joins by adding its opener to
BACKENDS. What the contract fixes: streamed deltas add
up to the result, with usage and finish reasons; abort and drain; adapters load, list and unload; errors
by type; a request's status while queued, reading and generating; stats; capabilities.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from engine import (
    AdapterInUse,
    AdapterRef,
    Capabilities,
    EngineBusy,
    EngineConfig,
    EngineState,
    EngineStopped,
    GenerateRequest,
    InferenceEngine,
    InvalidRequest,
    PromptTooLong,
    SamplingParams,
    UnknownAdapter,
)
from engine.llama import LlamaEngine
from engine.ray import RayOptions
from tests.fake_runner import FakeRunner

pytestmark = pytest.mark.anyio

LONG = SamplingParams(max_tokens=400, ignore_eos=True, temperature=0.0)


def _llama(config: EngineConfig) -> InferenceEngine:
    return LlamaEngine(config)


def _fake(config: EngineConfig) -> InferenceEngine:
    def runner(config: EngineConfig) -> FakeRunner:
        return FakeRunner(config, reply=b"lorem ipsum " * 60, step_seconds=0.003, like_default_model=True)

    return LlamaEngine(config, runner_factory=runner)  # type: ignore[arg-type]


def _ray(config: EngineConfig) -> InferenceEngine:
    from engine.ray.engine import RayEngine  # loads Ray

    return RayEngine(config, RayOptions(replicas=1, replica_threads=2))


BACKENDS: dict[str, Callable[[EngineConfig], InferenceEngine]] = {"llama": _llama, "fake": _fake, "ray": _ray}


@pytest.fixture(params=sorted(BACKENDS))
def open_engine(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """`async with open_engine(**config) as engine:` for this test's backend."""
    if request.param == "ray":
        request.getfixturevalue("ray_instance")  # one local Ray for the session; each test deploys its replicas

    @asynccontextmanager
    async def opened(**config: Any) -> AsyncIterator[InferenceEngine]:
        config.setdefault("context_per_sequence", 512)
        config.setdefault("max_sequences", 4)
        async with BACKENDS[request.param](EngineConfig(**config)) as engine:
            yield engine

    return opened


def ask(text: str = "Tell me a story.", sampling: SamplingParams = LONG, **more: Any) -> GenerateRequest:
    return GenerateRequest(prompt=text, sampling=sampling, **more)


async def settled(engine: InferenceEngine) -> None:
    with anyio.fail_after(10):
        while engine.stats().running or engine.stats().waiting:  # noqa: ASYNC110 (stats arrive with steps)
            await anyio.sleep(0.01)


# -- generation -----------------------------------------------------------------------------------------


async def test_deltas_add_up_to_the_result_with_usage_and_finish_reason(open_engine: Callable[..., Any]) -> None:
    async with open_engine() as engine:
        assert engine.state is EngineState.READY
        async with engine.generate(ask(sampling=SamplingParams(max_tokens=6, ignore_eos=True))) as stream:
            deltas = [delta async for delta in stream]
        result = stream.result
        assert result is not None and result.finish_reason == "length"
        assert "".join(d.text for d in deltas) == result.text
        assert result.usage.completion_tokens == 6 and result.usage.prompt_tokens > 0
        assert result.usage.total_tokens == result.usage.prompt_tokens + 6
        assert [d.completion_tokens for d in deltas] == sorted(d.completion_tokens for d in deltas)


async def test_logprobs_come_with_their_tokens_in_deltas_and_result(open_engine: Callable[..., Any]) -> None:
    sampling = SamplingParams(max_tokens=5, ignore_eos=True, temperature=0.0)
    async with open_engine() as engine:
        async with engine.generate(ask(sampling=sampling, logprobs=1, prompt_logprobs=True)) as stream:
            deltas = [delta async for delta in stream]
        result = stream.result
        assert result is not None and result.logprobs is not None and result.prompt_logprobs is not None
        assert [t for d in deltas for t in d.logprobs] == result.logprobs and len(result.logprobs) == 5
        assert "".join(t.token for t in result.logprobs) == result.text
        assert all(t.top[0].id == t.id and t.logprob is not None and t.logprob <= 0 for t in result.logprobs)
        assert list(deltas[0].prompt_logprobs) == result.prompt_logprobs  # with the first delta
        assert len(result.prompt_logprobs) == result.usage.prompt_tokens and result.prompt_logprobs[0].logprob is None
        plain = await _complete(engine, ask(sampling=sampling))
        assert plain.logprobs is None and plain.prompt_logprobs is None and plain.text == result.text


async def _complete(engine: InferenceEngine, request: GenerateRequest) -> Any:
    async with engine.generate(request) as stream:
        async for _ in stream:
            pass
    return stream.result


async def test_abort_ends_the_stream_as_cancelled_and_frees_the_request(open_engine: Callable[..., Any]) -> None:
    async with open_engine() as engine:
        async with engine.generate(ask()) as stream:
            async for _ in stream:
                stream.abort()
                stream.abort()  # idempotent
        assert stream.result is not None and stream.result.finish_reason == "cancelled"
        async with engine.generate(ask()) as left:  # leaving the block early aborts too
            async for _ in left:
                break
        await settled(engine)
        assert engine.stats().requests_cancelled == 2


async def test_drain_ends_what_does_not_finish_and_refuses_new_work(open_engine: Callable[..., Any]) -> None:
    async with open_engine() as engine:
        outcome: list[BaseException | str] = []

        async def long_request() -> None:
            try:
                async with engine.generate(ask(sampling=SamplingParams(max_tokens=2000, ignore_eos=True))) as stream:
                    async for _ in stream:
                        pass
                    outcome.append(stream.result.finish_reason if stream.result else "none")
            except EngineStopped as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(long_request)
            with anyio.fail_after(10):
                while not engine.stats().running:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            assert await engine.drain(0.1) == 1
        assert len(outcome) == 1 and isinstance(outcome[0], EngineStopped), outcome
        with pytest.raises(EngineStopped):
            async with engine.generate(ask()) as stream:
                async for _ in stream:
                    pass


# -- adapters ---------------------------------------------------------------------------------------------


async def test_adapters_load_list_and_unload(open_engine: Callable[..., Any]) -> None:
    async with open_engine() as engine:
        loaded = await engine.load_adapter("caps", "caps.gguf")
        assert loaded.newly_loaded and loaded.adapter.name == "caps"
        assert not (await engine.load_adapter("caps", "caps.gguf")).newly_loaded  # the same file again: a no-op
        listing = await engine.list_adapters()
        assert [a.name for a in listing.adapters] == ["caps"] and "caps.gguf" in listing.available_files
        assert listing.base_model == engine.model_info
        short = SamplingParams(max_tokens=4)
        result = await _complete(engine, ask(sampling=short, adapters=(AdapterRef(name="caps", scale=0.5),)))
        assert result.receipt.adapters[0].name == "caps"
        assert (await engine.unload_adapter("caps")).requests_served == 1
        assert (await engine.list_adapters()).adapters == []
        with pytest.raises(UnknownAdapter):
            await engine.unload_adapter("caps")
        with pytest.raises(UnknownAdapter):  # neither loaded nor on disk: refused as the stream is entered
            async with engine.generate(ask(sampling=short, adapters=(AdapterRef(name="nowhere"),))):
                pass
        # caps.gguf is in the adapter directory: a request naming it loads it first (auto-load is on by default)
        result = await _complete(engine, ask(sampling=short, adapters=(AdapterRef(name="caps"),)))
        assert result.receipt.adapters[0].name == "caps"
        assert [a.name for a in (await engine.list_adapters()).adapters] == ["caps"]
        assert engine.stats().adapter_first_use_loads == 1
    async with open_engine(auto_load_adapters=False) as engine:
        with pytest.raises(UnknownAdapter):  # refused as the stream is entered, before any text
            async with engine.generate(ask(sampling=short, adapters=(AdapterRef(name="caps"),))):
                pass


async def test_an_adapter_in_use_cannot_be_unloaded(open_engine: Callable[..., Any]) -> None:
    async with open_engine() as engine:
        await engine.load_adapter("caps", "caps.gguf")
        async with engine.generate(ask(adapters=(AdapterRef(name="caps"),))) as stream:
            async for _ in stream:
                with pytest.raises(AdapterInUse):
                    await engine.unload_adapter("caps")
                break
        await settled(engine)
        await engine.unload_adapter("caps")


# -- errors ---------------------------------------------------------------------------------------------


async def test_errors_come_by_type(open_engine: Callable[..., Any]) -> None:
    async with open_engine(max_sequences=1, queue_depth=0) as engine:
        with pytest.raises(PromptTooLong):
            await _complete(engine, ask("word " * 5000))
        with pytest.raises(InvalidRequest):
            await engine.load_adapter("x", "/etc/passwd")
        with pytest.raises(InvalidRequest):
            await engine.load_adapter("bad name!", "caps.gguf")
        async with engine.generate(ask()) as running:
            async for _ in running:
                break
            with pytest.raises(EngineBusy):  # one sequence, no queue: the second is refused at once
                await _complete(engine, ask())


# -- status, stats, capabilities ------------------------------------------------------------------------------


async def test_a_requests_status_says_queued_reading_and_generating(open_engine: Callable[..., Any]) -> None:
    async with open_engine(max_sequences=1, batch_tokens=16) as engine:
        async with engine.generate(ask()) as first:
            async for _ in first:
                break
            async with engine.generate(ask("word " * 80, SamplingParams(max_tokens=2))) as second:
                seen = {await _status_after(second, "preparing")}
                assert seen == {("queued", 0)}, seen
                first.abort()
                async for _ in first:
                    pass
                with anyio.fail_after(20):
                    while (status := second.status()).phase == "queued":  # noqa: ASYNC110
                        await anyio.sleep(0.001)
                    assert status.phase in ("reading", "generating")
                    if status.phase == "reading":  # an 80-word prompt, read 16 tokens a step
                        assert 0 < status.read < status.prompt
                async for _ in second:
                    pass
                assert second.status().phase == "generating"


async def _status_after(stream: Any, phase: str) -> tuple[str, int]:
    with anyio.fail_after(10):
        while (status := stream.status()).phase == phase:  # noqa: ASYNC110
            await anyio.sleep(0.005)
    return status.phase, status.ahead


async def test_stats_count_requests_steps_and_tokens(open_engine: Callable[..., Any]) -> None:
    async with open_engine() as engine:
        before = engine.stats()
        await _complete(engine, ask(sampling=SamplingParams(max_tokens=5, ignore_eos=True)))
        await settled(engine)
        after = engine.stats()
        assert after.requests_finished == before.requests_finished + 1
        assert after.tokens_generated >= before.tokens_generated + 5 and after.steps > before.steps
        assert after.running == after.waiting == 0 and sum(after.sequences_per_step.values()) == after.steps
        for metric in after.backend:
            assert metric.kind in ("gauge", "counter") and metric.name.isidentifier() and metric.help


async def test_capabilities_say_what_the_engine_does(open_engine: Callable[..., Any]) -> None:
    async with open_engine() as engine:
        info = engine.model_info
        assert info is not None and isinstance(info.capabilities, Capabilities)
        caps = info.capabilities
        assert caps.adapters and caps.max_adapters_per_request >= 1
        schema = ask(sampling=SamplingParams(max_tokens=4), json_schema={"type": "integer"})
        assert (caps.problem_with(schema) is None) == caps.constrained_output
        too_many = ask(adapters=tuple(AdapterRef(name=f"a{i}") for i in range(caps.max_adapters_per_request)))
        assert caps.problem_with(too_many) is None


async def _complete(engine: InferenceEngine, request: GenerateRequest) -> Any:
    async with engine.generate(request) as stream:
        async for _ in stream:
            pass
    return stream.result
