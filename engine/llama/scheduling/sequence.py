"""One request's state inside the core: prompt, prefill progress, sampled tokens, text, timestamps.

Its sampler lives with the model runner (per request id), not here: this is what the scheduler sees."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from engine.info import ModelInfo
from engine.llama.scheduling.prepared import PreparedRequest
from engine.llama.scheduling.text_stream import StopMatcher, Utf8Decoder
from engine.llama.vocab import Vocab
from engine.request import AdapterKey, SamplingParams
from engine.result import (
    AdapterUse,
    FinishReason,
    GenerationResult,
    Receipt,
    Timings,
    TokenLogprob,
    TopLogprob,
    Usage,
)

# A token's log-probability where it stood, and the likeliest alternatives: (token, logprob, ((id, logprob), …))
TokenScores = tuple[int, float | None, tuple[tuple[int, float], ...]]


class SeqStatus(enum.Enum):
    WAITING = "waiting"  # queued for a free sequence slot
    RUNNING = "running"  # holds a slot (seq_id) and context cells


@dataclass(eq=False, slots=True)
class Sequence:
    request_id: int
    prompt_tokens: list[int]
    sampling: SamplingParams
    # the adapter set: as requested until admission, then by version (name@content, scale), which is what
    # grouping and the prefix cache compare
    adapter_key: AdapterKey
    max_new_tokens: int  # sampling.max_tokens clamped to the sequence's context
    submitted_at: float
    deadline: float
    logprobs: int | None = None  # alternatives per token, when the request asks for log-probabilities
    prompt_logprobs: bool = False
    batch_id: str | None = None

    adapters_used: tuple[AdapterUse, ...] = ()  # by hash, with scales: fixed at admission
    # the adapter set as the runner applies it, (handle, scale) pairs, fixed at admission: held adapters
    # cannot be unloaded, so the handles stay valid while the sequence lives
    adapter_handles: list[tuple[Any, float]] = field(default_factory=list)
    adapter_hold: Any = ()  # the registry's hold on those versions, released when the sequence ends
    status: SeqStatus = SeqStatus.WAITING
    seq_id: int = -1
    num_prefilled: int = 0
    completion_tokens: list[int] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)
    admitted_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    finish_reason: FinishReason | None = None
    token_logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_token_logprobs: list[TokenLogprob] = field(default_factory=list)
    # after a preemption: the tokens to read again before decoding resumes (prompt and answer but its last token)
    _resume: list[int] | None = None
    _decoder: Utf8Decoder = field(default_factory=Utf8Decoder)
    _stop: StopMatcher | None = None

    def __post_init__(self) -> None:
        self._stop = StopMatcher(self.sampling.stop)

    @classmethod
    def from_prepared(cls, prepared: PreparedRequest) -> Sequence:
        return cls(
            request_id=prepared.request_id,
            prompt_tokens=prepared.prompt_tokens,
            sampling=prepared.sampling,
            adapter_key=prepared.adapter_key,
            max_new_tokens=prepared.max_new_tokens,
            submitted_at=prepared.submitted_at,
            deadline=prepared.deadline,
            logprobs=prepared.logprobs,
            prompt_logprobs=prepared.prompt_logprobs,
            batch_id=prepared.batch_id,
        )

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_tokens)

    @property
    def prefill_tokens(self) -> list[int]:
        """What the slot must read before decoding: the prompt, or after a preemption the prompt and the
        answer so far (but its last token, which the next decode step feeds)."""
        return self._resume if self._resume is not None else self.prompt_tokens

    @property
    def is_prefilling(self) -> bool:
        return self.num_prefilled < len(self.prefill_tokens)

    @property
    def samples_after_prefill(self) -> bool:
        """A resumed sequence's last read token is not sampled from: its next token is already known."""
        return not self.completion_tokens

    def held_tokens(self) -> list[int]:
        """The tokens whose KV its slot holds."""
        if self.is_prefilling:
            return self.prefill_tokens[: self.num_prefilled]
        return self.prompt_tokens + self.completion_tokens[:-1]

    def preempt(self) -> None:
        """Give up its slot; it waits again and reads what it held before decoding on. Its sampler (seed,
        penalties, constraint state) lives on with the runner, so its output is as if uninterrupted."""
        self._resume = self.prompt_tokens + self.completion_tokens[:-1] if self.completion_tokens else None
        self.num_prefilled = 0
        self.status = SeqStatus.WAITING
        self.seq_id = -1

    @property
    def has_first_token(self) -> bool:
        return bool(self.completion_tokens)

    @property
    def next_decode_position(self) -> int:
        """KV position of the last sampled token, which the next step feeds."""
        return len(self.prompt_tokens) + len(self.completion_tokens) - 1

    def accept(self, token: int, vocab: Vocab, now: float) -> str:
        """Record a sampled token; return the text it makes safe to emit. May finish the sequence."""
        assert self._stop is not None
        if self.first_token_at is None:
            self.first_token_at = now
        self.completion_tokens.append(token)
        if vocab.is_eog(token) and not self.sampling.ignore_eos:
            delta = self._finish_with_tail("stop", now)
        else:
            delta, stopped = self._stop.push(self._decoder.decode(vocab.token_bytes(token)))
            if stopped:
                self._set_finished("stop", now)
            elif len(self.completion_tokens) >= self.max_new_tokens:
                delta += self._finish_with_tail("length", now)
        self.text_parts.append(delta)
        return delta

    def add_scores(self, scores: TokenScores | None, vocab: Vocab) -> TokenLogprob | None:
        """Record the last accepted token's log-probability (when asked for; an end-of-generation token
        that ended the text has none, as it has no text)."""
        if scores is None or (vocab.is_eog(scores[0]) and not self.sampling.ignore_eos):
            return None
        logprob = token_logprob(scores, vocab)
        self.token_logprobs.append(logprob)
        return logprob

    def add_prompt_scores(self, scores: list[TokenScores], vocab: Vocab) -> None:
        if not self.prompt_token_logprobs:  # the first token: nothing before it to score it by
            self.prompt_token_logprobs.append(token_logprob((self.prompt_tokens[0], None, ()), vocab))
        self.prompt_token_logprobs += [token_logprob(s, vocab) for s in scores]

    def cancel(self, now: float) -> None:
        self._set_finished("cancelled", now)

    def _finish_with_tail(self, reason: FinishReason, now: float) -> str:
        """Finish, releasing text held back for UTF-8 completion or a possible stop string."""
        assert self._stop is not None
        tail, stopped = self._stop.push(self._decoder.flush())
        if not stopped:
            tail += self._stop.flush()
        self._set_finished("stop" if stopped else reason, now)
        return tail

    def _set_finished(self, reason: FinishReason, now: float) -> None:
        self.finish_reason = reason
        self.finished_at = now

    def result(self, model: ModelInfo) -> GenerationResult:
        """The result, with a receipt naming `model` (the served model's file and hash)."""
        assert self.finish_reason is not None and self.finished_at is not None
        admitted = self.admitted_at if self.admitted_at is not None else self.finished_at
        active = self.finished_at - admitted
        n_completion = len(self.completion_tokens)
        return GenerationResult(
            text="".join(self.text_parts),
            finish_reason=self.finish_reason,
            usage=Usage(
                prompt_tokens=len(self.prompt_tokens),
                completion_tokens=n_completion,
                total_tokens=len(self.prompt_tokens) + n_completion,
            ),
            timings=Timings(
                queue_ms=(admitted - self.submitted_at) * 1000,
                ttft_ms=None if self.first_token_at is None else (self.first_token_at - self.submitted_at) * 1000,
                total_ms=(self.finished_at - self.submitted_at) * 1000,
                tokens_per_second=n_completion / active if active > 0 else 0.0,
            ),
            receipt=Receipt(
                model=model.name,
                model_sha256=model.sha256,
                adapters=list(self.adapters_used),
                seed=self.sampling.seed if self.sampling.seed is not None else 0,
                sampling=self.sampling,
            ),
            logprobs=self.token_logprobs if self.logprobs is not None else None,
            prompt_logprobs=self.prompt_token_logprobs if self.prompt_logprobs else None,
        )


def token_logprob(scores: TokenScores, vocab: Vocab) -> TokenLogprob:
    token, logprob, top = scores
    return TokenLogprob(*_spelled(token, vocab), logprob, tuple(TopLogprob(*_spelled(t, vocab), lp) for t, lp in top))


def _spelled(token: int, vocab: Vocab) -> tuple[str, int, tuple[int, ...]]:
    data = vocab.token_bytes(token)
    if not data:  # a control token (end of turn, BOS): its own text, so it can be told apart
        return vocab.token_text(token), token, tuple(vocab.token_text(token).encode())
    return data.decode("utf-8", errors="replace"), token, tuple(data)
