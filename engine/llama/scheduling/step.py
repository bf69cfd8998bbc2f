"""One decode step as data: the scheduler's plan going in (each chunk's sequence carries its adapter
handles), the runner's output coming back; the scheduler turns that output into the events the core
publishes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.errors import EngineError
from engine.llama.scheduling.prefix_cache import Reuse
from engine.llama.scheduling.sequence import Sequence, TokenScores
from engine.request import AdapterKey


@dataclass(slots=True)
class Chunk:
    """Tokens of one sequence in one step, at positions start_pos, start_pos+1, …"""

    seq: Sequence
    tokens: list[int]
    start_pos: int
    samples: bool  # the step's logits at this chunk's last token are sampled


# The most decode steps one plan may cover (StepPlan.max_steps); the runner may stop sooner (its time budget).
MAX_STEPS = 64


@dataclass(slots=True)
class StepPlan:
    # sorted by seq_id (llama.cpp only co-batches increasing sequence ids); each decodes with its
    # sequence's adapter set
    chunks: list[Chunk]
    # (from, to) seq ids whose state moves before decoding; the scheduler has already renumbered them,
    # so the runner must apply these even when the step has no chunks or its decode fails.
    moves: list[tuple[int, int]] = field(default_factory=list)
    # what admission does to newly taken slots (clear, or reuse a cached prefix); before the moves
    reuses: list[Reuse] = field(default_factory=list)
    # decode steps the runner may take in one go, each feeding every chunk's sampled token to the next
    # (one token per chunk and step; StepOutput.sampled then holds them step by step). Above 1 only when
    # every running sequence decodes in this plan and nothing waits; at most the fewest tokens any of
    # them may still generate.
    max_steps: int = 1

    @property
    def num_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.chunks)

    @property
    def adapter_keys(self) -> set[AdapterKey]:
        return {c.seq.adapter_key for c in self.chunks}

    @property
    def adapter_handles(self) -> dict[int, list[tuple[Any, float]]]:
        """seq id → its adapter set as (handle, scale) pairs, for the sequences with adapters."""
        return {c.seq.seq_id: c.seq.adapter_handles for c in self.chunks if c.seq.adapter_handles}


@dataclass(slots=True)
class StepOutput:
    sampled: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, sampled token), in order
    # for requests that asked: request id → the sampled token's scores; the prompt tokens' scores read this step
    sampled_scores: dict[int, TokenScores] = field(default_factory=dict)
    prompt_scores: list[tuple[Sequence, list[TokenScores]]] = field(default_factory=list)
    failed: list[tuple[Sequence, EngineError]] = field(default_factory=list)  # each with its own error
    adapter_switched: bool = False  # the step changed the adapter set (a cost worth counting)
    steps: int = 1  # decode steps taken (up to the plan's max_steps)
