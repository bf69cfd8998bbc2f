"""Counters the worker keeps, and the snapshot callers read."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    steps: int = 0
    tokens_generated: int = 0
    prompt_tokens: int = 0
    requests_finished: int = 0
    requests_failed: int = 0
    sequence_moves: int = 0  # KV streams moved to keep running seq ids contiguous
    adapter_switches: int = 0  # steps that changed the context's adapter set
    # sequences_per_step[n] = number of decode steps that carried n sequences
    sequences_per_step: dict[int, int] = field(default_factory=dict)


class StepCounters:
    """Written only by the worker thread; read by others as whole ints and a copied list (GIL-atomic)."""

    def __init__(self, max_sequences: int) -> None:
        self.steps = 0
        self.tokens_generated = 0
        self.prompt_tokens = 0
        self.requests_finished = 0
        self.requests_failed = 0
        self.sequence_moves = 0
        self.adapter_switches = 0
        self.histogram = [0] * (max_sequences + 1)

    def snapshot(self, *, running: int, waiting: int) -> EngineStats:
        hist = list(self.histogram)
        return EngineStats(
            running=running,
            waiting=waiting,
            steps=self.steps,
            tokens_generated=self.tokens_generated,
            prompt_tokens=self.prompt_tokens,
            requests_finished=self.requests_finished,
            requests_failed=self.requests_failed,
            sequence_moves=self.sequence_moves,
            adapter_switches=self.adapter_switches,
            sequences_per_step={n: c for n, c in enumerate(hist) if c},
        )
