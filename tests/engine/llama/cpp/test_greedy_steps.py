"""Greedy decode steps inside llama.cpp (greedy_steps.py, steps.patch), on the real model: the tokens of one
call of several steps are those of one step per call, alone and batched; the loop ends at an end-of-
generation token, at max_steps, at its time budget and when interrupted."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from engine.config import EngineConfig
from engine.llama.cpp.runner import LlamaRunner
from engine.llama.scheduling.sequence import SeqStatus, Sequence
from engine.llama.scheduling.step import StepPlan
from engine.request import SamplingParams
from tests.engine.llama.cpp.test_runner import next_chunks

GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0)
IGNORE_EOS = SamplingParams(temperature=0.0, repeat_penalty=1.0, ignore_eos=True)
PROMPTS = ["The history of the river is", "List three colours:", "def fibonacci(n):", "Paris is"]


@pytest.fixture(scope="module")
def runner() -> Iterator[LlamaRunner]:
    # a budget no test reaches unless it means to: the loop ends on max_steps, tokens or interrupts
    r = LlamaRunner(EngineConfig(max_sequences=4, context_per_sequence=256, greedy_steps_ms=1000))
    assert r._steps is not None, "this llama.cpp build lacks steps.patch (scripts/setup.sh applies it)"
    yield r
    r.close()


def start(runner: LlamaRunner, request_id: int, seq_id: int, prompt: str, sampling: SamplingParams) -> Sequence:
    tokens = runner.vocab.tokenize(prompt, add_special=True, parse_special=False)
    seq = Sequence(request_id, tokens, sampling, (), 64, 0.0, 1e9, status=SeqStatus.RUNNING, seq_id=seq_id)
    runner.add_sequence(request_id, sampling)
    return seq


def step(runner: LlamaRunner, seqs: list[Sequence], max_steps: int = 1) -> int:
    """One execute of next_chunks(seqs); appends each sequence's tokens; returns the steps it took."""
    output = runner.execute(StepPlan(next_chunks(seqs), max_steps=max_steps))
    assert not output.failed
    for seq, token in output.sampled:
        seq.completion_tokens.append(token)
    return output.steps


def finish(runner: LlamaRunner, seqs: list[Sequence]) -> None:
    for seq in seqs:
        runner.remove_sequence(seq.request_id, seq.seq_id)


def test_steps_in_llama_cpp_give_the_tokens_of_one_step_per_call(runner: LlamaRunner) -> None:
    """Four sequences (two banning end-of-generation tokens), 24 tokens each: one step per call, then the
    same prompts read again and decoded 7 + 9 + 7 steps per call. Same tokens, and the KV they leave gives
    the same next tokens."""
    singles = [start(runner, i, i, p, IGNORE_EOS if i % 2 else GREEDY) for i, p in enumerate(PROMPTS)]
    step(runner, singles)  # the prompts
    for _ in range(23):
        step(runner, singles)
    finish(runner, singles)
    looped = [start(runner, 10 + i, i, p, IGNORE_EOS if i % 2 else GREEDY) for i, p in enumerate(PROMPTS)]
    step(runner, looped)
    taken = [step(runner, looped, n) for n in (7, 9, 7)]
    finish(runner, looped)
    if taken != [7, 9, 7]:  # a row reached an end-of-generation token it does not ban: the loop stopped there
        pytest.fail(f"the loop stopped early: {taken}; pick prompts that do not end within 24 tokens")
    assert [s.completion_tokens for s in looped] == [s.completion_tokens for s in singles]


def test_an_end_of_generation_token_ends_the_loop_unless_the_row_bans_it(runner: LlamaRunner) -> None:
    """A chat turn that ends: the loop returns at the step whose token is <|im_end|>, as the sampler would
    have taken it; with ignore_eos the same prompt decodes on through it, never taking one."""
    chat = "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"  # 7 tokens, <|im_end|> last
    for request_id, sampling in ((20, GREEDY), (21, IGNORE_EOS)):
        tokens = runner.vocab.tokenize(chat, add_special=False, parse_special=True)
        seq = Sequence(request_id, tokens, sampling, (), 64, 0.0, 1e9, status=SeqStatus.RUNNING, seq_id=0)
        runner.add_sequence(request_id, sampling)
        step(runner, [seq])
        step(runner, [seq], 40)
        finish(runner, [seq])
        ends = [t for t in seq.completion_tokens if runner.vocab.is_eog(t)]
        if sampling.ignore_eos:
            assert not ends and len(seq.completion_tokens) == 41
        else:
            assert ends == [seq.completion_tokens[-1]] and len(seq.completion_tokens) == 7


def test_an_interrupt_ends_the_loop_after_its_current_step(runner: LlamaRunner) -> None:
    seqs = [start(runner, 30, 0, PROMPTS[0], IGNORE_EOS)]
    step(runner, seqs)
    runner.interrupt()  # before the call: it takes one step, and clears the flag
    assert step(runner, seqs, 50) == 1
    assert step(runner, seqs, 5) == 5
    # from another thread while the loop runs (as CoreThread.submit does when a command is queued)
    timer = threading.Timer(0.05, runner.interrupt)
    timer.start()
    began = time.monotonic()
    taken = step(runner, seqs, 50)
    timer.join()
    finish(runner, seqs)
    assert 1 <= taken < 50, f"the loop ran {taken} steps in {time.monotonic() - began:.3f} s"


def test_the_time_budget_ends_the_loop() -> None:
    r = LlamaRunner(EngineConfig(max_sequences=1, context_per_sequence=256, greedy_steps_ms=1))
    try:
        seqs = [start(r, 40, 0, PROMPTS[1], IGNORE_EOS)]
        step(r, seqs)
        assert step(r, seqs, 50) < 50  # a step takes longer than 1 ms on any machine this runs on
        finish(r, seqs)
    finally:
        r.close()
    off = LlamaRunner(EngineConfig(max_sequences=1, context_per_sequence=256, greedy_steps_ms=0))
    try:
        assert off._steps is None
        seqs = [start(off, 41, 0, PROMPTS[1], IGNORE_EOS)]
        step(off, seqs)
        assert step(off, seqs, 50) == 1  # 0: one step per call
        finish(off, seqs)
    finally:
        off.close()


def test_a_request_that_is_not_plain_greedy_keeps_the_step_in_python(runner: LlamaRunner) -> None:
    """Penalties, a draw or log-probabilities need Python between steps: the plan runs one step."""
    seqs = [start(runner, 50, 0, PROMPTS[0], GREEDY), start(runner, 51, 1, PROMPTS[1], SamplingParams(seed=1))]
    step(runner, seqs)
    assert step(runner, seqs, 10) == 1
    finish(runner, seqs)
