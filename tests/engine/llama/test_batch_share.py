"""A batch's share of the slots on the real model: while an outside request waits, the batch's newest
members give their slots back and resume later by reading their output again; their text is exactly
what it would have been uninterrupted (greedy and seeded sampling), and the outside request starts at
once."""

from __future__ import annotations

import anyio
import pytest

from engine import EngineConfig, GenerateRequest, GenerationResult, SamplingParams
from engine.llama import LlamaEngine

pytestmark = pytest.mark.anyio


def member(text: str, **sampling: object) -> GenerateRequest:
    params = SamplingParams(max_tokens=48, ignore_eos=True, **sampling)  # type: ignore[arg-type]
    return GenerateRequest(prompt=text, sampling=params, batch_id="b", logprobs=1)


MEMBERS = [
    member("Tell me about the ocean.", temperature=0.0),
    member("Write a poem about rain.", temperature=0.9, seed=11),
    member("List some fruits.", temperature=0.0),
    member("Describe a mountain.", temperature=0.7, seed=3),
]


async def test_preempted_members_give_their_uninterrupted_text() -> None:
    config = EngineConfig(max_sequences=4, context_per_sequence=512)
    async with LlamaEngine(config) as eng:
        alone = [await eng.complete(m) for m in MEMBERS]
        results: dict[int, GenerationResult] = {}

        async def run(i: int, request: GenerateRequest) -> None:
            results[i] = await eng.complete(request)

        async with anyio.create_task_group() as tg:
            for i, request in enumerate(MEMBERS):
                tg.start_soon(run, i, request)
            await anyio.sleep(0.6)  # the batch holds every slot and is generating
            assert eng.stats().running == 4
            outside = [GenerateRequest(prompt=f"Say hi {i}.", sampling=SamplingParams(max_tokens=4)) for i in range(3)]
            for i, request in enumerate(outside):
                tg.start_soon(run, 10 + i, request)
        preempted = {m.name: m.value for m in eng.stats().backend}["sequence_preemptions"]
    assert preempted >= 2  # three outside requests: the batch went down to half
    for i, solo in enumerate(alone):
        assert results[i].text == solo.text, i
        assert results[i].logprobs == solo.logprobs, i
    assert all(results[10 + i].usage.completion_tokens for i in range(3))
