"""Greedy steps inside llama.cpp (greedy_steps.py) through the whole engine, on the real model: every
request's result is the same with the loop as without it (alone and batched, ending by max_tokens, an
end-of-generation token, a stop string, beside requests that need Python every step, and reusing a
prefix a looped request left), and a request arriving during a loop does not wait for it."""

from __future__ import annotations

import anyio
import pytest

from engine import EngineConfig, GenerateRequest, GenerationResult, SamplingParams
from engine.llama import LlamaEngine
from engine.llama.cpp.greedy_steps import GreedySteps
from tests.engine.llama.test_engine import QUESTIONS, chat, run_concurrently

pytestmark = pytest.mark.anyio


def plain(**sampling: object) -> SamplingParams:
    return SamplingParams(temperature=0.0, repeat_penalty=1.0, **sampling)  # type: ignore[arg-type]


REQUESTS = [
    chat(QUESTIONS[0], plain(max_tokens=40)),  # ends with <|im_end|>
    chat(QUESTIONS[1], plain(max_tokens=33, ignore_eos=True)),
    chat(QUESTIONS[2], plain(max_tokens=60, stop=(".",))),
    chat(QUESTIONS[3], plain(max_tokens=2)),
    chat(QUESTIONS[4], plain(max_tokens=1)),
    GenerateRequest(prompt="The river runs to the sea, and", sampling=plain(max_tokens=25)),
    chat(QUESTIONS[6], plain(max_tokens=30, ignore_eos=True, stop=("\n",))),
    chat(QUESTIONS[7], SamplingParams(temperature=0.0, max_tokens=20)),  # a repeat penalty: Python's steps
]


def outcome(result: GenerationResult) -> tuple[str, str, int]:
    return result.text, result.finish_reason, result.usage.completion_tokens


async def results(config: EngineConfig) -> tuple[list, list, list]:
    """Each request alone, all at once, and then each again after the others (prefix-cache hits)."""
    async with LlamaEngine(config) as engine:
        alone = [outcome(await engine.complete(r)) for r in REQUESTS]
        batched = [outcome(r) for r in await run_concurrently(engine, REQUESTS)]
        again = [outcome(await engine.complete(r)) for r in REQUESTS]
        assert engine.stats().prefix_hits > 0
    return alone, batched, again


async def test_results_are_the_same_with_and_without_steps_in_llama_cpp(monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[int] = []
    run = GreedySteps.run

    def counted(self: GreedySteps, *args: object) -> tuple[int, int, list[list[int]]]:
        rc, decoded, steps = run(self, *args)  # type: ignore[arg-type]
        taken.append(decoded)
        return rc, decoded, steps

    monkeypatch.setattr(GreedySteps, "run", counted)
    base = EngineConfig(max_sequences=8, context_per_sequence=512)
    reference = await results(base.model_copy(update={"greedy_steps_ms": 0}))
    assert not taken
    looped = await results(base)
    assert max(taken) > 1, "the loop never ran several steps"  # ~5 a call on an idle 2-core machine
    assert looped == reference
    alone, batched, again = reference
    assert alone == batched == again
    reasons = {finish for _, finish, _ in alone}
    assert reasons == {"stop", "length"}


async def test_a_request_arriving_during_a_loop_starts_at_the_next_step() -> None:
    """The first request could decode its 60 tokens in one call (a 1 s budget); the second, queued
    after its first text, interrupts it: its first token comes before the first request ends."""
    config = EngineConfig(max_sequences=2, context_per_sequence=512, greedy_steps_ms=1000)
    async with LlamaEngine(config) as engine:
        first_request = chat(QUESTIONS[2], plain(max_tokens=60, ignore_eos=True))
        async with engine.generate(first_request) as first:
            it = aiter(first)
            await anext(it)
            async with engine.generate(chat(QUESTIONS[0], plain(max_tokens=5))) as second:
                await anext(aiter(second))
                assert not first._done, "the second request's first token waited for the first to end"
            async for _ in it:
                pass
        assert first.result is not None and first.result.usage.completion_tokens == 60
        with anyio.fail_after(5):
            await engine.complete(chat(QUESTIONS[1], plain(max_tokens=3)))
