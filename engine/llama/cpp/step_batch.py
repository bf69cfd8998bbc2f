"""Fills one reusable llama_batch from a StepPlan."""

from __future__ import annotations

import llama_cpp

from engine.llama.scheduling.sequence import Sequence
from engine.llama.scheduling.step import StepPlan


class StepBatch:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.batch = llama_cpp.llama_batch_init(capacity, 0, 1)

    def fill(self, plan: StepPlan) -> tuple[list[tuple[Sequence, int]], list[tuple[Sequence, int, int, int]]]:
        """Write the plan's tokens; return (sequence, batch row) for every sequence to sample, and
        (sequence, first batch row, its position, token count) for prompt chunks whose every row's logits are wanted
        (prompt log-probabilities)."""
        if plan.num_tokens > self.capacity:
            raise ValueError(f"step of {plan.num_tokens} tokens exceeds the batch capacity {self.capacity}")
        b = self.batch
        n = 0
        to_sample: list[tuple[Sequence, int]] = []
        prompt_rows: list[tuple[Sequence, int, int, int]] = []
        for chunk in plan.chunks:
            seq_id = chunk.seq.seq_id
            last = len(chunk.tokens) - 1
            every_row = chunk.seq.prompt_logprobs and chunk.start_pos < chunk.seq.num_prompt_tokens
            if every_row:
                prompt_rows.append((chunk.seq, n, chunk.start_pos, len(chunk.tokens)))
            for i, token in enumerate(chunk.tokens):
                b.token[n] = token
                b.pos[n] = chunk.start_pos + i
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = seq_id
                b.logits[n] = every_row or (chunk.samples and i == last)
                n += 1
            if chunk.samples:
                to_sample.append((chunk.seq, n - 1))
        b.n_tokens = n
        return to_sample, prompt_rows

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
