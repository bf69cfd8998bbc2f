"""Fills one reusable llama_batch from a StepPlan."""

from __future__ import annotations

import llama_cpp

from engine.llama.scheduling.sequence import Sequence
from engine.llama.scheduling.step import StepPlan


class StepBatch:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.batch = llama_cpp.llama_batch_init(capacity, 0, 1)

    def fill(self, plan: StepPlan) -> list[tuple[Sequence, int]]:
        """Write the plan's tokens; return (sequence, batch row) for every sequence to sample."""
        if plan.num_tokens > self.capacity:
            raise ValueError(f"step of {plan.num_tokens} tokens exceeds the batch capacity {self.capacity}")
        b = self.batch
        n = 0
        to_sample: list[tuple[Sequence, int]] = []
        for chunk in plan.chunks:
            seq_id = chunk.seq.seq_id
            last = len(chunk.tokens) - 1
            for i, token in enumerate(chunk.tokens):
                b.token[n] = token
                b.pos[n] = chunk.start_pos + i
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = seq_id
                b.logits[n] = chunk.samples and i == last
                n += 1
            if chunk.samples:
                to_sample.append((chunk.seq, n - 1))
        b.n_tokens = n
        return to_sample

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
