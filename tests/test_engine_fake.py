"""The async facade and worker loop on the fake backend: fast and deterministic."""

from __future__ import annotations

import anyio
import pytest

from engine import Engine, EngineBusy, EngineConfig, EngineStopped, GenerateRequest, RequestTimedOut
from tests.fake_backend import FakeBackend

pytestmark = pytest.mark.anyio


def fake_engine(**overrides: object) -> tuple[Engine, list[FakeBackend]]:
    made: list[FakeBackend] = []
    step_seconds = overrides.pop("step_seconds", 0.0)
    reply = overrides.pop("reply", b"hello world")

    def factory(config: EngineConfig) -> FakeBackend:
        made.append(FakeBackend(config, reply=reply, step_seconds=step_seconds))  # type: ignore[arg-type]
        return made[-1]

    return Engine(EngineConfig(**overrides), backend_factory=factory), made  # type: ignore[arg-type]


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


async def test_abort_frees_the_sequence_and_is_idempotent() -> None:
    eng, _ = fake_engine(step_seconds=0.002, reply=b"y" * 500)
    async with eng:
        async with eng.generate(GenerateRequest(prompt="abc")) as stream:
            async for _ in stream:
                break
        eng._abort(stream.request_id)  # a second abort of a finished request is harmless
        assert await eng.sequence_positions() == [-1] * eng.config.max_sequences
        assert eng.stats().running == 0


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
            tg.start_soon(call)
            await anyio.sleep(0.05)
    assert len(errors) == 1


async def test_a_backend_that_fails_to_load_fails_engine_start() -> None:
    def broken(config: EngineConfig) -> FakeBackend:
        raise RuntimeError("no such model")

    with pytest.raises(RuntimeError, match="no such model"):
        async with Engine(EngineConfig(), backend_factory=broken):
            pass
