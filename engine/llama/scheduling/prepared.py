"""A request made ready for the core: token ids, limits, deadline and (opaque here) its constraint matcher.

Its own module so that the scheduling package never imports what prepares it (templates, tokenizer,
constraint compiler: llama.cpp).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.request import AdapterKey, AdapterRef, SamplingParams


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    request_id: int
    prompt_tokens: list[int]
    sampling: SamplingParams
    adapters: tuple[AdapterRef, ...]
    adapter_key: AdapterKey
    max_new_tokens: int  # sampling.max_tokens, clamped to the context left after the prompt
    submitted_at: float
    deadline: float
    constraint: Any = None  # an llguidance matcher for json_schema / grammar (engine/llama/cpp/constraints.py)
    logprobs: int | None = None  # alternatives per token, when the request asks for log-probabilities
    prompt_logprobs: bool = False
    batch_id: str | None = None  # a batch's members share half the slots while others wait
