"""Log-probabilities on the real model: what greedy picks is the top-1, the values are bitwise the same
alone and in a mixed batch (other adapters, a long prompt being read in the same steps, sampled
requests), prompt tokens are scored from the second on, and a cached prefix is not used to skip them."""

from __future__ import annotations

import math

import anyio
import pytest

from engine import AdapterRef, ChatMessage, EngineConfig, GenerateRequest, GenerationResult, SamplingParams
from engine.llama import LlamaEngine

pytestmark = pytest.mark.anyio

GREEDY = SamplingParams(temperature=0.0, max_tokens=24)
ASKING = GenerateRequest(
    messages=(ChatMessage(role="user", content="Name three rivers of Europe."),), sampling=GREEDY, logprobs=5
)
SCORED_PROMPT = GenerateRequest(
    prompt="The quick brown fox jumps over the lazy dog.", sampling=GREEDY, logprobs=2, prompt_logprobs=True
)


def crowd() -> list[GenerateRequest]:
    """Requests that share steps with the measured ones: an adapter, a sampled one, a long prompt."""
    long_prompt = "Rules:\n" + "\n".join(f"{i}. Be kind to rule {i}." for i in range(60))
    return [
        GenerateRequest(prompt="Tell me about the ocean.", adapters=(AdapterRef(name="caps"),), sampling=GREEDY),
        GenerateRequest(prompt="Once upon a time", sampling=SamplingParams(temperature=0.9, seed=7, max_tokens=40)),
        GenerateRequest(prompt=long_prompt, sampling=SamplingParams(max_tokens=8, temperature=0.0), logprobs=3),
    ]


async def test_greedy_picks_the_top_1_and_the_values_are_a_distribution(engine: LlamaEngine) -> None:
    result = await engine.complete(ASKING)
    assert result.logprobs is not None and len(result.logprobs) == result.usage.completion_tokens - (
        result.finish_reason == "stop"  # the end-of-turn token has no text and no entry
    )
    assert "".join(t.token for t in result.logprobs) == result.text
    for t in result.logprobs:
        assert len(t.top) == 5 and t.top[0].id == t.id and t.top[0].logprob == t.logprob
        assert t.logprob is not None and t.logprob <= 0
        assert [a.logprob for a in t.top] == sorted((a.logprob for a in t.top), reverse=True)
        assert sum(math.exp(a.logprob) for a in t.top) <= 1 + 1e-9
    assert result.prompt_logprobs is None  # not asked for


async def test_values_are_the_same_alone_and_in_a_mixed_batch(engine: LlamaEngine) -> None:
    alone = [await engine.complete(ASKING), await engine.complete(SCORED_PROMPT)]
    results: dict[int, GenerationResult] = {}

    async def run(i: int, request: GenerateRequest) -> None:
        results[i] = await engine.complete(request)

    async with anyio.create_task_group() as tg:
        for i, request in enumerate([*crowd(), ASKING, SCORED_PROMPT]):
            tg.start_soon(run, i, request)
    batched = [results[3], results[4]]
    for a, b in zip(alone, batched, strict=True):
        assert a.text == b.text
        assert a.logprobs == b.logprobs  # every value, bit for bit
        assert a.prompt_logprobs == b.prompt_logprobs
    assert results[2].logprobs and all(t.logprob is not None for t in results[2].logprobs)


async def test_prompt_tokens_are_scored_after_the_first_and_a_cached_prefix_is_not_used() -> None:
    async with LlamaEngine(EngineConfig(max_sequences=2, context_per_sequence=512)) as eng:
        first = await eng.complete(SCORED_PROMPT)
        again = await eng.complete(SCORED_PROMPT)  # the same prompt: the prefix cache holds it now
        assert eng.stats().prefix_hits == 0
    scored = first.prompt_logprobs
    assert scored is not None and len(scored) == first.usage.prompt_tokens
    assert scored[0].logprob is None and all(t.logprob is not None and t.logprob <= 0 for t in scored[1:])
    assert "".join(t.token for t in scored) == SCORED_PROMPT.prompt
    assert all(len(t.top) == 2 for t in scored[1:])
    assert again.prompt_logprobs == scored and again.logprobs == first.logprobs


async def test_a_constrained_request_scores_only_allowed_tokens(engine: LlamaEngine) -> None:
    request = GenerateRequest(
        prompt="Is the sky blue? Answer:",
        json_schema={"enum": ["yes", "no"]},
        sampling=SamplingParams(temperature=0.0, max_tokens=8),
        logprobs=20,
    )
    result = await engine.complete(request)
    assert result.text in ('"yes"', '"no"') and result.logprobs
    first = result.logprobs[0]
    assert first.token == '"' and len(first.top) < 20  # the mask left few tokens; those it removed have no entry
    assert all(math.isfinite(a.logprob) for t in result.logprobs for a in t.top)
